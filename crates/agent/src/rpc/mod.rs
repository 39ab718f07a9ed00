//! The agent API on the wire: `grpc.AgentService` and `grpc.Health`.
//!
//! [`AgentRpc`] implements the methods of [`IMPLEMENTED`]; [`services`]
//! replaces the handler of every other AgentService method with one that
//! answers UNIMPLEMENTED and names the method (the generated default would
//! answer NOT_FOUND). Each method converts its request, calls the
//! [`Sandbox`], and turns errors into ttRPC statuses ([`status`]).

mod container;
mod health;
mod io;
mod sandbox;
pub mod status;
mod unimplemented;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use capsa_protocols::{agent, agent_ttrpc, health_ttrpc};
use protobuf::well_known_types::empty::Empty;
use ttrpc::asynchronous::{Service, TtrpcContext};

use crate::sandbox::Sandbox;
pub use health::{HealthRpc, AGENT_VERSION, API_VERSION};
use status::to_status;
pub use unimplemented::IMPLEMENTED;

/// The AgentService methods over a sandbox.
pub struct AgentRpc {
    sandbox: Arc<Sandbox>,
}

impl AgentRpc {
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        Self { sandbox }
    }
}

/// The ttRPC services of the agent, ready to register.
pub fn services(sandbox: Arc<Sandbox>) -> HashMap<String, Service> {
    let agent: Arc<dyn agent_ttrpc::AgentService + Send + Sync> = Arc::new(AgentRpc::new(sandbox));
    let health: Arc<dyn health_ttrpc::Health + Send + Sync> = Arc::new(HealthRpc);
    let mut services = agent_ttrpc::create_agent_service(agent);
    unimplemented::replace_unimplemented(&mut services);
    services.extend(health_ttrpc::create_health(health));
    services
}

fn path(method: &str) -> String {
    format!("/grpc.AgentService/{method}")
}

/// Logs the call and maps errors to statuses.
fn reply<T>(method: &str, result: Result<T, crate::sandbox::SandboxError>) -> ttrpc::Result<T> {
    result.map_err(|e| to_status(&path(method), e))
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentRpc {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        reply("CreateSandbox", sandbox::create(&self.sandbox, req).await).map(|()| Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        reply("DestroySandbox", sandbox::destroy(&self.sandbox).await).map(|()| Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "CreateContainer",
            container::create(&self.sandbox, req).await,
        )
        .map(|()| Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply("StartContainer", container::start(&self.sandbox, req).await).map(|()| Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "RemoveContainer",
            container::remove(&self.sandbox, req).await,
        )
        .map(|()| Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        reply("WaitProcess", container::wait(&self.sandbox, req).await)
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        reply("SignalProcess", container::signal(&self.sandbox, req).await).map(|()| Empty::new())
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> ttrpc::Result<agent::WriteStreamResponse> {
        io::write(&self.sandbox, req, &path("WriteStdin")).await
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        let closed = self
            .sandbox
            .close_stdin(&req.container_id, &req.exec_id)
            .await;
        reply("CloseStdin", closed).map(|()| Empty::new())
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        io::read(&self.sandbox, req, false, &path("ReadStdout")).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        io::read(&self.sandbox, req, true, &path("ReadStderr")).await
    }
}
