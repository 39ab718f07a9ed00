/// Errors of talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no answer from the agent at {endpoint}: {last}")]
    Dial { endpoint: String, last: String },
    /// The agent refused the call, or the connection failed. Not a
    /// `#[source]`: the message already says everything the error holds.
    #[error("agent {method}: {}", describe(.error))]
    Rpc {
        method: &'static str,
        error: ttrpc::Error,
    },
    /// Like `Rpc`, for a method named at run time (`call_json`).
    #[error("agent {method}: {}", describe(.error))]
    Call { method: String, error: ttrpc::Error },
    #[error("the agent API has no method {0:?}")]
    UnknownMethod(String),
    #[error("the request is not a valid {message} in JSON: {reason}")]
    BadRequest { message: String, reason: String },
    #[error("the reply of {method} cannot be decoded: {reason}")]
    BadReply { method: String, reason: String },
}

impl Error {
    /// The ttRPC status code of a refused call, if the agent answered one.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            Error::Rpc {
                error: ttrpc::Error::RpcStatus(s),
                ..
            }
            | Error::Call {
                error: ttrpc::Error::RpcStatus(s),
                ..
            } => s.code.enum_value().ok(),
            _ => None,
        }
    }
}

/// The agent's own message for a refused call, the transport error otherwise.
fn describe(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!(
            "{}: {}",
            s.code
                .enum_value()
                .map_or_else(|c| c.to_string(), |c| format!("{c:?}")),
            s.message
        ),
        other => other.to_string(),
    }
}
