//! `capsa run` with `sandbox_cgroup_only = true`, read by the runtime's
//! one request parser as for the shim: the sandbox's owner joins the pod
//! cgroup (`/capsa_<id>` when the spec names none) before the VM starts,
//! so QEMU, virtiofsd and the vsock daemon are born there; the cgroup goes
//! with the sandbox. A cgroup whose memory limit cannot hold the VM fails
//! the run before a VM boots, naming the limit. Needs root (cgroupfs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use capsa_test_infra::cgroup::{cgroups_of, hierarchies};
use capsa_test_infra::cli::command as capsa;
use capsa_test_infra::{assert_no_leaks, run_bounded, Guarded, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

/// The cgroup directories named `name` below the hierarchies' roots.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(name))
        .filter(|d| d.is_dir())
        .collect()
}

/// Removes, when the test ends, the cgroup `name` in every hierarchy
/// (its processes moved to the root first).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in cgroup_dirs(&self.0) {
            let root = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn root_required() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "sandbox_cgroup_only needs root: run the cgroup tests as root"
    );
}

#[test]
fn the_vm_runs_in_the_sandbox_cgroup_which_goes_with_the_sandbox() {
    root_required();
    let env = TestEnv::new();
    env.append_config("sandbox_cgroup_only = true");
    let name = format!("cgrun{}", std::process::id());
    let cgroup = format!("capsa_{name}");
    let _cleanup = Cleanup(cgroup.clone());
    let mut c = capsa(&env, &["run", "--name", &name, "--rootfs"]);
    c.arg(&env.rootfs)
        .args(["--", "sh", "-c", "echo ready; sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut g = Guarded::spawn(&mut c);
    let mut stdout = g.child().stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("workload output");
    assert_eq!(&first, b"ready\n");

    let state = env.state_dir.to_string_lossy().into_owned();
    let vm_procs: Vec<u32> = capsa_test_infra::leaks::processes_naming(&state)
        .iter()
        .filter_map(|p| p.split_once(": ")?.0.parse().ok())
        .collect();
    assert!(
        vm_procs.len() >= 3,
        "QEMU, virtiofsd and the vsock daemon: {vm_procs:?}"
    );
    let expected = format!("/{cgroup}");
    for pid in vm_procs.iter().copied().chain([g.child().id()]) {
        let cgroups = cgroups_of(pid);
        assert!(
            !cgroups.is_empty() && cgroups.iter().all(|c| *c == expected),
            "{pid} is not in {expected}: {cgroups:?}"
        );
    }
    assert!(!cgroup_dirs(&cgroup).is_empty(), "no {cgroup} made");

    let pid = nix::unistd::Pid::from_raw(g.child().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = g.output(LIMIT);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert_no_leaks(&env.state_dir);
    assert_eq!(
        cgroup_dirs(&cgroup),
        Vec::<PathBuf>::new(),
        "the cgroup capsa made is left"
    );
}

#[test]
fn a_cgroup_too_small_for_the_vm_fails_the_run_naming_the_limit() {
    root_required();
    let env = TestEnv::new();
    env.append_config("sandbox_cgroup_only = true");
    let name = format!("cgsmall{}", std::process::id());
    let cgroup = format!("capsa_{name}");
    let _cleanup = Cleanup(cgroup.clone());
    // The cgroup exists with a 64 MiB limit (as a kubelet's pod cgroup
    // would): far below the VM's memory and overhead.
    let v2 = hierarchies()
        .iter()
        .all(|h| !h.join("memory.limit_in_bytes").exists());
    let (memory, file) = match v2 {
        true => (hierarchies()[0].clone(), "memory.max"),
        false => (
            PathBuf::from("/sys/fs/cgroup/memory"),
            "memory.limit_in_bytes",
        ),
    };
    let dir = memory.join(&cgroup);
    std::fs::create_dir(&dir).expect("make the pod cgroup");
    std::fs::write(dir.join(file), (64u64 << 20).to_string()).expect("set its limit");

    let mut c = capsa(&env, &["run", "--name", &name, "--rootfs"]);
    c.arg(&env.rootfs).args(["--", "true"]);
    let out = run_bounded(c, None, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("memory limit 64 MiB") && stderr.contains(&cgroup),
        "the error names the cgroup and its limit: {stderr}"
    );
    assert_no_leaks(&env.state_dir);
    assert!(dir.is_dir(), "a cgroup capsa did not make was removed");
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    assert!(procs.trim().is_empty(), "processes left in it: {procs}");
}
