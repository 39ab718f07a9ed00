//! Errors of the sandbox operations and their kinds (which become ttRPC
//! codes at the wire).

use std::time::Duration;

use super::cgroup::CgroupError;
use super::resources::ResourcesError;
use crate::container::console::ConsoleError;
use crate::container::hooks::HookError;
use crate::container::spec::SpecError;
use crate::container::ContainerError;
use crate::device::spec::SpecDeviceError;
use crate::device::DeviceError;
use crate::modules::ModuleError;
use crate::network::NetworkError;
use crate::passfd::PassfdError;
use crate::stdio::StdioError;
use crate::storage::StorageError;
use crate::validate::ValidateError;

/// The class of an error, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    DeadlineExceeded,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error("invalid OCI spec")]
    Spec(#[from] SpecError),
    #[error("the request has no OCI spec")]
    NoSpec,
    #[error("cannot convert the OCI spec")]
    SpecConversion(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("signal {0} is not a valid signal")]
    Signal(u32),
    #[error("read length must be positive")]
    ZeroRead,
    #[error("the sandbox is already created")]
    SandboxExists,
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    #[error("container {0:?} is being created or removed")]
    ContainerBusy(String),
    #[error("container {0:?} not found")]
    NoContainer(String),
    #[error("process {exec_id:?} of container {container_id:?} not found")]
    NoProcess {
        container_id: String,
        exec_id: String,
    },
    #[error("process {exec_id:?} of container {container_id:?} has already exited")]
    Exited {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0:?} is already started")]
    AlreadyStarted(String),
    #[error("storage {index} ({driver})")]
    Storage {
        index: usize,
        driver: String,
        #[source]
        source: StorageError,
    },
    #[error("device {index} ({id:?})")]
    Device {
        index: usize,
        id: String,
        #[source]
        source: DeviceError,
    },
    #[error("devices of the spec")]
    SpecDevice(#[from] SpecDeviceError),
    #[error("kernel module {0:?}")]
    Module(String, #[source] ModuleError),
    #[error("cannot set the hostname")]
    Hostname(#[source] nix::Error),
    #[error("container {0:?}")]
    Container(String, #[source] Box<ContainerError>),
    #[error("stdio of container {0:?}")]
    Stdio(String, #[source] StdioError),
    #[error("cannot signal process {0}")]
    Kill(i32, #[source] nix::Error),
    #[error("container {0:?} did not stop within {1:?}")]
    StopTimeout(String, Duration),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("the request has no process")]
    NoProcessSpec,
    #[error("exec process {0:?} has no args")]
    NoArgs(String),
    #[error("exec id {exec_id:?} is already in use in container {container_id:?}")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0:?} is not running")]
    NotRunning(String),
    #[error("container {0:?} is paused")]
    Paused(String),
    #[error("container {0:?} is not paused")]
    NotPaused(String),
    #[error("process {exec_id:?} of container {container_id:?} has no terminal")]
    NoTerminal {
        container_id: String,
        exec_id: String,
    },
    #[error("terminal size {rows}x{cols} is out of range")]
    WinSize { rows: u32, cols: u32 },
    #[error("terminal of container {0:?}")]
    Console(String, #[source] ConsoleError),
    #[error("unknown process list format {0:?} (expected \"table\" or \"json\")")]
    Format(String),
    #[error("the request has no resources")]
    NoResources,
    #[error("resources of container {0:?}")]
    Resources(String, #[source] ResourcesError),
    #[error("cgroup of container {0:?}")]
    Cgroup(String, #[source] CgroupError),
    #[error("passfd i/o")]
    Passfd(#[from] PassfdError),
    #[error("container {0:?}")]
    Hook(String, #[source] HookError),
    #[error("network")]
    Network(#[from] NetworkError),
    #[error("not PID 1: {0} left alone")]
    NotInit(&'static str),
    #[error("shared storage {mount_point:?} is already mounted from {driver} {source_name:?}")]
    SharedMismatch {
        mount_point: String,
        driver: String,
        source_name: String,
    },
}

impl SandboxError {
    pub fn kind(&self) -> ErrorKind {
        use SandboxError as E;
        match self {
            E::Invalid(_)
            | E::Spec(_)
            | E::NoSpec
            | E::SpecConversion(_)
            | E::Signal(_)
            | E::ZeroRead
            | E::NoProcessSpec
            | E::NoArgs(_)
            | E::WinSize { .. }
            | E::Format(_)
            | E::NoResources
            | E::SharedMismatch { .. }
            | E::SpecDevice(_)
            | E::Resources(..) => ErrorKind::InvalidArgument,
            E::Device { source, .. } => device_kind(source),
            E::Passfd(PassfdError::NoStream(_) | PassfdError::Connect(..)) => {
                ErrorKind::FailedPrecondition
            }
            E::Passfd(PassfdError::Setup(..)) | E::Hook(..) => ErrorKind::Internal,
            E::ExecExists { .. } => ErrorKind::AlreadyExists,
            E::NotRunning(_) | E::Paused(_) | E::NotPaused(_) | E::NoTerminal { .. } => {
                ErrorKind::FailedPrecondition
            }
            E::Cgroup(_, CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                ErrorKind::InvalidArgument
            }
            E::Console(..) | E::Cgroup(..) => ErrorKind::Internal,
            E::Storage { source, .. } => match source {
                StorageError::Driver(_)
                | StorageError::Invalid(_)
                | StorageError::NoTag
                | StorageError::NoFstype(_)
                | StorageError::Mode(_) => ErrorKind::InvalidArgument,
                StorageError::Device(e) => device_kind(e),
                StorageError::Mkdir(..) | StorageError::Mount { .. } => ErrorKind::Internal,
            },
            E::Module(_, ModuleError::Name(_) | ModuleError::Params(_)) => {
                ErrorKind::InvalidArgument
            }
            E::Module(_, ModuleError::NotFound { .. } | ModuleError::NoModuleSupport(_)) => {
                ErrorKind::NotFound
            }
            E::SandboxExists | E::ContainerExists(_) => ErrorKind::AlreadyExists,
            E::NoContainer(_) | E::NoProcess { .. } | E::Exited { .. } => ErrorKind::NotFound,
            E::ContainerBusy(_) | E::AlreadyStarted(_) => ErrorKind::FailedPrecondition,
            E::Stdio(_, StdioError::NoStream(_) | StdioError::StdinClosed) => {
                ErrorKind::FailedPrecondition
            }
            E::StopTimeout(..) => ErrorKind::DeadlineExceeded,
            E::Network(e) if e.is_not_found() => ErrorKind::NotFound,
            E::Network(e) if e.is_invalid() => ErrorKind::InvalidArgument,
            E::NotInit(_) => ErrorKind::FailedPrecondition,
            E::Network(_) => ErrorKind::Internal,
            E::Module(..)
            | E::Hostname(_)
            | E::Container(..)
            | E::Stdio(..)
            | E::Kill(..)
            | E::Join(_) => ErrorKind::Internal,
        }
    }
}

/// The kind of a device error: a bad address is the request's fault, a
/// device that did not come is a timeout.
fn device_kind(e: &DeviceError) -> ErrorKind {
    match e {
        DeviceError::Type(_)
        | DeviceError::PciPath(_)
        | DeviceError::ScsiAddr(_)
        | DeviceError::Node(_) => ErrorKind::InvalidArgument,
        DeviceError::Timeout { .. } => ErrorKind::DeadlineExceeded,
        DeviceError::Sysfs(..)
        | DeviceError::Buses(..)
        | DeviceError::Uevents(_)
        | DeviceError::DevNumber(..) => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let invalid = crate::validate::container_id("a/b").unwrap_err();
        assert_eq!(
            SandboxError::from(invalid).kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            SandboxError::ContainerExists("a".into()).kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            SandboxError::NoContainer("a".into()).kind(),
            ErrorKind::NotFound
        );
        let storage = SandboxError::Storage {
            index: 0,
            driver: "blk".into(),
            source: StorageError::Driver("blk".into()),
        };
        assert_eq!(storage.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            SandboxError::Stdio("a".into(), StdioError::StdinClosed).kind(),
            ErrorKind::FailedPrecondition
        );
    }

    #[test]
    fn a_device_that_does_not_come_is_a_timeout_a_bad_address_is_invalid() {
        use crate::device::{DeviceError, Source};
        let timeout = DeviceError::Timeout {
            source_name: Source::parse("scsi", "0:1").unwrap(),
            waited: Duration::from_secs(15),
        };
        let storage = SandboxError::Storage {
            index: 0,
            driver: "scsi".into(),
            source: StorageError::Device(timeout),
        };
        assert_eq!(storage.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(
            crate::error::chain(&storage),
            "storage 0 (scsi): no block device at SCSI address 0:1 after waiting 15s"
        );
        let device = SandboxError::Device {
            index: 1,
            id: "0".into(),
            source: Source::parse("nvdimm", "0").unwrap_err(),
        };
        assert_eq!(device.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            crate::error::chain(&device),
            "device 1 (\"0\"): unsupported device type \"nvdimm\" (supported: blk, scsi, mmioblk)"
        );
    }

    #[test]
    fn messages_carry_the_ids() {
        let err = SandboxError::NoProcess {
            container_id: "c".into(),
            exec_id: "e".into(),
        };
        assert_eq!(
            err.to_string(),
            "process \"e\" of container \"c\" not found"
        );
    }
}
