//! The agent policy on the wire: the agent's ttRPC server on a Unix
//! socket, driven by the generated client. It starts with allow-all (no
//! policy file on a host), takes a policy with SetPolicy, denies with
//! PERMISSION_DENIED naming the rule, and refuses what does not parse.

mod common;

use std::sync::Arc;
use std::time::Duration;

use capsa_agent::reaper::Reaper;
use capsa_agent::sandbox::Sandbox;
use capsa_agent::server::serve;
use capsa_protocols::agent;
use capsa_protocols::agent_ttrpc::AgentServiceClient;
use capsa_protocols::health_ttrpc::HealthClient;
use common::{ctx, status};
use ttrpc::Code;

fn set(policy: &str) -> agent::SetPolicyRequest {
    agent::SetPolicyRequest {
        policy: policy.into(),
        ..Default::default()
    }
}

fn read(cid: &str) -> agent::ReadStreamRequest {
    agent::ReadStreamRequest {
        container_id: cid.into(),
        len: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn policies_decide_requests_and_can_lock_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}", dir.path().join("agent.sock").display());
    let sandbox = Arc::new(Sandbox::new(Reaper::new(), false));
    let server = tokio::spawn({
        let address = address.clone();
        async move { serve(sandbox, &address).await }
    });
    // The server binds its socket once spawned: bounded retries.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let client = loop {
        match ttrpc::asynchronous::Client::connect(&address).await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the agent server did not listen on {address} in 10 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let health = HealthClient::new(client.clone());
    let agent = AgentServiceClient::new(client);

    // Allow-all: the method runs (and finds no container).
    let (code, _) = status(agent.read_stdout(ctx(), &read("c1")).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);

    // A policy that does not parse is refused; allow-all stays.
    let (code, message) = status(
        agent
            .set_policy(
                ctx(),
                &set("package agent_policy\nReadStreamRequest := {\n"),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(
        message.starts_with("the policy does not parse: "),
        "{message}"
    );
    let (code, _) = status(agent.read_stdout(ctx(), &read("c1")).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);

    // Reads only of container "c1"; ExecProcess has no rule; SetPolicy
    // denied: the policy locks itself.
    let policy = r#"package agent_policy
import rego.v1
default ReadStreamRequest := false
ReadStreamRequest if input.container_id == "c1"
default DestroySandboxRequest := true
default SetPolicyRequest := false
"#;
    agent.set_policy(ctx(), &set(policy)).await.unwrap();
    let (code, _) = status(agent.read_stdout(ctx(), &read("c1")).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND, "c1 is allowed");
    let (code, message) = status(agent.read_stderr(ctx(), &read("c2")).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (
            Code::PERMISSION_DENIED,
            "ReadStreamRequest is blocked by policy"
        )
    );
    let (code, message) = status(
        agent
            .exec_process(ctx(), &agent::ExecProcessRequest::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::PERMISSION_DENIED);
    assert_eq!(
        message,
        "ExecProcessRequest is blocked by policy (no rule data.agent_policy.ExecProcessRequest in the policy)"
    );
    // The health service is not guarded.
    health
        .check(ctx(), &capsa_protocols::health::CheckRequest::new())
        .await
        .unwrap();

    // SetPolicy once more: the policy says no.
    let (code, message) = status(
        agent
            .set_policy(ctx(), &set(capsa_protocols::policy::ALLOW_ALL))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (
            Code::PERMISSION_DENIED,
            "SetPolicyRequest is blocked by policy"
        )
    );
    let (code, _) = status(agent.read_stdout(ctx(), &read("c2")).await.unwrap_err());
    assert_eq!(code, Code::PERMISSION_DENIED, "the locked policy stays");

    agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}
