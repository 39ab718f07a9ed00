//! A process of a task as containerd sees it: its status, its stdio
//! paths and its exit, reported once.

use std::sync::Mutex;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;
use tokio::sync::watch;

use crate::stdio::StdioPaths;

/// How a process ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

impl Exit {
    pub fn now(status: u32) -> Self {
        Self {
            status,
            at: Timestamp::now(),
        }
    }
}

/// A container's init (`exec_id` empty) or exec process.
pub struct Proc {
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The OCI process of an exec (JSON), run at Start.
    pub spec: Option<oci_spec::runtime::Process>,
    status: Mutex<Status>,
    exit: watch::Sender<Option<Exit>>,
    /// Set by the first reporter of the exit, before it publishes TaskExit
    /// and only then records the exit (which wakes Wait and lets Delete
    /// go on): containerd sees TaskExit before anything that follows it.
    claimed: std::sync::atomic::AtomicBool,
    /// Closes the stdin pump (CloseIO).
    pub close_stdin: tokio::sync::Notify,
}

impl Proc {
    pub fn new(exec_id: &str, stdio: StdioPaths, spec: Option<oci_spec::runtime::Process>) -> Self {
        Self {
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            status: Mutex::new(Status::CREATED),
            exit: watch::channel(None).0,
            claimed: std::sync::atomic::AtomicBool::new(false),
            close_stdin: tokio::sync::Notify::new(),
        }
    }

    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Claims the right to report the exit: `true` once, for the first
    /// caller (an exit is reported once).
    pub fn claim_exit(&self) -> bool {
        !self.claimed.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Records the exit; `false` if it was recorded already.
    pub fn set_exit(&self, exit: Exit) -> bool {
        let mut first = false;
        self.exit.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit);
                first = true;
            }
            first
        });
        if first {
            self.set_status(Status::STOPPED);
        }
        first
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return Exit::now(255);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exit_is_recorded_once() {
        let p = std::sync::Arc::new(Proc::new("", StdioPaths::default(), None));
        assert_eq!(p.status(), Status::CREATED);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait().await.status })
        };
        assert!(p.claim_exit());
        assert!(!p.claim_exit(), "an exit is claimed once");
        assert!(p.set_exit(Exit::now(3)));
        assert!(!p.set_exit(Exit::now(137)), "second exit ignored");
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(p.exit().unwrap().status, 3);
        assert_eq!(p.status(), Status::STOPPED);
    }
}
