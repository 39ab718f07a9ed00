//! OpenTelemetry tracing (`[runtime] enable_tracing`) against real VMs: an
//! OTLP/gRPC receiver inside the test (`capsa_test_infra::otlp`, on
//! opentelemetry-proto and tonic) collects what `capsa run` exports.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output};
use std::time::Duration;

use capsa_test_infra::otlp::{
    assert_agent_call, assert_start_trace, enable_tracing, start_traces, with_agent_spans,
    Collector, Received,
};
use capsa_test_infra::prometheus::free_port;
use capsa_test_infra::{run_bounded, wait_until, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let rootfs = env.rootfs.to_string_lossy().into_owned();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsa"));
    cmd.arg("--config").arg(&env.config);
    cmd.args(["run", "--rootfs", &rootfs, "--"]).args(args);
    run_bounded(cmd, None, LIMIT)
}

#[test]
fn each_start_is_one_trace_whose_agent_spans_are_children_of_host_spans() {
    let collector = Collector::start();
    let env = TestEnv::new();
    enable_tracing(&env, &collector.endpoint());
    for i in 0..2 {
        let out = run(&env, &["echo", &format!("run-{i}")]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("run-{i}\n"));
        // capsa exported the start's spans, the agent's too, before it
        // exited.
        let arrived = wait_until(Duration::from_secs(30), || {
            let traces = start_traces(&collector.spans());
            traces.len() == i + 1 && with_agent_spans(&traces)
        });
        assert!(arrived, "start {i}: {:#?}", collector.spans());
    }
    let spans = collector.spans();
    let traces = start_traces(&spans);
    assert_eq!(traces.len(), 2, "one trace per start: {spans:#?}");
    for trace in traces.values() {
        assert_start_trace(trace);
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
        let in_trace: Vec<Received> = spans
            .iter()
            .filter(|s| &s.trace == trace)
            .cloned()
            .collect();
        assert_agent_call(&in_trace, "CreateContainer");
    }
    // Every trace capsa exported has one root.
    let mut roots: HashMap<&Vec<u8>, usize> = HashMap::new();
    for s in spans.iter().filter(|s| s.parent.is_empty()) {
        *roots.entry(&s.trace).or_default() += 1;
    }
    assert!(roots.values().all(|&n| n == 1), "{spans:#?}");
}

#[test]
fn a_collector_that_is_down_costs_one_warning() {
    let env = TestEnv::new();
    // A port nothing listens on.
    enable_tracing(&env, &format!("http://127.0.0.1:{}", free_port()));
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
