//! The shim under Debian's containerd, driven with `ctr`: real VMs.

mod common;

use std::time::Duration;

use capsa_test_infra::wait_until;
use common::{text, Setup};

#[test]
fn run_rm_prints_output_and_returns_the_exit_code() {
    let s = Setup::new();
    let out = s.run(
        &["--rm", "--env", "GREETING=hello", "--cwd", "/tmp"],
        "t1",
        &[
            "sh",
            "-c",
            "echo $GREETING from $(pwd); echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", s.ctrd.log_tail());
    assert_eq!(text(&out.stdout), "hello from /tmp\n");
    assert!(text(&out.stderr).contains("oops"), "{out:?}");
    // The shim's log, and the guest's (kernel and agent) through it, reach
    // containerd's log with the pod's id.
    let log = s.ctrd.log();
    let guest: Vec<&str> = log.lines().filter(|l| l.contains("guest: ")).collect();
    assert!(
        guest
            .iter()
            .any(|l| l.contains("capsa-agent") && l.contains("t1")),
        "no agent line tagged with the pod in containerd's log:\n{}",
        s.ctrd.log_tail()
    );
    assert!(log.contains("pod VM started"), "{}", s.ctrd.log_tail());
    s.assert_all_gone();
    // The shim removed its socket file before it answered Shutdown.
    let socket = s.shim_socket("t1");
    assert!(
        !socket.exists(),
        "shim socket left behind: {}",
        socket.display()
    );
}

#[test]
fn a_terminal_is_a_tty() {
    let s = Setup::new();
    // `ctr run -t` needs a terminal of its own: `script` gives it one.
    let ctr = format!(
        "CONTAINERD_SNAPSHOTTER={snap} ctr --address {sock} --namespace k8s.io run --rm -t \
         --runtime {rt} {image} tty1 sh -c 'tty; test -t 0 && echo is-a-tty; exit 4'",
        snap = s.ctrd.snapshotter(),
        sock = s.ctrd.socket().display(),
        rt = common::RUNTIME,
        image = s.image,
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &ctr, "/dev/null"]);
    let out = capsa_test_infra::run_bounded(cmd, None, Duration::from_secs(120));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("is-a-tty"), "{stdout}");
    s.assert_all_gone();
}

#[test]
fn a_missing_command_fails_cleanly() {
    let s = Setup::new();
    let out = s.run(&["--rm"], "nocmd", &["/no/such/binary"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("/no/such/binary"), "{out:?}");
    // The failed task leaves a container record in containerd only.
    s.ctrd.ctr(&["containers", "delete", "nocmd"]);
    s.assert_all_gone();
}

#[test]
fn stdin_reaches_the_workload() {
    let s = Setup::new();
    let mut args = vec!["run", "--rm", "--runtime", common::RUNTIME, &s.image, "in1"];
    args.extend_from_slice(&["sh", "-c", "read line; echo got:$line; wc -l"]);
    let out = s.ctrd.ctr_with_input(&args, b"first\nsecond\nthird\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["got:first", "2"]
    );
    s.assert_all_gone();
}

#[test]
fn detached_task_exec_ps_pause_metrics_kill_delete() {
    let s = Setup::new();
    let out = s.run(
        &["-d"],
        "bg",
        &[
            "sh",
            "-c",
            "while :; do date +%s > /tmp/tick; sleep 0.2; done",
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", s.ctrd.log_tail());

    // exec: output and exit code.
    let out = s.ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "sh",
        "-c",
        "echo from-exec; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(text(&out.stdout), "from-exec\n");

    // ps: the workload's processes.
    let ps = s.ctrd.ctr_ok(&["task", "ps", "bg"]);
    assert!(ps.lines().count() >= 2, "{ps}");

    // pause freezes the loop, resume thaws it.
    s.ctrd.ctr_ok(&["task", "pause", "bg"]);
    let ls = s.ctrd.ctr_ok(&["task", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("bg ") && l.contains("PAUSED")),
        "{ls}"
    );
    s.ctrd.ctr_ok(&["task", "resume", "bg"]);
    let ls = s.ctrd.ctr_ok(&["task", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("bg ") && l.contains("RUNNING")),
        "{ls}"
    );

    // metrics: CPU, memory, pids and block I/O of the container's cgroup
    // in the guest, in the format of this host's cgroup version (this
    // host's containerd decodes both; the test follows the shim's choice).
    let metrics = s
        .ctrd
        .ctr_ok(&["task", "metrics", "--format", "json", "bg"]);
    let m: serde_json::Value = serde_json::from_str(&metrics).expect("metrics JSON");
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    let (cpu, mem, pids, io) = if unified {
        (
            num(&m["cpu"]["usage_usec"]),
            num(&m["memory"]["usage"]),
            num(&m["pids"]["current"]),
            m.get("io"),
        )
    } else {
        (
            num(&m["cpu"]["usage"]["total"]),
            num(&m["memory"]["usage"]["usage"]),
            num(&m["pids"]["current"]),
            m.get("blkio"),
        )
    };
    assert!(cpu > 0, "no CPU usage in {m:#}");
    assert!(mem > 0, "no memory usage in {m:#}");
    // The loop's shell and its `sleep` or `date`.
    assert!(pids >= 1, "no pids in {m:#}");
    // The rootfs is shared (virtio-fs): no block device to count, but the
    // I/O statistics are there (their values: the agent's and the shim's
    // unit tests).
    assert!(io.is_some_and(|v| v.is_object()), "no I/O stats in {m:#}");

    // kill --all: the signal reaches an exec process too; the init (PID 1
    // of the container, no handler) ignores it and keeps running.
    s.ctrd.ctr_ok(&[
        "task",
        "exec",
        "--detach",
        "--exec-id",
        "usr1",
        "bg",
        "sh",
        "-c",
        "trap 'echo got > /tmp/u; mv /tmp/u /tmp/usr1; exit 0' USR1; touch /tmp/ready; while :; do sleep 0.1; done",
    ]);
    wait_for_file(&s, "/tmp/ready");
    s.ctrd
        .ctr_ok(&["task", "kill", "--all", "--signal", "SIGUSR1", "bg"]);
    assert_eq!(wait_for_file(&s, "/tmp/usr1"), "got\n");
    // The init's loop still ticks (and the container is not left frozen).
    let tick = |s: &Setup| wait_for_file(s, "/tmp/tick");
    let before = tick(&s);
    assert!(
        wait_until(Duration::from_secs(30), || tick(&s) != before),
        "the init stopped ticking after kill --all"
    );

    // kill: the task stops with the signal's status.
    s.ctrd
        .ctr_ok(&["task", "kill", "--signal", "SIGKILL", "bg"]);
    s.wait_stopped("bg");
    s.ctrd.ctr_ok(&["task", "delete", "bg"]);
    s.ctrd.ctr_ok(&["containers", "delete", "bg"]);
    s.assert_all_gone();
}

/// Waits for `path` to exist in task `bg` and returns its content (the
/// scripts put files in place whole: `touch`, or a rename).
fn wait_for_file(s: &Setup, path: &str) -> String {
    let mut out = None;
    let found = wait_until(Duration::from_secs(30), || {
        let cat = s
            .ctrd
            .ctr(&["task", "exec", "--exec-id", "cat", "bg", "cat", path]);
        let ok = cat.status.success();
        out = Some(cat);
        ok
    });
    let out = out.expect("one try");
    assert!(found, "{path} never appeared: {out:?}");
    text(&out.stdout)
}

#[test]
fn a_read_only_bind_mount_is_readable_not_writable() {
    let s = Setup::new();
    let host = s.env.dir.path().join("data");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("hello.txt"), "from the host\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        host.display()
    );
    let out = s.run(
        &["--rm", "--mount", &mount],
        "ro1",
        &[
            "sh",
            "-c",
            "cat /data/hello.txt; touch /data/new && echo WROTE || echo refused",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "from the host\nrefused\n");
    assert!(!host.join("new").exists());
    s.assert_all_gone();
}

#[test]
fn three_containers_in_parallel() {
    let s = Setup::new();
    let results: Vec<std::process::Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    s.run(
                        &["--rm"],
                        &format!("par{i}"),
                        &["sh", "-c", &format!("echo n{i}")],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in results.iter().enumerate() {
        assert!(out.status.success(), "par{i}: {out:?}");
        assert_eq!(text(&out.stdout), format!("n{i}\n"));
    }
    s.assert_all_gone();
}

/// Elastic sizing (the default): the VM boots at 512 MiB and grows by
/// the task's limit before its container is created. Static sizing
/// (`static_sandbox_resource_mgmt`): it boots at that size.
#[test]
fn the_vm_is_sized_from_the_configuration_plus_the_task_limits() {
    for static_sizing in [false, true] {
        let s = Setup::new();
        if static_sizing {
            s.env.append_config("static_sandbox_resource_mgmt = true");
        }
        vm_sized_from_the_task_limits(&s);
        let log = s.ctrd.log();
        assert_eq!(
            log.contains("static sizing: the VM keeps its boot size"),
            static_sizing,
            "{}",
            s.ctrd.log_tail()
        );
        assert_eq!(
            log.contains("VM resized"),
            !static_sizing,
            "{}",
            s.ctrd.log_tail()
        );
    }
}

fn vm_sized_from_the_task_limits(s: &Setup) {
    // Default 512 MiB (configuration) + 512 MiB asked by the task.
    let out = s.run(
        &["--rm", "--memory-limit", "536870912"],
        "big",
        &["sh", "-c", "grep MemTotal /proc/meminfo"],
    );
    assert!(out.status.success(), "{out:?}");
    let kib: u64 = text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {out:?}"));
    assert!(
        kib > 900 * 1024,
        "guest has {kib} KiB, expected about 1 GiB"
    );
    s.assert_all_gone();
}

#[test]
fn file_and_binary_log_uris() {
    let s = Setup::new();
    let dir = s.env.dir.path();
    // file://: stdout and stderr appended to one file.
    let log = dir.join("task.log");
    let uri = format!("file://{}", log.display());
    let out = s.run(
        &["--rm", "--log-uri", &uri],
        "flog",
        &["sh", "-c", "echo to-out; echo to-err >&2"],
    );
    assert!(out.status.success(), "{out:?}");
    let text_log = std::fs::read_to_string(&log).expect("log file");
    assert!(
        text_log.contains("to-out") && text_log.contains("to-err"),
        "{text_log}"
    );

    // binary://: containerd's logging-binary protocol (fds 3, 4, 5).
    let logger = dir.join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\nexec 5>&-\ncat <&3 > \"$1.out\" &\ncat <&4 > \"$1.err\" &\nwait\n",
    )
    .unwrap();
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&logger, exec).unwrap();
    let base = dir.join("blog");
    let uri = format!("binary://{}?{}", logger.display(), base.display());
    let out = s.run(
        &["--rm", "--log-uri", &uri],
        "blog",
        &["sh", "-c", "echo b-out; echo b-err >&2"],
    );
    assert!(out.status.success(), "{out:?}");
    let read = |ext: &str| {
        std::fs::read_to_string(format!("{}.{ext}", base.display())).unwrap_or_default()
    };
    wait_until(Duration::from_secs(10), || {
        !read("out").is_empty() && !read("err").is_empty()
    });
    assert_eq!(read("out"), "b-out\n");
    assert_eq!(read("err"), "b-err\n");
    s.assert_all_gone();
}

/// `runtime.timeline_dir`: once the pod is down, `<dir>/<pod id>.svg`
/// draws its steps; the shim's log still reaches containerd.
#[test]
fn the_shim_writes_the_pods_timeline() {
    let s = Setup::new();
    let dir = tempfile::tempdir().expect("temp dir");
    s.env
        .append_config(&format!("timeline_dir = \"{}\"", dir.path().display()));
    let out = s.run(&["--rm"], "tl1", &["true"]);
    assert!(out.status.success(), "{out:?}");
    s.assert_all_gone();
    assert!(
        s.ctrd.log().contains("pod VM started"),
        "{}",
        s.ctrd.log_tail()
    );
    let svg = std::fs::read_to_string(dir.path().join("tl1.svg")).expect("timeline written");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let steps: Vec<(&str, f64, f64)> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("step"))
        .map(|n| {
            let ms = |a| n.attribute(a).and_then(|v| v.parse().ok()).expect(a);
            (
                n.attribute("data-name").unwrap_or(""),
                ms("data-start-ms"),
                ms("data-end-ms"),
            )
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s.0).collect();
    for step in [
        "pod",
        "sandbox start",
        "vm start",
        "qemu (until QMP answers)",
        "guest kernel (vsock ready)",
        "agent dial",
        "CreateSandbox",
        "container create",
        "CreateContainer",
        "container start",
        "workload",
        "teardown",
        "DestroySandbox",
        "vm shutdown",
    ] {
        assert!(names.contains(&step), "{step} missing from {names:?}");
    }
    // The pod is down when the picture is drawn: no step is left open.
    assert!(!svg.contains("still open"), "{svg}");
    let (_, pod_start, pod_end) = steps[0];
    for (name, start, end) in &steps {
        assert!(
            *start >= pod_start && end >= start && *end <= pod_end,
            "{name} ({start}..{end}) not within the pod (..{pod_end})"
        );
    }
}
