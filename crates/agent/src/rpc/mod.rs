//! The agent API on the wire: `grpc.AgentService` and `grpc.Health`.
//!
//! [`AgentRpc`] implements the methods of [`IMPLEMENTED`]; [`services`]
//! replaces the handler of every other AgentService method with one that
//! answers UNIMPLEMENTED and names the method (the generated default would
//! answer NOT_FOUND). Each method converts its request, calls the
//! [`Sandbox`], and turns errors into ttRPC statuses ([`status`]).

mod container;
mod guest;
mod health;
mod io;
mod network;
mod process;
mod sandbox;
pub mod status;
mod trace;
mod unimplemented;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use capsa_protocols::{agent, agent_ttrpc, health_ttrpc, tracing_ttrpc};
use protobuf::well_known_types::empty::Empty;
use ttrpc::asynchronous::{Service, TtrpcContext};

use crate::policy::guard::{self, SharedPolicy};
use crate::policy::AgentPolicy;
use crate::sandbox::Sandbox;
pub use container::container_request;
pub use health::{HealthRpc, AGENT_VERSION, API_VERSION};
pub use sandbox::{sandbox_request, storage_spec};
use status::to_status;
pub use unimplemented::IMPLEMENTED;

/// The AgentService methods over a sandbox.
pub struct AgentRpc {
    sandbox: Arc<Sandbox>,
    policy: SharedPolicy,
}

impl AgentRpc {
    pub fn new(sandbox: Arc<Sandbox>, policy: SharedPolicy) -> Self {
        Self { sandbox, policy }
    }
}

/// The ttRPC services of the agent, ready to register, behind the policy
/// the agent starts with ([`AgentPolicy::load_default`]).
pub fn services(sandbox: Arc<Sandbox>) -> HashMap<String, Service> {
    let policy: SharedPolicy = Arc::new(std::sync::Mutex::new(AgentPolicy::load_default()));
    let agent: Arc<dyn agent_ttrpc::AgentService + Send + Sync> =
        Arc::new(AgentRpc::new(sandbox, policy.clone()));
    let health: Arc<dyn health_ttrpc::Health + Send + Sync> = Arc::new(HealthRpc);
    let mut services = agent_ttrpc::create_agent_service(agent);
    unimplemented::replace_unimplemented(&mut services);
    guard::guard_services(&mut services, &policy);
    services.extend(health_ttrpc::create_health(health));
    // Spans of the requests above (not of TakeSpans itself).
    let spans = Arc::new(trace::SpanBuffer::default());
    trace::trace_requests(&mut services, &spans);
    services.extend(tracing_ttrpc::create_tracing(Arc::new(trace::TracingRpc(
        spans,
    ))));
    guest::count_requests(&mut services);
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
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
        guest::guest_details(req).await
    }

    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        guest::online_cpu_mem(req).await.map(|()| Empty::new())
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        guest::set_guest_date_time(req).await.map(|()| Empty::new())
    }

    async fn reseed_random_dev(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> ttrpc::Result<Empty> {
        guest::reseed_random_dev(req).await.map(|()| Empty::new())
    }

    async fn copy_file(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CopyFileRequest,
    ) -> ttrpc::Result<Empty> {
        guest::copy_file(req).await.map(|()| Empty::new())
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetMetricsRequest,
    ) -> ttrpc::Result<agent::Metrics> {
        guest::get_metrics(&self.sandbox).await
    }

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

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        reply("ExecProcess", process::exec(&self.sandbox, req).await).map(|()| Empty::new())
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListProcessesRequest,
    ) -> ttrpc::Result<agent::ListProcessesResponse> {
        reply("ListProcesses", process::list(&self.sandbox, req).await)
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let paused = process::pause(&self.sandbox, req.container_id).await;
        reply("PauseContainer", paused).map(|()| Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let resumed = process::resume(&self.sandbox, req.container_id).await;
        reply("ResumeContainer", resumed).map(|()| Empty::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply("UpdateContainer", process::update(&self.sandbox, req).await).map(|()| Empty::new())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> ttrpc::Result<agent::StatsContainerResponse> {
        reply("StatsContainer", process::stats(&self.sandbox, req).await)
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
        reply("GetOOMEvent", process::oom_event(&self.sandbox).await)
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let resized = process::tty_win_resize(&self.sandbox, req).await;
        reply("TtyWinResize", resized).map(|()| Empty::new())
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<capsa_protocols::types::Interface> {
        let updated = network::update_interface(&self.sandbox, req).await;
        reply("UpdateInterface", updated)
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        reply(
            "UpdateRoutes",
            network::update_routes(&self.sandbox, req).await,
        )
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListInterfacesRequest,
    ) -> ttrpc::Result<agent::Interfaces> {
        reply("ListInterfaces", network::list_interfaces().await)
    }

    async fn list_routes(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        reply("ListRoutes", network::list_routes().await)
    }

    async fn set_policy(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetPolicyRequest,
    ) -> ttrpc::Result<Empty> {
        guard::set_policy(&self.policy, &req).map(|()| Empty::new())
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        let added = network::add_arp_neighbors(&self.sandbox, req).await;
        reply("AddARPNeighbors", added).map(|()| Empty::new())
    }
}
