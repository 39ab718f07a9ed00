//! Hostile input against a real agent: every bad request is refused with a
//! precise error, and the agent keeps serving afterwards.

use std::time::Duration;

use capsa_agent_client::until;
use capsa_protocols::{agent, health, GUEST_SHARED_DIR};
use capsa_test_infra::{assert_no_leaks, TestEnv};
use protobuf::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

mod common;
mod guest_common;

use common::boot;
use guest_common::{assert_serving, container_spec, status, CALL};

/// ttRPC's frame limit (`ttrpc::proto::MESSAGE_LENGTH_MAX`).
const FRAME_MAX: usize = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_agent_keeps_serving() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let raw = sandbox.agent().raw().clone();
    let mut refusals = Vec::new();

    // Ids that would walk out of the directories they name.
    let spec = container_spec(&mut sandbox, &env, "c1", "sleep 30");
    let oci = Some(capsa_protocols::convert::spec_to_grpc(&spec));
    for (id, message) in [
        ("a/b", "container id \"a/b\" contains '/'"),
        ("..", "container id \"..\" contains \"..\""),
    ] {
        let r = raw
            .create_container(
                until(CALL),
                &agent::CreateContainerRequest {
                    container_id: id.into(),
                    OCI: oci.clone().into(),
                    ..Default::default()
                },
            )
            .await;
        refusals.push((
            format!("CreateContainer {id}"),
            status(r),
            ttrpc::Code::INVALID_ARGUMENT,
            message.to_string(),
        ));
    }
    // Missing containers.
    for method in ["StartContainer", "RemoveContainer"] {
        let r = if method == "StartContainer" {
            raw.start_container(
                until(CALL),
                &agent::StartContainerRequest {
                    container_id: "ghost".into(),
                    ..Default::default()
                },
            )
            .await
        } else {
            raw.remove_container(
                until(CALL),
                &agent::RemoveContainerRequest {
                    container_id: "ghost".into(),
                    ..Default::default()
                },
            )
            .await
        };
        refusals.push((
            method.into(),
            status(r),
            ttrpc::Code::NOT_FOUND,
            "container \"ghost\" not found".into(),
        ));
    }

    // A second container with a used id.
    sandbox
        .create_container_spec("c1", &spec)
        .await
        .expect("create c1");
    let r = raw
        .create_container(
            until(CALL),
            &agent::CreateContainerRequest {
                container_id: "c1".into(),
                exec_id: "c1".into(),
                OCI: oci.clone().into(),
                ..Default::default()
            },
        )
        .await;
    refusals.push((
        "second c1".into(),
        status(r),
        ttrpc::Code::ALREADY_EXISTS,
        "container \"c1\" already exists".into(),
    ));

    let r = raw
        .wait_process(
            until(CALL),
            &agent::WaitProcessRequest {
                container_id: "c1".into(),
                exec_id: "../../etc".into(),
                ..Default::default()
            },
        )
        .await;
    refusals.push((
        "WaitProcess exec id".into(),
        status(r),
        ttrpc::Code::INVALID_ARGUMENT,
        "exec id \"../../etc\" contains '/'".into(),
    ));

    // CopyFile out of the sandbox directory: through symbolic links the
    // host (or a container) put in the shared directory, with "..", or
    // straight to another directory.
    // (Planted on the host side of the share: the guest's view of it is
    // read-only.)
    let shared = env.state_dir.join(sandbox.id()).join("mounts");
    std::os::unix::fs::symlink("/etc", shared.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../etc", shared.join("rel")).unwrap();
    let copy = |path: String, file_size: i64, data: &[u8]| agent::CopyFileRequest {
        path,
        file_size,
        file_mode: 0o100644,
        data: data.to_vec(),
        ..Default::default()
    };
    for link in ["abs", "rel"] {
        let path = format!("{GUEST_SHARED_DIR}/{link}/evil");
        let r = raw
            .copy_file(until(CALL), &copy(path.clone(), 1, b"x"))
            .await;
        refusals.push((
            format!("CopyFile through {link}"),
            status(r),
            ttrpc::Code::INVALID_ARGUMENT,
            format!(
                "copy file path {path:?} escapes /run/kata-containers (through a symbolic link)"
            ),
        ));
    }
    let dotdot = format!("{GUEST_SHARED_DIR}/../../../etc/evil");
    let r = raw
        .copy_file(until(CALL), &copy(dotdot.clone(), 1, b"x"))
        .await;
    refusals.push((
        "CopyFile ..".into(),
        status(r),
        ttrpc::Code::INVALID_ARGUMENT,
        format!("copy file path {dotdot:?} contains a \"..\" component"),
    ));
    let r = raw
        .copy_file(until(CALL), &copy("/etc/evil".into(), 1, b"x"))
        .await;
    refusals.push((
        "CopyFile /etc".into(),
        status(r),
        ttrpc::Code::INVALID_ARGUMENT,
        "copy file path \"/etc/evil\" is not below /run/kata-containers".into(),
    ));
    let big = format!("{GUEST_SHARED_DIR}/big");
    let r = raw.copy_file(until(CALL), &copy(big, 1 << 30, b"x")).await;
    refusals.push((
        "CopyFile size".into(),
        status(r),
        ttrpc::Code::INVALID_ARGUMENT,
        "file size 1073741824 is out of range (0 to 256 MiB)".into(),
    ));

    // Sizes below the frame limit but above the methods' own.
    let r = raw
        .reseed_random_dev(
            until(CALL),
            &agent::ReseedRandomDevRequest {
                data: vec![7; (64 << 10) + 1],
                ..Default::default()
            },
        )
        .await;
    refusals.push((
        "ReseedRandomDev".into(),
        status(r),
        ttrpc::Code::INVALID_ARGUMENT,
        "seed is 65537 bytes long, more than 65536".into(),
    ));
    let r = raw
        .write_stdin(
            until(CALL),
            &agent::WriteStreamRequest {
                container_id: "c1".into(),
                exec_id: "c1".into(),
                data: vec![b'x'; (1 << 20) + 1],
                ..Default::default()
            },
        )
        .await;
    refusals.push((
        "WriteStdin".into(),
        status(r),
        ttrpc::Code::INVALID_ARGUMENT,
        "stdin data is 1048577 bytes long, more than 1048576".into(),
    ));

    // A frame over ttRPC's limit, on a connection of its own.
    let oversized = oversized_frame(&env, &sandbox).await;

    assert_serving(&sandbox).await;
    sandbox
        .agent()
        .signal_process("c1", "c1", 9)
        .await
        .expect("kill c1");
    let _ = finish_killed(&sandbox).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
    assert!(!shared.join("abs").join("evil").exists());

    for (what, s, code, message) in refusals {
        assert_eq!((s.code(), s.message()), (code, message.as_str()), "{what}");
    }
    let (status, after) = oversized;
    assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        status.message(),
        format!(
            "message length {} exceed maximum message size of {FRAME_MAX}",
            FRAME_MAX + 1
        )
    );
    assert!(after, "the connection serves the next request");
}

/// Waits for killed container c1 and removes it.
async fn finish_killed(sandbox: &capsa_runtime::Sandbox) -> i32 {
    let code = sandbox
        .agent()
        .wait_process("c1", "c1")
        .await
        .expect("wait");
    sandbox
        .agent()
        .remove_container("c1")
        .await
        .expect("remove");
    code
}

/// Writes one ttRPC frame.
async fn write_frame(stream: &mut UnixStream, id: u32, payload_len: usize, payload: &[u8]) {
    let mut header = Vec::with_capacity(10);
    header.extend_from_slice(&(payload_len as u32).to_be_bytes());
    header.extend_from_slice(&id.to_be_bytes());
    header.extend_from_slice(&[1, 0]); // request, no flags
    stream.write_all(&header).await.unwrap();
    stream.write_all(payload).await.unwrap();
}

/// Reads one ttRPC response frame: its stream id and response.
async fn read_frame(stream: &mut UnixStream) -> (u32, ttrpc::Response) {
    let mut header = [0u8; 10];
    stream.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let id = u32::from_be_bytes(header[4..8].try_into().unwrap());
    assert_eq!(header[8], 2, "a response");
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.unwrap();
    (id, ttrpc::Response::parse_from_bytes(&payload).unwrap())
}

/// Sends a request frame of `FRAME_MAX + 1` bytes, then a health check on
/// the same connection: the refusal's status, and whether the check got
/// an answer.
async fn oversized_frame(
    env: &TestEnv,
    sandbox: &capsa_runtime::Sandbox,
) -> (ttrpc::proto::Status, bool) {
    let path = env.state_dir.join(sandbox.id()).join("vsock.sock");
    let mut stream = UnixStream::connect(&path).await.unwrap();
    stream.write_all(b"CONNECT 1024\n").await.unwrap();
    let mut line = String::new();
    BufReader::with_capacity(1, &mut stream)
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(line.starts_with("OK "), "{line:?}");

    write_frame(&mut stream, 1, FRAME_MAX + 1, &vec![0xAA; FRAME_MAX + 1]).await;
    let (id, refused) = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut stream))
        .await
        .expect("an answer to the oversized frame");
    assert_eq!(id, 1);

    let check = ttrpc::Request {
        service: "grpc.Health".into(),
        method: "Check".into(),
        payload: health::CheckRequest::default().write_to_bytes().unwrap(),
        timeout_nano: 10_000_000_000,
        ..Default::default()
    };
    let bytes = check.write_to_bytes().unwrap();
    write_frame(&mut stream, 3, bytes.len(), &bytes).await;
    let (id, answer) = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut stream))
        .await
        .expect("an answer to the health check");
    let served = id == 3
        && answer
            .status
            .as_ref()
            .is_none_or(|s| s.code() == ttrpc::Code::OK);
    (refused.status.clone().unwrap_or_default(), served)
}
