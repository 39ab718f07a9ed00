//! Container and process methods on the wire.

use std::sync::Arc;
use std::time::Duration;

use capsa_protocols::agent;

use super::sandbox::storage_spec;
use super::status::detached;
use crate::device::spec::DeviceRequest;
use crate::sandbox::{ContainerRequest, Sandbox, SandboxError};

/// A wire CreateContainerRequest as the agent's container request.
pub fn container_request(
    req: agent::CreateContainerRequest,
) -> Result<ContainerRequest, SandboxError> {
    let oci = req.OCI.as_ref().ok_or(SandboxError::NoSpec)?;
    let spec = capsa_protocols::convert::spec_from_grpc(oci)
        .map_err(|e| SandboxError::SpecConversion(Box::new(e)))?;
    let (shared, own): (Vec<_>, Vec<_>) = req.storages.iter().partition(|s| s.shared);
    Ok(ContainerRequest {
        container_id: req.container_id,
        exec_id: req.exec_id,
        spec,
        storages: own.into_iter().map(storage_spec).collect(),
        shared_storages: shared.into_iter().map(storage_spec).collect(),
        sandbox_pidns: req.sandbox_pidns,
        io: crate::passfd::Ports {
            stdin: req.stdin_port,
            stdout: req.stdout_port,
            stderr: req.stderr_port,
        },
        devices: req.devices.iter().map(device_request).collect(),
    })
}

/// A wire `Device` as the agent's device request.
pub fn device_request(d: &agent::Device) -> DeviceRequest {
    DeviceRequest {
        kind: d.type_.clone(),
        id: d.id.clone(),
        container_path: d.container_path.clone(),
        vm_path: d.vm_path.clone(),
    }
}

pub async fn create(
    sandbox: &Arc<Sandbox>,
    req: agent::CreateContainerRequest,
) -> Result<(), SandboxError> {
    let req = container_request(req)?;
    let sandbox = sandbox.clone();
    detached(async move { sandbox.create_container(req).await }).await
}

pub async fn start(
    sandbox: &Arc<Sandbox>,
    req: agent::StartContainerRequest,
) -> Result<(), SandboxError> {
    let sandbox = sandbox.clone();
    detached(async move { sandbox.start_container(&req.container_id).await }).await
}

pub async fn remove(
    sandbox: &Arc<Sandbox>,
    req: agent::RemoveContainerRequest,
) -> Result<(), SandboxError> {
    let sandbox = sandbox.clone();
    let timeout = Duration::from_secs(req.timeout.into());
    detached(async move { sandbox.remove_container(&req.container_id, timeout).await }).await
}

pub async fn wait(
    sandbox: &Sandbox,
    req: agent::WaitProcessRequest,
) -> Result<agent::WaitProcessResponse, SandboxError> {
    let status = sandbox
        .wait_process(&req.container_id, &req.exec_id)
        .await?;
    Ok(agent::WaitProcessResponse {
        status,
        ..Default::default()
    })
}

pub async fn signal(
    sandbox: &Sandbox,
    req: agent::SignalProcessRequest,
) -> Result<(), SandboxError> {
    sandbox
        .signal_process(&req.container_id, &req.exec_id, req.signal)
        .await
}
