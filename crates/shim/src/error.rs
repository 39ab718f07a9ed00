//! The shim's errors and their ttRPC status codes.

use capsa_runtime::resource::cgroup::Error as Cgroup;
use containerd_shim::protos::protobuf::Enum;
use containerd_shim::protos::ttrpc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("task {0:?} not found")]
    NoTask(String),
    #[error("process {exec_id:?} of task {id:?} not found")]
    NoProcess { id: String, exec_id: String },
    #[error("task {0:?} exists already")]
    TaskExists(String),
    #[error("exec {exec_id:?} of task {id:?} exists already")]
    ExecExists { id: String, exec_id: String },
    #[error("pod {pod:?} is not served by this shim (it serves {served:?})")]
    OtherPod { pod: String, served: String },
    #[error("task {0:?} has no VM: its pod was not created by this shim")]
    NoPod(String),
    #[error("process {0:?} is still running")]
    Running(String),
    #[error("process {0:?} is not running")]
    NotRunning(String),
    /// runc's answer, which containerd's CRI plugin expects on a kill
    /// that comes after the exit.
    #[error("process {0:?} already finished")]
    Finished(String),
    #[error("{0} is not supported by capsa")]
    Unsupported(&'static str),
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("read the OCI spec of bundle {bundle}")]
    Spec {
        bundle: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The FIFOs, pipes and logging binary behind a container's stdio:
    /// not filesystem calls that `fs_err` wraps, and the error names the
    /// container and the stream besides the path.
    #[error("open the {stream} of {id} ({path})")]
    Stdio {
        id: String,
        stream: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] capsa_config::Error),
    #[error(transparent)]
    Runtime(#[from] capsa_runtime::Error),
    #[error(transparent)]
    Agent(#[from] capsa_agent_client::Error),
}

impl Error {
    fn code(&self) -> ttrpc::Code {
        match self {
            Error::NoTask(_) | Error::NoProcess { .. } | Error::NoPod(_) | Error::Finished(_) => {
                ttrpc::Code::NOT_FOUND
            }
            Error::TaskExists(_) | Error::ExecExists { .. } => ttrpc::Code::ALREADY_EXISTS,
            Error::Running(_) | Error::NotRunning(_) | Error::OtherPod { .. } => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            Error::Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::Runtime(capsa_runtime::Error::Cgroup(Cgroup::TooSmall { .. })) => {
                ttrpc::Code::RESOURCE_EXHAUSTED
            }
            Error::Runtime(capsa_runtime::Error::Cgroup(Cgroup::Path { .. })) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Error::Invalid { .. }
            | Error::Spec { .. }
            | Error::Runtime(
                capsa_runtime::Error::BindSource { .. }
                | capsa_runtime::Error::Refused { .. }
                | capsa_runtime::Error::NotBlock { .. }
                | capsa_runtime::Error::BadSpec { .. }
                | capsa_runtime::Error::Rootfs(_),
            ) => ttrpc::Code::INVALID_ARGUMENT,
            // The agent client's ttrpc is another release: same codes.
            Error::Agent(e) => e
                .code()
                .and_then(|c| ttrpc::Code::from_i32(c as i32))
                .unwrap_or(ttrpc::Code::INTERNAL),
            _ => ttrpc::Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let message = capsa_runtime::error_chain(&e);
        tracing::warn!(error = %message, "request failed");
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), message))
    }
}
