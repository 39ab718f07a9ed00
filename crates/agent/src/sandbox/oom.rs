//! GetOOMEvent: OOM kills in the containers' memory cgroups.
//!
//! One task per container reads its `memory.events` each time the kernel
//! reports the file modified (inotify, as cgroup v2 documents for it);
//! every increase of the `oom_kill` counter queues one event naming the
//! container. Each queued
//! event goes to exactly one GetOOMEvent caller (callers wait their turn);
//! a caller that gives up loses nothing, the next one gets the event.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::cgroup;
use super::{Sandbox, SandboxError};

/// How often `memory.events` is read when inotify is not available.
const POLL: Duration = Duration::from_millis(500);

/// The queue of OOM events of the sandbox.
pub struct Events {
    tx: mpsc::UnboundedSender<String>,
    rx: Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(rx),
        }
    }
}

impl Events {
    pub fn sender(&self) -> mpsc::UnboundedSender<String> {
        self.tx.clone()
    }

    /// The next event; waits for one. Cancel safe.
    pub async fn next(&self) -> String {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(id) => id,
            // `self.tx` keeps the channel open.
            None => std::future::pending().await,
        }
    }
}

/// The watch of one container; stops when dropped.
pub struct Watch {
    task: Option<JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The `oom_kill` counter of a `memory.events` file.
pub fn oom_kills(memory_events: &str) -> u64 {
    cgroup::flat_keyed(memory_events)
        .get("oom_kill")
        .copied()
        .unwrap_or(0)
}

fn read_kills(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()
        .map(|t| oom_kills(&t))
}

/// Modifications of one file, from inotify.
struct Changes(AsyncFd<Fd>);

/// An inotify instance as tokio wants it.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Changes {
    fn of(file: &Path) -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(file, AddWatchFlags::IN_MODIFY)?;
        // SAFETY: `Fd` owns the inotify descriptor for as long as the
        // AsyncFd holds it, and `as_raw_fd` always returns that descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) };
        Ok(Self(fd?))
    }

    /// Waits for the next batch of events (a modification, or the file's
    /// removal with its cgroup).
    async fn next(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(events) => return events.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Starts watching the cgroup `dir` of container `id`. Without a memory
/// controller there is nothing to watch (logged).
pub fn watch(id: &str, dir: PathBuf, events: mpsc::UnboundedSender<String>) -> Watch {
    if read_kills(&dir).is_none() {
        tracing::warn!(container = id, dir = %dir.display(), "no memory.events: OOM kills not reported");
        return Watch { task: None };
    }
    let file = dir.join("memory.events");
    let changes = match Changes::of(&file) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(container = id, file = %file.display(), error = %e, "no inotify: polling for OOM kills");
            None
        }
    };
    // Read once watched: no kill falls in between.
    let mut seen = read_kills(&dir).unwrap_or(0);
    let id = id.to_string();
    let task = tokio::spawn(async move {
        loop {
            match &changes {
                Some(c) => {
                    if let Err(e) = c.next().await {
                        tracing::warn!(container = %id, error = %e, "inotify failed: OOM kills no longer reported");
                        return;
                    }
                }
                None => tokio::time::sleep(POLL).await,
            }
            // Gone once the container's cgroup is removed.
            let Some(kills) = read_kills(&dir) else {
                return;
            };
            for _ in seen..kills {
                tracing::warn!(container = %id, "OOM kill in the container");
                if events.send(id.clone()).is_err() {
                    return;
                }
            }
            seen = seen.max(kills);
        }
    });
    Watch { task: Some(task) }
}

impl Sandbox {
    /// Waits for the next OOM kill in any container; returns its id.
    pub async fn oom_event(&self) -> Result<String, SandboxError> {
        Ok(self.oom.next().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn oom_kill_counter() {
        assert_eq!(
            oom_kills("low 0\nhigh 0\nmax 12\noom 2\noom_kill 3\noom_group_kill 0\n"),
            3
        );
        assert_eq!(oom_kills(""), 0);
    }

    #[tokio::test]
    async fn one_event_per_kill_each_to_one_caller() {
        let d = tempfile::tempdir().unwrap();
        let events_file = d.path().join("memory.events");
        std::fs::write(&events_file, "oom 0\noom_kill 0\n").unwrap();
        let events = Arc::new(Events::default());
        let _watch = watch("c1", d.path().to_path_buf(), events.sender());
        let first = tokio::spawn({
            let e = events.clone();
            async move { e.next().await }
        });
        let second = tokio::spawn({
            let e = events.clone();
            async move { e.next().await }
        });
        std::fs::write(&events_file, "oom 1\noom_kill 2\n").unwrap();
        let within = |t| tokio::time::timeout(Duration::from_secs(5), t);
        assert_eq!(within(first).await.unwrap().unwrap(), "c1");
        assert_eq!(within(second).await.unwrap().unwrap(), "c1");
        // No third event: nothing changed.
        let third = tokio::time::timeout(Duration::from_millis(400), events.next()).await;
        assert!(third.is_err(), "{third:?}");
    }
}
