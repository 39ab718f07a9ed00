use std::path::PathBuf;

/// Errors of the sandbox runtime. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rootfs {0} is not a directory")]
    Rootfs(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("state directory {0} still has mounts below it; not removed")]
    BusyStateDir(PathBuf),
    #[error("start the VM")]
    Vm(#[source] capsa_hypervisor::Error),
    /// The VM exited while we waited for its agent. `console` is the tail of
    /// the guest console log.
    #[error("the VM exited before its agent answered; guest console ends with:\n{console}")]
    VmExited { console: String },
    #[error("the guest did not bring its vsock device up in {seconds} s; guest console ends with:\n{console}")]
    VsockNotReady { seconds: u64, console: String },
    #[error("connect to the agent; guest console ends with:\n{console}")]
    AgentDial {
        console: String,
        #[source]
        source: capsa_agent_client::Error,
    },
    #[error(transparent)]
    Agent(#[from] capsa_agent_client::Error),
    #[error("build the OCI spec")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("convert the OCI spec")]
    Convert(#[source] capsa_protocols::convert::ConvertError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
