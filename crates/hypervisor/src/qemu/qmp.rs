//! QMP messages: reading a bounded line, decoding it into a greeting, a
//! reply or an event, and a one-shot client for tools and tests (the
//! driver's own connection is [`super::session::QmpSession`]).
//!
//! Why not the `qapi` crate (0.15 has a tokio QMP stream with events): its
//! commands and events are types generated from the QAPI schema of one QEMU
//! release (`qapi-qmp`), so a command such as `x-query-virtio-status`, or
//! an argument added by a later QEMU, exists only if that release matches
//! the installed QEMU, and the `blockdev-add` options capsa builds are a
//! few JSON fields either way. The line reader and the decoder are what a
//! compromised QEMU talks to: keeping them here, small, lets capsa bound
//! each line itself and fuzz exactly the code that runs (`fuzz/qmp`).
//! It would also bring `futures`, `tokio-util` and `tower-service`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::session::QmpSession;
use crate::Error;

/// An error of QEMU's monitor, wrapped in the driver-neutral
/// [`Error::Driver`].
#[derive(Debug, thiserror::Error)]
#[error("QMP: {0}")]
pub struct QmpError(pub String);

/// [`QmpError`] as the crate's error.
pub fn qmp_error(message: impl Into<String>) -> Error {
    Error::Driver(Box::new(QmpError(message.into())))
}

/// Bound of each one-shot command (greeting and negotiation included).
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest line QEMU may send: its replies to capsa's commands are a
/// few KiB (`query-pci` of a full machine some tens), and a QEMU taken over
/// by its guest must not make the host buffer without end.
pub const MAX_LINE: u64 = 4 << 20;

/// Something QEMU sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`, the first line of a connection.
    Greeting,
    /// The reply to the command `id` (`None` if QEMU could not read the
    /// command's id): its `return` (null when absent) or its `error`.
    Reply {
        id: Option<u64>,
        result: Result<Value, String>,
    },
    Event(Event),
}

/// An asynchronous event (`DEVICE_DELETED`, `SHUTDOWN`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    /// Its `data` (null when absent).
    pub data: Value,
}

/// Runs one QMP command on a new connection to the socket at `path` (for
/// example the debug monitor, `qmp-debug.sock`) and returns its `return`.
pub async fn execute(path: &Path, command: &str, arguments: Option<Value>) -> Result<Value, Error> {
    let run = async {
        let session = QmpSession::open(path, QMP_TIMEOUT).await?;
        session.execute(command, arguments, QMP_TIMEOUT).await
    };
    tokio::time::timeout(QMP_TIMEOUT, run)
        .await
        .map_err(|_| qmp_error(format!("{command}: no answer in {QMP_TIMEOUT:?}")))?
}

/// The next line from `reader`, without its newline: at most [`MAX_LINE`]
/// bytes are read for it; a longer line or one cut by the end of the
/// stream is an error.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<String, Error> {
    let mut line = String::new();
    let n = (&mut *reader)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await
        .map_err(|e| qmp_error(e.to_string()))?;
    if n == 0 || !line.ends_with('\n') {
        return Err(qmp_error(format!(
            "connection closed (or a line over {MAX_LINE} bytes)"
        )));
    }
    line.pop();
    Ok(line)
}

/// The start of `line`, for an error message.
pub fn excerpt(line: &str) -> &str {
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// Decodes one line QEMU sent.
pub fn decode_message(line: &str) -> Result<Message, Error> {
    let bad = |why: &str| qmp_error(format!("{why}: {}", excerpt(line)));
    let value: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(bad("not an object"));
    };
    if map.contains_key("QMP") {
        return Ok(Message::Greeting);
    }
    if let Some(name) = map.get("event") {
        let name = name
            .as_str()
            .ok_or_else(|| bad("event name not a string"))?;
        return Ok(Message::Event(Event {
            name: name.to_string(),
            data: map.remove("data").unwrap_or(Value::Null),
        }));
    }
    let id = map.get("id").and_then(Value::as_u64);
    if let Some(error) = map.get("error") {
        let desc = error
            .get("desc")
            .and_then(Value::as_str)
            .map_or_else(|| excerpt(&error.to_string()).to_string(), str::to_string);
        return Ok(Message::Reply {
            id,
            result: Err(desc),
        });
    }
    match map.remove("return") {
        Some(value) => Ok(Message::Reply {
            id,
            result: Ok(value),
        }),
        None => Err(bad("neither a greeting, a reply nor an event")),
    }
}

/// Whether the answer to `x-query-virtio-status` shows the guest driver has
/// set the device up (`DRIVER_OK` among its status bits).
pub fn virtio_driver_ok(status: &Value) -> bool {
    status["status"].to_string().contains("DRIVER_OK")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_greetings_replies_events_and_refuses_the_rest() {
        assert_eq!(
            decode_message(r#"{"QMP": {"version": {}}}"#).unwrap(),
            Message::Greeting
        );
        assert_eq!(
            decode_message(r#"{"return": {}, "id": 7}"#).unwrap(),
            Message::Reply {
                id: Some(7),
                result: Ok(json!({}))
            }
        );
        assert_eq!(
            decode_message(r#"{"error": {"class": "GenericError", "desc": "Duplicate ID"}}"#)
                .unwrap(),
            Message::Reply {
                id: None,
                result: Err("Duplicate ID".into())
            }
        );
        let ev = r#"{"event": "DEVICE_DELETED", "data": {"device": "blk-a"}, "timestamp": {}}"#;
        assert_eq!(
            decode_message(ev).unwrap(),
            Message::Event(Event {
                name: "DEVICE_DELETED".into(),
                data: json!({"device": "blk-a"})
            })
        );
        for bad in ["[1]", "{}", r#"{"event": 3}"#, "not json"] {
            assert!(decode_message(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_line_is_bounded() {
        let long = vec![b'x'; MAX_LINE as usize + 10];
        let mut reader = tokio::io::BufReader::new(&long[..]);
        let err = read_line(&mut reader).await.unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
        let mut reader = tokio::io::BufReader::new(&b"{}\nrest"[..]);
        assert_eq!(read_line(&mut reader).await.unwrap(), "{}");
        assert!(read_line(&mut reader).await.is_err(), "a cut line");
    }
}
