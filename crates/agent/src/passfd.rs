//! Passfd I/O (Kata's runtime-rs "fd passthrough"): a process's stdio
//! carried by vsock streams between the host and the agent, instead of
//! ReadStdout and WriteStdin calls.
//!
//! CreateContainer and ExecProcess name host vsock ports in `stdin_port`,
//! `stdout_port` and `stderr_port` (0: that stream goes through the ttRPC
//! methods as usual). The agent copies the process's stdout and stderr to
//! their streams (closing each at end of file) and a stdin stream to the
//! process's stdin (closing it at the stream's end). The stream of a port
//! is found in one of two ways:
//!
//! - listener mode, Kata's: with `agent.passfd_listener_port=<port>` on the
//!   kernel command line (runtime-rs uses 1027) the agent listens on that
//!   port; the host connects once per stream and names the host-side port
//!   of each connection (a hybrid vsock's `OK <port>` reply, with
//!   Firecracker, Cloud Hypervisor or Dragonball); the agent picks the
//!   accepted stream whose peer port it is;
//! - connect mode, capsa's, without that parameter: the agent connects to
//!   the host (CID 2) on the port. Through vhost-device-vsock the
//!   connection reaches the host's Unix socket `<uds-path>_<port>`. This
//!   is the mode that works with vhost-device-vsock, whose `OK` reply names
//!   the guest port, not the host's.
//!
//! Either way a stream that is not there within [`STREAM_TIMEOUT`] fails
//! the request, naming the port.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nix::sys::socket::{
    connect, getpeername, socket, AddressFamily, SockFlag, SockType, VsockAddr,
};
use tokio::sync::Notify;

use crate::debug_console::{accept_one, listen_retrying, vsock_port_param, Address};
use crate::process::Process;
use crate::stdio::{InputStream, OutputStream, StdioError, MAX_READ};

/// Kernel command line parameter naming the listener's vsock port.
pub const CMDLINE_PARAM: &str = "agent.passfd_listener_port";
/// How long a request waits for a stream it names to be accepted (the host
/// may send the request right after connecting).
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Accepted streams not claimed yet, at most; more are closed at once.
const MAX_PENDING: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PassfdError {
    #[error("cannot connect to host vsock port {0} for a passfd stream")]
    Connect(u32, #[source] nix::Error),
    #[error("no passfd stream from host port {0} within {STREAM_TIMEOUT:?}")]
    NoStream(u32),
    #[error("cannot use the passfd stream from host port {0}")]
    Setup(u32, #[source] StdioError),
}

/// The host ports of a process's streams (0: not passed through).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    pub stdin: u32,
    pub stdout: u32,
    pub stderr: u32,
}

impl Ports {
    pub fn any(&self) -> bool {
        self.stdin != 0 || self.stdout != 0 || self.stderr != 0
    }
}

/// The streams a request claimed, to attach once its process exists.
#[derive(Default)]
pub struct Streams {
    stdin: Option<(u32, OwnedFd)>,
    stdout: Option<(u32, OwnedFd)>,
    stderr: Option<(u32, OwnedFd)>,
}

/// Accepted streams by host port.
#[derive(Default)]
struct Pending {
    streams: Mutex<HashMap<u32, OwnedFd>>,
    arrived: Notify,
}

static PENDING: OnceLock<Arc<Pending>> = OnceLock::new();

/// The listener port of a kernel command line, if any.
pub fn port_from_cmdline(cmdline: &str) -> Option<u32> {
    vsock_port_param(cmdline, CMDLINE_PARAM)
}

/// Starts the listener if the kernel command line asks for it (a thread
/// that accepts streams). Returns whether it listens. Blocking (binding
/// is retried while the vsock transport loads).
pub fn start() -> bool {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(port) = port_from_cmdline(&cmdline) else {
        return false;
    };
    let address = Address::Vsock {
        cid: libc::VMADDR_CID_ANY,
        port,
    };
    // Listener mode from now on, even while binding is retried.
    let pending = PENDING.get_or_init(Arc::default).clone();
    let listener = match listen_retrying(&address) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("passfd listener: {}", crate::error::chain(&e));
            return false;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("passfd-listener".into())
        .spawn(move || accept_loop(listener, &pending));
    match spawned {
        Ok(_) => {
            tracing::info!(%address, "passfd listener");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the passfd listener thread");
            false
        }
    }
}

fn accept_loop(listener: OwnedFd, pending: &Pending) {
    loop {
        let Some(conn) = accept_one(&listener, "passfd listener") else {
            continue;
        };
        let port = match getpeername::<VsockAddr>(conn.as_raw_fd()) {
            Ok(peer) => peer.port(),
            Err(e) => {
                tracing::warn!(error = %e, "passfd listener: no peer address, stream closed");
                continue;
            }
        };
        let mut streams = pending
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if streams.len() >= MAX_PENDING {
            tracing::warn!(
                port,
                "passfd listener: {MAX_PENDING} streams unclaimed, stream closed"
            );
            continue;
        }
        tracing::debug!(port, "passfd stream accepted");
        if streams.insert(port, conn).is_some() {
            tracing::warn!(
                port,
                "passfd listener: an unclaimed stream of the same port replaced"
            );
        }
        drop(streams);
        pending.arrived.notify_waiters();
    }
}

/// The stream of host port `port`: accepted by the listener (waiting a
/// while for it), or, without listener, connected to.
async fn take(port: u32) -> Result<OwnedFd, PassfdError> {
    let Some(pending) = PENDING.get() else {
        let connecting = tokio::task::spawn_blocking(move || connect_host(port));
        return match tokio::time::timeout(STREAM_TIMEOUT, connecting).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(PassfdError::NoStream(port)),
        };
    };
    let wait = async {
        loop {
            let arrived = pending.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let taken = pending
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&port);
            if let Some(fd) = taken {
                return fd;
            }
            arrived.await;
        }
    };
    tokio::time::timeout(STREAM_TIMEOUT, wait)
        .await
        .map_err(|_| PassfdError::NoStream(port))
}

/// Connects to the host's vsock port `port`. Blocking.
fn connect_host(port: u32) -> Result<OwnedFd, PassfdError> {
    let err = |e| PassfdError::Connect(port, e);
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    connect(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_HOST, port)).map_err(err)?;
    tracing::debug!(port, "passfd stream connected to the host");
    Ok(fd)
}

/// Claims the streams `ports` names. On error the ones claimed are closed.
pub async fn claim(ports: Ports) -> Result<Streams, PassfdError> {
    let mut streams = Streams::default();
    for (port, slot) in [
        (ports.stdin, &mut streams.stdin),
        (ports.stdout, &mut streams.stdout),
        (ports.stderr, &mut streams.stderr),
    ] {
        if port != 0 {
            *slot = Some((port, take(port).await?));
        }
    }
    Ok(streams)
}

/// Copies between `process`'s stdio and the claimed streams, in tasks that
/// end at end of file. A process with a terminal has no stderr: a stderr
/// stream is closed at once. A stream that cannot be used is closed and
/// logged (the process exists by now: it is not undone for that).
pub fn attach(process: &Arc<Process>, streams: Streams) {
    fn usable<T>(process: &Process, port: u32, r: Result<T, StdioError>) -> Option<T> {
        match r {
            Ok(s) => Some(s),
            Err(e) => {
                let e = PassfdError::Setup(port, e);
                tracing::warn!(exec = %process.exec_id, "{}", crate::error::chain(&e));
                None
            }
        }
    }
    if let Some((port, fd)) = streams.stdout {
        if let Some(sink) = usable(process, port, InputStream::new(fd)) {
            let p = process.clone();
            tokio::spawn(async move {
                forward(port, sink, || async { p.stdio.read_stdout(MAX_READ).await }).await
            });
        }
    }
    if let Some((port, fd)) = streams.stderr {
        if process.stdio.is_terminal() {
            tracing::warn!(port, exec = %process.exec_id, "a terminal has no stderr: passfd stream closed");
        } else if let Some(sink) = usable(process, port, InputStream::new(fd)) {
            let p = process.clone();
            tokio::spawn(async move {
                forward(port, sink, || async { p.stdio.read_stderr(MAX_READ).await }).await
            });
        }
    }
    if let Some((port, fd)) = streams.stdin {
        let Some(source) = usable(process, port, OutputStream::new(fd, false)) else {
            return;
        };
        let p = process.clone();
        tokio::spawn(async move {
            loop {
                match source.read(MAX_READ).await {
                    Ok(data) if !data.is_empty() => {
                        if let Err(e) = p.stdio.write_stdin(&data).await {
                            tracing::debug!(port, error = %e, "passfd stdin: the process's stdin is closed");
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(port, error = %e, "passfd stdin stream failed");
                        break;
                    }
                }
            }
            p.stdio.close_stdin().await;
        });
    }
}

/// Copies what `read` gives to `sink` until end of file (or until the
/// host closes its side); dropping `sink` closes the stream.
async fn forward<F, Fut>(port: u32, sink: InputStream, mut read: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, StdioError>>,
{
    loop {
        match read().await {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                if let Err(e) = sink.write_all(&data).await {
                    tracing::debug!(port, error = %e, "passfd stream closed by the host");
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(port, error = %crate::error::chain(&e), "passfd output ended");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_port_from_the_kernel_command_line() {
        assert_eq!(
            port_from_cmdline("console=ttyS0 agent.passfd_listener_port=1027 quiet"),
            Some(1027)
        );
        assert_eq!(port_from_cmdline("console=ttyS0"), None);
        assert_eq!(port_from_cmdline("agent.passfd_listener_port=0"), None);
        assert_eq!(port_from_cmdline("agent.passfd_listener_port=x"), None);
        assert_eq!(port_from_cmdline("agent.passfd_listener_portx=5"), None);
    }

    #[tokio::test]
    async fn zero_ports_claim_nothing() {
        let none = claim(Ports::default()).await.unwrap();
        assert!(none.stdin.is_none() && none.stdout.is_none() && none.stderr.is_none());
    }
}
