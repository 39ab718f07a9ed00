//! Faults: the VM or the shim killed under a running task.

mod common;

use std::time::{Duration, Instant};

use capsa_test_infra::leaks::processes_naming;
use common::{text, Setup};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn task(s: &Setup, id: &str) -> Option<(u32, String)> {
    s.task(id)
}

fn wait_stopped(s: &Setup, id: &str) {
    s.wait_stopped(id)
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
    // The killed shim's socket file went with the `delete` action.
    let socket = s.shim_socket("shimdies");
    assert!(
        !socket.exists(),
        "dead shim's socket left behind: {}",
        socket.display()
    );
}

/// containerd's cleanup after a dead shim is the shim's `delete` action:
/// run by hand a second time in the same bundle, it finds nothing left,
/// touches nothing else (another pod runs on) and still answers what
/// containerd reads: a `DeleteResponse` on stdout with SIGKILL's status.
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

    // Another pod in the same state directory, running.
    let out = s.run(&["-d"], "other", &["sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let other_state = s.env.state_dir.join("other");
    assert!(other_state.join("state.json").is_file());

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
    let reply: containerd_shim::DeleteResponse =
        containerd_shim::protos::protobuf::Message::parse_from_bytes(&out.stdout)
            .unwrap_or_else(|e| panic!("delete's stdout is not a DeleteResponse ({e}): {out:?}"));
    assert_eq!(reply.exit_status, 137, "{reply:?}");
    assert!(reply.exited_at.is_some(), "{reply:?}");

    // The other pod is untouched: its state, its VM, its agent.
    assert!(
        other_state.join("state.json").is_file(),
        "other pod's state removed"
    );
    let (_, status) = task(&s, "other").expect("other listed");
    assert_eq!(status, "RUNNING");
    let out = s.ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "other",
        "echo",
        "still-here",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still-here\n",
        "{out:?}"
    );
    s.ctrd
        .ctr_ok(&["task", "kill", "--signal", "SIGKILL", "other"]);
    wait_stopped(&s, "other");
    s.ctrd.ctr_ok(&["task", "delete", "other"]);
    s.ctrd.ctr_ok(&["containers", "delete", "other"]);
    s.assert_all_gone();
}

/// Waits up to `limit` for `ready`; fails the test naming `what`.
fn wait_for(what: &str, limit: Duration, ready: impl FnMut() -> bool) {
    assert!(
        capsa_test_infra::wait_until(limit, ready),
        "{what}: not after {limit:?}"
    );
}

/// Whether process `pid` is gone (or a zombie: it runs nothing).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// A stopped QEMU (SIGSTOP) is not a live VM: `ctr task kill -s SIGKILL`
/// ends within a bound and the task's exit is reported as SIGKILL's (137:
/// the attached `ctr run` returns it); `ctr task delete -f` of another
/// stopped VM ends within a bound too; nothing is left.
#[test]
fn stopped_qemu_is_killed_and_its_exit_reported() {
    let s = Setup::new();
    let stop_qemu = |id: &str| {
        wait_for("task running", Duration::from_secs(180), || {
            task(&s, id).is_some_and(|(_, status)| status == "RUNNING")
        });
        let (pid, _) = task(&s, id).expect("task listed");
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        (pid, Instant::now())
    };
    std::thread::scope(|scope| {
        let run = scope.spawn(|| s.run(&[], "frozen", &["sleep", "1000"]));
        let (pid, stopped) = stop_qemu("frozen");
        let out = s.ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "frozen"]);
        // The shim's watch may have declared the VM dead first: the
        // process is then already finished, as runc's shim says too.
        assert!(
            out.status.success() || text(&out.stderr).contains("already finished"),
            "{out:?}"
        );
        // `ctr run` waits for the exit, returns it and deletes the task.
        let out = run.join().expect("ctr run");
        assert_eq!(out.status.code(), Some(137), "{out:?}");
        let took = stopped.elapsed();
        assert!(took < Duration::from_secs(20), "kill took {took:?}");
        assert!(gone(pid), "QEMU {pid} still there");
    });
    s.ctrd.ctr_ok(&["containers", "delete", "frozen"]);

    let out = s.run(&["-d"], "frozen-delete", &["sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let (pid, stopped) = stop_qemu("frozen-delete");
    let out = s.ctrd.ctr(&["task", "delete", "-f", "frozen-delete"]);
    assert!(out.status.success(), "{out:?}");
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(20), "delete -f took {took:?}");
    assert!(gone(pid), "QEMU {pid} still there");
    s.ctrd.ctr_ok(&["containers", "delete", "frozen-delete"]);
    s.assert_all_gone();
}

/// Where the shim is killed while it creates a pod.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Right after the pod's state directory exists (its owner file is
    /// the first thing written in it).
    StateDir,
    /// While QEMU boots.
    QemuBooting,
}

/// A shim killed early in create leaves state that containerd's cleanup
/// (the shim's `delete` action) finds and removes: no QEMU, helper, mount
/// or state directory is left, and the next `ctr run` works.
#[test]
fn shim_killed_early_in_create_leaves_nothing() {
    let s = Setup::new();
    for (id, point) in [
        ("early-dir", KillPoint::StateDir),
        ("early-qemu", KillPoint::QemuBooting),
    ] {
        let dir = s.env.state_dir.join(id);
        let dir_name = dir.display().to_string();
        std::thread::scope(|scope| {
            let run = scope.spawn(|| s.run(&[], id, &["true"]));
            let owner = dir.join("owner.pid");
            let mut shim = 0;
            wait_for(
                &format!("{id}: {point:?}"),
                Duration::from_secs(180),
                || {
                    shim = std::fs::read_to_string(&owner)
                        .ok()
                        .and_then(|p| p.trim().parse().ok())
                        .unwrap_or(0);
                    shim != 0
                        && match point {
                            KillPoint::StateDir => true,
                            KillPoint::QemuBooting => processes_naming(&dir_name)
                                .iter()
                                .any(|p| p.contains("qemu-system")),
                        }
                },
            );
            let comm = std::fs::read_to_string(format!("/proc/{shim}/comm")).unwrap_or_default();
            assert!(
                comm.starts_with("containerd-shim"),
                "owner {shim} is {comm:?}"
            );
            kill(Pid::from_raw(shim), Signal::SIGKILL).unwrap();
            let out = run.join().expect("ctr run");
            assert!(!out.status.success(), "{id}: {out:?}");
        });
        // containerd runs the shim's `delete` action: it removes the state.
        wait_for(
            &format!("{id}: state removed by containerd's cleanup"),
            Duration::from_secs(60),
            || !dir.exists() && processes_naming(&dir_name).is_empty(),
        );
        let _ = s.ctrd.ctr(&["task", "delete", id]);
        s.ctrd.ctr_ok(&["containers", "delete", id]);
    }
    s.assert_all_gone();
    let out = s.run(&["--rm"], "after", &["echo", "ok"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "ok", "{out:?}");
    s.assert_all_gone();
}

/// A VM whose agent does not answer (its vsock backend frozen with
/// SIGSTOP) fails the shim's health checks: the shim declares it dead,
/// kills it and reports the task exited; deleting it leaves nothing.
#[test]
fn unanswering_agent_is_declared_dead_by_the_shim() {
    let s = Setup::new();
    s.env
        .append_config("[agent.capsa]\nhealth_check_interval = 1");
    let out = s.run(&["-d"], "mute", &["sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let (qemu, status) = task(&s, "mute").expect("task listed");
    assert_eq!(status, "RUNNING");
    let vsock = capsa_test_infra::leaks::vm_process_pid(&s.env.state_dir, "mute", "vsock");
    kill(Pid::from_raw(vsock), Signal::SIGSTOP).unwrap();

    wait_stopped(&s, "mute");
    assert!(gone(qemu), "QEMU {qemu} still there");
    let out = s.ctrd.ctr(&["task", "delete", "mute"]);
    assert!(out.status.success(), "{out:?}");
    s.ctrd.ctr_ok(&["containers", "delete", "mute"]);
    s.assert_all_gone();
}
