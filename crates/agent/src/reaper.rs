//! The central reaper.
//!
//! As PID 1 the agent inherits every orphan of the guest, and a container's
//! init process is its direct child (libcontainer clones it with
//! `CLONE_PARENT`). One task waits for `SIGCHLD` and calls `waitpid(-1)` until
//! no child is left to reap; each status goes to the watcher of its pid, if
//! any, and is dropped otherwise. A watcher keeps its status until it is
//! dropped, so a `WaitProcess` that comes after the exit still gets it.
//!
//! Nothing else in the agent may wait for children: a `waitpid(pid)` elsewhere
//! races with this task (libcontainer's wait for its short-lived intermediate
//! process tolerates losing that race).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot install the SIGCHLD handler")]
    Signal(#[source] std::io::Error),
    #[error("process {0} is already gone: its exit status was lost")]
    Gone(i32),
    #[error("process {0} is already watched")]
    AlreadyWatched(i32),
}

type Slot = Arc<watch::Sender<Option<i32>>>;

/// Reaps children and hands exit statuses to their watchers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    watched: Arc<Mutex<Watched>>,
}

#[derive(Default)]
struct Watched {
    slots: HashMap<i32, Slot>,
    /// Number of live [`Hold`]s.
    holds: usize,
    /// Statuses of unwatched children reaped while held.
    unclaimed: HashMap<i32, i32>,
}

/// While a hold lives, the statuses of unwatched children are kept, so a
/// process that exits before [`Reaper::watch`] (an exec'd command that ends
/// at once) still gets its status. Dropping the last hold drops them.
pub struct Hold {
    watched: Arc<Mutex<Watched>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut w = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        w.holds -= 1;
        if w.holds == 0 {
            w.unclaimed.clear();
        }
    }
}

/// The exit status of one process, once it is known.
#[derive(Clone, Debug)]
pub struct ExitWatch {
    pid: i32,
    slot: Slot,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the `SIGCHLD` handler, reaps what already exited and spawns
    /// the task that reaps from then on. Call it inside the tokio runtime.
    pub fn spawn(&self) -> Result<JoinHandle<()>, ReaperError> {
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let this = self.clone();
        this.reap();
        Ok(tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                this.reap();
            }
        }))
    }

    /// Starts watching `pid`, a child of this process that may already have
    /// exited but must not have been reaped yet.
    pub fn watch(&self, pid: i32) -> Result<ExitWatch, ReaperError> {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if watched.slots.contains_key(&pid) {
            return Err(ReaperError::AlreadyWatched(pid));
        }
        if let Some(code) = watched.unclaimed.remove(&pid) {
            let slot = Arc::new(watch::channel(Some(code)).0);
            return Ok(ExitWatch { pid, slot });
        }
        // The lock orders this check with `reap`: a zombie still answers
        // kill(0); ESRCH means the status was taken before we asked.
        if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
            return Err(ReaperError::Gone(pid));
        }
        let slot = Arc::new(watch::channel(None).0);
        watched.slots.insert(pid, slot.clone());
        Ok(ExitWatch { pid, slot })
    }

    /// Keeps the statuses of unwatched children until the hold is dropped.
    pub fn hold(&self) -> Hold {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.holds += 1;
        Hold {
            watched: self.watched.clone(),
        }
    }

    /// Stops watching `pid` (its status, if it comes, will be dropped).
    pub fn forget(&self, pid: i32) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.slots.remove(&pid);
        watched.unclaimed.remove(&pid);
    }

    /// Reaps every child that has exited.
    pub fn reap(&self) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let flags = WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
            match waitpid(None::<Pid>, Some(flags)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) else {
                        continue;
                    };
                    match watched.slots.remove(&pid.as_raw()) {
                        Some(slot) => {
                            tracing::debug!(
                                pid = pid.as_raw(),
                                status = code,
                                "watched process exited"
                            );
                            slot.send_replace(Some(code));
                        }
                        None if watched.holds > 0 => {
                            watched.unclaimed.insert(pid.as_raw(), code);
                        }
                        None => tracing::trace!(pid = pid.as_raw(), status = code, "reaped"),
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }
}

impl ExitWatch {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status if the process has exited.
    pub fn status(&self) -> Option<i32> {
        *self.slot.borrow()
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.slot.subscribe();
        let status = rx.wait_for(Option::is_some).await.map(|s| *s);
        match status {
            Ok(Some(status)) => status,
            // The sender lives in `self`, so the channel cannot close.
            _ => std::future::pending().await,
        }
    }
}

/// The status Kata reports for a process: its exit code, or 128+N when it
/// was killed by signal N. `None` for stop/continue events.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn exit_codes_follow_kata() {
        let pid = Pid::from_raw(10);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, true)),
            Some(143)
        );
        assert_eq!(exit_code(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }

    // One test reaps for the whole test process: a second one running in
    // parallel would steal its children.
    #[tokio::test]
    async fn statuses_reach_their_watchers_even_when_watched_late() {
        let reaper = Reaper::new();
        let task = reaper.spawn().unwrap();

        let spawn = |script: &str| {
            Command::new("/bin/sh")
                .args(["-c", script])
                .spawn()
                .unwrap()
                .id() as i32
        };
        let seven = spawn("exit 7");
        let killed = spawn("kill -9 $$");
        let unknown = spawn("exit 1");
        let watch_seven = reaper.watch(seven).unwrap();
        let watch_killed = reaper.watch(killed).unwrap();
        assert!(matches!(
            reaper.watch(seven),
            Err(ReaperError::AlreadyWatched(p)) if p == seven
        ));

        let wait = |w: ExitWatch| async move {
            tokio::time::timeout(Duration::from_secs(10), w.wait())
                .await
                .expect("exit status delivered")
        };
        assert_eq!(wait(watch_seven.clone()).await, 7);
        assert_eq!(wait(watch_killed).await, 137);
        // Asked again after the exit: the status is kept.
        assert_eq!(watch_seven.status(), Some(7));
        assert_eq!(wait(watch_seven).await, 7);

        // The unwatched child was reaped and dropped: it is gone now.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match reaper.watch(unknown) {
                Err(ReaperError::Gone(p)) => {
                    assert_eq!(p, unknown);
                    break;
                }
                Ok(_) => reaper.forget(unknown),
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "never reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Held: a child that exits before it is watched keeps its status.
        let hold = reaper.hold();
        let early = spawn("exit 5");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while kill(Pid::from_raw(early), None).is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "never reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(wait(reaper.watch(early).unwrap()).await, 5);
        drop(hold);
        task.abort();
    }
}
