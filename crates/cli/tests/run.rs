//! `capsa run` end to end: real VMs under QEMU, virtiofsd, vhost-device-vsock.

use std::process::{Command, Output};
use std::time::Duration;

use capsa_test_infra::cli::{command, run, text};
use capsa_test_infra::{assert_no_leaks, run_bounded, Guarded, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

/// Starts `capsa run -- sh -c 'echo ready; sleep 1000'` and returns once the
/// workload has printed `ready`.
fn start_sleeper(env: &TestEnv) -> Guarded {
    let mut c = command(env, &["run", "--rootfs"]);
    c.arg(&env.rootfs)
        .args(["--", "sh", "-c", "echo ready; sleep 1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut g = Guarded::spawn(&mut c);
    let mut stdout = g.child().stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("workload output");
    assert_eq!(&first, b"ready\n");
    g
}

#[test]
fn stdout_and_stderr_arrive_separately() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &[],
        &["sh", "-c", "echo to-out; echo to-err >&2"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(text(&out.stderr).contains("to-err"), "{out:?}");
    assert!(!text(&out.stderr).contains("to-out"), "{out:?}");
}

#[test]
fn exit_codes_come_back_exactly() {
    let env = TestEnv::new();
    for code in [0, 1, 42] {
        let out = run(&env, &[], &["sh", "-c", &format!("exit {code}")], None);
        assert_eq!(out.status.code(), Some(code), "{out:?}");
    }
}

#[test]
fn killed_workload_returns_128_plus_signal() {
    // SIGTERM to `capsa run` stops the workload: a shell that is PID 1 of its
    // namespace ignores SIGTERM, so capsa ends it with SIGKILL: 128+9.
    let env = TestEnv::new();
    let mut g = start_sleeper(&env);
    let pid = nix::unistd::Pid::from_raw(g.child().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = g.output(LIMIT);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert_no_leaks(&env.state_dir);
}

#[test]
fn sigkilled_capsa_takes_its_vm_along_and_the_next_run_cleans_up() {
    let env = TestEnv::new();
    let mut g = start_sleeper(&env);
    g.child().kill().unwrap();
    g.child().wait().unwrap();
    // The VM and its helpers get SIGKILL with their parent.
    let state = env.state_dir.to_string_lossy().into_owned();
    let gone = capsa_test_infra::wait_until(Duration::from_secs(20), || {
        capsa_test_infra::leaks::processes_naming(&state).is_empty()
    });
    assert!(gone, "helpers outlived capsa");
    // Its mounts and state remain until the next capsa collects them.
    let out = run(&env, &[], &["true"], None);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn stdin_reaches_the_workload_with_i() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &["-i"],
        &["sh", "-c", "read a; read b; echo \"got $a $b\"; cat"],
        Some(b"one\ntwo\nrest\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "got one two\nrest\n");
}

#[test]
fn without_i_stdin_is_closed() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &[],
        &["sh", "-c", "cat; echo eof"],
        Some(b"ignored\n"),
    );
    assert_eq!(text(&out.stdout), "eof\n", "{out:?}");
}

#[test]
fn t_gives_a_terminal() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &["-t"],
        &["sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty; tty"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("is-a-tty"), "{stdout:?}");
    assert!(stdout.contains("/dev/pts/"), "{stdout:?}");
}

#[test]
fn env_cwd_and_user_are_honoured() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &[
            "-e",
            "GREETING=hello world",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
        ],
        &["sh", "-c", "echo \"$GREETING\"; pwd; id -u; id -g"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "hello world\n/tmp\n1000\n1000\n");
}

#[test]
fn workload_sees_the_guest_kernel() {
    let env = TestEnv::new();
    let out = run(&env, &[], &["uname", "-r"], None);
    assert!(out.status.success(), "{out:?}");
    let guest = text(&out.stdout).trim().to_string();
    let host = nix::sys::utsname::uname().unwrap();
    let host = host.release().to_string_lossy().into_owned();
    assert!(!guest.is_empty());
    assert_ne!(guest, host, "the workload must not see the host kernel");
    let manifest = std::fs::read_to_string(capsa_test_infra::assets_dir().join("manifest.json"))
        .expect("assets manifest");
    assert!(
        manifest.contains(&guest),
        "guest kernel {guest} is not the built one"
    );
}

#[test]
fn missing_command_fails_cleanly() {
    let env = TestEnv::new();
    let out = run(&env, &[], &["/bin/no-such-command"], None);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_rootfs_fails_cleanly() {
    let env = TestEnv::new();
    let c = command(
        &env,
        &["run", "--rootfs", "/nonexistent/rootfs", "--", "true"],
    );
    let out = run_bounded(c, None, LIMIT);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/rootfs"),
        "{}",
        text(&out.stderr)
    );
    assert_no_leaks(&env.state_dir);
}

#[test]
fn bad_kernel_path_fails_cleanly() {
    let env = TestEnv::new();
    let text_cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("kernel =") {
                "kernel = \"/nonexistent/vmlinuz\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = env.write_config("bad-kernel.toml", &text_cfg);
    let out = run_true_with(&env, &cfg);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/vmlinuz"),
        "{}",
        text(&out.stderr)
    );
    assert_no_leaks(&env.state_dir);
}

/// `capsa --config CFG run --rootfs <busybox> -- true`.
fn run_true_with(env: &TestEnv, cfg: &std::path::Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsa"));
    c.arg("--config").arg(cfg).args(["run", "--rootfs"]);
    c.arg(&env.rootfs).args(["--", "true"]);
    run_bounded(c, None, LIMIT)
}

#[test]
fn unknown_config_key_fails_cleanly() {
    let env = TestEnv::new();
    let cfg = env.write_config("bad-key.toml", "[hypervisor.qemu]\nno_such_key = true\n");
    let out = run_true_with(&env, &cfg);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no_such_key"), "{err}");
    assert!(err.contains("bad-key.toml"), "{err}");
    assert_no_leaks(&env.state_dir);
}

#[test]
fn config_env_variable_is_honoured() {
    let env = TestEnv::new();
    let cfg = env.write_config("env.toml", "[hypervisor.qemu]\ndefault_vcpus = 3\n");
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsa"));
    c.arg("config").env("CAPSA_CONF_FILE", &cfg);
    let out = run_bounded(c, None, LIMIT);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("env.toml"), "{stdout}");
    assert!(stdout.contains("default_vcpus = 3"), "{stdout}");
}

#[test]
fn check_reports_the_accelerator() {
    let env = TestEnv::new();
    let out = run_bounded(command(&env, &["check"]), None, LIMIT);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let accel = stdout
        .lines()
        .find(|l| l.starts_with("accelerator"))
        .unwrap_or_else(|| panic!("no accelerator line in {stdout}"));
    let has_hw = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .split_whitespace()
        .any(|f| f == "vmx" || f == "svm");
    let expected = if has_hw && std::path::Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "tcg"
    };
    assert!(accel.contains(expected), "{accel}");
}

/// With `-t` on a real terminal, the workload's terminal starts at the
/// local size and follows it (SIGWINCH → TtyWinResize).
#[test]
fn the_guest_terminal_follows_the_local_size() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let env = TestEnv::new();
    let set_size = |fd: &std::os::fd::OwnedFd, rows: u16, cols: u16| {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from a live struct; the
        // fd is an open pty master.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ");
    };
    let pty = nix::pty::openpty(None, None).expect("openpty");
    set_size(&pty.master, 30, 100);
    let mut c = command(&env, &["run", "-t", "--rootfs"]);
    // The workload prints its size, waits until it changes, prints it again.
    c.arg(&env.rootfs)
        .args([
            "--",
            "sh",
            "-c",
            "s=$(stty size); echo $s; while [ \"$(stty size)\" = \"$s\" ]; do sleep 0.1; done; stty size",
        ])
        .stdin(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(pty.slave));
    let mut g = Guarded::spawn(&mut c);
    // Only capsa holds the terminal now: its exit ends our reads (EIO).
    drop(c);
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = std::time::Instant::now() + LIMIT;
    // Read until the first size, then resize and signal capsa.
    while !text(&seen).contains("30 100") {
        assert!(std::time::Instant::now() < deadline, "{}", text(&seen));
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let master_fd: std::os::fd::OwnedFd = master.try_clone().unwrap().into();
    set_size(&master_fd, 40, 120);
    let pid = nix::unistd::Pid::from_raw(g.child().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGWINCH).unwrap();
    while !text(&seen).contains("40 120") && std::time::Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let status = g.child().wait().expect("wait");
    let seen = text(&seen);
    assert!(status.success(), "{status:?}: {seen}");
    assert!(seen.contains("30 100"), "{seen}");
    assert!(seen.contains("40 120"), "{seen}");
    assert_no_leaks(&env.state_dir);
}

/// A guest kernel that panics at boot (no init to run): QEMU exits
/// (`panic=1`, `-no-reboot`) while capsa polls the vsock device over QMP.
/// The error says the VM exited and shows the console, never that the QMP
/// session closed under the poll (which it did, now and then).
#[test]
fn a_guest_that_panics_at_boot_is_reported_as_exited() {
    let env =
        TestEnv::with_qemu_extra("kernel_params = \"rdinit=/no/such/init init=/no/such/init\"");
    let out = run(&env, &[], &["true"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        stderr.contains("the VM exited before its agent answered"),
        "{stderr}"
    );
    assert!(stderr.contains("Kernel panic"), "{stderr}");
    assert!(!stderr.contains("QMP"), "{stderr}");
}
