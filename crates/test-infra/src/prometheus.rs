//! A real Prometheus server (Debian's `prometheus`) scraping `capsa
//! monitor`, and what the tests check in the text and the query API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The families of each pod, by prefix (docs/metrics.md).
pub const POD_PREFIXES: [&str; 5] = [
    "capsa_shim_",
    "capsa_hypervisor_",
    "capsa_virtiofsd_",
    "capsa_agent_",
    "capsa_guest_",
];

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET path` on `addr` (HTTP/1.0, read to the end) within `limit`: the
/// status line and the body.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// A child process of the test, killed (by its pid) and reaped at drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The distinct metric names in exposition `text` of the series whose
/// labels hold `label` (`name="value"`).
pub fn names_with(text: &str, label: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(label))
        .filter_map(|l| l.split(['{', ' ']).next().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `text` has series of every pod prefix, and the main families, for
/// sandbox `id`.
pub fn assert_pod_families(text: &str, id: &str) {
    let names = names_with(text, &format!("sandbox_id=\"{id}\""));
    for prefix in POD_PREFIXES {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "no {prefix}* series of {id}: {names:?}"
        );
    }
    for family in [
        "capsa_guest_meminfo",
        "capsa_guest_cpu_time",
        "capsa_hypervisor_proc_status",
        "capsa_virtiofsd_fds",
        "capsa_agent_proc_status",
        "capsa_shim_agent_rpc_durations_histogram_milliseconds_bucket",
        "capsa_shim_step_duration_seconds_bucket",
    ] {
        assert!(
            names.iter().any(|n| n == family),
            "{family} of {id} missing: {names:?}"
        );
    }
}

/// A Prometheus server scraping one target every second, on a free
/// loopback port, its data in a directory of the test's.
pub struct Prometheus {
    _daemon: Daemon,
    pub addr: SocketAddr,
}

impl Prometheus {
    pub fn start(dir: &Path, target: SocketAddr) -> Self {
        let bin = Path::new("/usr/bin/prometheus");
        assert!(
            bin.exists(),
            "{} is missing: `make deps` installs Debian's prometheus",
            bin.display()
        );
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: capsa\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Self {
            _daemon: Daemon(child),
            addr,
        }
    }

    /// The instant query `q`: each result series' labels (none while the
    /// server is not up).
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let Ok((status, body)) = http_get(self.addr, &path, Duration::from_secs(5)) else {
            return Vec::new();
        };
        if !status.contains("200") {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|r| r.iter().map(|s| s["metric"].clone()).collect())
            .unwrap_or_default()
    }

    /// Waits (bounded) until the query API has series of every pod prefix
    /// with the labels `selector` (`name="value",...`).
    pub fn assert_pod_families(&self, selector: &str) {
        let q = format!("group by (__name__) ({{{selector}}})");
        let mut names: Vec<String> = Vec::new();
        let seen = crate::wait_until(Duration::from_secs(60), || {
            names = self
                .query(&q)
                .iter()
                .filter_map(|m| m["__name__"].as_str().map(String::from))
                .collect();
            POD_PREFIXES
                .iter()
                .all(|p| names.iter().any(|n| n.starts_with(p)))
        });
        assert!(
            seen,
            "Prometheus lacks families of {{{selector}}}: {names:?}"
        );
    }
}
