//! Connecting to the agent: kernel vsock, or hybrid vsock through a Unix
//! socket (`CONNECT <port>\n` → `OK <n>\n`), the protocol shared by
//! vhost-device-vsock, Firecracker and Cloud Hypervisor.

use std::path::Path;
use std::time::Duration;

use crate::AgentEndpoint;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout, Instant};
use ttrpc::asynchronous::transport::Socket;

use crate::Error;

/// Pause between two connection attempts while the guest boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for the `OK` line of one attempt. A CONNECT sent before the
/// guest's vsock driver has queued receive buffers can stay unanswered; a
/// fresh attempt after a short wait goes through.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects to `endpoint`, retrying until `deadline`.
pub async fn dial(endpoint: &AgentEndpoint, deadline: Instant) -> Result<Socket, Error> {
    let mut last;
    loop {
        match try_once(endpoint).await {
            Ok(socket) => return Ok(socket),
            Err(e) => last = e,
        }
        if Instant::now() + RETRY_INTERVAL >= deadline {
            return Err(Error::Dial {
                endpoint: describe(endpoint),
                last,
            });
        }
        sleep(RETRY_INTERVAL).await;
    }
}

/// A human-readable form of the endpoint, for errors and `capsa inspect`.
pub fn describe(endpoint: &AgentEndpoint) -> String {
    match endpoint {
        AgentEndpoint::Vsock { cid, port } => format!("vsock://{cid}:{port}"),
        AgentEndpoint::HybridVsock { path, port } => {
            format!("hvsock://{}:{port}", path.display())
        }
    }
}

async fn try_once(endpoint: &AgentEndpoint) -> Result<Socket, String> {
    match endpoint {
        AgentEndpoint::Vsock { cid, port } => Socket::connect(format!("vsock://{cid}:{port}"))
            .await
            .map_err(|e| e.to_string()),
        AgentEndpoint::HybridVsock { path, port } => hybrid(path, *port).await,
    }
}

async fn hybrid(path: &Path, port: u32) -> Result<Socket, String> {
    Ok(Socket::from(hybrid_stream(path, port).await?))
}

/// A raw byte stream to `port` of the guest through the hybrid vsock
/// socket at `path` (for services that are not ttRPC, like the debug
/// console), retrying until `deadline`.
pub async fn dial_hybrid_stream(
    path: &Path,
    port: u32,
    deadline: Instant,
) -> Result<UnixStream, Error> {
    loop {
        match hybrid_stream(path, port).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Dial {
                    endpoint: format!("hvsock://{}:{port}", path.display()),
                    last: e,
                })
            }
            Err(_) => sleep(RETRY_INTERVAL).await,
        }
    }
}

async fn hybrid_stream(path: &Path, port: u32) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect {}: {e}", path.display()))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    // Read the reply byte by byte: anything after the newline belongs to the
    // ttRPC stream and must stay in the socket.
    let mut reader = BufReader::with_capacity(1, &mut stream);
    let mut line = String::new();
    let n = timeout(HANDSHAKE_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| "no reply to CONNECT".to_string())?
        .map_err(|e| format!("read CONNECT reply: {e}"))?;
    if n == 0 {
        return Err(format!("port {port} refused (connection closed)"));
    }
    check_connect_reply(&line)?;
    Ok(stream)
}

/// Checks the backend's reply line to `CONNECT <port>` (`OK <n>\n`, where
/// `n` is the host-side port the backend chose, which capsa does not use).
pub fn check_connect_reply(line: &str) -> Result<(), String> {
    if !line.starts_with("OK ") {
        return Err(format!(
            "unexpected reply to CONNECT: {:?}",
            line.trim_end()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake hybrid-vsock backend: refuses the first `refusals` connections,
    /// then checks the CONNECT line and answers OK.
    async fn backend(listener: UnixListener, refusals: usize) {
        for _ in 0..refusals {
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        }
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"CONNECT 1024\n");
        s.write_all(b"OK 1073741824\n").await.unwrap();
    }

    #[tokio::test]
    async fn hybrid_handshake_retries_until_ok() {
        let dir = tempfile_dir();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(backend(listener, 2));
        let ep = AgentEndpoint::HybridVsock {
            path: path.clone(),
            port: 1024,
        };
        let socket = dial(&ep, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        drop(socket);
        server.await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn dial_gives_up_at_deadline_naming_endpoint() {
        let ep = AgentEndpoint::HybridVsock {
            path: "/nonexistent/capsa.sock".into(),
            port: 1024,
        };
        let Err(err) = dial(&ep, Instant::now() + Duration::from_millis(300)).await else {
            panic!("dial must fail");
        };
        let err = err.to_string();
        assert!(err.contains("/nonexistent/capsa.sock"), "{err}");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("capsa-dial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
