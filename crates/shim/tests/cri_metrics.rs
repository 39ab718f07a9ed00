//! A CRI pod's metrics through `capsa monitor`, labelled with the pod's
//! CRI identity, as a real Prometheus server sees them; and its
//! container's stats as the kubelet reads them (CRI ContainerStats).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use capsa_test_infra::prometheus::{
    assert_pod_families, free_port, http_get, names_with, Daemon, Prometheus,
};
use capsa_test_infra::wait_until;
use common::Setup;

#[test]
fn a_cri_pods_series_carry_its_cri_labels() {
    let s = Setup::new();
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let config = cri.pod_config("mpod");
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let one = cri.create_container(&pod, &config, "one", &s.image, &["sleep", "1000"]);
    cri.start(&one);

    let capsa =
        PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-capsa-v2")).with_file_name("capsa");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _monitor = Daemon(
        Command::new(&capsa)
            .arg("--config")
            .arg(&s.env.config)
            .args(["monitor", "--listen-address", &addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("capsa monitor starts"),
    );
    let mut text = String::new();
    let labelled = wait_until(Duration::from_secs(30), || {
        text = http_get(addr, "/metrics", Duration::from_secs(10))
            .map(|(_, body)| body)
            .unwrap_or_default();
        text.contains("cri_name=\"mpod\"")
    });
    assert!(labelled, "no series of the CRI pod: {text}");
    let with = |l: &str| names_with(&text, l);
    assert_eq!(with("cri_uid=\"mpod-uid\""), with("cri_name=\"mpod\""));
    assert_eq!(
        with("cri_namespace=\"capsa-test\""),
        with("cri_name=\"mpod\"")
    );
    assert_pod_families(&text, &pod);

    // The kubelet's stats (CRI ContainerStats, from the shim's Stats): the
    // container's CPU time and memory in the guest.
    let mut stats = None;
    let counted = wait_until(Duration::from_secs(30), || {
        let st = cri.container_stats(&one);
        let cpu = st
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref());
        let ok = cpu.is_some_and(|v| v.value > 0)
            && st
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .is_some_and(|v| v.value > 0);
        stats = Some(st);
        ok
    });
    assert!(counted, "no CPU or memory in {stats:#?}");
    let memory = stats.unwrap().memory.unwrap();
    let (working_set, usage) = (
        memory.working_set_bytes.unwrap().value,
        memory.usage_bytes.unwrap().value,
    );
    // The working set leaves out the inactive file cache.
    assert!(working_set <= usage, "{working_set} > {usage}");

    let data = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(data.path(), addr);
    prom.assert_pod_families(&format!(
        "cri_uid=\"mpod-uid\",cri_name=\"mpod\",cri_namespace=\"capsa-test\",sandbox_id=\"{pod}\""
    ));

    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    let (_, text) = http_get(addr, "/metrics", Duration::from_secs(10)).unwrap();
    assert!(names_with(&text, "cri_name=\"mpod\"").is_empty(), "{text}");
    s.assert_all_gone();
}
