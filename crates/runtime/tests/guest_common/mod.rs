//! Helpers of the guest-method tests (`agent_guest`, `agent_hostile`):
//! containers run to completion, the debug console, raw statuses.
#![allow(dead_code)]

use std::time::Duration;

use capsa_protocols::agent;
use capsa_runtime::{ProcessSpec, Sandbox};
use capsa_test_infra::TestEnv;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The guest port of the debug console, and the configuration that opens it.
pub const CONSOLE_PORT: u32 = 1026;
pub const CONSOLE_PARAMS: &str = "kernel_params = \"agent.debug_console_vport=1026\"";
/// Timeout of one raw call.
pub const CALL: Duration = Duration::from_secs(30);

/// The status of a refused call.
pub fn status<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> ttrpc::proto::Status {
    match result {
        Err(ttrpc::Error::RpcStatus(s)) => s,
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

/// The agent still answers.
pub async fn assert_serving(sandbox: &Sandbox) {
    let d = sandbox
        .agent()
        .raw()
        .get_guest_details(
            capsa_agent_client::until(CALL),
            &agent::GuestDetailsRequest::default(),
        )
        .await
        .expect("the agent keeps serving");
    assert!(d.agent_details.is_some());
    sandbox.agent().version().await.expect("health answers");
}

/// Runs `script` with `sh -c` in a new container `id` on the test rootfs;
/// returns its stdout and exit code, and removes the container.
pub async fn run(sandbox: &mut Sandbox, env: &TestEnv, id: &str, script: &str) -> (String, i32) {
    let spec = container_spec(sandbox, env, id, script);
    sandbox
        .create_container_spec(id, &spec)
        .await
        .expect("create");
    finish(sandbox, id).await
}

/// The spec of a container `id` running `script`, its rootfs shared.
pub fn container_spec(
    sandbox: &mut Sandbox,
    env: &TestEnv,
    id: &str,
    script: &str,
) -> oci_spec::runtime::Spec {
    let root = sandbox.share_rootfs(id, &env.rootfs).expect("share rootfs");
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    capsa_runtime::spec::build(&process, &root, "guest-test").expect("spec")
}

/// Starts created container `id`, reads its output, waits and removes it.
pub async fn finish(sandbox: &Sandbox, id: &str) -> (String, i32) {
    sandbox.agent().start_container(id).await.expect("start");
    let mut out = Vec::new();
    while let Ok(chunk) = sandbox.agent().read_stdout(id, id, 4096).await {
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    let code = sandbox.agent().wait_process(id, id).await.expect("wait");
    sandbox.agent().remove_container(id).await.expect("remove");
    (String::from_utf8_lossy(&out).into_owned(), code)
}

/// Connects to the debug console of `sandbox` through its hybrid vsock.
pub async fn console(env: &TestEnv, sandbox: &Sandbox) -> UnixStream {
    let path = env.state_dir.join(sandbox.id()).join("vsock.sock");
    let mut stream = UnixStream::connect(&path).await.expect("vsock socket");
    stream
        .write_all(format!("CONNECT {CONSOLE_PORT}\n").as_bytes())
        .await
        .unwrap();
    let mut reader = BufReader::with_capacity(1, &mut stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("CONNECT answered")
        .unwrap();
    assert!(line.starts_with("OK "), "console port refused: {line:?}");
    stream
}

/// Runs `commands` (ending with `exit`) in a console shell; its output.
pub async fn console_run(env: &TestEnv, sandbox: &Sandbox, commands: &str) -> String {
    let mut stream = console(env, sandbox).await;
    stream.write_all(commands.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the shell's exit ends the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
