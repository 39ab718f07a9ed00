//! What the tests that drive the agent's ttRPC server share.

use std::time::Duration;

use ttrpc::context;
use ttrpc::Code;

/// A request context with the 10 s timeout every test uses.
pub fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

/// The code and message of an error the server answered with.
pub fn status(err: ttrpc::Error) -> (Code, String) {
    match err {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}
