//! `capsa-snapshotter` serving one test or bench: its store (`root/`),
//! socket (`run/snapshotter.sock`) and log in a directory of the caller's.
//! Register it in a private containerd with
//! [`crate::containerd::Opts::proxy_snapshotter`] = [`Snapshotter::socket`].
//! Killed (by pid) when dropped, also when the caller panicked;
//! [`Snapshotter::stop`] ends it cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::Guarded;

/// How long the daemon may take to serve, and to exit on SIGTERM.
const LIMIT: Duration = Duration::from_secs(60);

pub struct Snapshotter {
    child: Guarded,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Snapshotter {
    /// Starts `bin` on `dir` with snapshot images of `image_size` (`256M`,
    /// `1G`) and waits until its socket is there.
    pub fn start(bin: &Path, dir: &Path, image_size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("snapshotter directory");
        let (root, socket, log) = (
            dir.join("root"),
            dir.join("run/snapshotter.sock"),
            dir.join("snapshotter.log"),
        );
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
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut me = Self {
            child: Guarded(Some(child)),
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
                "capsa-snapshotter: no socket within {LIMIT:?}:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// The store (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The snapshots API socket (`--address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for its exit: `None` when it did not exit
    /// within the limit (the guard kills it when dropped). [`Self::log`]
    /// still reads.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let child = self.child.child();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let start = Instant::now();
        while start.elapsed() < LIMIT {
            if let Some(st) = child.try_wait().expect("wait") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
