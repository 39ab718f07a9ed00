//! Working with a sandbox another process owns (`capsa exec`, `kill`,
//! `agent-ctl`, `rm`): its record says where its agent listens.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_protocols::convert;
use tokio::time::Instant;

use crate::io::{GuestProcess, Stdio};
use crate::record::{AgentAddress, SandboxRecord, SandboxStatus};
use crate::spec::{self, ProcessSpec};
use crate::state::StateDir;
use crate::Error;

/// How long to try reaching the agent of a running sandbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `remove` waits for an owner that takes its sandbox down
/// (asked to by `--force`, or because the workload exited) before it kills
/// the owner, and with it the VM.
const OWNER_EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long `remove` (without `--force`) waits for a running sandbox to
/// start stopping: its workload may have just been killed (`capsa kill ID
/// && capsa rm ID`) and its owner not have seen the exit yet.
const STOPPING_WAIT: Duration = Duration::from_secs(5);
/// How long a killed owner and its VM get to be gone.
const KILLED_WAIT: Duration = Duration::from_secs(5);
/// How often `remove` looks at the owner and the record while it waits.
const POLL: Duration = Duration::from_millis(50);

/// What `capsa ps` shows of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// As its record says: creating, running or stopped.
    Recorded(SandboxStatus),
    /// The record says creating or running but its owner is gone.
    Dead,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Liveness::Recorded(SandboxStatus::Creating) => "creating",
            Liveness::Recorded(SandboxStatus::Running) => "running",
            Liveness::Recorded(SandboxStatus::Stopping) => "stopping",
            Liveness::Recorded(SandboxStatus::Stopped) => "stopped",
            Liveness::Dead => "dead",
        };
        f.write_str(s)
    }
}

/// A sandbox found in the state directory.
pub struct Found {
    pub dir: StateDir,
    pub record: SandboxRecord,
    pub liveness: Liveness,
}

impl Found {
    /// Looks sandbox `id` up below `root`.
    pub fn open(root: &Path, id: &str) -> Result<Self, Error> {
        let dir = StateDir::open(root, id)?;
        let record = SandboxRecord::load(dir.path())?;
        let liveness = match record.status {
            SandboxStatus::Stopped => Liveness::Recorded(SandboxStatus::Stopped),
            status if dir.live_owner().is_some() => Liveness::Recorded(status),
            _ => Liveness::Dead,
        };
        Ok(Self {
            dir,
            record,
            liveness,
        })
    }

    /// Every sandbox below `root` (unreadable ones are logged and skipped).
    pub fn all(root: &Path) -> Vec<Self> {
        StateDir::list(root)
            .into_iter()
            .filter_map(|id| match Self::open(root, &id) {
                Ok(found) => Some(found),
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "skipped");
                    None
                }
            })
            .collect()
    }

    /// The agent's address, if the sandbox runs.
    fn address(&self) -> Result<&AgentAddress, Error> {
        match (self.liveness, &self.record.agent) {
            (Liveness::Recorded(SandboxStatus::Running), Some(a)) => Ok(a),
            _ => Err(Error::NotRunning {
                id: self.record.id.clone(),
                state: self.liveness.to_string(),
            }),
        }
    }

    /// Connects to the agent of the running sandbox.
    pub async fn agent(&self) -> Result<AgentClient, Error> {
        let endpoint = self.address()?.endpoint();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        Ok(AgentClient::connect(&endpoint, deadline).await?)
    }

    /// Runs `process` in container `container_id` (the sandbox's own
    /// container when `None`) and returns its exit status; `resize`
    /// gives the terminal's size (rows, columns), now and on every change.
    pub async fn exec(
        &self,
        container_id: Option<&str>,
        process: &ProcessSpec,
        interactive: bool,
        stdio: Stdio,
        stop: impl Future<Output = i32> + Send,
    ) -> Result<i32, Error> {
        let cid = container_id.unwrap_or(&self.record.id).to_string();
        let agent = self.agent().await?;
        let oci = spec::build(process, "/", "")?;
        let oci_process = oci.process().as_ref().expect("spec::build sets a process");
        let exec_id = format!("exec-{}", crate::vm::new_id());
        let grpc = convert::process_to_grpc(oci_process);
        agent.exec_process(&cid, &exec_id, grpc).await?;
        tracing::info!(container = %cid, exec = %exec_id, "process started");
        let guest = GuestProcess {
            agent,
            container_id: cid,
            exec_id,
        };
        let pumps = guest.pump(stdio, interactive, process.terminal).await?;
        let status = guest.wait_or_stop(stop).await;
        pumps.finish().await;
        status
    }

    /// Sends `signal` to the init process of container `container_id`
    /// (the sandbox's own when `None`).
    pub async fn kill(&self, container_id: Option<&str>, signal: i32) -> Result<(), Error> {
        let cid = container_id.unwrap_or(&self.record.id);
        let agent = self.agent().await?;
        agent.signal_process(cid, cid, signal as u32).await?;
        Ok(())
    }

    /// Removes the sandbox's state. A sandbox that is stopping is waited
    /// for (bounded); a running one is refused unless `force`, which asks
    /// its owner to take it down (SIGTERM) and, if it has not within
    /// [`OWNER_EXIT_WAIT`], kills the owner and its VM.
    pub async fn remove(self, force: bool) -> Result<(), Error> {
        if let Some(owner) = self.dir.live_owner() {
            check_owner(owner, &self.record)?;
            if force {
                signal_owner(owner, nix::sys::signal::Signal::SIGTERM, &self.record)?;
            } else if !self.stopping(owner).await {
                return Err(Error::StillRunning(self.record.id.clone()));
            }
            if !wait_gone(owner, OWNER_EXIT_WAIT).await {
                tracing::warn!(
                    sandbox = %self.record.id,
                    pid = owner,
                    "the owner did not take the sandbox down in {OWNER_EXIT_WAIT:?}: killing it and its VM"
                );
                self.kill_owner(owner).await?;
            }
        }
        self.dir.remove()
    }

    /// Whether the sandbox of the live `owner` is stopping, or starts to
    /// within [`STOPPING_WAIT`].
    async fn stopping(&self, owner: i32) -> bool {
        let deadline = Instant::now() + STOPPING_WAIT;
        loop {
            let status = SandboxRecord::load(self.dir.path()).map(|r| r.status);
            if matches!(status, Ok(SandboxStatus::Stopping | SandboxStatus::Stopped))
                || !process_alive(owner)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL to the VM's processes (the hypervisor and its helpers, as
    /// the record lists them, each still the same process), then to the owner;
    /// waits (bounded) for all of them to be gone. The VM's processes are
    /// killed first: children of the live owner, their pids cannot be
    /// reused meanwhile.
    async fn kill_owner(&self, owner: i32) -> Result<(), Error> {
        let vm: Vec<i32> = self
            .record
            .processes
            .iter()
            .filter(|p| p.is_running())
            .filter_map(|p| i32::try_from(p.pid).ok())
            .collect();
        for &pid in &vm {
            tracing::debug!(sandbox = %self.record.id, pid, "SIGKILL to a VM process");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        signal_owner(owner, nix::sys::signal::Signal::SIGKILL, &self.record)?;
        for pid in std::iter::once(owner).chain(vm) {
            if !wait_gone(pid, KILLED_WAIT).await {
                return Err(Error::OwnerStuck {
                    id: self.record.id.clone(),
                    pid,
                    seconds: KILLED_WAIT.as_secs(),
                });
            }
        }
        Ok(())
    }

    /// A raw byte stream to the guest's debug console.
    pub async fn debug_console(&self) -> Result<tokio::net::UnixStream, Error> {
        let address = self.address()?;
        let port = self
            .record
            .debug_console_port
            .ok_or_else(|| Error::NoDebugConsole(self.record.id.clone()))?;
        match address.with_port(port) {
            AgentAddress::HybridVsock { path, port } => Ok(capsa_agent_client::dial_hybrid_stream(
                &path,
                port,
                Instant::now() + CONNECT_TIMEOUT,
            )
            .await?),
            AgentAddress::Vsock { .. } => Err(Error::NoDebugConsole(self.record.id.clone())),
        }
    }
}

/// The owner's pid is the one it wrote itself; it must still be a capsa
/// process (not a reused pid) to be signalled or waited for.
fn check_owner(owner: i32, record: &SandboxRecord) -> Result<(), Error> {
    let comm = std::fs::read_to_string(format!("/proc/{owner}/comm")).unwrap_or_default();
    if !comm.trim().starts_with("capsa") {
        return Err(Error::NotOwner {
            id: record.id.clone(),
            pid: owner,
        });
    }
    Ok(())
}

/// Sends `signal` to the owner (SIGTERM: it stops the workload and takes
/// the VM down).
fn signal_owner(
    owner: i32,
    signal: nix::sys::signal::Signal,
    record: &SandboxRecord,
) -> Result<(), Error> {
    tracing::info!(sandbox = %record.id, pid = owner, %signal, "signalling the owner");
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner), signal) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(Error::Signal {
            pid: owner,
            source: e,
        }),
    }
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(|pid| crate::health::vm_state(pid) != crate::health::VmState::Gone)
}

/// Waits up to `limit` for process `pid` to be gone; `true` if it is.
async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}
