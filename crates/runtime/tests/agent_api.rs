//! The agent API of a real sandbox: methods the agent does not serve are
//! refused with UNIMPLEMENTED naming them; the agent keeps serving.

use std::time::Duration;

use capsa_protocols::agent;
use capsa_runtime::{Sandbox, VmSize};
use capsa_test_infra::{assert_no_leaks, TestEnv};
use ttrpc::context;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_methods_are_named() {
    let env = TestEnv::new();
    let (config, _) = capsa_runtime::load_config(Some(&env.config)).unwrap();
    let sandbox = tokio::time::timeout(
        Duration::from_secs(120),
        Sandbox::start(&config, VmSize::default()),
    )
    .await
    .expect("sandbox start timed out")
    .expect("sandbox start");
    let agent = sandbox.agent().clone();
    let result = agent
        .raw()
        .mem_hotplug_by_probe(
            context::with_timeout(10_000_000_000),
            &agent::MemHotplugByProbeRequest::default(),
        )
        .await;
    let version = agent.version().await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    let Err(ttrpc::Error::RpcStatus(status)) = result else {
        panic!("expected an RPC status, got {result:?}");
    };
    assert_eq!(status.code(), ttrpc::Code::UNIMPLEMENTED, "{status:?}");
    assert!(status.message.contains("MemHotplugByProbe"), "{status:?}");
    let version = version.expect("the agent keeps serving after a refusal");
    assert!(!version.agent_version.is_empty());
}
