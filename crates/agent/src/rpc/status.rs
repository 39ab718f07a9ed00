//! Errors on the wire: sandbox errors become ttRPC statuses.

use std::future::Future;

use ttrpc::{get_status, Code};

use crate::error::chain;
use crate::sandbox::{ErrorKind, SandboxError};

/// The message of a stream's end of file. Like Kata's agent, a read at end
/// of file fails (code INTERNAL) instead of returning no data; Kata's
/// runtimes stop reading on any error.
pub const EOF_MESSAGE: &str = "eof";

fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::DeadlineExceeded => Code::DEADLINE_EXCEEDED,
        ErrorKind::Internal => Code::INTERNAL,
    }
}

/// `err` as the status of `method`'s reply; logged once here.
pub fn to_status(method: &str, err: SandboxError) -> ttrpc::Error {
    status(method, err.kind(), &err)
}

/// An error of `kind` as the status of `method`'s reply, its message the
/// error's chain; logged once here. Every error on the wire goes through it.
pub fn status(
    method: &str,
    kind: ErrorKind,
    err: &(dyn std::error::Error + 'static),
) -> ttrpc::Error {
    let message = chain(err);
    let code = code(kind);
    tracing::warn!(%method, ?code, "{message}");
    ttrpc::Error::RpcStatus(get_status(code, message))
}

/// The reply of a method this agent does not implement.
pub fn unimplemented(path: &str) -> ttrpc::Error {
    tracing::info!(method = %path, "not implemented");
    ttrpc::Error::RpcStatus(get_status(
        Code::UNIMPLEMENTED,
        format!("{path} is not implemented"),
    ))
}

/// The reply of a read at end of file.
pub fn eof() -> ttrpc::Error {
    ttrpc::Error::RpcStatus(get_status(Code::INTERNAL, EOF_MESSAGE))
}

/// Runs `op` in its own task: a client that gives up (request timeout,
/// closed connection) drops the handler's future, and a half-done create or
/// remove must not be cut in the middle.
pub async fn detached<T: Send + 'static>(
    op: impl Future<Output = Result<T, SandboxError>> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::spawn(op).await?
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The status a reply carries; fails on any other error.
    pub(crate) fn status_of(err: ttrpc::Error) -> ttrpc::proto::Status {
        match err {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn errors_keep_their_kind_and_chain() {
        let err = SandboxError::from(crate::validate::container_id("a/b").unwrap_err());
        let s = status_of(to_status("/grpc.AgentService/CreateContainer", err));
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert_eq!(s.message(), "container id \"a/b\" contains '/'");
        let s = status_of(to_status("m", SandboxError::NoContainer("c".into())));
        assert_eq!(s.code(), Code::NOT_FOUND);
    }

    #[test]
    fn unimplemented_names_the_method() {
        let s = status_of(unimplemented("/grpc.AgentService/ExecProcess"));
        assert_eq!(s.code(), Code::UNIMPLEMENTED);
        assert_eq!(
            s.message(),
            "/grpc.AgentService/ExecProcess is not implemented"
        );
    }

    #[test]
    fn eof_is_internal() {
        let s = status_of(eof());
        assert_eq!(s.code(), Code::INTERNAL);
        assert_eq!(s.message(), EOF_MESSAGE);
    }
}
