//! Working with a sandbox another process owns (`capsa exec`, `kill`,
//! `agent-ctl`, `rm`): its record says where its agent listens.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_protocols::{agent, convert};
use tokio::time::Instant;

use crate::io::{GuestProcess, Stdio};
use crate::record::{AgentAddress, SandboxRecord, SandboxStatus};
use crate::spec::{self, ProcessSpec};
use crate::state::StateDir;
use crate::Error;

/// How long to try reaching the agent of a running sandbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `remove --force` waits for the owner to take the sandbox down.
const OWNER_EXIT_WAIT: Duration = Duration::from_secs(30);

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
        let req = agent::ExecProcessRequest {
            container_id: cid.clone(),
            exec_id: exec_id.clone(),
            process: Some(convert::process_to_grpc(oci_process)).into(),
            ..Default::default()
        };
        agent
            .raw()
            .exec_process(capsa_agent_client::until(CONNECT_TIMEOUT * 6), &req)
            .await
            .map_err(|error| capsa_agent_client::Error::Rpc {
                method: "ExecProcess",
                error,
            })?;
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

    /// Removes the sandbox's state. A running sandbox is refused unless
    /// `force`, which asks its owner to take it down (SIGTERM) first.
    pub async fn remove(self, force: bool) -> Result<(), Error> {
        if let Some(owner) = self.dir.live_owner() {
            if !force {
                return Err(Error::StillRunning(self.record.id.clone()));
            }
            stop_owner(owner, &self.record).await?;
        }
        self.dir.remove()
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

/// SIGTERM to the owner of a sandbox, which stops the workload and takes
/// the VM down, then waits for it to exit. The pid is the one the owner
/// wrote itself, and it is checked to be a capsa process.
async fn stop_owner(owner: i32, record: &SandboxRecord) -> Result<(), Error> {
    let comm = std::fs::read_to_string(format!("/proc/{owner}/comm")).unwrap_or_default();
    if !comm.trim().starts_with("capsa") {
        return Err(Error::NotOwner {
            id: record.id.clone(),
            pid: owner,
        });
    }
    let pid = nix::unistd::Pid::from_raw(owner);
    tracing::info!(sandbox = %record.id, pid = owner, "asking the owner to stop the sandbox");
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => {
            return Err(Error::Signal {
                pid: owner,
                source: e,
            })
        }
    }
    let deadline = Instant::now() + OWNER_EXIT_WAIT;
    while nix::sys::signal::kill(pid, None).is_ok() {
        if Instant::now() >= deadline {
            return Err(Error::OwnerStuck {
                id: record.id.clone(),
                pid: owner,
                seconds: OWNER_EXIT_WAIT.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
