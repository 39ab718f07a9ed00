//! Stdio methods on the wire.
//!
//! End of file follows Kata's agent: ReadStdout/ReadStderr at end of file
//! fail with code INTERNAL (message [`EOF_MESSAGE`]) instead of returning
//! no data; so does ReadStderr of a process with a terminal (its output is
//! all on stdout).

use capsa_protocols::agent;

use super::status::{eof, to_status, EOF_MESSAGE};
use crate::sandbox::Sandbox;

pub async fn read(
    sandbox: &Sandbox,
    req: agent::ReadStreamRequest,
    stderr: bool,
    method: &str,
) -> ttrpc::Result<agent::ReadStreamResponse> {
    let (cid, eid) = (&req.container_id, &req.exec_id);
    let data = match sandbox.read_output(cid, eid, req.len, stderr).await {
        Ok(data) => data,
        Err(e) if stderr && is_missing_stream(&e) => Vec::new(),
        Err(e) => return Err(to_status(method, e)),
    };
    if data.is_empty() {
        tracing::debug!(container = %cid, stderr, "{EOF_MESSAGE}");
        return Err(eof());
    }
    Ok(agent::ReadStreamResponse {
        data,
        ..Default::default()
    })
}

fn is_missing_stream(e: &crate::sandbox::SandboxError) -> bool {
    matches!(
        e,
        crate::sandbox::SandboxError::Stdio(_, crate::stdio::StdioError::NoStream(_))
    )
}

/// Largest WriteStdin `data` accepted (clients send far smaller chunks).
pub const MAX_WRITE: usize = 1 << 20;

pub async fn write(
    sandbox: &Sandbox,
    req: agent::WriteStreamRequest,
    method: &str,
) -> ttrpc::Result<agent::WriteStreamResponse> {
    if req.data.len() > MAX_WRITE {
        let message = format!(
            "stdin data is {} bytes long, more than {MAX_WRITE}",
            req.data.len()
        );
        tracing::warn!(%method, "{message}");
        return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::INVALID_ARGUMENT,
            message,
        )));
    }
    let len = sandbox
        .write_stdin(&req.container_id, &req.exec_id, &req.data)
        .await
        .map_err(|e| to_status(method, e))?;
    Ok(agent::WriteStreamResponse {
        len: len as u32,
        ..Default::default()
    })
}
