//! The control socket of a `capsa run` sandbox's owner
//! (`<state>/<id>/control.sock`, mode 0600): the process that holds the
//! VM's driver session is the only one that may hot-plug into it, so
//! `capsa update` asks it there. One JSON request per connection, one
//! JSON reply. A sandbox of containerd's shim has no such socket: its
//! containers are updated through containerd (`ctr task update`, CRI's
//! `UpdateContainerResources`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_hypervisor::VmResources;
use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResources};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::resource::cpu_mem::DEFAULT_CFS_PERIOD;
use crate::{Error, Sandbox};

/// The socket's name in the sandbox's state directory.
pub const SOCKET: &str = "control.sock";
/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client gets to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `capsa update` waits for the owner (a resize hot-plugs
/// devices and waits for the guest, each bounded by the hot-plug timeout).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// What the owner is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// New limits for container `container` (unset: unchanged); the VM
    /// is resized with it.
    Update {
        container: String,
        #[serde(default)]
        cpus: Option<u32>,
        #[serde(default)]
        memory_mib: Option<u32>,
    },
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Done; the VM's size now.
    Done { resources: Option<VmResources> },
    /// Failed, the whole error chain.
    Failed { error: String },
}

/// Decodes a request line (untrusted: any local root process may write
/// to the socket, and a fuzz target feeds it garbage).
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad control request: {e}"))
}

/// Decodes the owner's reply.
pub fn decode_reply(line: &[u8]) -> Result<Reply, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad control reply: {e}"))
}

impl Request {
    /// The OCI resources an update sets: `cpus` as a CFS quota over the
    /// default period, `memory_mib` as the memory limit.
    pub fn resources(cpus: Option<u32>, memory_mib: Option<u32>) -> LinuxResources {
        let mut r = LinuxResources::default();
        if let Some(n) = cpus {
            let quota = i64::from(n) * DEFAULT_CFS_PERIOD as i64;
            r.set_cpu(Some(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(DEFAULT_CFS_PERIOD)
                    .build()
                    .expect("all fields optional"),
            ));
        }
        if let Some(mib) = memory_mib {
            r.set_memory(Some(
                LinuxMemoryBuilder::default()
                    .limit(i64::from(mib) << 20)
                    .build()
                    .expect("all fields optional"),
            ));
        }
        r
    }
}

/// The owner's end: listens until dropped, then removes the socket.
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

impl Control {
    /// Listens on `dir`/[`SOCKET`] (replacing a stale socket).
    pub fn bind(dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| Error::Listen {
            path: path.clone(),
            source,
        })?;
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { listener, path })
    }

    /// The next connection.
    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    /// Reads one request from `stream`, carries it out on `sandbox` and
    /// answers. Errors of the connection itself are only logged.
    pub async fn serve(stream: UnixStream, sandbox: &mut Sandbox) {
        let (read, mut write) = stream.into_split();
        let mut line = Vec::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST));
        let got = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
        let reply = match got {
            Ok(Ok(_)) => match decode_request(&line) {
                Ok(req) => handle(req, sandbox).await,
                Err(error) => Reply::Failed { error },
            },
            Ok(Err(e)) => Reply::Failed {
                error: format!("read the request: {e}"),
            },
            Err(_) => Reply::Failed {
                error: format!("no request within {} s", READ_TIMEOUT.as_secs()),
            },
        };
        let mut out = serde_json::to_vec(&reply).expect("replies encode");
        out.push(b'\n');
        if let Err(e) = write.write_all(&out).await {
            tracing::debug!(error = %e, "control reply not delivered");
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(req: Request, sandbox: &mut Sandbox) -> Reply {
    match req {
        Request::Update {
            container,
            cpus,
            memory_mib,
        } => {
            tracing::info!(sandbox = %sandbox.id(), container, ?cpus, ?memory_mib, "update requested");
            let resources = Request::resources(cpus, memory_mib);
            match sandbox.update_container(&container, &resources).await {
                Ok(()) => Reply::Done {
                    resources: sandbox.record().resources,
                },
                Err(e) => Reply::Failed {
                    error: crate::error_chain(&e),
                },
            }
        }
    }
}

/// Asks the owner of the sandbox in `dir` (whose id is `id`).
pub async fn request(dir: &Path, id: &str, req: &Request) -> Result<Reply, Error> {
    let failed = |reason: String| Error::Control {
        id: id.to_string(),
        reason,
    };
    let path = dir.join(SOCKET);
    let mut stream = UnixStream::connect(&path).await.map_err(|e| {
        failed(format!(
            "{} ({e}): only a running `capsa run` sandbox has one; containers of containerd's pods are updated through containerd",
            path.display()
        ))
    })?;
    let mut line = serde_json::to_vec(req).expect("requests encode");
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| failed(format!("send: {e}")))?;
    let mut reply = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST));
    match tokio::time::timeout(REPLY_TIMEOUT, reader.read_until(b'\n', &mut reply)).await {
        Ok(Ok(n)) if n > 0 => decode_reply(&reply).map_err(failed),
        Ok(Ok(_)) => Err(failed("it closed the connection without a reply".into())),
        Ok(Err(e)) => Err(failed(format!("read the reply: {e}"))),
        Err(_) => Err(failed(format!(
            "no reply within {} s",
            REPLY_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_garbage() {
        let req = Request::Update {
            container: "c1".into(),
            cpus: Some(2),
            memory_mib: None,
        };
        let line = serde_json::to_vec(&req).unwrap();
        assert_eq!(decode_request(&line).unwrap(), req);
        assert_eq!(
            decode_request(br#"{"op":"update","container":"x"}"#).unwrap(),
            Request::Update {
                container: "x".into(),
                cpus: None,
                memory_mib: None
            }
        );
        for bad in [
            &b""[..],
            b"{}",
            br#"{"op":"reboot"}"#,
            br#"{"op":"update","container":"x","extra":1}"#,
            br#"{"op":"update","container":"x","cpus":-1}"#,
        ] {
            assert!(
                decode_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cpus_and_memory_become_oci_limits() {
        let r = Request::resources(Some(2), Some(768));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(200_000), Some(100_000)));
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(768 << 20));
        let none = Request::resources(None, None);
        assert!(none.cpu().is_none() && none.memory().is_none());
    }
}
