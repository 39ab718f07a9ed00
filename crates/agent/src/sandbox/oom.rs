//! GetOOMEvent: OOM kills in the containers' memory cgroups.
//!
//! One task per container polls its `memory.events`; every increase of the
//! `oom_kill` counter queues one event naming the container. Each queued
//! event goes to exactly one GetOOMEvent caller (callers wait their turn);
//! a caller that gives up loses nothing, the next one gets the event.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::cgroup;
use super::{Sandbox, SandboxError};

/// How often `memory.events` is read.
const POLL: Duration = Duration::from_millis(100);

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

/// Starts watching the cgroup `dir` of container `id`. Without a memory
/// controller there is nothing to watch (logged).
pub fn watch(id: &str, dir: PathBuf, events: mpsc::UnboundedSender<String>) -> Watch {
    let Some(mut seen) = read_kills(&dir) else {
        tracing::warn!(container = id, dir = %dir.display(), "no memory.events: OOM kills not reported");
        return Watch { task: None };
    };
    let id = id.to_string();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
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
