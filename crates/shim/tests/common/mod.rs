//! containerd with the capsa shim registered, and leak checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use capsa_test_infra::containerd::{Containerd, Opts};
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::{assert_no_leaks, run_bounded, wait_until, TestEnv};

pub const RUNTIME: &str = "io.containerd.capsa.v2";

/// A capsa configuration (short state directory) and a private containerd
/// whose `PATH` finds this build's shim first.
pub struct Setup {
    pub ctrd: Containerd,
    pub env: TestEnv,
    pub image: String,
}

impl Setup {
    /// The PID column of `ctr task ls` for task `id`, and its status.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        let ls = self.ctrd.ctr_ok(&["task", "ls"]);
        ls.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols[1].parse().unwrap_or(0), cols[2].to_string())
            })
    }

    /// Waits (60 s at most) until task `id` is stopped or gone.
    pub fn wait_stopped(&self, id: &str) {
        let mut last = None;
        let stopped = wait_until(Duration::from_secs(60), || {
            last = self.task(id);
            last.as_ref().is_none_or(|(_, status)| status == "STOPPED")
        });
        assert!(
            stopped,
            "task {id} not stopped: {last:?}\n{}",
            self.ctrd.log_tail()
        );
    }

    pub fn new() -> Self {
        Self::build(false)
    }

    /// [`Setup::new`] whose containerd runs CRI pods with pod networking
    /// (CNI bridge, host-local, portmap: `Opts::cni`).
    pub fn with_network() -> Self {
        Self::build(true)
    }

    /// [`Setup::new`] with block device use on
    /// (`disable_block_device_use = false`).
    pub fn with_block() -> Self {
        Self::build_in(
            TestEnv::short_with_qemu_extra("disable_block_device_use = false"),
            false,
        )
    }

    /// [`Setup::new`] with extra `[hypervisor.qemu]` keys.
    pub fn with_qemu_extra(extra: &str) -> Self {
        Self::build_in(TestEnv::short_with_qemu_extra(extra), false)
    }

    /// [`Setup::new`] over a test environment of the caller's.
    pub fn with_env(env: TestEnv) -> Self {
        Self::build_in(env, false)
    }

    /// [`Setup::with_env`] whose containerd runs CRI pods with pod
    /// networking ([`Setup::with_network`]) on `snapshotter`.
    pub fn with_env_and_network(env: TestEnv, snapshotter: &'static str) -> Self {
        Self::build_with(env, true, Some(snapshotter))
    }

    fn build(cni: bool) -> Self {
        Self::build_in(TestEnv::short(), cni)
    }

    fn build_in(env: TestEnv, cni: bool) -> Self {
        Self::build_with(env, cni, None)
    }

    fn build_with(env: TestEnv, cni: bool, snapshotter: Option<&'static str>) -> Self {
        let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-capsa-v2"));
        let ctrd = Containerd::start(Opts {
            shim_dir: shim.parent().map(Path::to_path_buf),
            capsa_config: Some(env.config.clone()),
            cni,
            snapshotter,
            ..Default::default()
        });
        let image = ctrd.import_busybox();
        Self { ctrd, env, image }
    }

    /// `ctr run --runtime io.containerd.capsa.v2 <opts> <image> <id> <cmd>`.
    pub fn run(&self, opts: &[&str], id: &str, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctrd.ctr(&args)
    }

    /// Nothing of capsa is left: no process naming the state directory or
    /// the shim, no mount, no state.
    pub fn assert_all_gone(&self) {
        // containerd reaps and deletes asynchronously after a task ends.
        wait_until(Duration::from_secs(20), || {
            processes_naming("containerd-shim-capsa-v2").is_empty()
        });
        let shims: Vec<String> = processes_naming("containerd-shim-capsa-v2")
            .into_iter()
            .filter(|p| p.contains(&self.ctrd.socket().display().to_string()))
            .collect();
        assert!(shims.is_empty(), "shims left behind: {shims:?}");
        assert_no_leaks(&self.env.state_dir);
    }

    /// No sandbox state is left in the state directory (a pod refused
    /// before it started leaves none).
    pub fn assert_no_state(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.env.state_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "state left: {left:?}");
    }
}

impl Setup {
    /// The socket file the shim of pod (or lone task) `id` served on
    /// (`/run/containerd/s/<hash>`, keyed by containerd's address, the
    /// namespace and the id).
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let address = containerd_shim::socket_address(
            &self.ctrd.socket().display().to_string(),
            capsa_test_infra::containerd::NAMESPACE,
            id,
        );
        PathBuf::from(address.trim_start_matches("unix://"))
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `capsa` binary of this build, next to the shim's.
fn capsa_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-capsa-v2")).with_file_name("capsa");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace (cargo build -p capsa)",
        bin.display()
    );
    bin
}

/// `capsa --config <the test's> ARGS`, bounded in time.
pub fn capsa(s: &Setup, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(capsa_bin());
    cmd.arg("--config").arg(&s.env.config).args(args);
    run_bounded(cmd, input, Duration::from_secs(120))
}

/// The files of the drives the hypervisor has open in pod `pod`'s VM
/// (drives with a medium, over the debug channel of the pod's state
/// directory below `state_dir`).
pub fn hypervisor_drive_files(state_dir: &Path, pod: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let inventory = rt
        .block_on(capsa_hypervisor::debug::inventory(&state_dir.join(pod)))
        .expect("the VM's debug channel answers");
    inventory
        .drives
        .into_iter()
        .filter_map(|d| Some(d.file?.display().to_string()))
        .collect()
}
