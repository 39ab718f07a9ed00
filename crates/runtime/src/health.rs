//! Is a sandbox's VM alive? A VM whose hypervisor process is gone or
//! stopped (SIGSTOP, `/proc/<pid>/stat` state `T`), or whose agent fails
//! its health check [`HEALTH_CHECK_FAILURES`] times in a row, is dead:
//! its owner kills it and reports its containers' exits.

use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_config::{Config, HEALTH_CHECK_FAILURES};
use tokio::time::Instant;

/// How often the hypervisor's process state is read.
const STATE_POLL: Duration = Duration::from_millis(500);
/// How long a hypervisor whose agent connection broke may take to be
/// seen exited, and how often it is looked at meanwhile.
const EXIT_SETTLE: Duration = Duration::from_secs(1);
const EXIT_POLL: Duration = Duration::from_millis(20);

/// What the host sees of a hypervisor process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Running,
    /// Stopped by a signal or a tracer: it runs no guest code.
    Stopped,
    /// Exited (a zombie counts as exited).
    Gone,
}

/// The state of process `pid` from `/proc/<pid>/stat`.
pub fn vm_state(pid: u32) -> VmState {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return VmState::Gone;
    };
    // The command name, in parentheses, may hold anything: the state is
    // the first field after its closing parenthesis.
    match stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
    {
        Some("Z" | "X" | "x") | None => VmState::Gone,
        Some("T" | "t") => VmState::Stopped,
        Some(_) => VmState::Running,
    }
}

/// Why a VM was declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// The hypervisor exited.
    Exited,
    /// The hypervisor process is stopped.
    Stopped,
    /// The agent failed its health check too many times in a row.
    Unresponsive,
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Death::Exited => "the hypervisor exited",
            Death::Stopped => "the hypervisor is stopped",
            Death::Unresponsive => "the agent does not answer its health checks",
        })
    }
}

/// Checks at once whether the VM of hypervisor `pid` can be talked to:
/// its process runs and its agent answers a health check
/// (within the agent client's health timeout). `None` when it can.
pub async fn probe(pid: u32, agent: &AgentClient) -> Option<Death> {
    match vm_state(pid) {
        VmState::Gone => return Some(Death::Exited),
        VmState::Stopped => return Some(Death::Stopped),
        VmState::Running => {}
    }
    match agent.check().await {
        Ok(()) => None,
        Err(e) => {
            crate::metrics::health_check_failed(); // metrics hook
            tracing::warn!(pid, error = %e, "agent health check failed");
            Some(Death::Unresponsive)
        }
    }
}

/// Watches a running VM: its hypervisor's process state every
/// [`STATE_POLL`], its agent's health every `health_check_interval`.
pub struct Watch {
    pid: u32,
    agent: AgentClient,
    interval: Option<Duration>,
}

impl Watch {
    pub fn new(pid: u32, agent: AgentClient, config: &Config) -> Self {
        let secs = config.agent.capsa.health_check_interval;
        Self {
            pid,
            agent,
            interval: (secs > 0).then(|| Duration::from_secs(secs.into())),
        }
    }

    /// Whether the hypervisor is gone or stopped, looking for up to
    /// [`EXIT_SETTLE`]: a VM killed from outside closes its connections
    /// while its process exits, a moment before it is a zombie.
    pub async fn gone_or_stopped(&self) -> Option<Death> {
        let deadline = Instant::now() + EXIT_SETTLE;
        loop {
            match vm_state(self.pid) {
                VmState::Gone => return Some(Death::Exited),
                VmState::Stopped => return Some(Death::Stopped),
                VmState::Running if Instant::now() >= deadline => return None,
                VmState::Running => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }

    /// Resolves once the VM is dead, saying why.
    pub async fn dead(&self) -> Death {
        let mut failures = 0;
        let mut next_check = self.interval.map(|i| Instant::now() + i);
        loop {
            tokio::time::sleep(STATE_POLL).await;
            match vm_state(self.pid) {
                VmState::Gone => return Death::Exited,
                VmState::Stopped => return Death::Stopped,
                VmState::Running => {}
            }
            let (Some(interval), Some(at)) = (self.interval, next_check) else {
                continue;
            };
            if Instant::now() < at {
                continue;
            }
            match self.agent.check().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    crate::metrics::health_check_failed(); // metrics hook
                    failures += 1;
                    tracing::warn!(pid = self.pid, failures, error = %e, "agent health check failed");
                    if failures >= HEALTH_CHECK_FAILURES {
                        return Death::Unresponsive;
                    }
                }
            }
            next_check = Some(Instant::now() + interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_states() {
        assert_eq!(vm_state(std::process::id()), VmState::Running);
        assert_eq!(vm_state(u32::MAX), VmState::Gone);
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        // SIGSTOP takes effect asynchronously: wait (bounded) for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while vm_state(child.id()) != VmState::Stopped && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let state = vm_state(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(state, VmState::Stopped);
    }
}
