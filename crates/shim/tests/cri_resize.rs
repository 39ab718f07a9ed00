//! Elastic pods through containerd's CRI plugin: the VM boots at the
//! default size and grows with its containers' limits (vCPUs and memory
//! hot-plugged, onlined by the agent), `UpdateContainerResources` resizes
//! a running container and its VM, a request beyond the maxima is capped
//! and logged, and with virtio-mem a removed container's memory goes back
//! to the host.

mod common;

use std::time::Duration;

use capsa_test_infra::containerd::cri_v1::{ContainerConfig, LinuxContainerResources};
use capsa_test_infra::containerd::Cri;
use common::Setup;

const EXEC_LIMIT: Duration = Duration::from_secs(120);
const SIZES: &str =
    "default_vcpus = 1\ndefault_maxvcpus = 2\ndefault_memory = 512\ndefault_maxmemory = 2048";

fn exec_ok(s: &Setup, id: &str, script: &str) -> String {
    let (out, err, code) = s
        .ctrd
        .cri()
        .exec_sync(id, &["sh", "-c", script], EXEC_LIMIT);
    assert_eq!(code, 0, "{script}: {out}{err}\n{}", s.ctrd.log_tail());
    out
}

fn mem_total_mib(s: &Setup, id: &str) -> u64 {
    let out = exec_ok(s, id, "grep MemTotal /proc/meminfo");
    let kib: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out:?}"));
    kib / 1024
}

fn limited(name: &str, image: &str, cpus_quota: i64, memory_mib: i64) -> ContainerConfig {
    let mut c = Cri::container_config(name, image, &["sleep", "1000"]);
    c.linux.get_or_insert_with(Default::default).resources =
        Some(resources(cpus_quota, memory_mib));
    c
}

fn resources(cpu_quota: i64, memory_mib: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota,
        memory_limit_in_bytes: memory_mib << 20,
        ..Default::default()
    }
}

/// The pod VM's QEMU, from the pod's record.
fn qemu_pid(s: &Setup, pod: &str) -> u32 {
    let record = std::fs::read(s.env.state_dir.join(pod).join("state.json")).expect("pod record");
    let v: serde_json::Value = serde_json::from_slice(&record).unwrap();
    v["hypervisor_pid"].as_u64().expect("hypervisor pid") as u32
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("QEMU alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

/// Allocates and touches `mib` MiB in container `id` (dd's buffer is one
/// block of that size, filled from /dev/zero); true if that succeeded.
fn allocate(s: &Setup, id: &str, mib: u64) -> bool {
    let script = format!("dd if=/dev/zero of=/dev/null bs={mib}M count=1 2>&1");
    let (out, err, code) = s
        .ctrd
        .cri()
        .exec_sync(id, &["sh", "-c", &script], EXEC_LIMIT);
    let ok = code == 0 && out.contains("1+0 records in");
    if !ok {
        eprintln!("allocating {mib} MiB: exit {code}: {out}{err}");
    }
    ok
}

/// The container's cgroup limits: `cpu.max` and `memory.max` of the
/// cgroup `/proc/self/cgroup` names (`/` with a cgroup namespace).
const LIMITS: &str = "p=$(sed -n 's/^0:://p' /proc/self/cgroup); \
    cat /sys/fs/cgroup$p/cpu.max /sys/fs/cgroup$p/memory.max";

#[test]
fn a_pods_vm_grows_with_its_containers_limits_and_updates() {
    let s = Setup::with_qemu_extra(SIZES);
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let config = cri.pod_config("elastic");
    let pod = cri.run_pod_with(config.clone(), "capsa");

    // A container without limits: the VM keeps its boot size.
    let small = cri.create_container_with(
        &pod,
        &config,
        Cri::container_config("small", &s.image, &["sleep", "1000"]),
    );
    cri.start(&small);
    assert_eq!(exec_ok(&s, &small, "nproc").trim(), "1");
    let booted = mem_total_mib(&s, &small);

    // 2 CPUs and 768 MiB: 1 + 2 vCPUs capped at the maximum of 2, and
    // 512 + 768 MiB.
    let big = cri.create_container_with(&pod, &config, limited("big", &s.image, 200_000, 768));
    cri.start(&big);
    let cpus = exec_ok(&s, &big, "nproc; cat /sys/devices/system/cpu/online");
    assert_eq!(cpus, "2\n0-1\n", "online CPUs in the container");
    let grown = mem_total_mib(&s, &big);
    assert!(
        grown >= booted + 768,
        "MemTotal {booted} MiB -> {grown} MiB, expected +768 MiB"
    );
    let limits = exec_ok(&s, &big, LIMITS);
    assert_eq!(limits, format!("200000 100000\n{}\n", 768u64 << 20));
    assert!(allocate(&s, &big, 600), "600 MiB in a 768 MiB container");
    assert!(
        s.ctrd.log().contains("default_maxvcpus = 2"),
        "the cap is logged:\n{}",
        s.ctrd.log_tail()
    );

    // In-place resize: 1 GiB now; the VM grows first, then the cgroup.
    cri.update_resources(&big, resources(100_000, 1024));
    let limits = exec_ok(&s, &big, LIMITS);
    assert_eq!(limits, format!("100000 100000\n{}\n", 1024u64 << 20));
    let updated = mem_total_mib(&s, &small);
    assert!(
        updated >= booted + 1024,
        "MemTotal {booted} MiB -> {updated} MiB after the update, expected +1024 MiB"
    );

    cri.stop_container(&big, Duration::from_secs(10));
    cri.remove_container(&big);
    cri.stop_container(&small, Duration::from_secs(10));
    cri.remove_container(&small);
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    s.assert_all_gone();
}

#[test]
fn with_virtio_mem_a_removed_containers_memory_goes_back() {
    let s = Setup::with_qemu_extra(&format!("{SIZES}\nenable_virtio_mem = true"));
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let config = cri.pod_config("givesback");
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let small = cri.create_container_with(
        &pod,
        &config,
        Cri::container_config("small", &s.image, &["sleep", "1000"]),
    );
    cri.start(&small);
    let booted = mem_total_mib(&s, &small);
    let qemu = qemu_pid(&s, &pod);

    let big = cri.create_container_with(&pod, &config, limited("big", &s.image, 0, 768));
    cri.start(&big);
    let grown = mem_total_mib(&s, &small);
    assert!(grown >= booted + 768, "MemTotal {booted} -> {grown} MiB");
    // The guest touches the memory: QEMU's RSS holds it.
    assert!(allocate(&s, &big, 600), "600 MiB in a 768 MiB container");
    let rss_used = rss_mib(qemu);

    cri.stop_container(&big, Duration::from_secs(10));
    cri.remove_container(&big);
    // The guest unplugs the memory block by block: wait, bounded.
    let (mut total, mut rss) = (0, 0);
    let given_back = capsa_test_infra::wait_until(Duration::from_secs(120), || {
        total = mem_total_mib(&s, &small);
        rss = rss_mib(qemu);
        total < booted + 128 && rss + 300 <= rss_used
    });
    assert!(
        given_back,
        "memory not given back: MemTotal {booted} -> {grown} -> {total} MiB, QEMU RSS {rss_used} -> {rss} MiB\n{}",
        s.ctrd.log_tail()
    );

    cri.stop_container(&small, Duration::from_secs(10));
    cri.remove_container(&small);
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    s.assert_all_gone();
}
