//! A minimal QMP client: greeting, `qmp_capabilities`, then one command.
//!
//! Why not the `qapi` crate: it has a tokio client, but its commands are
//! types generated from the QAPI schema of one QEMU release (`qapi-qmp`), so
//! a command such as `x-query-virtio-status` exists only if that release
//! matches the installed QEMU; it also brings `futures`, `tokio-util` and
//! `tower-service` with it. capsa sends a handful of commands (`quit`,
//! `x-query-virtio-status`), one connection each, so a small client over
//! tokio and serde_json is simpler.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Take};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::Error;

const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// The most one connection may bring: QEMU's replies to capsa's commands
/// are a few KiB, and a QEMU taken over by its guest must not make the
/// host buffer without end (a longer conversation ends as closed).
const QMP_MAX_BYTES: u64 = 4 << 20;

/// Runs one QMP command on the socket at `path` and returns its `return`.
pub async fn execute(path: &Path, command: &str, arguments: Option<Value>) -> Result<Value, Error> {
    timeout(QMP_TIMEOUT, execute_inner(path, command, arguments))
        .await
        .map_err(|_| Error::Qmp(format!("{command}: no answer in {QMP_TIMEOUT:?}")))?
}

async fn execute_inner(
    path: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, Error> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| Error::Qmp(format!("connect {}: {e}", path.display())))?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(QMP_MAX_BYTES));
    check_greeting(&next_reply(&mut reader).await?)?;
    for cmd in ["qmp_capabilities", command] {
        let msg = match (&arguments, cmd == command) {
            (Some(args), true) => json!({ "execute": cmd, "arguments": args }),
            _ => json!({ "execute": cmd }),
        };
        let msg = msg.to_string() + "\n";
        write
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| Error::Qmp(format!("{cmd}: {e}")))?;
        let result = command_result(cmd, &next_reply(&mut reader).await?)?;
        if cmd == command {
            return Ok(result);
        }
    }
    unreachable!("the loop returns on the last command")
}

/// The next line that is a greeting or a reply (events are skipped).
async fn next_reply(
    reader: &mut BufReader<Take<tokio::net::unix::OwnedReadHalf>>,
) -> Result<Value, Error> {
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| Error::Qmp(e.to_string()))?;
        // A line cut short: the peer closed, or the bound was reached.
        if n == 0 || !line.ends_with('\n') {
            return Err(Error::Qmp(format!(
                "connection closed (or over {QMP_MAX_BYTES} bytes)"
            )));
        }
        if let Some(value) = decode_line(line.trim_end())? {
            return Ok(value);
        }
    }
}

/// The start of `line`, for an error message.
fn excerpt(line: &str) -> &str {
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// One line QEMU sent: `None` for an event, the message otherwise.
pub fn decode_line(line: &str) -> Result<Option<Value>, Error> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| Error::Qmp(format!("{e}: {}", excerpt(line))))?;
    Ok(value.get("event").is_none().then_some(value))
}

/// Checks QEMU's first message, the greeting (`{"QMP": {...}}`).
pub fn check_greeting(greeting: &Value) -> Result<(), Error> {
    if greeting.get("QMP").is_none() {
        return Err(Error::Qmp(format!("unexpected greeting {greeting}")));
    }
    Ok(())
}

/// The `return` of the reply to `cmd` (null when absent), or its `error`.
pub fn command_result(cmd: &str, reply: &Value) -> Result<Value, Error> {
    if let Some(err) = reply.get("error") {
        return Err(Error::Qmp(format!("{cmd}: {err}")));
    }
    Ok(reply.get("return").cloned().unwrap_or(Value::Null))
}

/// Whether the answer to `x-query-virtio-status` shows the guest driver has
/// set the device up (`DRIVER_OK` among its status bits).
pub fn virtio_driver_ok(status: &Value) -> bool {
    status["status"].to_string().contains("DRIVER_OK")
}

#[cfg(test)]
mod bound_tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A QMP peer that greets, then sends one endless line: the client
    /// stops reading at its bound and fails instead of buffering it all.
    #[tokio::test]
    async fn an_endless_reply_is_cut_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let greeting = br#"{"QMP": {"version": {}, "capabilities": []}}"#;
            s.write_all(greeting).await.unwrap();
            s.write_all(b"\n").await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            // Until the client hangs up.
            while s.write_all(&chunk).await.is_ok() {}
        });
        let err = execute(&path, "query-status", None).await.unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
        peer.await.unwrap();
    }
}
