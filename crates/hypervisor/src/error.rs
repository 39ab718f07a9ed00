use std::path::PathBuf;

/// Errors of starting and stopping a VM. Each names the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path} not found")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("run directory {path}: {reason}")]
    RunDir { path: PathBuf, reason: String },
    #[error("KVM was asked for but /dev/kvm is not usable")]
    KvmUnavailable,
    #[error("create log file {path}")]
    LogFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited before it was ready ({status}): {log}")]
    HelperExited {
        program: String,
        status: String,
        log: String,
    },
    #[error("{program} did not create {socket} within {seconds} s: {log}")]
    HelperTimeout {
        program: String,
        socket: PathBuf,
        seconds: u64,
        log: String,
    },
    /// The hypervisor process exited before the VM was up.
    #[error("{hypervisor} exited at start ({status}): {stderr}")]
    VmExited {
        hypervisor: &'static str,
        status: String,
        stderr: String,
    },
    #[error("build virtiofsd's seccomp filter: {0}")]
    Seccomp(String),
    #[error("{capability} is not supported by {hypervisor}")]
    NotSupported {
        hypervisor: String,
        capability: &'static str,
    },
    #[error("hot-plug of {device}: {reason}")]
    Hotplug { device: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    /// An error of the driver's own machinery (QEMU: its QMP monitor).
    #[error(transparent)]
    Driver(Box<dyn std::error::Error + Send + Sync>),
    /// A confined helper (`jail`) could not be started.
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
