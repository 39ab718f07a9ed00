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
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::Error;

const QMP_TIMEOUT: Duration = Duration::from_secs(5);

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
    let mut lines = BufReader::new(read).lines();
    check_greeting(&next_reply(&mut lines).await?)?;
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
        let result = command_result(cmd, &next_reply(&mut lines).await?)?;
        if cmd == command {
            return Ok(result);
        }
    }
    unreachable!("the loop returns on the last command")
}

/// The next line that is a greeting or a reply (events are skipped).
async fn next_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Result<Value, Error> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| Error::Qmp(e.to_string()))?
            .ok_or_else(|| Error::Qmp("connection closed".into()))?;
        if let Some(value) = decode_line(&line)? {
            return Ok(value);
        }
    }
}

/// One line QEMU sent: `None` for an event, the message otherwise.
pub fn decode_line(line: &str) -> Result<Option<Value>, Error> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| Error::Qmp(format!("{e}: {line}")))?;
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
