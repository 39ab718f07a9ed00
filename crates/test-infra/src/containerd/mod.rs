//! Debian's real containerd (1.6), private to one test: its own root, state
//! directory, socket and configuration under one temporary directory, with
//! CRI runtimes `runc` (default) and `capsa` (`io.containerd.capsa.v2`).
//!
//! ```no_run
//! use capsa_test_infra::containerd::{Containerd, Opts};
//! let c = Containerd::start(Opts::default());
//! let image = c.import_busybox();
//! let root = c.runc_root();
//! let root = root.to_str().unwrap();
//! let out = c.ctr(&["run", "--rm", "--runc-root", root, &image, "t1", "echo", "hi"]);
//! assert_eq!(out.stdout, b"hi\n");
//! ```
//!
//! Dropping it stops containerd by pid, kills what it left behind (shims
//! naming its socket, with their descendants), unmounts everything below
//! its directory and removes it, also when the test panicked.

pub(crate) mod cleanup;
pub mod cni;
mod config;
mod cri;
mod image;
mod task;

pub use cleanup::{kill_processes_naming, try_run};
pub use cni::CniNetwork;
pub use config::{PAUSE_IMAGE, PROXY_SNAPSHOTTER};
pub use cri::{tcp_port_mapping, Cri};
pub use image::{BUSYBOX_IMAGE, EMPTY_IMAGE};
/// The CRI API types the [`Cri`] helpers take (`DnsConfig`, `PortMapping`, ...).
pub use k8s_cri::v1 as cri_v1;
pub use task::{Mount, MountExt, TaskExit};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// containerd's binary (Debian's `containerd` package).
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// Its client (same package).
pub const CTR: &str = "/usr/bin/ctr";
/// The containerd namespace CRI uses; `ctr` runs in it too so that images
/// imported once serve both.
pub const NAMESPACE: &str = "k8s.io";

/// How long one `ctr` command may take.
const CTR_LIMIT: Duration = Duration::from_secs(120);
/// How long containerd may take to answer on its socket.
const START_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Directory holding `containerd-shim-capsa-v2`, put first in
    /// containerd's `PATH` (for the shim crate's tests: the parent of
    /// `env!("CARGO_BIN_EXE_containerd-shim-capsa-v2")`).
    pub shim_dir: Option<PathBuf>,
    /// capsa configuration file: CRI runtime `capsa`'s `options.ConfigPath`
    /// and `CAPSA_CONF_FILE` in containerd's (so the shims') environment.
    pub capsa_config: Option<PathBuf>,
    /// Pod networking: CRI's CNI gets the plugins and a bridge network of
    /// its own (see [`cni`]); without it, only pods in the host's network
    /// namespace can run.
    pub cni: bool,
    /// Socket of a snapshotter serving containerd's snapshots API (such as
    /// `capsa-snapshotter`), registered as proxy plugin
    /// [`PROXY_SNAPSHOTTER`]; the defaults of CRI and `ctr` are unchanged.
    pub proxy_snapshotter: Option<PathBuf>,
    /// The snapshotter of CRI (`[plugins."io.containerd.grpc.v1.cri".containerd]
    /// snapshotter`) and of `ctr` (image imports included), such as
    /// [`PROXY_SNAPSHOTTER`] with [`Opts::proxy_snapshotter`]; by default
    /// `overlayfs` where an overlay mount works, else `native`.
    pub snapshotter: Option<&'static str>,
}

pub struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
    snapshotter: &'static str,
    child: Option<Child>,
    /// Dropped after containerd stopped (fields drop after `drop`).
    cni: Option<CniNetwork>,
}

impl Containerd {
    /// Starts containerd and waits until it answers on its socket.
    pub fn start(opts: Opts) -> Self {
        assert!(
            Path::new(CONTAINERD).is_file() && Path::new(CTR).is_file(),
            "containerd is not installed: run `make deps`"
        );
        let dir = tempfile::Builder::new()
            .prefix("capsa-ctrd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let socket = dir.path().join("c.sock");
        let snapshotter = opts
            .snapshotter
            .unwrap_or_else(|| config::detect_snapshotter(dir.path()));
        let config_path = dir.path().join("config.toml");
        let text = config::render(&config::ConfigParams {
            dir: dir.path(),
            socket: &socket,
            snapshotter,
            capsa_config: opts.capsa_config.as_deref(),
            proxy_snapshotter: opts.proxy_snapshotter.as_deref(),
        });
        std::fs::write(&config_path, text).expect("write containerd config");
        let cni = opts.cni.then(|| {
            let d = dir.path().join("cni");
            CniNetwork::install(&d.join("bin"), &d.join("net.d"), &d.join("ipam"))
        });
        let log = dir.path().join("containerd.log");
        let log_file = std::fs::File::create(&log).expect("containerd log");

        let mut cmd = Command::new(CONTAINERD);
        cmd.arg("--config")
            .arg(&config_path)
            .env("PATH", search_path(opts.shim_dir.as_deref()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file);
        if let Some(conf) = &opts.capsa_config {
            cmd.env("CAPSA_CONF_FILE", conf);
        }
        let child = cmd.spawn().expect("spawn containerd");
        // From here on a panic drops `me`, which cleans up.
        let mut me = Self {
            dir,
            socket,
            log,
            snapshotter,
            child: Some(child),
            cni,
        };
        me.wait_ready();
        me
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "containerd exited ({st}) before answering\n{}",
                    self.log_tail()
                );
            }
            let mut cmd = Command::new(CTR);
            cmd.arg("--address").arg(&self.socket).arg("version");
            if let Some(out) = cleanup::try_run(cmd, Duration::from_secs(5)) {
                if out.status.success() {
                    return;
                }
            }
            if start.elapsed() > START_LIMIT {
                panic!(
                    "containerd did not answer on {} within {START_LIMIT:?}\n{}",
                    self.socket.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The instance's private directory (root, state, socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The snapshotter of CRI and of `ctr`: [`Opts::snapshotter`], else
    /// `overlayfs` or `native`.
    pub fn snapshotter(&self) -> &str {
        self.snapshotter
    }

    /// runc's state directory for CRI's runc runtime; pass it to
    /// `ctr run --runc-root` too, so that nothing lands in the host's
    /// `/run/containerd/runc`.
    pub fn runc_root(&self) -> PathBuf {
        self.dir().join("runc")
    }

    /// The CNI network of an instance started with [`Opts::cni`].
    pub fn cni(&self) -> &CniNetwork {
        self.cni
            .as_ref()
            .expect("containerd was started without Opts::cni")
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("containerd").id()
    }

    /// containerd's whole log (its own lines and its shims').
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 60 lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- {} (tail) ---\n{tail}", self.log.display())
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CTR);
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args)
            .env("CONTAINERD_SNAPSHOTTER", self.snapshotter);
        cmd
    }

    /// `ctr --address <socket> --namespace k8s.io <args>`, bounded in time.
    pub fn ctr(&self, args: &[&str]) -> Output {
        crate::run_bounded(self.ctr_command(args), None, CTR_LIMIT)
    }

    /// [`Self::ctr`] with `input` on its standard input. Note: `ctr run`
    /// does not reliably pass the end of its input on to the container
    /// (it may read EOF before it can close the task's stdin), so the
    /// container should read a known amount (`read line`), not up to EOF.
    pub fn ctr_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        crate::run_bounded(self.ctr_command(args), Some(input), CTR_LIMIT)
    }

    /// [`Self::ctr`] that must succeed; returns its standard output.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys of the committed snapshots of `snapshotter` (an image's
    /// layers), from `ctr snapshots ls`.
    pub fn committed_snapshots(&self, snapshotter: &str) -> Vec<String> {
        let listing = self.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
        listing
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().last() == Some("Committed"))
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect()
    }

    /// Best effort, bounded: kills and deletes the tasks and containers
    /// left in every namespace, so that shims clean up after themselves.
    fn remove_leftover_tasks(&self) {
        let start = Instant::now();
        let run = |ns: &str, args: &[&str]| {
            let mut cmd = Command::new(CTR);
            cmd.arg("--address")
                .arg(&self.socket)
                .arg("--namespace")
                .arg(ns);
            cmd.args(args);
            cleanup::try_run(cmd, Duration::from_secs(20))
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let Some(namespaces) = run("default", &["namespaces", "ls", "-q"]) else {
            return;
        };
        for ns in namespaces.lines() {
            for id in run(ns, &["tasks", "ls", "-q"]).unwrap_or_default().lines() {
                if start.elapsed() > Duration::from_secs(60) {
                    return;
                }
                run(ns, &["tasks", "delete", "--force", id]);
            }
            for id in run(ns, &["containers", "ls", "-q"])
                .unwrap_or_default()
                .lines()
            {
                run(ns, &["containers", "delete", id]);
            }
        }
    }
}

/// containerd's `PATH`: the shim's directory first.
fn search_path(shim_dir: Option<&Path>) -> String {
    let base = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    match shim_dir {
        Some(d) => format!("{}:{base}", d.display()),
        None => base.to_string(),
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if alive && self.cni.is_some() {
            // Through CRI, so that CNI releases what it set up for the pods.
            self.remove_leftover_pods();
        }
        if alive {
            self.remove_leftover_tasks();
        }
        if let Some(mut child) = self.child.take() {
            cleanup::stop_child(&mut child, Duration::from_secs(10));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        let needle = format!("{}/", self.dir.path().display());
        let killed = cleanup::kill_processes_naming(&needle);
        if !killed.is_empty() {
            eprintln!(
                "capsa-test-infra: killed leftovers of containerd:\n{}",
                killed.join("\n")
            );
        }
        cleanup::unmount_below(self.dir.path());
        if let Err(e) = std::fs::remove_dir_all(self.dir.path()) {
            eprintln!(
                "capsa-test-infra: removing {}: {e}",
                self.dir.path().display()
            );
        }
    }
}
