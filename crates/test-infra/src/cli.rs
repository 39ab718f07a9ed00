//! Driving this build's `capsa` from tests: a bounded run with the test's
//! configuration, its output as text, an exec, a detached sandbox removed
//! when the test ends.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::leaks::processes_naming;
use crate::{assert_no_leaks, run_bounded, wait_until, workspace_binary, TestEnv};

/// The bound of one `capsa` command (a VM boots under TCG).
pub const LIMIT: Duration = Duration::from_secs(300);

/// This build's `capsa` (`$CAPSA_TEST_CLI` overrides it).
pub fn binary() -> PathBuf {
    workspace_binary("capsa", "CAPSA_TEST_CLI", "capsa")
}

/// `capsa --config <the test's> ARGS`, not started.
pub fn command(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(&env.config).args(args);
    cmd
}

/// Runs `capsa ARGS`, bounded by [`LIMIT`].
pub fn capsa(env: &TestEnv, args: &[&str]) -> Output {
    run_bounded(command(env, args), None, LIMIT)
}

/// [`capsa`] with `input` on its stdin.
pub fn capsa_with_input(env: &TestEnv, args: &[&str], input: &[u8]) -> Output {
    run_bounded(command(env, args), Some(input), LIMIT)
}

/// `capsa run --rootfs <busybox> OPTS -- CMD`, bounded; nothing of it may
/// be left afterwards.
pub fn run(env: &TestEnv, opts: &[&str], cmd: &[&str], input: Option<&[u8]>) -> Output {
    let mut c = command(env, &["run", "--rootfs"]);
    c.arg(&env.rootfs).args(opts).arg("--").args(cmd);
    let out = run_bounded(c, input, LIMIT);
    assert_no_leaks(&env.state_dir);
    out
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `capsa exec ID -- sh -c SCRIPT`, which must succeed; its stdout.
pub fn exec(env: &TestEnv, id: &str, script: &str) -> String {
    let out = capsa(env, &["exec", id, "--", "sh", "-c", script]);
    assert!(out.status.success(), "exec {script}: {out:?}");
    text(&out.stdout)
}

/// The guest's `MemTotal` in sandbox `id`, KiB.
pub fn mem_total_kib(env: &TestEnv, id: &str) -> u64 {
    let out = exec(env, id, "grep MemTotal /proc/meminfo");
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out:?}"))
}

/// `capsa rm --force` of sandbox `.1` when the test ends, even on failure.
pub struct Removed<'a>(pub &'a TestEnv, pub &'a str);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = capsa(self.0, &["rm", "--force", self.1]);
    }
}

/// Nothing of the test's sandboxes is left: no process (VM helpers name
/// the state directory, owners name the configuration file), mount or
/// state.
pub fn assert_all_gone(env: &TestEnv) {
    assert_no_leaks(&env.state_dir);
    let owners = processes_naming(&env.config.to_string_lossy());
    assert!(owners.is_empty(), "owners left behind: {owners:?}");
}

/// A detached sandbox, removed (with its owner) when the test ends, even
/// if it fails.
pub struct Detached<'a> {
    pub env: &'a TestEnv,
    pub id: String,
}

impl<'a> Detached<'a> {
    /// `capsa run -d --name <id> --rootfs <busybox> -- <cmd>`.
    pub fn start(env: &'a TestEnv, id: &str, cmd: &[&str]) -> Self {
        let rootfs = env.rootfs.to_string_lossy().into_owned();
        let mut args = vec!["run", "-d", "--name", id, "--rootfs", &rootfs, "--"];
        args.extend_from_slice(cmd);
        let out = capsa(env, &args);
        let sb = Self {
            env,
            id: id.to_string(),
        };
        assert!(out.status.success(), "run -d failed: {out:?}");
        assert_eq!(text(&out.stdout).trim(), id, "run -d prints the id");
        sb
    }

    /// `capsa inspect`.
    pub fn inspect(&self) -> serde_json::Value {
        let out = capsa(self.env, &["inspect", &self.id]);
        assert!(out.status.success(), "inspect: {out:?}");
        serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
    }

    /// Waits until `inspect` says `state`.
    pub fn wait_state(&self, state: &str) -> serde_json::Value {
        let mut v = serde_json::Value::Null;
        let became = wait_until(Duration::from_secs(60), || {
            v = self.inspect();
            v["state"] == state
        });
        assert!(became, "sandbox never became {state}: {v:#}");
        v
    }

    /// The hypervisor pid the sandbox's record gives.
    pub fn hypervisor_pid(&self) -> i32 {
        let v = self.inspect();
        v["hypervisor_pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no hypervisor pid: {v:#}")) as i32
    }
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let dir = self.env.state_dir.join(&self.id);
        if !dir.exists() {
            return;
        }
        let _ = capsa(self.env, &["rm", "--force", &self.id]);
        // Last resort: the owner this test started, by the pid it recorded.
        if let Ok(record) = std::fs::read(dir.join("state.json")) {
            let record: serde_json::Value = serde_json::from_slice(&record).unwrap_or_default();
            if let Some(pid) = record["owner_pid"].as_i64() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
