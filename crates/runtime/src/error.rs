use std::path::PathBuf;

/// Errors of the sandbox runtime. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rootfs {0} is not a directory")]
    Rootfs(PathBuf),
    /// `shared_fs = "none"` and a container needs the shared filesystem.
    #[error("{what} needs the shared filesystem, but shared_fs = \"none\": give a block rootfs (an image file or a block device) or set shared_fs = \"virtio-fs\"")]
    NoSharedFs { what: String },
    /// A filesystem call failed. The calls go through `fs_err`, whose
    /// `io::Error` names the operation and the path: one transparent
    /// variant, no path field and no constructor of our own.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `std::fs::DirBuilder` (a mode at creation): not wrapped by
    /// `fs_err`, so the path is named here.
    #[error("create directory {path}")]
    MakeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a directory")]
    NotDir(PathBuf),
    /// The control socket could not be bound (not a filesystem call, so
    /// `fs_err` cannot name the path).
    #[error("listen on {path}")]
    Listen {
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
    /// A bind mount's source was refused or could not be opened; `mount`
    /// names the mount (its destination in the container).
    #[error("mount {mount} (source {path})")]
    BindSource {
        mount: String,
        path: PathBuf,
        #[source]
        source: Box<crate::resource::share::mount::SourceError>,
    },
    #[error("mount the rootfs ({typ} {device}): {reason}")]
    RootfsMount {
        typ: String,
        device: String,
        reason: String,
    },
    /// A drive for `what` (the rootfs, a mount, a device) could not be
    /// inspected.
    #[error("{what}")]
    BlockSource {
        what: String,
        #[source]
        source: crate::resource::BlockSourceError,
    },
    /// A drive for `what` would hand the guest a disk the host uses.
    #[error("{what}")]
    Refused {
        what: String,
        #[source]
        refusal: crate::resource::Refusal,
    },
    #[error("{what}: {path} is neither a block device nor an image file")]
    NotBlock { what: String, path: PathBuf },
    #[error("{what}: {reason}")]
    BadSpec { what: String, reason: String },
    /// The pod network (host side: netns, taps, filters).
    #[error("pod network")]
    Network(#[source] Box<crate::resource::network::NetworkError>),
    /// The pod's host cgroup (`sandbox_cgroup_only`).
    #[error(transparent)]
    Cgroup(#[from] crate::resource::cgroup::Error),
    #[error("hot-plug for {what}")]
    Hotplug {
        what: String,
        #[source]
        source: capsa_hypervisor::Error,
    },
    #[error("process of container {container} did not exit {seconds} s after SIGKILL")]
    NoExit { container: String, seconds: u64 },
    #[error("sandbox {id:?} is {state}, not running")]
    NotRunning { id: String, state: String },
    #[error(
        "sandbox {0:?} is running: stop it with `capsa kill {0}` first, or use `capsa rm --force`"
    )]
    StillRunning(String),
    #[error("sandbox {0:?} has no debug console: set debug_console_enabled = true in [agent.capsa] and start it again")]
    NoDebugConsole(String),
    #[error("pid {pid}, the owner of sandbox {id:?}, is not a capsa process; not signalled")]
    NotOwner { id: String, pid: i32 },
    #[error("signal pid {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("the owner of sandbox {id:?} (pid {pid}) did not exit in {seconds} s")]
    OwnerStuck { id: String, pid: i32, seconds: u64 },
    #[error("sandbox id {id:?} {reason}")]
    BadId { id: String, reason: String },
    #[error("no sandbox {id:?} in {root}")]
    NoSandbox { id: String, root: PathBuf },
    #[error("sandbox {0:?} exists already")]
    SandboxExists(String),
    #[error("read the sandbox record {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state directory {0} still has mounts below it; not removed")]
    BusyStateDir(PathBuf),
    #[error("start the VM")]
    Vm(#[source] capsa_hypervisor::Error),
    #[error("resize the VM")]
    Resize(#[source] capsa_hypervisor::Error),
    /// The owner of a sandbox could not be asked (its control socket).
    #[error("ask the owner of sandbox {id:?}: {reason}")]
    Control { id: String, reason: String },
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

/// An error and its sources in one line, `: `-separated (as anyhow's
/// `{:#}`), for errors that cross a process boundary as text.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<crate::resource::network::NetworkError> for Error {
    fn from(e: crate::resource::network::NetworkError) -> Self {
        Self::Network(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filesystem error names the operation and the path once, then the
    /// OS error once (fs-err with `expose_original_error`).
    #[test]
    fn a_filesystem_error_names_its_path_and_cause_once() {
        let missing = tempfile::tempdir().unwrap().path().join("missing");
        let text = chain(&Error::from(fs_err::read(&missing).unwrap_err()));
        for part in [missing.display().to_string(), "No such file".into()] {
            assert_eq!(text.matches(&part).count(), 1, "{text}");
        }
    }
}
