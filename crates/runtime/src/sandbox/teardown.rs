//! Taking a sandbox down: the guest's sandbox, the VM, the pod network,
//! the pod cgroup, the state.

use std::time::Duration;

use tracing::Instrument;

use super::Sandbox;
use crate::health::{self, Death};
use crate::record::SandboxStatus;
use crate::Error;

/// How long the hypervisor gets to stop after a power-off request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl Sandbox {
    /// Tears the sandbox down: asks the agent to destroy it (the guest powers
    /// off), stops the VM and its helpers, unmounts and removes the state.
    pub async fn destroy(mut self) -> Result<(), Error> {
        async {
            self.finished = true;
            self.teardown().await;
            let _step = crate::step!("state removal").entered();
            self.dir.remove()
        }
        .instrument(crate::step!("teardown"))
        .await
    }

    /// Tears the sandbox down like [`Sandbox::destroy`] but keeps the
    /// record and the logs in the state directory, with status `Stopped`,
    /// for `capsa ps`/`inspect` until `capsa rm`.
    pub async fn stop(mut self) -> Result<(), Error> {
        self.finished = true;
        self.teardown().instrument(crate::step!("teardown")).await;
        self.update_record(|r| {
            r.status = SandboxStatus::Stopped;
            r.hypervisor_pid = None;
            r.processes.clear();
        });
        self.dir.release()
    }

    /// Best-effort teardown used by every path; only logs failures.
    /// (A sandbox dropped without `destroy`, e.g. by a panic or a
    /// cancelled start, is cleaned up by `Drop`.)
    pub(super) async fn teardown(&mut self) {
        // The agent answers DestroySandbox once every container is gone and
        // the guest's page cache is synced (what containers wrote through
        // virtio-fs is on the host): then the hypervisor is told to quit at once,
        // rather than waiting for the guest kernel to power itself off.
        // A VM that is gone, stopped or whose agent does not answer a
        // health check is killed without waiting for anything.
        if self.dead.is_none() {
            if let Some(agent) = &self.agent {
                self.dead = match self.vm.pid() {
                    Some(pid) => {
                        health::probe(pid, agent)
                            .instrument(crate::step!("health probe"))
                            .await
                    }
                    None => Some(Death::Exited),
                };
            }
        }
        match (self.agent.take(), self.dead) {
            (Some(_), Some(why)) => {
                tracing::info!(sandbox = %self.id, "{why}: no DestroySandbox");
            }
            (Some(agent), None) => match agent
                .destroy_sandbox()
                .instrument(crate::step!("DestroySandbox"))
                .await
            {
                Ok(()) => tracing::debug!(sandbox = %self.id, "guest destroyed its sandbox"),
                Err(e) => {
                    tracing::warn!(sandbox = %self.id, error = %e, "DestroySandbox failed");
                }
            },
            (None, _) => {}
        }
        let grace = if self.dead.is_some() {
            Duration::ZERO
        } else {
            SHUTDOWN_GRACE
        };
        let shutdown = self
            .vm
            .shutdown(grace)
            .instrument(crate::step!("vm shutdown"))
            .await;
        if let Err(e) = shutdown {
            tracing::warn!(sandbox = %self.id, error = %e, "VM shutdown");
        }
        self.resources
            .network
            .teardown(&self.id)
            .instrument(crate::step!("pod network teardown"))
            .await;
        // The VM's processes are gone: the pod cgroup can go.
        if let Some(cgroup) = self.resources.cgroup.take() {
            cgroup.release();
        }
    }
}

/// A sandbox dropped without [`Sandbox::destroy`] (a panic, a cancelled
/// future): its VM's processes are killed as the VM is dropped (after
/// this), and its mounts and state directory are removed here.
impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        tracing::warn!(sandbox = %self.id, "sandbox dropped without teardown: cleaning up");
        self.resources.network.teardown_blocking(&self.id);
        if let Err(e) = self.dir.remove() {
            tracing::error!(sandbox = %self.id, error = %e, "state directory not removed");
        }
    }
}
