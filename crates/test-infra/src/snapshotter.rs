//! `capsa-snapshotter` of this build, serving a private store for one
//! test: register it in a [`crate::containerd::Containerd`] with
//! `Opts::proxy_snapshotter` = [`Snapshotter::socket`].
//!
//! ```no_run
//! use capsa_test_infra::containerd::{Containerd, Opts, PROXY_SNAPSHOTTER};
//! use capsa_test_infra::snapshotter::Snapshotter;
//! let snap = Snapshotter::start();
//! let c = Containerd::start(Opts {
//!     proxy_snapshotter: Some(snap.socket().to_path_buf()),
//!     ..Default::default()
//! });
//! let image = c.import_busybox_into(PROXY_SNAPSHOTTER);
//! ```
//!
//! Dropping it stops the daemon by pid (SIGTERM, then SIGKILL past a
//! limit), detaches loop devices left over its images, and removes its
//! directory. Drop the containerd that uses it first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::Guarded;

/// How long the daemon may take to create its socket or to exit.
const LIMIT: Duration = Duration::from_secs(60);
/// Size of its empty filesystem images (sparse).
const IMAGE_SIZE: &str = "256M";

/// `capsa-snapshotter`: `$CAPSA_TEST_SNAPSHOTTER`, else the one of this
/// build's profile (next to the test binary's `deps/`, as
/// [`crate::shim_binary`]), which `cargo build -p capsa-snapshotter` (or a
/// build of the workspace) makes.
pub fn snapshotter_binary() -> PathBuf {
    const NAME: &str = "capsa-snapshotter";
    let path = std::env::var_os("CAPSA_TEST_SNAPSHOTTER")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join(NAME))
        })
        .unwrap_or_else(|| PathBuf::from(NAME));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p capsa-snapshotter` (or set CAPSA_TEST_SNAPSHOTTER)",
        path.display()
    );
    path
}

/// A running `capsa-snapshotter --root <dir>/root --address <dir>/run/...`.
pub struct Snapshotter {
    child: Guarded,
    /// Declared after `child`: removed once the daemon is gone.
    dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Snapshotter {
    /// Starts the daemon in a new `/tmp/capsa-test-snap-*` directory and
    /// waits (bounded) for its socket.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("capsa-test-snap-")
            .tempdir_in("/tmp")
            .expect("snapshotter temp dir");
        let root = dir.path().join("root");
        let socket = dir.path().join("run/snapshotter.sock");
        let log = dir.path().join("snapshotter.log");
        let log_file = std::fs::File::create(&log).expect("snapshotter log");
        let mut cmd = Command::new(snapshotter_binary());
        cmd.arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .args(["--image-size", IMAGE_SIZE])
            .env("RUST_LOG", "capsa_snapshotter=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let mut me = Self {
            child: Guarded::spawn(&mut cmd),
            dir,
            root,
            socket,
            log,
        };
        let start = Instant::now();
        while !me.socket.exists() {
            if let Some(st) = me.child.child().try_wait().expect("wait") {
                panic!("capsa-snapshotter exited ({st}):\n{}", me.log());
            }
            assert!(
                start.elapsed() < LIMIT,
                "capsa-snapshotter made no socket within {LIMIT:?}:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// Its `--root` (the store).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's image directory (`<root>/snapshots`).
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Its `--address`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The image files in the store, sorted.
    pub fn images(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.images_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits (bounded) until the store holds no image, as containerd's
    /// garbage collection removes them asynchronously; `context` is
    /// printed on failure.
    pub fn wait_empty(&self, limit: Duration, context: impl Fn() -> String) {
        let start = Instant::now();
        while !self.images().is_empty() {
            assert!(
                start.elapsed() < limit,
                "images left in the store: {:?}\n{}\n{}",
                self.images(),
                context(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.0.as_mut()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child.0 = None;
                return Some(st);
            }
            if start.elapsed() > LIMIT {
                // Guarded's drop kills it.
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        match self.stop() {
            Some(st) if st.success() => {}
            other => eprintln!(
                "capsa-test-infra: capsa-snapshotter stopped with {other:?}:\n{}",
                self.log()
            ),
        }
        crate::containerd::cleanup::unmount_below(self.dir.path());
        crate::block::detach_loops_below(self.dir.path());
    }
}
