//! An OTLP/gRPC trace receiver for tests (opentelemetry-proto's
//! `TraceService` on tonic): what capsa exports with `[runtime]
//! enable_tracing`, and checks of its traces.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::TestEnv;

/// One received span: its service, ids and name.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub trace: Vec<u8>,
    pub id: Vec<u8>,
    /// Empty for a root.
    pub parent: Vec<u8>,
    pub name: String,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    trace: span.trace_id,
                    id: span.span_id,
                    parent: span.parent_span_id,
                    name: span.name,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver on a loopback port, served until it is dropped.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Receiver,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let spans = Receiver::default();
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::prometheus::free_port())
            .parse()
            .expect("an address");
        let incoming = runtime
            .block_on(async { tonic::transport::server::TcpIncoming::bind(addr) })
            .expect("bind the OTLP receiver");
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(spans.clone()))
                .serve_with_incoming(incoming),
        );
        Self {
            addr,
            spans,
            _runtime: runtime,
        }
    }

    /// `http://ADDR`, for `tracing_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Turns tracing on in `env`'s configuration, towards `endpoint`.
pub fn enable_tracing(env: &TestEnv, endpoint: &str) {
    // `[runtime]` is the test configuration's last table.
    let mut text = std::fs::read_to_string(&env.config).expect("read the config");
    text.push_str(&format!(
        "enable_tracing = true\ntracing_endpoint = {endpoint:?}\n"
    ));
    std::fs::write(&env.config, text).expect("write the config");
}

/// The traces that hold a `sandbox start` span, by trace id.
pub fn start_traces(spans: &[Received]) -> HashMap<Vec<u8>, Vec<Received>> {
    let starts: HashSet<&Vec<u8>> = spans
        .iter()
        .filter(|s| s.name == "sandbox start")
        .map(|s| &s.trace)
        .collect();
    let mut traces: HashMap<Vec<u8>, Vec<Received>> = HashMap::new();
    for s in spans.iter().filter(|s| starts.contains(&s.trace)) {
        traces.entry(s.trace.clone()).or_default().push(s.clone());
    }
    traces
}

/// Whether every start trace has its agent's spans.
pub fn with_agent_spans(traces: &HashMap<Vec<u8>, Vec<Received>>) -> bool {
    traces
        .values()
        .all(|t| t.iter().any(|s| s.service == "capsa-agent"))
}

/// A sandbox start's trace: one root, `sandbox start` (service `capsa`),
/// every parent in the trace, the start-up steps there, every agent span
/// the child of a host span, the agent's `CreateSandbox` under the host's
/// `CreateSandbox` step.
pub fn assert_start_trace(spans: &[Received]) {
    let roots: Vec<&Received> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {spans:#?}");
    assert_eq!(roots[0].name, "sandbox start");
    assert_eq!(roots[0].service, "capsa");
    let ids: HashMap<&Vec<u8>, &Received> = spans.iter().map(|s| (&s.id, s)).collect();
    for s in spans.iter().filter(|s| !s.parent.is_empty()) {
        assert!(ids.contains_key(&s.parent), "orphan {s:?} in {spans:#?}");
    }
    for step in ["vm start", "agent dial", "CreateSandbox"] {
        assert!(
            spans.iter().any(|s| s.service == "capsa" && s.name == step),
            "no {step:?} step in {spans:#?}"
        );
    }
    assert_agent_call(spans, "CreateSandbox");
}

/// The agent's span `method` in `spans` (one trace) is the child of the
/// host's step of the same name; every agent span's parent is a host span.
pub fn assert_agent_call(spans: &[Received], method: &str) {
    let ids: HashMap<&Vec<u8>, &Received> = spans.iter().map(|s| (&s.id, s)).collect();
    let agent: Vec<&Received> = spans
        .iter()
        .filter(|s| s.service == "capsa-agent")
        .collect();
    for s in &agent {
        let parent = ids.get(&s.parent);
        assert!(
            parent.is_some_and(|p| p.service == "capsa"),
            "{s:?} not under a host span: {spans:#?}"
        );
    }
    let call = agent
        .iter()
        .find(|s| s.name == method)
        .unwrap_or_else(|| panic!("no agent {method} span in {spans:#?}"));
    assert_eq!(ids[&call.parent].name, method, "{spans:#?}");
}
