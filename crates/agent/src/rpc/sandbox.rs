//! CreateSandbox and DestroySandbox on the wire.

use std::sync::Arc;

use capsa_protocols::agent;

use super::status::detached;
use crate::sandbox::{Sandbox, SandboxError, SandboxRequest};
use crate::storage::StorageSpec;

/// A wire `Storage` as the agent's storage request.
pub fn storage_spec(s: &agent::Storage) -> StorageSpec {
    StorageSpec {
        driver: s.driver.clone(),
        source: s.source.clone(),
        fstype: s.fstype.clone(),
        options: s.options.clone(),
        mount_point: s.mount_point.clone(),
    }
}

pub fn sandbox_request(req: &agent::CreateSandboxRequest) -> SandboxRequest {
    SandboxRequest {
        hostname: req.hostname.clone(),
        sandbox_id: req.sandbox_id.clone(),
        storages: req.storages.iter().map(storage_spec).collect(),
        kernel_modules: req
            .kernel_modules
            .iter()
            .map(|m| (m.name.clone(), m.parameters.clone()))
            .collect(),
        sandbox_pidns: req.sandbox_pidns,
        dns: req.dns.clone(),
    }
}

pub async fn create(
    sandbox: &Arc<Sandbox>,
    req: agent::CreateSandboxRequest,
) -> Result<(), SandboxError> {
    let sandbox = sandbox.clone();
    let req = sandbox_request(&req);
    detached(async move { sandbox.create_sandbox(req).await }).await
}

pub async fn destroy(sandbox: &Arc<Sandbox>) -> Result<(), SandboxError> {
    let sandbox = sandbox.clone();
    detached(async move { sandbox.destroy_sandbox().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_requests_carry_storages_and_modules() {
        let req = agent::CreateSandboxRequest {
            hostname: "h".into(),
            sandbox_id: "s".into(),
            storages: vec![agent::Storage {
                driver: "virtio-fs".into(),
                source: "kataShared".into(),
                fstype: "virtiofs".into(),
                options: vec!["nodev".into()],
                mount_point: "/run/kata-containers/shared/containers".into(),
                ..Default::default()
            }],
            kernel_modules: vec![agent::KernelModule {
                name: "overlay".into(),
                parameters: vec!["a=1".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = sandbox_request(&req);
        assert_eq!(r.hostname, "h");
        assert_eq!(r.sandbox_id, "s");
        assert_eq!(r.storages[0].source, "kataShared");
        assert_eq!(r.storages[0].options, vec!["nodev"]);
        assert_eq!(
            r.storages[0].mount_point,
            "/run/kata-containers/shared/containers"
        );
        assert_eq!(
            r.kernel_modules,
            vec![("overlay".to_string(), vec!["a=1".to_string()])]
        );
    }
}
