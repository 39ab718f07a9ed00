//! Host side of the capsa agent API.
//!
//! [`AgentClient::connect`] dials the agent (kernel vsock or hybrid vsock),
//! checks its health, and gives typed calls for the methods the runtime uses;
//! each failure names the method. The raw generated clients stay reachable
//! for everything else ([`AgentClient::raw`]).

mod dial;
mod endpoint;
mod error;
mod json;

use std::time::Duration;

use capsa_protocols::tracing_ttrpc::TracingClient;
use capsa_protocols::{agent, agent_ttrpc::AgentServiceClient, health, health_ttrpc::HealthClient};
use tokio::time::Instant;
use ttrpc::context::{self, Context};

pub use dial::{check_connect_reply, describe, dial, dial_hybrid_stream};
pub use endpoint::AgentEndpoint;
pub use error::Error;
pub use json::{methods, reply_to_json, request_from_json};

/// Timeout of calls that should answer at once.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of DestroySandbox: the agent gives each container 10 s to die.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of a health check of a running agent: it answers at once, so a
/// guest that does not answer within this is taken for hung.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of SignalProcess, which every stop path waits for (with `all`
/// the agent freezes the container's cgroup first).
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected agent. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    conn: ttrpc::asynchronous::Client,
    agent: AgentServiceClient,
    health: HealthClient,
}

impl AgentClient {
    /// Dials `endpoint` until `deadline`, then waits for the health check.
    pub async fn connect(endpoint: &AgentEndpoint, deadline: Instant) -> Result<Self, Error> {
        let socket = dial(endpoint, deadline).await?;
        let client = ttrpc::asynchronous::Client::new(socket);
        let this = Self {
            conn: client.clone(),
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reply = this
            .health
            .check(
                until(remaining.max(Duration::from_secs(1))),
                &health::CheckRequest::new(),
            )
            .await
            .map_err(rpc("Check"))?;
        tracing::debug!(status = ?reply.status, "agent health");
        Ok(this)
    }

    /// `capsa.Tracing/TakeSpans`: the spans the agent buffered for the
    /// requests that carried a trace context (capsa's agent only).
    pub async fn take_spans(&self) -> Result<capsa_protocols::tracing::AgentSpans, Error> {
        let client = TracingClient::new(self.conn.clone());
        let req = capsa_protocols::tracing::TakeSpansRequest::new();
        // Its own context: taking spans is not a traced request. The agent
        // answers from memory: bounded as a health check.
        let ctx = context::with_timeout(HEALTH_TIMEOUT.as_nanos() as i64);
        timed("TakeSpans", client.take_spans(ctx, &req)).await
    }

    /// The generated AgentService client, for methods without a wrapper.
    pub fn raw(&self) -> &AgentServiceClient {
        &self.agent
    }

    /// `grpc.Health/Check`, within [`HEALTH_TIMEOUT`].
    pub async fn check(&self) -> Result<(), Error> {
        timed(
            "Check",
            self.health
                .check(until(HEALTH_TIMEOUT), &health::CheckRequest::new()),
        )
        .await?;
        Ok(())
    }

    pub async fn version(&self) -> Result<health::VersionCheckResponse, Error> {
        timed(
            "Version",
            self.health
                .version(until(CALL_TIMEOUT), &health::CheckRequest::new()),
        )
        .await
    }

    /// SetPolicy: replaces the agent's policy with `policy` (Rego), if the
    /// current policy allows it (`SetPolicyRequest`).
    pub async fn set_policy(&self, policy: &str) -> Result<(), Error> {
        let req = agent::SetPolicyRequest {
            policy: policy.to_string(),
            ..Default::default()
        };
        self.agent
            .set_policy(until(CALL_TIMEOUT), &req)
            .await
            .map_err(rpc("SetPolicy"))?;
        Ok(())
    }

    pub async fn create_sandbox(&self, req: agent::CreateSandboxRequest) -> Result<(), Error> {
        timed(
            "CreateSandbox",
            self.agent.create_sandbox(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn destroy_sandbox(&self) -> Result<(), Error> {
        let req = agent::DestroySandboxRequest::new();
        timed(
            "DestroySandbox",
            self.agent.destroy_sandbox(until(DESTROY_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn create_container(&self, req: agent::CreateContainerRequest) -> Result<(), Error> {
        timed(
            "CreateContainer",
            self.agent.create_container(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), Error> {
        let req = agent::StartContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        timed(
            "StartContainer",
            self.agent.start_container(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), Error> {
        let req = agent::RemoveContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        timed(
            "RemoveContainer",
            self.agent.remove_container(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// Waits (without timeout) for the process to exit; returns its status.
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32, Error> {
        let req = agent::WaitProcessRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        let reply = self
            .agent
            .wait_process(context::with_timeout(0), &req)
            .await
            .map_err(rpc("WaitProcess"))?;
        Ok(reply.status)
    }

    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<(), Error> {
        let req = agent::SignalProcessRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        timed(
            "SignalProcess",
            self.agent.signal_process(until(SIGNAL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<u32, Error> {
        let req = agent::WriteStreamRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            data: data.to_vec(),
            ..Default::default()
        };
        let reply = timed(
            "WriteStdin",
            self.agent.write_stdin(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(reply.len)
    }

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), Error> {
        let req = agent::CloseStdinRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        timed(
            "CloseStdin",
            self.agent.close_stdin(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// Blocks (without timeout) until output is available.
    pub async fn read_stdout(&self, cid: &str, exec_id: &str, len: u32) -> Result<Vec<u8>, Error> {
        let req = read_request(cid, exec_id, len);
        let reply = self
            .agent
            .read_stdout(context::with_timeout(0), &req)
            .await
            .map_err(rpc("ReadStdout"))?;
        Ok(reply.data)
    }

    /// Blocks (without timeout) until output is available.
    pub async fn read_stderr(&self, cid: &str, exec_id: &str, len: u32) -> Result<Vec<u8>, Error> {
        let req = read_request(cid, exec_id, len);
        let reply = self
            .agent
            .read_stderr(context::with_timeout(0), &req)
            .await
            .map_err(rpc("ReadStderr"))?;
        Ok(reply.data)
    }
}

/// Process and cgroup methods.
impl AgentClient {
    /// Runs `process` in the running container `container_id` as `exec_id`.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: capsa_protocols::oci::Process,
    ) -> Result<(), Error> {
        let req = agent::ExecProcessRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            process: Some(process).into(),
            ..Default::default()
        };
        timed(
            "ExecProcess",
            self.agent.exec_process(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// The container's processes: `format` "table" (ps-like text) or
    /// "json" (an array of pids).
    pub async fn list_processes(&self, container_id: &str, format: &str) -> Result<Vec<u8>, Error> {
        let req = agent::ListProcessesRequest {
            container_id: container_id.into(),
            format: format.into(),
            ..Default::default()
        };
        let reply = timed(
            "ListProcesses",
            self.agent.list_processes(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(reply.process_list)
    }

    pub async fn pause(&self, container_id: &str) -> Result<(), Error> {
        let req = agent::PauseContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        timed(
            "PauseContainer",
            self.agent.pause_container(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn resume(&self, container_id: &str) -> Result<(), Error> {
        let req = agent::ResumeContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        timed(
            "ResumeContainer",
            self.agent.resume_container(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn update_container(
        &self,
        container_id: &str,
        resources: capsa_protocols::oci::LinuxResources,
    ) -> Result<(), Error> {
        let req = agent::UpdateContainerRequest {
            container_id: container_id.into(),
            resources: Some(resources).into(),
            ..Default::default()
        };
        timed(
            "UpdateContainer",
            self.agent.update_container(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// Onlines hot-added vCPUs (`cpu_only`: `nb_cpus` of them) or
    /// memory blocks in the guest, waiting until it is done.
    pub async fn online_cpu_mem(&self, nb_cpus: u32, cpu_only: bool) -> Result<(), Error> {
        let req = agent::OnlineCPUMemRequest {
            wait: true,
            nb_cpus,
            cpu_only,
            ..Default::default()
        };
        timed(
            "OnlineCPUMem",
            self.agent.online_cpu_mem(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<agent::StatsContainerResponse, Error> {
        let req = agent::StatsContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        timed(
            "StatsContainer",
            self.agent.stats_container(until(CALL_TIMEOUT), &req),
        )
        .await
    }

    /// Waits (without timeout) for the next OOM kill; returns the id of
    /// its container.
    pub async fn get_oom_event(&self) -> Result<String, Error> {
        let reply = self
            .agent
            .get_oom_event(context::with_timeout(0), &agent::GetOOMEventRequest::new())
            .await
            .map_err(rpc("GetOOMEvent"))?;
        Ok(reply.container_id)
    }

    pub async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), Error> {
        let req = agent::TtyWinResizeRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            row: rows,
            column: cols,
            ..Default::default()
        };
        timed(
            "TtyWinResize",
            self.agent.tty_win_resize(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }
    /// Configures the guest link whose MAC is `iface.hwAddr` (name,
    /// addresses, MTU, up); returns it as the guest now has it.
    pub async fn update_interface(
        &self,
        iface: capsa_protocols::types::Interface,
    ) -> Result<capsa_protocols::types::Interface, Error> {
        let req = agent::UpdateInterfaceRequest {
            interface: Some(iface).into(),
            ..Default::default()
        };
        timed(
            "UpdateInterface",
            self.agent.update_interface(until(CALL_TIMEOUT), &req),
        )
        .await
    }

    /// Replaces the guest's routes (but the kernel's own) with `routes`.
    pub async fn update_routes(
        &self,
        routes: Vec<capsa_protocols::types::Route>,
    ) -> Result<Vec<capsa_protocols::types::Route>, Error> {
        let req = agent::UpdateRoutesRequest {
            routes: Some(agent::Routes {
                Routes: routes,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let reply = timed(
            "UpdateRoutes",
            self.agent.update_routes(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(reply.Routes)
    }

    /// Adds (permanent) neighbours to the guest's tables.
    pub async fn add_arp_neighbors(
        &self,
        neighbors: Vec<capsa_protocols::types::ARPNeighbor>,
    ) -> Result<(), Error> {
        let req = agent::AddARPNeighborsRequest {
            neighbors: Some(agent::ARPNeighbors {
                ARPNeighbors: neighbors,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        timed(
            "AddARPNeighbors",
            self.agent.add_arp_neighbors(until(CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn list_interfaces(&self) -> Result<Vec<capsa_protocols::types::Interface>, Error> {
        let reply = timed(
            "ListInterfaces",
            self.agent
                .list_interfaces(until(CALL_TIMEOUT), &agent::ListInterfacesRequest::new()),
        )
        .await?;
        Ok(reply.Interfaces)
    }

    pub async fn list_routes(&self) -> Result<Vec<capsa_protocols::types::Route>, Error> {
        let reply = timed(
            "ListRoutes",
            self.agent
                .list_routes(until(CALL_TIMEOUT), &agent::ListRoutesRequest::new()),
        )
        .await?;
        Ok(reply.Routes)
    }
}

fn read_request(container_id: &str, exec_id: &str, len: u32) -> agent::ReadStreamRequest {
    agent::ReadStreamRequest {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
        len,
        ..Default::default()
    }
}

/// A ttRPC context that times the call out after `timeout` (for the
/// generated clients of [`AgentClient::raw`]), with the calling span's
/// trace context when it is exported ([`traceparent`]).
pub fn until(timeout: Duration) -> Context {
    let mut ctx = context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64);
    if let Some(parent) = traceparent(&tracing::Span::current()) {
        ctx.add(capsa_protocols::TRACEPARENT.into(), parent);
    }
    ctx
}

/// The W3C trace context (`00-TRACE-SPAN-FLAGS`) of `span`, when an
/// OpenTelemetry layer exports it: Kata's runtime sends the same in the
/// ttRPC metadata, under the same key. `None` without tracing.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Where each timed call's latency goes (the owner's metrics).
static OBSERVER: std::sync::OnceLock<fn(&'static str, Duration)> = std::sync::OnceLock::new();

/// Has `observe` told of every typed call with a timeout: its method and
/// how long it took (set once per process; later calls are ignored).
pub fn observe_calls(observe: fn(&'static str, Duration)) {
    let _ = OBSERVER.set(observe);
}

/// `call`, timed for the observer; a failure names `method`.
async fn timed<T>(
    method: &'static str,
    call: impl std::future::Future<Output = Result<T, ttrpc::Error>>,
) -> Result<T, Error> {
    let start = std::time::Instant::now();
    let result = call.await;
    if let Some(observe) = OBSERVER.get() {
        observe(method, start.elapsed());
    }
    result.map_err(rpc(method))
}

fn rpc(method: &'static str) -> impl FnOnce(ttrpc::Error) -> Error {
    move |error| Error::Rpc { method, error }
}
