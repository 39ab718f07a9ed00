//! The driver's QMP session: one connection for the VM's life.
//!
//! Opened once QEMU answers, closed at shutdown. One reader task splits
//! what QEMU sends into replies (matched to their command by `id`) and
//! events (broadcast to subscribers). A caller that waits for the event a
//! command causes (`DEVICE_DELETED` after `device_del`) subscribes before
//! it sends the command, so the event cannot come in between.
//!
//! Bounds: a line longer than [`qmp::MAX_LINE`] ends the session (a QEMU
//! taken over by its guest must not make the host buffer without end) and
//! every command has a time limit. The decoder of each line is
//! [`qmp::decode_message`], covered by the `qmp` fuzz target.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::qmp::{self, qmp_error, Event, Message};
use crate::Error;

/// Events kept for a subscriber that has not read them yet; one that falls
/// further behind is told it lagged.
const EVENT_BACKLOG: usize = 256;

/// Replies awaited, by command id.
type Pending = Arc<StdMutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// An open QMP session (after `qmp_capabilities`).
pub struct QmpSession {
    writer: Mutex<(OwnedWriteHalf, u64)>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    reader: JoinHandle<()>,
}

impl QmpSession {
    /// Connects to `path`, reads the greeting and leaves negotiation mode,
    /// all within `limit`.
    pub async fn open(path: &Path, limit: Duration) -> Result<Self, Error> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| qmp_error(format!("connect {}: {e}", path.display())))?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = timeout(limit, qmp::read_line(&mut reader))
            .await
            .map_err(|_| qmp_error(format!("no greeting in {limit:?}")))??;
        match qmp::decode_message(&greeting)? {
            Message::Greeting => {}
            _ => {
                return Err(qmp_error(format!(
                    "unexpected greeting {}",
                    qmp::excerpt(&greeting)
                )))
            }
        }
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let reader = tokio::spawn(read_loop(reader, pending.clone(), events.clone()));
        let session = Self {
            writer: Mutex::new((write, 0)),
            pending,
            events,
            reader,
        };
        session.execute("qmp_capabilities", None, limit).await?;
        Ok(session)
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `command` and returns its `return`, or QEMU's error; fails if
    /// no reply comes within `limit`.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, Error> {
        self.run(command, arguments, None, limit).await
    }

    async fn run(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<RawFd>,
        limit: Duration,
    ) -> Result<Value, Error> {
        let run = async {
            let (tx, rx) = oneshot::channel();
            {
                let mut writer = self.writer.lock().await;
                let id = writer.1;
                writer.1 += 1;
                let mut msg = json!({ "execute": command, "id": id });
                if let Some(args) = arguments {
                    msg["arguments"] = args;
                }
                if !self.is_open() {
                    return Err(qmp_error(format!("{command}: session closed")));
                }
                self.pending.lock().expect("pending").insert(id, tx);
                let line = msg.to_string() + "\n";
                let written = match fd {
                    None => writer.0.write_all(line.as_bytes()).await,
                    Some(fd) => send_with_fd(&writer.0, line.as_bytes(), fd).await,
                };
                if let Err(e) = written {
                    self.pending.lock().expect("pending").remove(&id);
                    return Err(qmp_error(format!("{command}: {e}")));
                }
            }
            match rx.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(qmp_error(format!("{command}: {error}"))),
                Err(_) => Err(qmp_error(format!("{command}: session closed"))),
            }
        };
        timeout(limit, run)
            .await
            .map_err(|_| qmp_error(format!("{command}: no answer in {limit:?}")))?
    }

    /// [`QmpSession::execute`], with `fd` sent along the command (SCM_RIGHTS
    /// in the same message as its first byte), as QEMU's `getfd` and
    /// `add-fd` want.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: RawFd,
        limit: Duration,
    ) -> Result<Value, Error> {
        self.run(command, arguments, Some(fd), limit).await
    }

    /// Whether the reader still runs (QEMU has not closed the session).
    pub fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }
}

impl Drop for QmpSession {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Writes `bytes` with `fd` attached to the first chunk the socket takes.
async fn send_with_fd(stream: &OwnedWriteHalf, bytes: &[u8], fd: RawFd) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        stream.as_ref().writable().await?;
        let chunk = &bytes[sent..];
        let result = stream.as_ref().try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(chunk)];
            let fds = [fd];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if sent == 0 { &cmsg } else { &[] };
            sendmsg::<()>(
                stream.as_ref().as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match result {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads lines until the connection ends or misbehaves: replies go to their
/// waiting command, events to the subscribers. Ending drops every pending
/// sender, so the commands waiting fail at once.
async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
) {
    loop {
        let line = match qmp::read_line(&mut reader).await {
            Ok(line) => line,
            Err(e) => {
                tracing::debug!(error = %e, "QMP session ended");
                break;
            }
        };
        match qmp::decode_message(&line) {
            Ok(Message::Event(event)) => {
                tracing::debug!(event = %event.name, data = %event.data, "QMP event");
                // No subscriber is not an error.
                let _ = events.send(event);
            }
            Ok(Message::Reply { id, result }) => {
                let waiter = id.and_then(|id| pending.lock().expect("pending").remove(&id));
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(result);
                    }
                    // The command timed out and its caller left.
                    None => tracing::debug!(?id, "QMP reply nobody waits for"),
                }
            }
            Ok(Message::Greeting) => tracing::warn!("QMP greeting in the middle of a session"),
            Err(e) => {
                tracing::warn!(error = %e, "QMP session ended");
                break;
            }
        }
    }
    pending.lock().expect("pending").clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A scripted QMP peer: greets, answers each command with `reply(cmd)`
    /// (echoing its id), and sends an event before the reply to `device_del`.
    async fn peer(listener: UnixListener) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let id = &cmd["id"];
            if cmd["execute"] == "device_del" {
                let ev = json!({"event": "DEVICE_DELETED", "data": {"device": "d1"},
                    "timestamp": {"seconds": 1, "microseconds": 2}});
                w.write_all(format!("{ev}\n").as_bytes()).await.unwrap();
            }
            let reply = if cmd["execute"] == "fail" {
                json!({"error": {"class": "GenericError", "desc": "no"}, "id": id})
            } else {
                json!({"return": {"echo": cmd["execute"]}, "id": id})
            };
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn replies_match_commands_and_events_reach_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(peer(listener));
        let limit = Duration::from_secs(5);
        let s = QmpSession::open(&path, limit).await.unwrap();
        let mut events = s.subscribe();
        let r = s.execute("device_del", None, limit).await.unwrap();
        assert_eq!(r["echo"], "device_del");
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.name, "DEVICE_DELETED");
        assert_eq!(ev.data["device"], "d1");
        let err = s.execute("fail", None, limit).await.unwrap_err();
        assert!(
            err.to_string().contains("fail: ") && err.to_string().contains("no"),
            "{err}"
        );
        drop(s);
        peer.await.unwrap();
    }

    /// `execute_with_fd` delivers the fd with the command: the peer reads
    /// it with `recvmsg` and sees the same open file (it reads what the
    /// test wrote into it).
    #[tokio::test]
    async fn a_command_carries_its_fd() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned};
        use std::io::{IoSliceMut, Read, Seek, Write};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {}}\n").unwrap();
            let mut got = Vec::new();
            let mut fds = Vec::new();
            let mut replies = 0;
            while replies < 2 {
                let mut buf = [0u8; 4096];
                let mut space = nix::cmsg_space!([RawFd; 1]);
                let (n, received) = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let msg =
                        recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
                            .unwrap();
                    let mut received = Vec::new();
                    for c in msg.cmsgs().unwrap() {
                        if let ControlMessageOwned::ScmRights(r) = c {
                            received.extend(r);
                        }
                    }
                    (msg.bytes, received)
                };
                assert!(n > 0, "the session closed");
                fds.extend(received);
                got.extend_from_slice(&buf[..n]);
                while let Some(end) = got.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = got.drain(..=end).collect();
                    let cmd: Value = serde_json::from_slice(&line).unwrap();
                    let reply = json!({"return": {}, "id": cmd["id"]});
                    s.write_all(format!("{reply}\n").as_bytes()).unwrap();
                    replies += 1;
                }
            }
            assert_eq!(fds.len(), 1, "one fd, with getfd");
            // SAFETY: the fd was just received and is owned by nobody else.
            let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            file.rewind().unwrap();
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            text
        });
        let limit = Duration::from_secs(5);
        let s = QmpSession::open(&path, limit).await.unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"the passed file").unwrap();
        s.execute_with_fd(
            "getfd",
            Some(json!({"fdname": "f"})),
            file.as_raw_fd(),
            limit,
        )
        .await
        .unwrap();
        drop(s);
        assert_eq!(peer.join().unwrap(), "the passed file");
    }

    /// A peer that greets, then sends one endless line: the session ends
    /// at the bound and the waiting command fails instead of buffering.
    #[tokio::test]
    async fn an_endless_line_ends_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {}}\n").await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        });
        let err = QmpSession::open(&path, Duration::from_secs(20))
            .await
            .err()
            .expect("the session must fail");
        assert!(err.to_string().contains("session closed"), "{err}");
        peer.await.unwrap();
    }
}
