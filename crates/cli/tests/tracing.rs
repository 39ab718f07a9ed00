//! OpenTelemetry tracing (`[runtime] enable_tracing`) against real VMs: an
//! OTLP/gRPC receiver inside the test (opentelemetry-proto's
//! `TraceService` on tonic) collects what `capsa run` exports.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capsa_test_infra::prometheus::free_port;
use capsa_test_infra::{run_bounded, wait_until, TestEnv};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const LIMIT: Duration = Duration::from_secs(180);

/// One received span: its service, ids and name.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
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

/// The receiver on a loopback port, served until the test ends.
struct Collector {
    addr: SocketAddr,
    spans: Receiver,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let spans = Receiver::default();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let incoming = runtime
            .block_on(async { tonic::transport::server::TcpIncoming::bind(addr) })
            .expect("bind the OTLP receiver");
        let service = TraceServiceServer::new(spans.clone());
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Self {
            addr,
            spans,
            _runtime: runtime,
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.0.lock().unwrap().clone()
    }
}

fn traced_env(endpoint: &str) -> TestEnv {
    let env = TestEnv::new();
    // `[runtime]` is the configuration's last table.
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "enable_tracing = true\ntracing_endpoint = {endpoint:?}\n"
    ));
    std::fs::write(&env.config, text).unwrap();
    env
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let rootfs = env.rootfs.to_string_lossy().into_owned();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsa"));
    cmd.arg("--config").arg(&env.config);
    cmd.args(["run", "--rootfs", &rootfs, "--"]).args(args);
    run_bounded(cmd, None, LIMIT)
}

/// The traces that hold a `sandbox start` span, by trace id.
fn start_traces(spans: &[Received]) -> HashMap<Vec<u8>, Vec<Received>> {
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

#[test]
fn each_start_is_one_trace_whose_agent_spans_are_children_of_host_spans() {
    let collector = Collector::start();
    let env = traced_env(&format!("http://{}", collector.addr));
    for i in 0..2 {
        let out = run(&env, &["echo", &format!("run-{i}")]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("run-{i}\n"));
        // Each start's agent spans have arrived (capsa exported them before
        // it exited).
        let arrived = wait_until(Duration::from_secs(30), || {
            let traces = start_traces(&collector.spans());
            traces.len() == i + 1
                && traces
                    .values()
                    .all(|t| t.iter().any(|s| s.service == "capsa-agent"))
        });
        assert!(arrived, "start {i}: {:#?}", collector.spans());
    }
    let spans = collector.spans();
    let traces = start_traces(&spans);
    assert_eq!(traces.len(), 2, "one trace per start: {spans:#?}");
    for (trace, spans) in &traces {
        // One root: the start.
        let roots: Vec<&Received> = spans.iter().filter(|s| s.parent.is_empty()).collect();
        assert_eq!(roots.len(), 1, "{trace:?}: {spans:#?}");
        assert_eq!(roots[0].name, "sandbox start");
        assert_eq!(roots[0].service, "capsa");
        // Every parent is a span of the trace.
        let ids: HashMap<&Vec<u8>, &Received> = spans.iter().map(|s| (&s.id, s)).collect();
        for s in spans.iter().filter(|s| !s.parent.is_empty()) {
            assert!(ids.contains_key(&s.parent), "orphan {s:?} in {spans:#?}");
        }
        // The start-up steps are there.
        for step in ["vm start", "agent dial", "CreateSandbox"] {
            assert!(
                spans.iter().any(|s| s.service == "capsa" && s.name == step),
                "no {step:?} step in {spans:#?}"
            );
        }
        // The agent's spans are children of the host's calls: CreateSandbox
        // under the host's CreateSandbox step.
        let agent: Vec<&Received> = spans
            .iter()
            .filter(|s| s.service == "capsa-agent")
            .collect();
        for s in &agent {
            assert_eq!(ids[&s.parent].service, "capsa", "{s:?}");
        }
        let create = agent
            .iter()
            .find(|s| s.name == "CreateSandbox")
            .unwrap_or_else(|| panic!("no agent CreateSandbox span in {spans:#?}"));
        assert_eq!(ids[&create.parent].name, "CreateSandbox");
    }
    // A container's creation is a trace of its own, the agent's
    // CreateContainer under the host's CreateContainer step.
    let creates: HashSet<&Vec<u8>> = spans
        .iter()
        .filter(|s| s.name == "container create" && s.parent.is_empty())
        .map(|s| &s.trace)
        .collect();
    assert_eq!(creates.len(), 2, "{spans:#?}");
    for trace in creates {
        let ids: HashMap<&Vec<u8>, &Received> = spans
            .iter()
            .filter(|s| &s.trace == trace)
            .map(|s| (&s.id, s))
            .collect();
        let create = spans
            .iter()
            .find(|s| {
                &s.trace == trace && s.service == "capsa-agent" && s.name == "CreateContainer"
            })
            .unwrap_or_else(|| panic!("no agent CreateContainer span in {spans:#?}"));
        let parent = ids[&create.parent];
        assert_eq!(
            (parent.service.as_str(), parent.name.as_str()),
            ("capsa", "CreateContainer")
        );
    }
    // Every trace capsa exported has one root.
    let mut by_trace: HashMap<&Vec<u8>, usize> = HashMap::new();
    for s in spans.iter().filter(|s| s.parent.is_empty()) {
        *by_trace.entry(&s.trace).or_default() += 1;
    }
    assert!(by_trace.values().all(|&n| n == 1), "{spans:#?}");
}

#[test]
fn a_collector_that_is_down_costs_one_warning() {
    // A port nothing listens on.
    let env = traced_env(&format!("http://127.0.0.1:{}", free_port()));
    let out = run(&env, &["echo", "still-runs"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-runs\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("spans not exported").count(),
        1,
        "one warning: {stderr}"
    );
}
