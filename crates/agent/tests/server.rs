//! The agent's ttRPC server on a Unix socket, driven by the generated
//! clients: health, validation errors, UNIMPLEMENTED, DestroySandbox.

use std::sync::Arc;
use std::time::Duration;

use capsa_agent::reaper::Reaper;
use capsa_agent::sandbox::Sandbox;
use capsa_agent::server::serve;
use capsa_protocols::agent_ttrpc::AgentServiceClient;
use capsa_protocols::health_ttrpc::HealthClient;
use capsa_protocols::{agent, health, oci};
use ttrpc::context;
use ttrpc::Code;

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

fn status(err: ttrpc::Error) -> (Code, String) {
    match err {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test]
async fn the_server_answers_and_stops_on_destroy_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}", dir.path().join("agent.sock").display());
    // The reaper is not started: this test runs no process.
    let sandbox = Arc::new(Sandbox::new(Reaper::new(), false));
    let server = tokio::spawn({
        let address = address.clone();
        async move { serve(sandbox, &address).await }
    });

    let client = loop {
        match ttrpc::asynchronous::Client::connect(&address).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let health = HealthClient::new(client.clone());
    let agent = AgentServiceClient::new(client);

    let check = health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(
        check.status.enum_value(),
        Ok(health::health_check_response::ServingStatus::SERVING)
    );
    let version = health
        .version(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.grpc_version, capsa_agent::rpc::API_VERSION);

    // Implemented methods check their input first.
    let err = agent
        .exec_process(ctx(), &agent::ExecProcessRequest::new())
        .await
        .unwrap_err();
    assert_eq!(
        status(err),
        (
            Code::INVALID_ARGUMENT,
            "the request has no process".to_string()
        )
    );
    // Methods the agent does not serve are named.
    let err = agent
        .mem_hotplug_by_probe(ctx(), &agent::MemHotplugByProbeRequest::new())
        .await
        .unwrap_err();
    assert_eq!(
        status(err),
        (
            Code::UNIMPLEMENTED,
            "/grpc.AgentService/MemHotplugByProbe is not implemented".to_string()
        )
    );
    // An agent that is not PID 1 leaves its host's network alone.
    let err = agent
        .update_routes(ctx(), &agent::UpdateRoutesRequest::new())
        .await
        .unwrap_err();
    assert_eq!(
        status(err),
        (
            Code::FAILED_PRECONDITION,
            "not PID 1: the network left alone".to_string()
        )
    );

    let bad_id = agent::CreateContainerRequest {
        container_id: "../etc".into(),
        exec_id: "../etc".into(),
        OCI: Some(oci::Spec::new()).into(),
        ..Default::default()
    };
    let (code, message) = status(agent.create_container(ctx(), &bad_id).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("container id \"../etc\""), "{message}");

    let no_spec = agent::CreateContainerRequest {
        container_id: "c".into(),
        ..Default::default()
    };
    let (code, message) = status(agent.create_container(ctx(), &no_spec).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::INVALID_ARGUMENT, "the request has no OCI spec")
    );

    let wait = agent::WaitProcessRequest {
        container_id: "nope".into(),
        exec_id: "nope".into(),
        ..Default::default()
    };
    let (code, message) = status(agent.wait_process(ctx(), &wait).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::NOT_FOUND, "container \"nope\" not found")
    );

    let read = agent::ReadStreamRequest {
        container_id: "nope".into(),
        len: 10,
        ..Default::default()
    };
    assert_eq!(
        status(agent.read_stdout(ctx(), &read).await.unwrap_err()).0,
        Code::NOT_FOUND
    );

    let nvdimm = agent::CreateSandboxRequest {
        storages: vec![agent::Storage {
            driver: "nvdimm".into(),
            mount_point: "/run/kata-containers/sandbox/x".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (code, message) = status(agent.create_sandbox(ctx(), &nvdimm).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(
        message.starts_with("storage 0 (nvdimm): unsupported storage driver"),
        "{message}"
    );

    agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
    stopped.expect("server stopped").unwrap().unwrap();
}
