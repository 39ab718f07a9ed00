//! The benchmark's pods, through CRI: servers to measure against, and pod
//! starts to time.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use capsa_test_infra::containerd::cri_v1::{ContainerState, PodSandboxConfig};
use capsa_test_infra::containerd::Cri;
use capsa_test_infra::net::httpd_script;

use crate::probe::{sink_script, SINK_PORT};

/// CRI runtime handlers: capsa's shim, and the default (runc).
pub const CAPSA: &str = "capsa";
pub const RUNC: &str = "";

/// How long a started container may take to be reported running.
const RUNNING_LIMIT: Duration = Duration::from_secs(120);

/// A pod on the CNI bridge with two containers: busybox `httpd` serving a
/// one-line page (its name) on port 80, and the TCP sink.
pub struct ServerPod {
    pub id: String,
    pub ip: IpAddr,
    /// What `GET /` returns.
    pub body: String,
}

impl ServerPod {
    pub fn start(cri: &Cri, image: &str, name: &str, handler: &str) -> Self {
        let config = cri.pod_config_with_network(name, None, vec![]);
        let id = cri.run_pod_with(config.clone(), handler);
        for (container, script) in [("web", httpd_script(name)), ("sink", sink_script())] {
            let c = cri.create_container(&id, &config, container, image, &["sh", "-c", &script]);
            cri.start(&c);
        }
        let ip = cri.pod_ip(&id);
        let ip = ip
            .parse()
            .unwrap_or_else(|e| panic!("pod {name}'s IP {ip:?}: {e}"));
        Self {
            id,
            ip,
            body: format!("{name}\n"),
        }
    }

    pub fn web(&self) -> SocketAddr {
        (self.ip, 80).into()
    }

    pub fn sink(&self) -> SocketAddr {
        (self.ip, SINK_PORT).into()
    }
}

/// Stops and removes pod `id` (CNI releases its network).
pub fn remove(cri: &Cri, id: &str) {
    cri.stop_pod(id);
    cri.remove_pod(id);
}

/// RunPodSandbox, CreateContainer and StartContainer of a `sleep` until
/// CRI reports the container running, in ms; the pod is then stopped and
/// removed (not timed).
pub fn start_latency(cri: &Cri, image: &str, config: PodSandboxConfig, handler: &str) -> f64 {
    let start = Instant::now();
    let pod = cri.run_pod_with(config.clone(), handler);
    let c = cri.create_container(&pod, &config, "sleep", image, &["sleep", "100000"]);
    cri.start(&c);
    let deadline = start + RUNNING_LIMIT;
    loop {
        let status = cri.container_status(&c);
        if status.state == ContainerState::ContainerRunning as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "container {c} not running after {RUNNING_LIMIT:?}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    remove(cri, &pod);
    ms
}
