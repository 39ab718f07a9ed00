//! The per-pod metrics socket: `<state dir>/metrics.sock` (mode 0600 in a
//! 0700 directory: root only), answering `GET /metrics` over HTTP/1.1 with
//! the pod's families in the text format 0.0.4, as Kata's shim serves
//! `/metrics` on its socket.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capsa_agent_client::AgentClient;
use capsa_protocols::agent;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

use super::host::{self, ProcessCollector};
use super::text::{self, Family};

/// The socket's name in the state directory.
pub const SOCKET: &str = "metrics.sock";
/// How long the guest gets to answer GetMetrics: a hung guest leaves its
/// families out; the host's are served all the same.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Prefixes the guest may use: anything else from it is dropped.
const GUEST_PREFIXES: [&str; 2] = ["capsa_guest_", "capsa_agent_"];

/// The served socket; dropping it stops serving and removes the socket.
pub struct PodServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a scrape reads, shared by the connections.
struct Pod {
    dir: PathBuf,
    agent: AgentClient,
    /// The previous scrape's CPU ticks (host, guest) and when: the CPU
    /// overhead is a rate between two scrapes.
    last_cpu: Mutex<Option<(Instant, u64, f64)>>,
}

impl PodServer {
    /// Serves the pod of state directory `dir`, whose agent is `agent`.
    /// A socket that cannot be made is logged: the pod runs without it.
    pub fn start(dir: &Path, agent: AgentClient) -> Option<Self> {
        let path = dir.join(SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "no metrics socket");
                return None;
            }
        };
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(socket = %path.display(), error = %e, "metrics socket not made private");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let pod = Arc::new(Pod {
            dir: dir.to_path_buf(),
            agent,
            last_cpu: Mutex::new(None),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let pod = pod.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let pod = pod.clone();
                        async move { Ok::<_, Infallible>(answer(&pod, req).await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "metrics connection");
                    }
                });
            }
        });
        Some(Self { path, task })
    }
}

async fn answer(pod: &Pod, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n".into());
    }
    plain(StatusCode::OK, scrape(pod).await)
}

/// A `text/plain` response (the exposition format's content type).
pub fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// The pod's families: the owner's, its VMM's and virtiofsd's, the
/// guest's and the agent's (checked), and the pod's overhead.
async fn scrape(pod: &Pod) -> String {
    let owner = std::process::id();
    let record = crate::record::SandboxRecord::load(&pod.dir).ok();
    // The VMM's pid from the record (`hypervisor_pid`); virtiofsd's are
    // the owner's children of that name (the record has none).
    let vmm: Vec<i32> = record
        .and_then(|r| r.hypervisor_pid)
        .map(|p| p as i32)
        .into_iter()
        .collect();
    let virtiofsd = host::children_named(owner, "virtiofsd");
    let mut registry = Registry::with_prefix("capsa");
    for (prefix, pids, netdev) in [
        ("shim", vec![owner as i32], true),
        ("hypervisor", vmm.clone(), true),
        ("virtiofsd", virtiofsd.clone(), false),
    ] {
        registry.register_collector(Box::new(ProcessCollector {
            prefix,
            pids,
            netdev,
        }));
    }
    let mut encoded = String::new();
    let _ = prometheus_client::encoding::text::encode_registry(&mut encoded, &registry);
    super::owner::encode(&mut encoded);
    let mut families = match text::parse(&encoded) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "the owner's metrics do not encode");
            Vec::new()
        }
    };
    super::owner::count_scrape();
    let guest = guest_families(&pod.agent).await;
    let mut host_pids = vec![owner as i32];
    host_pids.extend(&vmm);
    host_pids.extend(&virtiofsd);
    families.extend(overhead(pod, &host_pids, &guest));
    families.extend(guest);
    text::render(&families)
}

/// GetMetrics, within [`AGENT_TIMEOUT`], parsed and checked; only the
/// guest's and agent's prefixes are kept.
async fn guest_families(agent: &AgentClient) -> Vec<Family> {
    let req = agent::GetMetricsRequest::new();
    let call = agent
        .raw()
        .get_metrics(capsa_agent_client::until(AGENT_TIMEOUT), &req);
    let reply = match tokio::time::timeout(AGENT_TIMEOUT, call).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "GetMetrics failed");
            super::owner::count_guest_failure();
            return Vec::new();
        }
        Err(_) => {
            tracing::debug!("GetMetrics timed out");
            super::owner::count_guest_failure();
            return Vec::new();
        }
    };
    match text::parse_guest(&reply.metrics) {
        Ok(families) => families
            .into_iter()
            .filter(|f| GUEST_PREFIXES.iter().any(|p| f.name.starts_with(p)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "the guest's metrics were refused");
            super::owner::count_guest_failure();
            Vec::new()
        }
    }
}

/// A sample of `family` with label `item="<item>"`.
fn item(families: &[Family], family: &str, item: &str) -> Option<f64> {
    families
        .iter()
        .find(|f| f.name == family)?
        .samples
        .iter()
        .find(|s| s.labels.iter().any(|(k, v)| k == "item" && v == item))
        .map(|s| s.value)
}

/// Kata's pod overhead: what the host spends beyond what the guest uses.
/// Memory: resident memory of the owner, VMM and virtiofsd less the
/// guest's used memory (MemTotal − MemFree). CPU: the host processes' CPU
/// time less the guest's busy time (both in clock ticks, USER_HZ), since
/// the previous scrape, in percent of one CPU.
fn overhead(pod: &Pod, host_pids: &[i32], guest: &[Family]) -> Vec<Family> {
    let (rss, host_ticks) = host::cost(host_pids);
    let mut out = Vec::new();
    let gauge = |name: &str, help: &str, value: f64| Family {
        name: name.into(),
        help: help.into(),
        kind: text::Kind::Gauge,
        samples: vec![text::Sample {
            name: name.into(),
            labels: Vec::new(),
            value,
        }],
    };
    let total = item(guest, "capsa_guest_meminfo", "mem_total");
    let free = item(guest, "capsa_guest_meminfo", "mem_free");
    if let (Some(total), Some(free)) = (total, free) {
        out.push(gauge(
            "capsa_shim_pod_overhead_memory_in_bytes",
            "Host memory of the pod's processes beyond the guest's used memory.",
            (rss as f64 - (total - free)).max(0.0),
        ));
    }
    let guest_busy: Option<f64> =
        guest
            .iter()
            .find(|f| f.name == "capsa_guest_cpu_time")
            .map(|f| {
                f.samples
                    .iter()
                    .filter(|s| {
                        s.labels.iter().any(|(k, v)| k == "cpu" && v == "total")
                            && s.labels.iter().any(|(k, v)| {
                                k == "item" && !matches!(v.as_str(), "idle" | "iowait")
                            })
                    })
                    .map(|s| s.value)
                    .sum()
            });
    if let Some(guest_busy) = guest_busy {
        let ticks = clock_ticks();
        let now = Instant::now();
        let mut last = pod.last_cpu.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, host0, guest0)) = *last {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let host = host_ticks.saturating_sub(host0) as f64 / ticks;
                let guest_secs = (guest_busy - guest0).max(0.0) / ticks;
                out.push(gauge(
                    "capsa_shim_pod_overhead_cpu",
                    "Host CPU of the pod's processes beyond the guest's busy CPU since the previous scrape, in percent of one CPU.",
                    ((host - guest_secs) / secs * 100.0).max(0.0),
                ));
            }
        }
        *last = Some((now, host_ticks, guest_busy));
    }
    out
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}
