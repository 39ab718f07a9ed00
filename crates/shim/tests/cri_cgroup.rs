//! `sandbox_cgroup_only = true` through containerd's CRI plugin: the pod's
//! `linux.cgroup_parent` (cgroupfs driver: containerd makes the sandbox's
//! `cgroupsPath` `<parent>/<sandbox id>`) holds the shim, QEMU, virtiofsd
//! and the vsock daemon; a parent whose memory limit cannot hold the VM
//! fails RunPodSandbox naming the limit, leaving nothing; what capsa
//! created goes with the pod. Works on cgroup v1 (each hierarchy) and v2.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_test_infra::cgroup::{cgroups_of, hierarchies};
use capsa_test_infra::containerd::cri_v1::PodSandboxConfig;
use capsa_test_infra::wait_until;
use common::Setup;

/// A pod cgroup parent the test makes (as the kubelet would) in the
/// memory hierarchy, with an optional limit; removed on drop with anything
/// left below it in every hierarchy.
struct Parent {
    name: String,
    hierarchies: Vec<PathBuf>,
    memory: PathBuf,
}

impl Parent {
    fn new(limit_mib: Option<u64>) -> Self {
        let hierarchies = hierarchies();
        let v1 = !Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let memory = hierarchies
            .iter()
            .find(|h| !v1 || h.join("memory.limit_in_bytes").exists())
            .expect("a memory hierarchy")
            .clone();
        let name = format!("capsa-test-cg-{}-{}", std::process::id(), rand_suffix());
        let dir = memory.join(&name);
        std::fs::create_dir(&dir).expect("create the test's pod cgroup parent");
        let parent = Self {
            name,
            hierarchies,
            memory,
        };
        if let Some(mib) = limit_mib {
            let file = if v1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            };
            std::fs::write(dir.join(file), (mib << 20).to_string()).expect("set the limit");
        }
        parent
    }

    fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Child cgroups under the parent, in any hierarchy.
    fn children(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for h in &self.hierarchies {
            let dir = h.join(&self.name);
            if h != &self.memory && dir.exists() {
                found.push(dir.clone());
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    found.push(e.path());
                }
            }
        }
        found
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        let mut dirs = self.children();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs.push(self.memory.join(&self.name));
        for d in dirs {
            // Processes left by a failed test go back to the root first.
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                let root = self.hierarchies.iter().find(|h| d.starts_with(h));
                for pid in procs.lines() {
                    if let Some(root) = root {
                        let _ = std::fs::write(root.join("cgroup.procs"), pid);
                    }
                }
            }
            if let Err(e) = std::fs::remove_dir(&d) {
                eprintln!("cgroup {} not removed: {e}", d.display());
            }
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// The setup with `sandbox_cgroup_only = true` (`[runtime]` is the last
/// table of the test configuration).
fn setup() -> Setup {
    let s = Setup::new();
    let mut config = std::fs::read_to_string(&s.env.config).unwrap();
    config.push_str("sandbox_cgroup_only = true\n");
    std::fs::write(&s.env.config, config).unwrap();
    s.ctrd.import_pause();
    s
}

fn pod_config(s: &Setup, name: &str, parent: &Parent) -> PodSandboxConfig {
    let mut config = s.ctrd.cri().pod_config(name);
    config
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = parent.path();
    config
}

/// Pids whose command line names `needle`, with their names.
fn pids_naming(needle: &str) -> Vec<(u32, String)> {
    capsa_test_infra::leaks::processes_naming(needle)
        .iter()
        .filter_map(|p| {
            let (pid, cmd) = p.split_once(": ")?;
            Some((pid.parse().ok()?, cmd.to_string()))
        })
        .collect()
}

fn kib(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_vm_processes_and_the_shim_run_in_the_pod_cgroup_which_goes_with_the_pod() {
    let s = setup();
    let parent = Parent::new(Some(4096));
    let cri = s.ctrd.cri();
    let pod = cri.run_pod_with(pod_config(&s, "cg", &parent), "capsa");
    let spec = cri.pod_info(&pod);
    let cgroups_path = spec["runtimeSpec"]["linux"]["cgroupsPath"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(cgroups_path, format!("{}/{pod}", parent.path()), "{spec}");

    let state = s.env.state_dir.join(&pod).display().to_string();
    let vm_procs = pids_naming(&state);
    let shims: Vec<(u32, String)> = pids_naming("containerd-shim-capsa-v2")
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&s.ctrd.socket().display().to_string()))
        .collect();
    for program in ["qemu-system", "virtiofsd", "vhost-device-vsock"] {
        assert!(
            vm_procs.iter().any(|(_, cmd)| cmd.contains(program)),
            "no {program} process naming {state}: {vm_procs:?}"
        );
    }
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    for (pid, cmd) in vm_procs.iter().chain(&shims) {
        let cgroups = cgroups_of(*pid);
        assert!(
            !cgroups.is_empty() && cgroups.iter().all(|c| *c == cgroups_path),
            "{pid} ({cmd}) is not in {cgroups_path}: {cgroups:?}"
        );
    }
    let leaf = parent.memory.join(cgroups_path.trim_start_matches('/'));
    let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().count() >= 4,
        "the pod cgroup holds the shim and the VM's processes: {procs}"
    );

    // The idle pod's footprint, for docs/architecture.md: the cgroup's
    // charge, and each process's proportional set size.
    let usage = ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(leaf.join(f)).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut pss_total = 0;
    for (pid, cmd) in vm_procs.iter().chain(&shims) {
        let rollup = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
        let (pss, anon) = (kib(&rollup, "Pss:"), kib(&rollup, "Anonymous:"));
        pss_total += pss;
        let name = cmd.split_whitespace().next().unwrap_or("");
        eprintln!(
            "footprint: {name}: Pss {} MiB, anonymous {} MiB",
            pss >> 10,
            anon >> 10
        );
    }
    eprintln!(
        "footprint: pod cgroup charge {} MiB, Pss of its processes {} MiB",
        usage >> 20,
        pss_total >> 10
    );
    // The VM's CPU time is charged to the pod cgroup: its usage grows.
    // (The idle pod's CPU is measured by `make bench`, not here.)
    let cpu_ns = || -> Option<u64> {
        let v1 = parent
            .hierarchies
            .iter()
            .map(|h| {
                h.join(cgroups_path.trim_start_matches('/'))
                    .join("cpuacct.usage")
            })
            .find(|f| f.exists());
        match v1 {
            Some(f) => std::fs::read_to_string(f).ok()?.trim().parse().ok(),
            None => kib(&leaf.join("cpu.stat"), "usage_usec").checked_mul(1000),
        }
    };
    let before = cpu_ns().expect("the pod cgroup's CPU usage");
    assert!(
        wait_until(Duration::from_secs(30), || cpu_ns()
            .is_some_and(|now| now > before)),
        "the pod cgroup is not charged for the VM's CPU"
    );

    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    // The leaf (in every hierarchy) and the parent capsa had to make in
    // the hierarchies other than memory are gone; the test's own parent
    // is left to its owner.
    wait_until(Duration::from_secs(20), || parent.children().is_empty());
    assert_eq!(
        parent.children(),
        Vec::<PathBuf>::new(),
        "cgroups capsa made are left"
    );
    assert!(
        parent.memory.join(&parent.name).is_dir(),
        "the test's parent was removed"
    );
    s.assert_all_gone();
}

#[test]
fn a_pod_cgroup_too_small_for_the_vm_fails_the_pod_naming_the_limit() {
    let s = setup();
    let parent = Parent::new(Some(256));
    let cri = s.ctrd.cri();
    let err = cri
        .try_run_pod_with(pod_config(&s, "small", &parent), "capsa")
        .expect_err("a pod whose cgroup cannot hold the VM must fail");
    let msg = err.message();
    for part in [
        parent.path().as_str(),
        "memory limit 256 MiB",
        "512 MiB guest memory",
        "MiB overhead",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }
    // Nothing left: no VM or shim (CRI tears the failed sandbox down), no
    // state, no cgroup made by capsa.
    wait_until(Duration::from_secs(20), || parent.children().is_empty());
    assert_eq!(
        parent.children(),
        Vec::<PathBuf>::new(),
        "cgroups made for the failed pod"
    );
    s.assert_no_state();
    s.assert_all_gone();
}

#[test]
fn the_delete_action_removes_the_pod_cgroup_of_a_killed_shim() {
    let s = setup();
    let parent = Parent::new(None);
    let cri = s.ctrd.cri();
    let pod = cri.run_pod_with(pod_config(&s, "killed", &parent), "capsa");
    let shims: Vec<(u32, String)> = pids_naming("containerd-shim-capsa-v2")
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&s.ctrd.socket().display().to_string()))
        .collect();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    assert!(!parent.children().is_empty(), "no pod cgroup made");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0].0 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    // containerd runs the shim's `delete` action for the dead shim; CRI
    // removes the pod.
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    wait_until(Duration::from_secs(30), || parent.children().is_empty());
    assert_eq!(
        parent.children(),
        Vec::<PathBuf>::new(),
        "cgroups of the killed shim's pod are left\n{}",
        s.ctrd.log_tail()
    );
    s.assert_all_gone();
}
