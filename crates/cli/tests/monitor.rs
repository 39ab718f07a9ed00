//! `capsa monitor` and the pods' metrics sockets, against real VMs and a
//! real Prometheus server (Debian's `prometheus`, `make deps`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capsa_test_infra::cli::capsa;
use capsa_test_infra::prometheus::{
    assert_pod_families, free_port, http_get, names_with, Daemon, Prometheus,
};
use capsa_test_infra::{run_bounded, wait_until, TestEnv};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The monitor's bound on one pod's scrape in these tests.
const SCRAPE_TIMEOUT_MS: u64 = 2000;

/// `capsa monitor` on a free loopback port, once it answers.
fn monitor(env: &TestEnv) -> (Daemon, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_capsa"))
        .arg("--config")
        .arg(&env.config)
        .args(["monitor", "--listen-address", &addr.to_string()])
        .args(["--scrape-timeout-ms", &SCRAPE_TIMEOUT_MS.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("capsa monitor starts");
    let daemon = Daemon(child);
    let up = wait_until(Duration::from_secs(30), || {
        http_get(addr, "/sandboxes", Duration::from_secs(5)).is_ok()
    });
    assert!(up, "capsa monitor never answered on {addr}");
    (daemon, addr)
}

/// A detached sandbox, removed when the test ends, even if it fails.
struct Detached<'a> {
    env: &'a TestEnv,
    id: String,
}

impl<'a> Detached<'a> {
    fn start(env: &'a TestEnv, id: &str) -> Self {
        let rootfs = env.rootfs.to_string_lossy().into_owned();
        let out = capsa(
            env,
            &[
                "run", "-d", "--name", id, "--rootfs", &rootfs, "--", "sleep", "1000",
            ],
        );
        assert!(out.status.success(), "run -d failed: {out:?}");
        Self {
            env,
            id: id.to_string(),
        }
    }

    fn record(&self) -> serde_json::Value {
        let text = std::fs::read(self.env.state_dir.join(&self.id).join("state.json")).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.env.state_dir.join(&self.id).join("metrics.sock")
    }
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let dir = self.env.state_dir.join(&self.id);
        if !dir.exists() {
            return;
        }
        if let Ok(record) = std::fs::read(dir.join("state.json")) {
            let record: serde_json::Value = serde_json::from_slice(&record).unwrap_or_default();
            // A test that stopped them and failed: let them go on first.
            for key in ["hypervisor_pid", "owner_pid"] {
                if let Some(pid) = record[key].as_i64() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                }
            }
        }
        let _ = capsa(self.env, &["rm", "--force", &self.id]);
    }
}

#[test]
fn prometheus_scrapes_every_pod_through_the_monitor() {
    let env = TestEnv::new();
    let a = Detached::start(&env, "mon-a");
    let b = Detached::start(&env, "mon-b");
    let (_monitor, addr) = monitor(&env);

    // The monitor's answer: both pods' families, labelled.
    let (status, text) = http_get(addr, "/metrics", Duration::from_secs(10)).unwrap();
    assert!(status.contains("200"), "{status}");
    assert_pod_families(&text, "mon-a");
    assert_pod_families(&text, "mon-b");
    assert!(
        text.contains("capsa_monitor_running_shim_count 2"),
        "{text}"
    );
    let (_, sandboxes) = http_get(addr, "/sandboxes", Duration::from_secs(5)).unwrap();
    assert!(
        sandboxes.contains("\"mon-a\"") && sandboxes.contains("\"mon-b\""),
        "{sandboxes}"
    );

    // A real Prometheus scrapes it: its query API has each pod's families.
    let data = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(data.path(), addr);
    for id in ["mon-a", "mon-b"] {
        prom.assert_pod_families(&format!("sandbox_id=\"{id}\""));
    }

    // A hung pod (its VMM and its owner stopped): the monitor still
    // answers within its bound, with the other pod's series, and counts
    // the failure.
    let record = b.record();
    let vmm = record["hypervisor_pid"].as_i64().expect("VMM pid") as i32;
    let owner = record["owner_pid"].as_i64().expect("owner pid") as i32;
    kill(Pid::from_raw(vmm), Signal::SIGSTOP).unwrap();
    kill(Pid::from_raw(owner), Signal::SIGSTOP).unwrap();
    let start = Instant::now();
    let answer = http_get(addr, "/metrics", Duration::from_secs(10));
    let took = start.elapsed();
    kill(Pid::from_raw(vmm), Signal::SIGCONT).unwrap();
    kill(Pid::from_raw(owner), Signal::SIGCONT).unwrap();
    let (status, text) = answer.expect("the monitor answers with a hung pod");
    assert!(status.contains("200"), "{status}");
    assert!(
        took < Duration::from_millis(SCRAPE_TIMEOUT_MS + 3000),
        "the answer took {took:?}"
    );
    assert_pod_families(&text, "mon-a");
    assert!(
        names_with(&text, "sandbox_id=\"mon-b\"").is_empty(),
        "the hung pod's series are left out"
    );
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("capsa_monitor_scrape_failed_count_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(failed.is_some_and(|f| f >= 1.0), "{text}");

    // A removed pod's series are gone at the next scrape, and from
    // Prometheus's instant queries.
    let out = capsa(&env, &["rm", "--force", "mon-b"]);
    assert!(out.status.success(), "{out:?}");
    let (_, text) = http_get(addr, "/metrics", Duration::from_secs(10)).unwrap();
    assert!(
        names_with(&text, "sandbox_id=\"mon-b\"").is_empty(),
        "{text}"
    );
    assert_pod_families(&text, "mon-a");
    let dropped = wait_until(Duration::from_secs(30), || {
        prom.query("{sandbox_id=\"mon-b\"}").is_empty()
            && !prom.query("{sandbox_id=\"mon-a\"}").is_empty()
    });
    assert!(dropped, "Prometheus still has the removed pod's series");
    drop(a);
}

#[test]
fn a_pods_socket_is_root_only() {
    let env = TestEnv::new();
    let a = Detached::start(&env, "mon-private");
    let socket = a.socket();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", socket.display());

    let curl = |as_nobody: bool| {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]);
            c
        } else {
            Command::new("curl")
        };
        cmd.args(["-sS", "--max-time", "10", "--unix-socket"])
            .arg(&socket)
            .arg("http://localhost/metrics");
        run_bounded(cmd, None, Duration::from_secs(30))
    };
    let root = curl(false);
    assert!(root.status.success(), "{root:?}");
    assert!(
        String::from_utf8_lossy(&root.stdout).contains("capsa_guest_meminfo{"),
        "{root:?}"
    );
    let nobody = curl(true);
    assert!(
        !nobody.status.success(),
        "nobody read the pod's metrics: {nobody:?}"
    );
    assert!(nobody.stdout.is_empty(), "{nobody:?}");
}
