//! ExecProcess, ListProcesses, TtyWinResize and the cgroup methods
//! (PauseContainer, ResumeContainer, UpdateContainer, StatsContainer,
//! GetOOMEvent) on the wire.

use std::sync::Arc;

use capsa_protocols::agent;

use super::status::detached;
use crate::sandbox::{Sandbox, SandboxError};

pub async fn exec(
    sandbox: &Arc<Sandbox>,
    req: agent::ExecProcessRequest,
) -> Result<(), SandboxError> {
    let grpc = req.process.as_ref().ok_or(SandboxError::NoProcessSpec)?;
    let process = capsa_protocols::convert::process_from_grpc(grpc)
        .map_err(|e| SandboxError::SpecConversion(Box::new(e)))?;
    let io = crate::passfd::Ports {
        stdin: req.stdin_port,
        stdout: req.stdout_port,
        stderr: req.stderr_port,
    };
    let sandbox = sandbox.clone();
    detached(async move {
        sandbox
            .exec_process(&req.container_id, &req.exec_id, process, io)
            .await
    })
    .await
}

pub async fn list(
    sandbox: &Sandbox,
    req: agent::ListProcessesRequest,
) -> Result<agent::ListProcessesResponse, SandboxError> {
    let list = sandbox
        .list_processes(&req.container_id, &req.format, &req.args)
        .await?;
    Ok(agent::ListProcessesResponse {
        process_list: list,
        ..Default::default()
    })
}

pub async fn pause(sandbox: &Arc<Sandbox>, id: String) -> Result<(), SandboxError> {
    let sandbox = sandbox.clone();
    detached(async move { sandbox.pause_container(&id).await }).await
}

pub async fn resume(sandbox: &Arc<Sandbox>, id: String) -> Result<(), SandboxError> {
    let sandbox = sandbox.clone();
    detached(async move { sandbox.resume_container(&id).await }).await
}

pub async fn update(
    sandbox: &Sandbox,
    req: agent::UpdateContainerRequest,
) -> Result<(), SandboxError> {
    let grpc = req.resources.as_ref().ok_or(SandboxError::NoResources)?;
    let resources = capsa_protocols::convert::resources_from_grpc(grpc)
        .map_err(|e| SandboxError::SpecConversion(Box::new(e)))?;
    sandbox.update_container(&req.container_id, resources).await
}

pub async fn stats(
    sandbox: &Sandbox,
    req: agent::StatsContainerRequest,
) -> Result<agent::StatsContainerResponse, SandboxError> {
    let stats = sandbox.stats_container(&req.container_id).await?;
    Ok(agent::StatsContainerResponse {
        cgroup_stats: Some(stats).into(),
        ..Default::default()
    })
}

pub async fn oom_event(sandbox: &Sandbox) -> Result<agent::OOMEvent, SandboxError> {
    let container_id = sandbox.oom_event().await?;
    Ok(agent::OOMEvent {
        container_id,
        ..Default::default()
    })
}

pub async fn tty_win_resize(
    sandbox: &Sandbox,
    req: agent::TtyWinResizeRequest,
) -> Result<(), SandboxError> {
    sandbox
        .tty_win_resize(&req.container_id, &req.exec_id, req.row, req.column)
        .await
}
