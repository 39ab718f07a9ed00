//! Faults: the VM or the shim killed under a running task.

mod common;

use std::time::{Duration, Instant};

use capsa_test_infra::leaks::processes_naming;
use common::Setup;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The PID column of `ctr task ls` for `id`, and its status.
fn task(s: &Setup, id: &str) -> Option<(u32, String)> {
    let ls = s.ctrd.ctr_ok(&["task", "ls"]);
    ls.lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[1].parse().unwrap_or(0), cols[2].to_string())
        })
}

fn wait_stopped(s: &Setup, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match task(s, id) {
            Some((_, status)) if status == "STOPPED" => return,
            None => return,
            other => assert!(
                Instant::now() < deadline,
                "task {id} not stopped: {other:?}\n{}",
                s.ctrd.log_tail()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn qemu_killed_under_a_running_task() {
    let s = Setup::new();
    let out = s.run(&["-d"], "vmdies", &["sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let (pid, status) = task(&s, "vmdies").expect("task listed");
    assert_eq!(status, "RUNNING");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the task's pid");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("qemu"),
        "task pid {pid} is not QEMU"
    );

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_stopped(&s, "vmdies");
    // The exit is reported with SIGKILL's status.
    let out = s.ctrd.ctr(&["task", "delete", "vmdies"]);
    assert!(out.status.success(), "{out:?}");
    s.ctrd.ctr_ok(&["containers", "delete", "vmdies"]);
    s.assert_all_gone();
}

#[test]
fn shim_killed_then_containerd_cleans_up() {
    let s = Setup::new();
    let out = s.run(&["-d"], "shimdies", &["sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let socket = s.ctrd.socket().display().to_string();
    let shims: Vec<i32> = processes_naming("containerd-shim-capsa-v2")
        .iter()
        .filter(|p| p.contains(&socket) && p.contains("shimdies"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(shims.len(), 1, "one shim expected: {shims:?}");
    kill(Pid::from_raw(shims[0]), Signal::SIGKILL).unwrap();

    // containerd notices, runs the shim's `delete` action, and the task
    // is gone or stopped; deleting what is left succeeds.
    wait_stopped(&s, "shimdies");
    let _ = s.ctrd.ctr(&["task", "delete", "shimdies"]);
    s.ctrd.ctr_ok(&["containers", "delete", "shimdies"]);
    s.assert_all_gone();
}

/// containerd's cleanup after a dead shim is the shim's `delete` action:
/// run by hand a second time in the same bundle, it finds nothing left
/// and still answers.
#[test]
fn delete_action_twice_is_harmless() {
    let s = Setup::new();
    let out = s.run(&["-d"], "twice", &["sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let socket = s.ctrd.socket().display().to_string();
    let shim: i32 = processes_naming("containerd-shim-capsa-v2")
        .iter()
        .find(|p| p.contains(&socket) && p.contains("twice"))
        .and_then(|p| p.split(':').next()?.parse().ok())
        .expect("the shim");
    // Keep a copy of the bundle's marker to run `delete` again afterwards.
    let bundle = s
        .ctrd
        .dir()
        .join("state/io.containerd.runtime.v2.task/k8s.io/twice");
    let marker = std::fs::read_to_string(bundle.join("capsa-pod-state")).expect("pod marker");
    kill(Pid::from_raw(shim), Signal::SIGKILL).unwrap();
    wait_stopped(&s, "twice");
    let _ = s.ctrd.ctr(&["task", "delete", "twice"]);
    s.ctrd.ctr_ok(&["containers", "delete", "twice"]);
    s.assert_all_gone();

    let again = s.env.dir.path().join("bundle-again");
    std::fs::create_dir_all(&again).unwrap();
    std::fs::write(again.join("capsa-pod-state"), marker).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_containerd-shim-capsa-v2"))
        .args([
            "-namespace",
            "k8s.io",
            "-id",
            "twice",
            "-address",
            &socket,
            "delete",
        ])
        // As containerd runs it.
        .env("TTRPC_ADDRESS", format!("{socket}.ttrpc"))
        .current_dir(&again)
        .output()
        .expect("run delete");
    assert!(out.status.success(), "{out:?}");
    s.assert_all_gone();
}
