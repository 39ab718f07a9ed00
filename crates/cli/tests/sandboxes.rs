//! Detached sandboxes: `capsa run -d`, `ps`, `inspect`, `exec`,
//! `agent-ctl`, `kill`, `rm`, against real VMs.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use capsa_test_infra::cli::{
    assert_all_gone, capsa, capsa_with_input, command, text, Detached, LIMIT,
};
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::{run_bounded, TestEnv};

#[test]
fn detached_sandbox_lifecycle() {
    let env = TestEnv::new();
    let sb = Detached::start(&env, "web", &["sh", "-c", "echo started; sleep 1000"]);

    // ps: id, state, hypervisor pid, age.
    let ps = capsa(&env, &["ps"]);
    assert!(ps.status.success(), "{ps:?}");
    let line = text(&ps.stdout)
        .lines()
        .find(|l| l.starts_with("web "))
        .map(String::from)
        .unwrap_or_else(|| panic!("web missing from ps: {ps:?}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "running", "{line}");
    let pid: u32 = cols[2].parse().expect("hypervisor pid column");
    assert!(cols[3].ends_with('s') || cols[3].ends_with('m'), "{line}");

    // inspect: the same pid, a live QEMU, the agent's socket, the console log.
    let v = sb.inspect();
    assert_eq!(v["hypervisor_pid"], pid, "{v:#}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("hypervisor alive");
    assert!(text(&cmdline).contains("qemu"), "{}", text(&cmdline));
    assert_eq!(v["agent"]["kind"], "hybrid-vsock", "{v:#}");
    assert_eq!(v["agent"]["port"], 1024, "{v:#}");
    let sock = v["agent"]["path"].as_str().expect("agent path");
    assert!(std::path::Path::new(sock).exists(), "{sock}");
    let console = v["console_log"].as_str().expect("console log");
    assert!(
        std::fs::read_to_string(console)
            .unwrap()
            .contains("capsa-agent"),
        "console log without the agent's lines"
    );
    assert_eq!(v["containers"][0]["id"], "web", "{v:#}");
    // The console log can be rotated under QEMU: emptied, QEMU's next
    // line lands at its start (append=on), not after a hole.
    std::fs::OpenOptions::new()
        .write(true)
        .open(console)
        .unwrap()
        .set_len(0)
        .unwrap();

    // exec: output, exit code, environment, and the workload's processes.
    let out = capsa(
        &env,
        &[
            "exec",
            "-e",
            "GREETING=hi",
            "web",
            "--",
            "sh",
            "-c",
            "echo $GREETING from exec; ps -o comm | grep -c sleep; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(text(&out.stdout), "hi from exec\n1\n", "{out:?}");
    let after = std::fs::read(console).unwrap();
    assert!(
        after.first().is_some_and(|&b| b != 0) && text(&after).contains("exec process started"),
        "console log after emptying: {:?}",
        text(&after)
    );

    // agent-ctl: a method and a refusal, in JSON.
    let out = capsa(&env, &["agent-ctl", "web", "GetGuestDetails", "{}"]);
    assert!(out.status.success(), "{out:?}");
    let details: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert!(details.get("agentDetails").is_some(), "{details:#}");
    let out = capsa(
        &env,
        &[
            "agent-ctl",
            "web",
            "WaitProcess",
            r#"{"container_id": "nope"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("NOT_FOUND") && text(&out.stderr).contains("nope"),
        "{out:?}"
    );

    // rm refuses a running sandbox.
    let out = capsa(&env, &["rm", "web"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("is running"), "{out:?}");

    // kill: the workload dies, the VM goes, the record stays.
    let out = capsa(&env, &["kill", "web", "--signal", "KILL"]);
    assert!(out.status.success(), "{out:?}");
    let v = sb.wait_state("stopped");
    assert_eq!(v["containers"][0]["exit_code"], 137, "{v:#}");
    let log = v["containers"][0]["log"].as_str().expect("log path");
    assert_eq!(std::fs::read_to_string(log).unwrap(), "started\n");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU still runs after the workload exited"
    );

    // rm: nothing left.
    let out = capsa(&env, &["rm", "web"]);
    assert!(out.status.success(), "{out:?}");
    let out = capsa(&env, &["inspect", "web"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("no sandbox \"web\""), "{out:?}");
    assert_all_gone(&env);
}

#[test]
fn forced_rm_stops_a_running_sandbox_and_leaves_nothing() {
    let env = TestEnv::new();
    let _sb = Detached::start(&env, "busy", &["sleep", "1000"]);
    let out = capsa(&env, &["rm", "--force", "busy"]);
    assert!(out.status.success(), "{out:?}");
    assert_all_gone(&env);
}

#[test]
fn detached_start_failures_are_reported_and_leave_nothing() {
    let env = TestEnv::new();
    let out = capsa(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "x",
            "--rootfs",
            "/no/such/dir",
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("/no/such/dir"), "{out:?}");

    let out = capsa(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "a/b",
            "--rootfs",
            &env.rootfs.to_string_lossy(),
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("\"a/b\""), "{out:?}");

    // The workload cannot start: the owner reports why, and cleans up.
    let out = capsa(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "y",
            "--rootfs",
            &env.rootfs.to_string_lossy(),
            "--",
            "/no/such/binary",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("CreateContainer")
            || text(&out.stderr).contains("StartContainer"),
        "{out:?}"
    );
    assert_all_gone(&env);
}

#[test]
fn a_used_name_is_refused() {
    let env = TestEnv::new();
    let _sb = Detached::start(&env, "twice", &["sleep", "1000"]);
    let out = capsa(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "twice",
            "--rootfs",
            &env.rootfs.to_string_lossy(),
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("\"twice\" exists already"),
        "{out:?}"
    );
    let out = capsa(&env, &["rm", "-f", "twice"]);
    assert!(out.status.success(), "{out:?}");
    assert_all_gone(&env);
}

#[test]
fn debug_console_is_a_shell_in_the_vm() {
    let env = TestEnv::new();
    // Off by default: the error says how to turn it on.
    let sb = Detached::start(&env, "nodebug", &["sleep", "1000"]);
    let out = capsa(&env, &["exec", "--vm", "nodebug"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("debug_console_enabled"),
        "{out:?}"
    );
    drop(sb);

    env.append_config("[agent.capsa]\ndebug_console_enabled = true");
    let _sb = Detached::start(&env, "debug", &["sleep", "1000"]);
    // The VM's root environment: PID 1 is the agent (`/init`), not the
    // container's workload (`sleep`, busybox) as inside the container.
    let out = capsa_with_input(
        &env,
        &["exec", "--vm", "debug"],
        b"echo sum=$((6*7)); echo pid1=$(readlink /proc/1/exe); exit\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("sum=42"), "{stdout}");
    assert!(stdout.contains("pid1=/init"), "{stdout}");
    let out = capsa(&env, &["rm", "-f", "debug"]);
    assert!(out.status.success(), "{out:?}");
    assert_all_gone(&env);
}

/// `capsa kill ID && capsa rm ID`: rm waits (bounded) for the sandbox
/// the kill is stopping instead of calling it running.
#[test]
fn kill_then_rm_succeeds() {
    let env = TestEnv::new();
    let _sb = Detached::start(&env, "short", &["sleep", "1000"]);
    let out = capsa(&env, &["kill", "short"]);
    assert!(out.status.success(), "{out:?}");
    let out = capsa(&env, &["rm", "short"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "short\n", "{out:?}");
    assert_all_gone(&env);
}

/// Whether process `pid` is gone (or a zombie: it runs nothing).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// Sends `signal` to `pid`.
fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

/// A stopped QEMU (SIGSTOP) is not a live VM: `rm --force` takes it down
/// within a bound and leaves nothing (QEMU, virtiofsd, vhost-device-vsock,
/// mounts, state).
#[test]
fn rm_force_takes_a_stopped_vm_down() {
    takes_a_stopped_vm_down(&TestEnv::new());
}

/// The same with the kernel of a User-Mode Linux VM stopped (a hung guest).
#[test]
fn on_uml_rm_force_takes_a_stopped_vm_down() {
    takes_a_stopped_vm_down(&TestEnv::with_installed_config("configuration-uml.toml"));
}

fn takes_a_stopped_vm_down(env: &TestEnv) {
    let sb = Detached::start(env, "frozen", &["sleep", "1000"]);
    let qemu = sb.hypervisor_pid();
    signal(qemu, nix::sys::signal::Signal::SIGSTOP);
    let started = Instant::now();
    let out = capsa(env, &["rm", "--force", "frozen"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took < Duration::from_secs(20), "rm --force took {took:?}");
    assert!(gone(qemu), "VM process {qemu} still there");
    assert_all_gone(env);
}

/// Detached sandboxes in `env` get a health check every second.
fn with_fast_health_checks(env: &TestEnv) {
    env.append_config("[agent.capsa]\nhealth_check_interval = 1");
}

/// The pid of the sandbox's vhost-device-vsock.
fn vsock_helper(env: &TestEnv, id: &str) -> i32 {
    capsa_test_infra::leaks::vm_process_pid(&env.state_dir, id, "vsock")
}

/// A VM whose agent does not answer (its vsock backend frozen) fails its
/// health checks: the owner declares it dead, kills it and records the
/// workload killed (137); nothing of the VM is left.
#[test]
fn unanswering_agent_is_declared_dead() {
    let env = TestEnv::new();
    with_fast_health_checks(&env);
    let sb = Detached::start(&env, "mute", &["sleep", "1000"]);
    let qemu = sb.hypervisor_pid();
    signal(
        vsock_helper(&env, "mute"),
        nix::sys::signal::Signal::SIGSTOP,
    );
    let v = sb.wait_state("stopped");
    assert_eq!(v["containers"][0]["exit_code"], 137, "{v:#}");
    assert!(gone(qemu), "QEMU {qemu} still there");
    let dir = env.state_dir.join("mute").display().to_string();
    let left = processes_naming(&dir);
    assert!(left.is_empty(), "VM processes left: {left:?}");
    let out = capsa(&env, &["rm", "mute"]);
    assert!(out.status.success(), "{out:?}");
    assert_all_gone(&env);
}

/// The owner of a detached sandbox watches its VM: a stopped QEMU is
/// killed at once, and the workload recorded killed.
#[test]
fn stopped_vm_is_declared_dead_by_its_owner() {
    declares_a_stopped_vm_dead(&TestEnv::new());
}

/// The same for a User-Mode Linux VM whose kernel process is stopped.
#[test]
fn on_uml_a_stopped_vm_is_declared_dead_by_its_owner() {
    declares_a_stopped_vm_dead(&TestEnv::with_installed_config("configuration-uml.toml"));
}

fn declares_a_stopped_vm_dead(env: &TestEnv) {
    let sb = Detached::start(env, "paused", &["sleep", "1000"]);
    let qemu = sb.hypervisor_pid();
    signal(qemu, nix::sys::signal::Signal::SIGSTOP);
    let v = sb.wait_state("stopped");
    assert_eq!(v["containers"][0]["exit_code"], 137, "{v:#}");
    assert!(gone(qemu), "VM process {qemu} still there");
    let out = capsa(env, &["rm", "paused"]);
    assert!(out.status.success(), "{out:?}");
    assert_all_gone(env);
}

/// Worst case: the owner itself hangs (SIGSTOP) with its QEMU. `rm
/// --force` does not wait for it forever: it kills the owner, whose VM
/// processes die with it, and removes the state, within a bound.
#[test]
fn rm_force_kills_a_hung_owner_and_its_vm() {
    let env = TestEnv::new();
    let sb = Detached::start(&env, "stuck", &["sleep", "1000"]);
    let qemu = sb.hypervisor_pid();
    let owner = sb.inspect()["owner_pid"].as_i64().expect("owner pid") as i32;
    signal(owner, nix::sys::signal::Signal::SIGSTOP);
    signal(qemu, nix::sys::signal::Signal::SIGSTOP);
    let started = Instant::now();
    let out = capsa(&env, &["rm", "--force", "stuck"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took < Duration::from_secs(20), "rm --force took {took:?}");
    for pid in [owner, qemu] {
        assert!(
            gone(pid),
            "{pid} still there: {:?}\nrm: {out:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
    assert_all_gone(&env);
}

/// On success, `exec`, `agent-ctl`, `kill` and `rm` print only what they
/// are asked for (the workload's output, the reply, the removed id) and no
/// log line; a reader that goes away early ends a command quietly.
#[test]
fn commands_are_exact_and_quiet() {
    let env = TestEnv::new();
    let sb = Detached::start(&env, "quiet", &["sleep", "1000"]);
    let quiet = |out: &Output, stdout: &str| {
        assert!(out.status.success(), "{out:?}");
        assert_eq!(text(&out.stdout), stdout, "{out:?}");
        assert_eq!(text(&out.stderr), "", "{out:?}");
    };

    quiet(&capsa(&env, &["exec", "quiet", "--", "echo", "hi"]), "hi\n");
    let out = capsa(&env, &["agent-ctl", "quiet", "Check", "{}"]);
    quiet(&out, "{\"status\": \"SERVING\"}\n");
    let out = capsa(&env, &["agent-ctl", "quiet", "grpc.Health/Version", "{}"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert!(v.get("agentVersion").is_some(), "{v:#}");

    // stdout closed before capsa writes: EPIPE, not a panic.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    let mut cmd = command(&env, &["inspect", "quiet"]);
    cmd.stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped());
    let out = cmd.output().expect("run capsa inspect");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stderr), "", "{out:?}");
    // And as a shell pipeline.
    let line = format!(
        "set -o pipefail; {} --config {} inspect quiet | head -c1",
        env!("CARGO_BIN_EXE_capsa"),
        env.config.display()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &line]);
    let out = run_bounded(cmd, None, LIMIT);
    quiet(&out, "{");

    quiet(&capsa(&env, &["kill", "quiet", "--signal", "KILL"]), "");
    sb.wait_state("stopped");
    quiet(&capsa(&env, &["rm", "quiet"]), "quiet\n");
    assert_all_gone(&env);
}
