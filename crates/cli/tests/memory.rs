//! Memory that goes back to the host: with `reclaim_guest_freed_memory`
//! the VM has a virtio-balloon device with free page reporting, and pages
//! the guest frees leave QEMU's resident set; without it they stay. A
//! User-Mode Linux guest reports its free pages itself (capsa's kernel
//! patch `0006`): they leave the UML kernel's resident set.
//! Real VMs (TCG), real RSS (`/proc/PID/status`).

use std::time::{Duration, Instant};

use capsa_test_infra::cli::{capsa, exec, Removed};
use capsa_test_infra::{assert_no_leaks, wait_until, TestEnv};

const LIMIT: Duration = Duration::from_secs(300);
/// What the guest allocates and frees, MiB.
const FILL_MIB: u64 = 256;
/// How long freed pages may take to leave QEMU's RSS with reporting on
/// (the guest reports 2 s after the frees; TCG and a busy host are slow).
const GIVE_BACK_WAIT: Duration = Duration::from_secs(90);
/// How long QEMU's RSS is watched with reporting off: several times what
/// it takes with reporting on here (a few seconds).
const KEPT_WINDOW: Duration = Duration::from_secs(20);

/// Resident set of process `pid`, MiB (`VmRSS`; guest RAM is a shared
/// memfd, so it counts there as `RssShmem`).
fn rss_mib(pid: i64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A `capsa exec` left running, killed and reaped when the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a sandbox in `env`, named `id`; a process in its container
/// allocates and touches [`FILL_MIB`] (a `dd` buffer, held while `dd`
/// blocks on a pipe nobody reads) and is then killed, which frees it;
/// the VM process's RSS is then watched for `window`. Returns the RSS
/// while the memory was held and the lowest seen after the free (the
/// watch ends early once half of it is back).
fn fill_free_and_watch(env: &TestEnv, id: &str, window: Duration) -> (u64, u64) {
    let rootfs = env.rootfs.to_string_lossy().into_owned();
    let removed = Removed(env, id);
    let out = capsa(
        env,
        &[
            "run",
            "-d",
            "--name",
            id,
            "--rootfs",
            &rootfs,
            "--",
            "tail",
            "-f",
            "/dev/null",
        ],
    );
    assert!(out.status.success(), "run -d: {out:?}");
    let out = capsa(env, &["inspect", id]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let qemu = v["hypervisor_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no hypervisor pid: {v:#}"));

    let holder = Running(
        capsa_test_infra::cli::command(env, &["exec", id, "--", "sh", "-c"])
            .arg(format!(
                "dd if=/dev/zero bs={} count=1 2>/dev/null | sleep 999",
                FILL_MIB << 20
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn capsa exec"),
    );
    // Held once dd's resident set is (nearly: a page or so short) the
    // whole buffer.
    let held = wait_until(LIMIT, || {
        let out = capsa(
            env,
            &[
                "exec",
                id,
                "--",
                "sh",
                "-c",
                "grep VmRSS /proc/$(pidof dd)/status",
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse::<u64>().ok())
            .is_some_and(|kib| kib >= (FILL_MIB << 10) * 95 / 100)
    });
    assert!(held, "dd never held {FILL_MIB} MiB in the guest");
    let filled = rss_mib(qemu);
    exec(env, id, "kill $(pidof dd) $(pidof sleep)");
    drop(holder);
    let start = Instant::now();
    let mut lowest = filled;
    wait_until(window, || {
        lowest = lowest.min(rss_mib(qemu));
        filled.saturating_sub(lowest) >= FILL_MIB / 2
    });
    eprintln!(
        "{id}: VM RSS {filled} MiB held, {lowest} MiB lowest after the free ({:?})",
        start.elapsed()
    );
    drop(removed);
    assert_no_leaks(&env.state_dir);
    (filled, lowest)
}

/// A QEMU sandbox with reporting `on` (1 GiB of guest RAM).
fn qemu_env(on: bool) -> TestEnv {
    TestEnv::with_qemu_extra(&format!(
        "default_memory = 1024\nreclaim_guest_freed_memory = {on}"
    ))
}

#[test]
fn freed_guest_memory_goes_back_with_free_page_reporting() {
    let (filled, lowest) = fill_free_and_watch(&qemu_env(true), "reports", GIVE_BACK_WAIT);
    assert!(
        filled.saturating_sub(lowest) >= FILL_MIB / 2,
        "QEMU's RSS went from {filled} MiB to {lowest} MiB within {GIVE_BACK_WAIT:?} \
         after the guest freed {FILL_MIB} MiB: expected at least {} MiB back",
        FILL_MIB / 2
    );
}

#[test]
fn freed_guest_memory_stays_without_free_page_reporting() {
    let (filled, lowest) = fill_free_and_watch(&qemu_env(false), "keeps", KEPT_WINDOW);
    assert!(
        filled.saturating_sub(lowest) < FILL_MIB / 2,
        "QEMU's RSS went from {filled} MiB to {lowest} MiB without free page reporting"
    );
}

#[test]
fn on_uml_freed_guest_memory_goes_back() {
    let env = TestEnv::with_installed_config("configuration-uml.toml");
    let (filled, lowest) = fill_free_and_watch(&env, "uml-reports", GIVE_BACK_WAIT);
    assert!(
        filled.saturating_sub(lowest) >= FILL_MIB / 2,
        "the UML kernel's RSS went from {filled} MiB to {lowest} MiB within {GIVE_BACK_WAIT:?} \
         after the guest freed {FILL_MIB} MiB: expected at least {} MiB back",
        FILL_MIB / 2
    );
}
