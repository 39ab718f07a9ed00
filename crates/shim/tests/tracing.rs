//! OpenTelemetry tracing through the shim under Debian's containerd
//! (`ctr run`): the pod's start is one trace, the agent's spans under the
//! shim's, received by an OTLP/gRPC receiver inside the test.

mod common;

use std::time::Duration;

use capsa_test_infra::otlp::{
    assert_start_trace, enable_tracing, start_traces, with_agent_spans, Collector,
};
use capsa_test_infra::{wait_until, TestEnv};
use common::{text, Setup};

#[test]
fn a_pods_start_is_one_trace_with_the_agents_spans() {
    let collector = Collector::start();
    let env = TestEnv::short();
    enable_tracing(&env, &collector.endpoint());
    let s = Setup::with_env(env);
    let out = s.run(&["--rm"], "traced", &["echo", "traced"]);
    assert!(out.status.success(), "{out:?}\n{}", s.ctrd.log_tail());
    assert_eq!(text(&out.stdout), "traced\n");
    // The shim flushes its spans once the pod is down.
    let arrived = wait_until(Duration::from_secs(30), || {
        let traces = start_traces(&collector.spans());
        traces.len() == 1 && with_agent_spans(&traces)
    });
    assert!(arrived, "{:#?}\n{}", collector.spans(), s.ctrd.log_tail());
    let traces = start_traces(&collector.spans());
    for trace in traces.values() {
        assert_start_trace(trace);
    }
    s.assert_all_gone();
}
