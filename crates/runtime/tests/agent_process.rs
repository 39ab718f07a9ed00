//! The agent's process and cgroup methods against a real VM: ExecProcess,
//! ListProcesses, SignalProcess of exec processes, PauseContainer and
//! ResumeContainer, UpdateContainer, GetOOMEvent, StatsContainer,
//! TtyWinResize and the shared PID namespace.

use std::time::Duration;

mod common;

use capsa_agent_client::{until, Error};
use capsa_protocols::{agent, oci};
use capsa_runtime::{ProcessSpec, Sandbox};
use capsa_test_infra::{assert_no_leaks, wait_until, wait_until_async, TestEnv};
use common::{boot, read_all};

const LIMIT: Duration = Duration::from_secs(60);

/// Boots a VM and starts container `id` running `script` with `sh -c`.
async fn running(env: &TestEnv, id: &str, script: &str) -> Sandbox {
    let mut sandbox = boot(env).await;
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    sandbox
        .create_container(id, &env.rootfs, &process)
        .await
        .expect("create");
    sandbox.agent().start_container(id).await.expect("start");
    sandbox
}

/// An exec process running `script` with `sh -c`.
fn exec_process(script: &str, terminal: bool) -> oci::Process {
    let process = oci_spec::runtime::ProcessBuilder::default()
        .args(vec!["sh".to_string(), "-c".to_string(), script.to_string()])
        .env(vec![
            "PATH=/usr/bin:/bin:/usr/sbin:/sbin".to_string(),
            "FOO=exec-env".to_string(),
        ])
        .cwd("/tmp")
        .terminal(terminal)
        .build()
        .expect("process");
    capsa_protocols::convert::process_to_grpc(&process)
}

/// Runs `script` in `cid` and returns its stdout and exit status.
async fn run(sandbox: &Sandbox, cid: &str, eid: &str, script: &str) -> (String, i32) {
    let agent = sandbox.agent();
    agent
        .exec_process(cid, eid, exec_process(script, false))
        .await
        .expect("exec");
    let out = read_all(sandbox, cid, eid).await;
    let code = tokio::time::timeout(LIMIT, agent.wait_process(cid, eid))
        .await
        .expect("exec exits")
        .expect("wait");
    (out, code)
}

fn status_of(result: Result<(), Error>) -> ttrpc::proto::Status {
    match result {
        Err(Error::Rpc {
            error: ttrpc::Error::RpcStatus(s),
            ..
        }) => s,
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

async fn table(sandbox: &Sandbox, cid: &str) -> String {
    let list = sandbox
        .agent()
        .list_processes(cid, "table")
        .await
        .expect("list");
    String::from_utf8(list).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_processes_run_list_and_take_signals() {
    let env = TestEnv::new();
    let sandbox = running(&env, "c1", "exec sleep 1000").await;
    let agent = sandbox.agent().clone();

    let (out, code) = run(&sandbox, "c1", "e1", "echo $FOO; pwd; exit 3").await;
    // WaitProcess answered before the first ReadStdout: the output of an
    // exec process that exited stays readable (a host's reader may start
    // after its waiter).
    agent
        .exec_process("c1", "e-late", exec_process("echo late", false))
        .await
        .expect("exec");
    let late_code = agent.wait_process("c1", "e-late").await.expect("wait");
    let late = read_all(&sandbox, "c1", "e-late").await;
    assert_eq!((late.as_str(), late_code), ("late\n", 0));
    let mut stderr = Vec::new();
    agent
        .exec_process("c1", "e-err", exec_process("echo oops >&2", false))
        .await
        .expect("exec");
    while let Ok(chunk) = agent.read_stderr("c1", "e-err", 4096).await {
        stderr.extend(chunk);
    }
    let err_code = agent.wait_process("c1", "e-err").await.expect("wait");

    agent
        .exec_process("c1", "term", exec_process("exec sleep 301", false))
        .await
        .expect("exec term");
    agent
        .exec_process("c1", "kill", exec_process("exec sleep 302", false))
        .await
        .expect("exec kill");
    let listed = table(&sandbox, "c1").await;
    let json = agent.list_processes("c1", "json").await.expect("json");
    let pids: Vec<i32> = serde_json::from_slice(&json).expect("json pids");

    agent
        .signal_process("c1", "term", libc::SIGTERM as u32)
        .await
        .expect("SIGTERM");
    let term = tokio::time::timeout(LIMIT, agent.wait_process("c1", "term")).await;
    agent
        .signal_process("c1", "kill", libc::SIGKILL as u32)
        .await
        .expect("SIGKILL");
    let kill = tokio::time::timeout(LIMIT, agent.wait_process("c1", "kill")).await;
    let after = table(&sandbox, "c1").await;

    agent
        .exec_process("c1", "dup", exec_process("exec sleep 303", false))
        .await
        .expect("exec dup");
    let duplicate = agent
        .exec_process("c1", "dup", exec_process("true", false))
        .await;
    let init_id = agent
        .exec_process("c1", "c1", exec_process("true", false))
        .await;
    let missing = agent
        .exec_process("nope", "x", exec_process("true", false))
        .await;
    let bad_format = agent.list_processes("c1", "yaml").await;

    // An empty exec id signals every process of the container: the
    // trapping exec and "dup" get SIGUSR1; the init, PID 1 of the
    // container without a handler, ignores it.
    agent
        .exec_process(
            "c1",
            "usr1",
            exec_process(
                "trap 'exit 7' USR1; echo ready; while :; do sleep 0.1; done",
                false,
            ),
        )
        .await
        .expect("exec usr1");
    read_until(&sandbox, "c1", "usr1", "ready").await;
    agent
        .signal_process("c1", "", libc::SIGUSR1 as u32)
        .await
        .expect("SIGUSR1 to all");
    let trapped = tokio::time::timeout(LIMIT, agent.wait_process("c1", "usr1")).await;
    let dup = tokio::time::timeout(LIMIT, agent.wait_process("c1", "dup")).await;
    let after_all = table(&sandbox, "c1").await;
    // SIGTERM to every process: the init does not catch it, so it becomes
    // SIGKILL for all of them (as in Kata), and the container ends.
    agent
        .signal_process("c1", "", libc::SIGTERM as u32)
        .await
        .expect("SIGTERM to all");
    let init_status = tokio::time::timeout(LIMIT, agent.wait_process("c1", "c1")).await;

    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(out, "exec-env\n/tmp\n");
    assert_eq!(code, 3);
    assert_eq!(String::from_utf8_lossy(&stderr), "oops\n");
    assert_eq!(err_code, 0);
    assert!(listed.starts_with("    PID    PPID STAT"), "{listed}");
    for cmd in ["sleep 1000", "sleep 301", "sleep 302"] {
        assert!(listed.contains(cmd), "{cmd} missing from\n{listed}");
    }
    assert_eq!(pids.len(), 3, "{pids:?}\n{listed}");
    assert_eq!(term.expect("SIGTERM ends it").expect("wait"), 128 + 15);
    assert_eq!(kill.expect("SIGKILL ends it").expect("wait"), 128 + 9);
    assert!(
        after.contains("sleep 1000"),
        "the init keeps running:\n{after}"
    );
    assert!(!after.contains("sleep 301"), "{after}");
    assert!(!after.contains("sleep 302"), "{after}");

    assert_eq!(trapped.expect("USR1 ends usr1").expect("wait"), 7);
    assert_eq!(dup.expect("USR1 ends dup").expect("wait"), 128 + 10);
    assert!(
        after_all.contains("sleep 1000"),
        "the init ignores SIGUSR1:\n{after_all}"
    );
    assert_eq!(
        init_status
            .expect("SIGTERM to all ends the init")
            .expect("wait"),
        128 + 9
    );

    let s = status_of(duplicate);
    assert_eq!(s.code(), ttrpc::Code::ALREADY_EXISTS, "{s:?}");
    assert!(s.message.contains("\"dup\""), "{s:?}");
    let s = status_of(init_id);
    assert_eq!(s.code(), ttrpc::Code::ALREADY_EXISTS, "{s:?}");
    let s = status_of(missing);
    assert_eq!(s.code(), ttrpc::Code::NOT_FOUND, "{s:?}");
    assert!(s.message.contains("container \"nope\" not found"), "{s:?}");
    let Err(Error::Rpc {
        error: ttrpc::Error::RpcStatus(s),
        ..
    }) = bad_format
    else {
        panic!("yaml accepted: {bad_format:?}");
    };
    assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT, "{s:?}");
    assert!(s.message.contains("\"yaml\""), "{s:?}");
}

/// How long a test waits for a state it asserts.
const STATE_WAIT: Duration = Duration::from_secs(60);

/// A loop that counts in `/tmp/NAME`, ten times a second.
fn ticker(name: &str) -> String {
    format!("mkdir -p /tmp; i=0; while true; do i=$((i+1)); echo $i > /tmp/{name}; sleep 0.1; done")
}

/// The counter a [`ticker`] writes, read on the host through the shared
/// rootfs (none while it is being rewritten).
fn counter(env: &TestEnv, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(env.rootfs.join("tmp").join(name)).ok()?;
    text.trim().parse().ok()
}

/// The counter `name` once it reads; fails after [`STATE_WAIT`].
fn read_counter(env: &TestEnv, name: &str) -> u64 {
    let mut value = None;
    wait_until(STATE_WAIT, || {
        value = counter(env, name);
        value.is_some()
    });
    value.unwrap_or_else(|| panic!("no counter /tmp/{name} in the rootfs"))
}

/// Waits until counter `name` reaches `at_least`; whether it did.
fn wait_count(env: &TestEnv, name: &str, at_least: u64) -> bool {
    wait_until(STATE_WAIT, || {
        counter(env, name).is_some_and(|n| n >= at_least)
    })
}

/// A frozen container's loop stands still while a second container's
/// loop (the witness, never paused) ticks on; resumed, it counts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_and_resume_thaws() {
    let env = TestEnv::new();
    let mut sandbox = running(&env, "c1", &ticker("count")).await;
    let witness = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), ticker("witness")],
        ..Default::default()
    };
    sandbox
        .create_container("w", &env.rootfs, &witness)
        .await
        .expect("create the witness");
    let agent = sandbox.agent().clone();
    agent.start_container("w").await.expect("start the witness");
    assert!(wait_count(&env, "count", 2), "the loop never ran");
    let before = read_counter(&env, "count");

    agent.pause("c1").await.expect("pause");
    let paused_at = read_counter(&env, "count");
    let ticks = read_counter(&env, "witness");
    assert!(
        wait_count(&env, "witness", ticks + 10),
        "the witness stopped counting"
    );
    let still = read_counter(&env, "count");
    let exec_paused = agent
        .exec_process("c1", "e1", exec_process("true", false))
        .await;
    let pause_again = agent.pause("c1").await;

    agent.resume("c1").await.expect("resume");
    wait_count(&env, "count", still + 1);
    let resumed = read_counter(&env, "count");
    let (freeze, _) = run(&sandbox, "c1", "e2", "cat /sys/fs/cgroup/cgroup.freeze").await;
    let resume_again = agent.resume("c1").await;

    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert!(paused_at >= before, "{before} {paused_at}");
    assert_eq!(still, paused_at, "the loop advanced while paused");
    assert!(
        resumed > still,
        "the loop did not resume: {still} {resumed}"
    );
    let s = status_of(exec_paused);
    assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION, "{s:?}");
    assert!(s.message.contains("container \"c1\" is paused"), "{s:?}");
    let s = status_of(pause_again);
    assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION, "{s:?}");
    assert_eq!(freeze, "0\n");
    let s = status_of(resume_again);
    assert!(s.message.contains("is not paused"), "{s:?}");
}

fn memory_limit(bytes: i64) -> oci::LinuxResources {
    let memory = oci_spec::runtime::LinuxMemoryBuilder::default()
        .limit(bytes)
        .swap(bytes)
        .build()
        .expect("memory");
    let resources = oci_spec::runtime::LinuxResourcesBuilder::default()
        .memory(memory)
        .build()
        .expect("resources");
    capsa_protocols::convert::resources_to_grpc(&resources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_update_and_oom_event() {
    let env = TestEnv::new();
    let sandbox = running(&env, "c1", "exec sleep 1000").await;
    let agent = sandbox.agent().clone();

    agent
        .update_container("c1", memory_limit(32 << 20))
        .await
        .expect("update");
    let (max, _) = run(&sandbox, "c1", "m", "cat /sys/fs/cgroup/memory.max").await;

    let waiter = agent.clone();
    let first = tokio::spawn(async move { waiter.get_oom_event().await });
    let (_, dd) = run(
        &sandbox,
        "c1",
        "hog",
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
    )
    .await;
    let event = tokio::time::timeout(LIMIT, first).await;
    // Exactly one event: another caller waits in vain.
    let second = agent
        .raw()
        .get_oom_event(
            until(Duration::from_secs(2)),
            &agent::GetOOMEventRequest::new(),
        )
        .await;
    let (alive, code) = run(&sandbox, "c1", "after", "echo alive").await;
    let stats = agent.stats_container("c1").await.expect("stats");

    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(max, format!("{}\n", 32 << 20));
    assert_eq!(dd, 128 + 9, "dd was not OOM-killed");
    let event = event
        .expect("an OOM event")
        .expect("task")
        .expect("GetOOMEvent");
    assert_eq!(event, "c1");
    assert!(second.is_err(), "a second event: {second:?}");
    assert_eq!((alive.as_str(), code), ("alive\n", 0));
    let usage = stats
        .cgroup_stats
        .memory_stats
        .usage
        .clone()
        .unwrap_or_default();
    assert_eq!(usage.limit, 32 << 20);
    assert!(usage.failcnt > 0, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_busy_container() {
    let env = TestEnv::new();
    let sandbox = running(&env, "c1", "while true; do :; done").await;
    // Busy: wait until the container has used 100 ms of CPU.
    let stats = std::cell::RefCell::new(None);
    wait_until_async(STATE_WAIT, || {
        let agent = sandbox.agent().clone();
        let stats = &stats;
        async move {
            let now = agent.stats_container("c1").await.expect("stats");
            let used = now
                .cgroup_stats
                .as_ref()
                .and_then(|s| s.cpu_stats.as_ref())
                .and_then(|c| c.cpu_usage.as_ref())
                .map_or(0, |u| u.total_usage);
            stats.replace(Some(now));
            used > 100_000_000
        }
    })
    .await;
    let stats = stats.into_inner().expect("stats");
    let missing = sandbox.agent().stats_container("nope").await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    let s = stats.cgroup_stats.into_option().expect("cgroup stats");
    let cpu = s.cpu_stats.cpu_usage.clone().unwrap_or_default();
    assert!(cpu.total_usage > 100_000_000, "{cpu:?}");
    assert!(
        cpu.usage_in_usermode + cpu.usage_in_kernelmode > 0,
        "{cpu:?}"
    );
    let memory = s.memory_stats.usage.clone().unwrap_or_default();
    assert!(memory.usage > 0, "{memory:?}");
    assert!(!s.memory_stats.stats.is_empty());
    assert!(s.pids_stats.current >= 1, "{:?}", s.pids_stats);
    let Err(Error::Rpc {
        error: ttrpc::Error::RpcStatus(status),
        ..
    }) = missing
    else {
        panic!("stats of a missing container: {missing:?}");
    };
    assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
}

/// Reads the terminal until `want` shows up.
async fn read_until(sandbox: &Sandbox, cid: &str, eid: &str, want: &str) -> String {
    let mut out = String::new();
    while !out.contains(want) {
        let read = tokio::time::timeout(LIMIT, sandbox.agent().read_stdout(cid, eid, 4096)).await;
        match read {
            Ok(Ok(chunk)) => out.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("{want:?} never came in {out:?}: {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_exec_follows_tty_win_resize() {
    let env = TestEnv::new();
    let sandbox = running(&env, "c1", "exec sleep 1000").await;
    let agent = sandbox.agent().clone();
    let process = exec_process("stty size; echo ready; read x; stty size", true);
    agent
        .exec_process("c1", "tty", process)
        .await
        .expect("exec");
    read_until(&sandbox, "c1", "tty", "ready").await;
    agent
        .tty_win_resize("c1", "tty", 41, 133)
        .await
        .expect("resize");
    agent
        .write_stdin("c1", "tty", b"go\n")
        .await
        .expect("stdin");
    let out = read_until(&sandbox, "c1", "tty", "41 133").await;
    let code = agent.wait_process("c1", "tty").await.expect("wait");
    let no_tty = agent.tty_win_resize("c1", "c1", 10, 10).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert!(out.contains("41 133"), "{out:?}");
    assert_eq!(code, 0);
    let s = status_of(no_tty);
    assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION, "{s:?}");
    assert!(s.message.contains("has no terminal"), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_can_share_the_sandbox_pid_namespace() {
    let env = TestEnv::new();
    let mut sandbox = running(&env, "c1", "exec sleep 1000").await;
    let mut outputs = Vec::new();
    for (id, share) in [("c2", true), ("c3", false)] {
        let root = sandbox.share_rootfs(id, &env.rootfs).expect("share");
        let process = ProcessSpec {
            args: vec!["cat".into(), "/proc/1/cmdline".into()],
            ..Default::default()
        };
        let spec = capsa_runtime::spec::build(&process, &root, "h").expect("spec");
        let req = agent::CreateContainerRequest {
            container_id: id.into(),
            exec_id: id.into(),
            OCI: Some(capsa_protocols::convert::spec_to_grpc(&spec)).into(),
            sandbox_pidns: share,
            ..Default::default()
        };
        sandbox.agent().create_container(req).await.expect("create");
        sandbox.agent().start_container(id).await.expect("start");
        let out = read_all(&sandbox, id, id).await;
        outputs.push(out.replace('\0', " "));
    }
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(
        outputs[0].trim(),
        "sleep 1000",
        "c2 sees c1's init as PID 1"
    );
    assert_eq!(outputs[1].trim(), "cat /proc/1/cmdline", "c3 has its own");
}
