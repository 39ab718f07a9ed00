//! CreateSandbox and DestroySandbox.

use std::time::Duration;

use super::{Sandbox, SandboxError};
use crate::modules;
use crate::network::{self, dns};
use crate::storage::{self, Mounted, StorageSpec};

/// How long DestroySandbox waits for each container to die after SIGKILL.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

/// What CreateSandbox asks for.
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    pub hostname: String,
    pub sandbox_id: String,
    pub storages: Vec<StorageSpec>,
    /// Module names and their `key=value` parameters.
    pub kernel_modules: Vec<(String, Vec<String>)>,
    /// The containers share one PID namespace (the first container's).
    pub sandbox_pidns: bool,
    /// `resolv.conf` lines for the containers.
    pub dns: Vec<String>,
}

impl Sandbox {
    /// Sets the hostname, loads the modules, brings loopback up, writes the
    /// DNS file and mounts the storages. Once.
    pub async fn create_sandbox(&self, req: SandboxRequest) -> Result<(), SandboxError> {
        let mut state = self.state.lock().await;
        if state.created {
            return Err(SandboxError::SandboxExists);
        }
        tracing::info!(sandbox = %req.sandbox_id, hostname = %req.hostname, "creating the sandbox");
        if !req.hostname.is_empty() {
            if self.init {
                nix::unistd::sethostname(&req.hostname).map_err(SandboxError::Hostname)?;
            } else {
                tracing::warn!("not PID 1: hostname left alone");
            }
        }
        for (name, params) in req.kernel_modules {
            if !self.init {
                tracing::warn!(module = %name, "not PID 1: module not loaded");
                continue;
            }
            let (n, p) = (name.clone(), params);
            let loaded = tokio::task::spawn_blocking(move || modules::load_by_name(&n, &p))
                .await?
                .map_err(|e| SandboxError::Module(name.clone(), e))?;
            tracing::info!(module = %name, ?loaded, "kernel module");
        }
        if self.init {
            let handle = network::connect().await?;
            network::link::up(&handle, "lo").await?;
            if !req.dns.is_empty() {
                let file = std::path::PathBuf::from(dns::SANDBOX_DNS_FILE);
                dns::write(&file, &req.dns)?;
                tracing::info!(file = %file.display(), lines = req.dns.len(), "sandbox DNS");
                state.dns_file = Some(file);
            }
        } else if !req.dns.is_empty() {
            tracing::warn!("not PID 1: DNS lines ignored");
        }
        let storages = req.storages;
        state.storages = tokio::task::spawn_blocking(move || mount_all(&storages)).await??;
        state.sandbox_pidns = req.sandbox_pidns;
        state.created = true;
        Ok(())
    }

    /// Kills and removes every container, unmounts the storages, syncs and
    /// asks the agent to stop (which powers the VM off).
    pub async fn destroy_sandbox(&self) -> Result<(), SandboxError> {
        let (containers, storages) = {
            let mut state = self.state.lock().await;
            let containers: Vec<_> = state.containers.drain().map(|(_, c)| c).collect();
            (containers, std::mem::take(&mut state.storages))
        };
        tracing::info!(containers = containers.len(), "destroying the sandbox");
        for container in containers {
            if let Err(e) = self.teardown(&container, DESTROY_TIMEOUT).await {
                let error = crate::error::chain(&e);
                tracing::warn!(container = %container.id, %error, "teardown failed");
            }
        }
        tokio::task::spawn_blocking(move || {
            unmount_all(&storages);
            nix::unistd::sync();
        })
        .await?;
        self.shutdown.send_replace(true);
        Ok(())
    }
}

/// Does every storage in order; on failure undoes the ones done.
pub(super) fn mount_all(storages: &[StorageSpec]) -> Result<Vec<Mounted>, SandboxError> {
    let mut done = Vec::new();
    for (index, spec) in storages.iter().enumerate() {
        match storage::add(spec) {
            Ok(m) => done.push(m),
            Err(source) => {
                unmount_all(&done);
                return Err(SandboxError::Storage {
                    index,
                    driver: spec.driver.clone(),
                    source,
                });
            }
        }
    }
    Ok(done)
}

/// Undoes storages, last first.
pub(super) fn unmount_all(mounted: &[Mounted]) {
    for m in mounted.iter().rev() {
        storage::remove(m);
    }
}
