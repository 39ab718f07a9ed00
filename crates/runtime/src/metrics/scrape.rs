//! The monitor's side: which sandboxes run (their state directories),
//! what labels their series get, and one bounded scrape of a pod's socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::text::{self, Family};
use crate::record::{SandboxRecord, SandboxStatus};
use crate::state::StateDir;

/// The file of a CRI pod's identity in its state directory.
pub const CRI_FILE: &str = "cri.json";

/// The CRI pod a sandbox is (its `io.kubernetes.cri.sandbox-*`
/// annotations), for the `cri_uid`, `cri_name`, `cri_namespace` labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
}

impl CriPod {
    /// The pod of a sandbox's annotations, if they name one.
    pub fn from_annotations(a: &HashMap<String, String>) -> Option<Self> {
        let get = |k: &str| a.get(k).cloned().unwrap_or_default();
        let pod = Self {
            uid: get("io.kubernetes.cri.sandbox-uid"),
            name: get("io.kubernetes.cri.sandbox-name"),
            namespace: get("io.kubernetes.cri.sandbox-namespace"),
        };
        (pod != Self::default()).then_some(pod)
    }

    /// Records the pod of `annotations` in the state directory `dir`
    /// (nothing for a sandbox that is no CRI pod). Failures are logged:
    /// the series only lack the CRI labels.
    pub fn record(dir: &Path, annotations: Option<&HashMap<String, String>>) {
        let Some(pod) = annotations.and_then(Self::from_annotations) else {
            return;
        };
        let path = dir.join(CRI_FILE);
        let written = serde_json::to_vec(&pod)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&path, text));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "CRI pod not recorded");
        }
    }

    /// The pod recorded in `dir`, if any.
    pub fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(CRI_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// A running sandbox that serves metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub sandbox_id: String,
    pub socket: PathBuf,
    pub owner_pid: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cri: Option<CriPod>,
}

impl Target {
    /// The labels every series of this sandbox gets.
    pub fn labels(&self) -> Vec<(&'static str, &str)> {
        let mut l = vec![("sandbox_id", self.sandbox_id.as_str())];
        if let Some(cri) = &self.cri {
            l.push(("cri_uid", &cri.uid));
            l.push(("cri_name", &cri.name));
            l.push(("cri_namespace", &cri.namespace));
        }
        l
    }
}

/// The running sandboxes below `roots` (state directories): a record not
/// `stopped`, a live owner, a metrics socket. Sorted by id, each once.
pub fn targets(roots: &[PathBuf]) -> Vec<Target> {
    let mut found: Vec<Target> = Vec::new();
    for root in roots {
        for id in StateDir::list(root) {
            let Ok(Some(dir)) = StateDir::find(root, &id) else {
                continue;
            };
            let Some(owner_pid) = dir.live_owner() else {
                continue;
            };
            let socket = dir.path().join(super::server::SOCKET);
            let running =
                SandboxRecord::load(dir.path()).is_ok_and(|r| r.status != SandboxStatus::Stopped);
            if !running || !socket.exists() || found.iter().any(|t| t.sandbox_id == id) {
                continue;
            }
            found.push(Target {
                cri: CriPod::load(dir.path()),
                sandbox_id: id,
                socket,
                owner_pid,
            });
        }
    }
    found.sort_by(|a, b| a.sandbox_id.cmp(&b.sandbox_id));
    found
}

/// Why a scrape of one pod failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("connect to {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("status {0}")]
    Status(u16),
    #[error(transparent)]
    Text(#[from] text::TextError),
}

/// `GET /metrics` on `socket` within `limit`; the body (at most
/// [`text::MAX_TEXT_BYTES`]) parsed and checked.
pub async fn scrape(socket: &Path, limit: Duration) -> Result<Vec<Family>, ScrapeError> {
    let body = tokio::time::timeout(limit, get(socket))
        .await
        .map_err(|_| ScrapeError::Timeout(limit))??;
    Ok(text::parse(&body)?)
}

async fn get(socket: &Path) -> Result<String, ScrapeError> {
    let http = |e: &dyn std::fmt::Display| ScrapeError::Http(e.to_string());
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| ScrapeError::Connect(socket.into(), e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let res = sender.send_request(req).await.map_err(|e| http(&e));
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            conn.abort();
            return Err(e);
        }
    };
    let status = res.status();
    let body = Limited::new(res.into_body(), text::MAX_TEXT_BYTES)
        .collect()
        .await
        .map_err(|e| http(&*e));
    conn.abort();
    if !status.is_success() {
        return Err(ScrapeError::Status(status.as_u16()));
    }
    let body = body?.to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| http(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_pods_from_annotations() {
        let mut a = HashMap::new();
        assert_eq!(CriPod::from_annotations(&a), None);
        a.insert("io.kubernetes.cri.sandbox-uid".into(), "u1".into());
        a.insert("io.kubernetes.cri.sandbox-name".into(), "web".into());
        a.insert(
            "io.kubernetes.cri.sandbox-namespace".into(),
            "default".into(),
        );
        let dir = tempfile::tempdir().unwrap();
        CriPod::record(dir.path(), Some(&a));
        let pod = CriPod::load(dir.path()).unwrap();
        assert_eq!((pod.uid.as_str(), pod.name.as_str()), ("u1", "web"));
        let t = Target {
            sandbox_id: "sb".into(),
            socket: "/x".into(),
            owner_pid: 1,
            cri: Some(pod),
        };
        assert_eq!(t.labels()[3], ("cri_namespace", "default"));
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        // Bound, never accepted: the connection waits in the backlog.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let limit = Duration::from_millis(200);
        let err = scrape(&path, limit).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout(_)), "{err}");
    }
}
