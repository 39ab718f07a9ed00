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
//! Benches start it in a directory of their own with their own image size
//! ([`Snapshotter::start_in`]). Dropping it stops the daemon by pid
//! (SIGTERM, then SIGKILL past a limit), unmounts what is mounted below its
//! directory, detaches loop devices left over its images, and removes a
//! directory it made. Drop the containerd that uses it first;
//! [`Snapshotter::stop`] ends it cleanly before that, to check its exit.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
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
    crate::workspace_binary(
        "capsa-snapshotter",
        "CAPSA_TEST_SNAPSHOTTER",
        "capsa-snapshotter",
    )
}

/// A running `capsa-snapshotter --root <dir>/root --address <dir>/run/...`.
pub struct Snapshotter {
    child: Guarded,
    /// Its directory (store, socket, log).
    base: PathBuf,
    /// Declared after `child`: removed once the daemon is gone (`None`:
    /// the caller's directory).
    _dir: Option<tempfile::TempDir>,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Snapshotter {
    /// Starts this build's daemon in a new `/tmp/capsa-test-snap-*`
    /// directory and waits (bounded) for its socket.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("capsa-test-snap-")
            .tempdir_in("/tmp")
            .expect("snapshotter temp dir");
        let path = dir.path().to_path_buf();
        Self::launch(&snapshotter_binary(), &path, IMAGE_SIZE, Some(dir))
    }

    /// Starts `bin` in the caller's `dir` with snapshot images of
    /// `image_size` (`256M`, `1G`) and waits (bounded) for its socket.
    pub fn start_in(bin: &Path, dir: &Path, image_size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("snapshotter directory");
        Self::launch(bin, dir, image_size, None)
    }

    fn launch(bin: &Path, base: &Path, image_size: &str, dir: Option<tempfile::TempDir>) -> Self {
        let root = base.join("root");
        let socket = base.join("run/snapshotter.sock");
        let log = base.join("snapshotter.log");
        let log_file = std::fs::File::create(&log).expect("snapshotter log");
        let mut cmd = Command::new(bin);
        cmd.arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .args(["--image-size", image_size])
            .env("RUST_LOG", "capsa_snapshotter=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let mut me = Self {
            child: Guarded::spawn(&mut cmd),
            base: base.to_path_buf(),
            _dir: dir,
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

    /// SIGTERM, then waits (bounded) for its exit: `None` when it did
    /// not exit in time or was stopped already (the guard kills it when
    /// dropped). [`Self::log`] still reads.
    pub fn stop(&mut self) -> Option<ExitStatus> {
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
        if self.child.0.is_some() {
            match self.stop() {
                Some(st) if st.success() => {}
                other => eprintln!(
                    "capsa-test-infra: capsa-snapshotter stopped with {other:?}:\n{}",
                    self.log()
                ),
            }
        }
        crate::containerd::cleanup::unmount_below(&self.base);
        crate::block::detach_loops_below(&self.base);
    }
}
