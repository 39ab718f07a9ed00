//! The agent's ttRPC server on a Unix socket, driven by the generated
//! clients: health, validation errors, UNIMPLEMENTED, DestroySandbox.

mod common;

use std::sync::Arc;
use std::time::Duration;

use capsa_agent::reaper::Reaper;
use capsa_agent::sandbox::Sandbox;
use capsa_agent::server::serve_on;
use capsa_protocols::agent_ttrpc::AgentServiceClient;
use capsa_protocols::health_ttrpc::HealthClient;
use capsa_protocols::{agent, health, oci};
use common::{ctx, status};
use futures::StreamExt;
use ttrpc::asynchronous::transport::{Listener, Socket};
use ttrpc::Code;

#[tokio::test]
async fn the_server_answers_and_stops_on_destroy_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}", dir.path().join("agent.sock").display());
    // The reaper is not started: this test runs no process.
    let sandbox = Arc::new(Sandbox::new(Reaper::new(), false));
    // Bound before the server starts: the client connects at once.
    let listener = Listener::bind(&address).expect("bind");
    let server = tokio::spawn(serve_on(sandbox, listener));
    let client = ttrpc::asynchronous::Client::connect(&address)
        .await
        .expect("connect");
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

/// How long the modelled transport takes to carry the agent's bytes to the
/// host: longer than the old 2 s wait after DestroySandbox.
const TRANSIT: Duration = Duration::from_secs(3);

/// A connection between a client and the agent that carries the agent's
/// bytes `TRANSIT` late, like a loaded virtio-vsock transport, and loses
/// what it still carries once `powered_off` is set, like a VM that powers
/// off. The client's bytes (and its close) arrive at once.
fn slow_transport(
    powered_off: tokio::sync::watch::Receiver<bool>,
) -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (agent_end, agent_wire) = tokio::io::duplex(64 * 1024);
    let (client_end, client_wire) = tokio::io::duplex(64 * 1024);
    let (mut from_agent, mut to_agent) = tokio::io::split(agent_wire);
    let (mut from_client, mut to_client) = tokio::io::split(client_wire);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut to_agent).await;
        let _ = to_agent.shutdown().await;
    });
    // Chunks in flight, each due `TRANSIT` after the agent wrote it; an
    // empty chunk is the end of the agent's stream.
    let (in_flight, mut arriving) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_agent.read(&mut buf).await.unwrap_or(0);
            let due = tokio::time::Instant::now() + TRANSIT;
            let _ = in_flight.send((due, buf[..n].to_vec()));
            if n == 0 {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut powered_off = powered_off;
        while let Some((due, chunk)) = arriving.recv().await {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = powered_off.wait_for(|off| *off) => return,
            }
            if chunk.is_empty() {
                let _ = to_client.shutdown().await;
                return;
            }
            if to_client.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    (agent_end, client_end)
}

/// DestroySandbox is answered before the agent powers off, even when the
/// client keeps its connection (as Kata's runtime does) and the reply
/// takes a while to cross the transport. The old agent waited 2 s for the
/// client to close, then powered off with the reply still in flight.
/// Virtual time (a paused clock): the same every run.
#[tokio::test(start_paused = true)]
async fn destroy_sandbox_is_answered_before_power_off() {
    let sandbox = Arc::new(Sandbox::new(Reaper::new(), false));
    let (power, powered_off) = tokio::sync::watch::channel(false);
    let (agent_end, client_end) = slow_transport(powered_off);
    let incoming = futures::stream::iter([Ok::<_, std::io::Error>(agent_end)])
        .chain(futures::stream::pending());
    let server = tokio::spawn(async move {
        let served = serve_on(sandbox, incoming).await;
        // What PID 1 does next: the power-off.
        power.send_replace(true);
        served
    });

    // A raw client from the generated code, kept until the end.
    let client = ttrpc::asynchronous::Client::new(Socket::new(client_end));
    let agent = AgentServiceClient::new(client.clone());
    let reply = agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), server).await;
    stopped.expect("the agent stops").unwrap().unwrap();
    assert!(
        reply.is_ok(),
        "DestroySandbox not answered before power-off: {reply:?}"
    );
    drop(client);
}
