//! Guest-wide methods of the agent API, independent of the wire format:
//! guest details, CPU and memory onlining, the clock, the entropy pool,
//! file copies into the sandbox directory and metrics.
//!
//! Every function validates its input before it acts; errors name the bad
//! input and carry the class the client sees ([`GuestError::kind`]).

pub mod copy_file;
pub mod cpumem;
pub mod details;
pub mod metrics;
pub mod random;
pub mod time;

use std::path::PathBuf;

use nix::errno::Errno;

use crate::sandbox::ErrorKind;
use crate::validate::{ConfineError, SysError, ValidateError};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error("{what} {value} is out of range ({range})")]
    OutOfRange {
        what: &'static str,
        value: i64,
        range: &'static str,
    },
    #[error("{what} is {len} bytes long, more than {max}")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("copy file path {path:?}: data of {len} bytes at offset {offset} goes past the file size {size}")]
    PastEnd {
        path: String,
        offset: i64,
        len: u64,
        size: i64,
    },
    #[error("copy file mode {0:#o} is not a regular file, a directory or a symbolic link")]
    FileType(u32),
    #[error("not PID 1: the agent does not {0} of the machine it runs on")]
    NotInit(&'static str),
    /// A filesystem call failed; through `fs_err`, the error names the
    /// operation and the path.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot parse {path}: {text:?}")]
    Unparsable { path: PathBuf, text: String },
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("only {onlined} of the {requested} CPUs asked for could be onlined")]
    CpusOffline { requested: u32, onlined: u32 },
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl GuestError {
    pub fn kind(&self) -> ErrorKind {
        use GuestError as E;
        match self {
            E::Invalid(_)
            | E::OutOfRange { .. }
            | E::TooLarge { .. }
            | E::Empty(_)
            | E::PastEnd { .. }
            | E::FileType(_) => ErrorKind::InvalidArgument,
            E::NotInit(_) => ErrorKind::FailedPrecondition,
            E::Io(_) | E::Unparsable { .. } | E::Sys(_) | E::CpusOffline { .. } | E::Join(_) => {
                ErrorKind::Internal
            }
        }
    }

    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> Self {
        Self::Sys(SysError::new(op, path, errno))
    }
}

impl From<ConfineError> for GuestError {
    fn from(e: ConfineError) -> Self {
        match e {
            ConfineError::Invalid(e) => Self::Invalid(e),
            ConfineError::Sys(e) => Self::Sys(e),
        }
    }
}

/// Fails unless the agent is the init of a VM: the clock, the CPUs and the
/// memory are the machine's, and a test agent on a host must leave them.
pub fn require_init(what: &'static str) -> Result<(), GuestError> {
    if crate::init::is_init() {
        Ok(())
    } else {
        Err(GuestError::NotInit(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let e = GuestError::TooLarge {
            what: "seed",
            len: 10,
            max: 4,
        };
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(e.to_string(), "seed is 10 bytes long, more than 4");
        assert_eq!(
            GuestError::NotInit("set the clock").kind(),
            ErrorKind::FailedPrecondition
        );
        assert!(require_init("x").is_err(), "tests do not run as PID 1");
    }
}
