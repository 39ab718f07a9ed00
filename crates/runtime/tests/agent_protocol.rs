//! Upstream protocol fields the agent honours, against a real VM: passfd
//! I/O (`stdin_port`/`stdout_port`/`stderr_port` of CreateContainer and
//! ExecProcess), guest hooks (every OCI hook kind), shared storages
//! (`Storage.shared`) and `AgentDetails` (`extra_features`, the storage and
//! device handlers).

use std::path::PathBuf;
use std::time::Duration;

use capsa_agent_client::until;
use capsa_protocols::{agent, convert};
use capsa_runtime::Sandbox;
use capsa_test_infra::{assert_no_leaks, TestEnv};
use oci_spec::runtime::{HookBuilder, HooksBuilder, MountBuilder, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

mod common;
mod guest_common;

use common::boot;
use guest_common::{console_run, container_spec, finish, CALL, CONSOLE_PARAMS};

/// How long a stream may take to connect or to end.
const STREAM: Duration = Duration::from_secs(30);

/// Host Unix listeners where the guest's vsock connections to a port land
/// (`<uds-path>_<port>`, vhost-device-vsock's convention); their socket
/// files are removed on drop, whatever the test's outcome.
struct HostPorts {
    paths: Vec<PathBuf>,
}

impl HostPorts {
    fn listen(&mut self, env: &TestEnv, sandbox: &Sandbox, port: u32) -> UnixListener {
        let uds = env.state_dir.join(sandbox.id()).join("vsock.sock");
        let path = PathBuf::from(format!("{}_{port}", uds.display()));
        let listener = UnixListener::bind(&path).expect("host port listener");
        self.paths.push(path);
        listener
    }
}

impl Drop for HostPorts {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Accepts one connection on `listener`, in a task.
fn accept(listener: UnixListener) -> tokio::task::JoinHandle<UnixStream> {
    tokio::spawn(async move {
        let (stream, _) = tokio::time::timeout(STREAM, listener.accept())
            .await
            .expect("the agent connects")
            .expect("accept");
        stream
    })
}

async fn read_to_end(mut stream: UnixStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(STREAM, stream.read_to_end(&mut out))
        .await
        .expect("the stream ends with the process")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passfd_ports_carry_the_stdio_to_host_listeners() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let mut ports = HostPorts { paths: Vec::new() };
    let stdin = accept(ports.listen(&env, &sandbox, 5000));
    let stdout = accept(ports.listen(&env, &sandbox, 5001));
    let stderr = accept(ports.listen(&env, &sandbox, 5002));
    let exec_out = accept(ports.listen(&env, &sandbox, 5003));

    let spec = container_spec(
        &mut sandbox,
        &env,
        "pfd",
        "read line; echo got:$line; echo to-stderr >&2",
    );
    let req = agent::CreateContainerRequest {
        container_id: "pfd".into(),
        exec_id: "pfd".into(),
        OCI: Some(convert::spec_to_grpc(&spec)).into(),
        stdin_port: 5000,
        stdout_port: 5001,
        stderr_port: 5002,
        ..Default::default()
    };
    sandbox.agent().create_container(req).await.expect("create");
    sandbox.agent().start_container("pfd").await.expect("start");

    // An exec whose stdout is passed through, while the init waits on stdin.
    let mut process = convert::process_to_grpc(spec.process().as_ref().unwrap());
    process.Args = vec!["echo".into(), "exec-out".into()];
    sandbox
        .agent()
        .raw()
        .exec_process(
            until(CALL),
            &agent::ExecProcessRequest {
                container_id: "pfd".into(),
                exec_id: "e1".into(),
                process: Some(process).into(),
                stdout_port: 5003,
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let exec_out = read_to_end(exec_out.await.unwrap()).await;
    let exec_code = sandbox.agent().wait_process("pfd", "e1").await;

    let mut stdin = stdin.await.unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let out = read_to_end(stdout.await.unwrap()).await;
    let err = read_to_end(stderr.await.unwrap()).await;
    let code = sandbox.agent().wait_process("pfd", "pfd").await;
    sandbox
        .agent()
        .remove_container("pfd")
        .await
        .expect("remove");

    // A port nobody listens on fails the request, naming the port.
    let spec = container_spec(&mut sandbox, &env, "nolisten", "true");
    let refused = sandbox
        .agent()
        .create_container(agent::CreateContainerRequest {
            container_id: "nolisten".into(),
            OCI: Some(convert::spec_to_grpc(&spec)).into(),
            stdout_port: 5999,
            ..Default::default()
        })
        .await
        .expect_err("no listener on port 5999");
    drop(ports);
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(exec_out, "exec-out\n");
    assert_eq!(exec_code.expect("exec waited"), 0);
    assert_eq!(
        out, "got:hello\n",
        "stdin and stdout through the host ports"
    );
    assert_eq!(err, "to-stderr\n");
    assert_eq!(code.expect("init waited"), 0);
    let refused = format!("{refused:#}");
    assert!(refused.contains("5999"), "{refused}");
}

/// A hook that runs `script` with `sh -c`.
fn sh_hook(script: &str) -> oci_spec::runtime::Hook {
    HookBuilder::default()
        .path("/bin/sh")
        .args(vec!["sh".to_string(), "-c".to_string(), script.to_string()])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_hooks_run_in_the_guest() {
    let env = TestEnv::with_qemu_extra(CONSOLE_PARAMS);
    let mut sandbox = boot(&env).await;
    let mut spec: Spec = container_spec(
        &mut sandbox,
        &env,
        "hk",
        "cat /sc-hook 2>/dev/null || echo no-start-container-hook",
    );
    // createRuntime, prestart, poststart and poststop run in the agent's
    // namespaces (the guest's /run); createContainer in the container's
    // before pivot_root (the guest's /run is still there); startContainer
    // in the container, in its rootfs. Each writes the state it got.
    let file = |kind: &str| format!("cat > /run/hook-test-{kind}");
    #[allow(deprecated)]
    let hooks = HooksBuilder::default()
        .create_runtime(vec![sh_hook(&file("createRuntime"))])
        .prestart(vec![sh_hook(&file("prestart"))])
        .create_container(vec![sh_hook(&file("createContainer"))])
        .start_container(vec![sh_hook("echo start-container-hook > /sc-hook")])
        .poststart(vec![sh_hook(&file("poststart"))])
        .poststop(vec![sh_hook(&file("poststop"))])
        .build()
        .unwrap();
    spec.set_hooks(Some(hooks));
    let req = agent::CreateContainerRequest {
        container_id: "hk".into(),
        exec_id: "hk".into(),
        OCI: Some(convert::spec_to_grpc(&spec)).into(),
        ..Default::default()
    };
    sandbox.agent().create_container(req).await.expect("create");
    let (out, code) = finish(&sandbox, "hk").await;
    let files = console_run(
        &env,
        &sandbox,
        "for f in createRuntime prestart createContainer poststart poststop; do \
         echo \"$f=$(cat /run/hook-test-$f)\"; done; exit\n",
    )
    .await;

    // A failing createRuntime hook fails the creation, naming the hook.
    let mut failing = container_spec(&mut sandbox, &env, "hkfail", "true");
    failing.set_hooks(Some(
        HooksBuilder::default()
            .create_runtime(vec![sh_hook("exit 7")])
            .build()
            .unwrap(),
    ));
    let refused = sandbox
        .agent()
        .create_container(agent::CreateContainerRequest {
            container_id: "hkfail".into(),
            OCI: Some(convert::spec_to_grpc(&failing)).into(),
            ..Default::default()
        })
        .await
        .expect_err("a failing createRuntime hook");
    let gone = sandbox.agent().wait_process("hkfail", "hkfail").await;
    let bundle = console_run(
        &env,
        &sandbox,
        "test -e /run/capsa-agent/hkfail && echo bundle=kept || echo bundle=gone; exit\n",
    )
    .await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!((out.as_str(), code), ("start-container-hook\n", 0));
    let line = |kind: &str| {
        files
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&format!("{kind}=")))
            .unwrap_or_else(|| panic!("no {kind} line in {files:?}"))
            .to_string()
    };
    for (kind, status) in [
        ("createRuntime", "created"),
        ("prestart", "created"),
        ("createContainer", "creating"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let state: serde_json::Value = serde_json::from_str(&line(kind))
            .unwrap_or_else(|e| panic!("{kind} got no OCI state ({e}): {files:?}"));
        assert_eq!(state["id"], "hk", "{kind}: {state}");
        assert_eq!(state["status"], status, "{kind}: {state}");
    }
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("createRuntime") && refused.contains('7'),
        "{refused}"
    );
    assert!(
        gone.is_err(),
        "the container of the failed hook is not kept"
    );
    assert!(bundle.contains("bundle=gone\r\n"), "{bundle:?}");
}

/// Prints how many times the shared storage is mounted in the guest.
const MOUNTED: &str = "echo mounts=$(grep -c shared-scratch /proc/mounts); exit\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_storage_lives_while_a_container_uses_it() {
    let env = TestEnv::with_qemu_extra(CONSOLE_PARAMS);
    let mut sandbox = boot(&env).await;
    let details = sandbox
        .agent()
        .raw()
        .get_guest_details(until(CALL), &agent::GuestDetailsRequest::default())
        .await
        .expect("GetGuestDetails");
    let features = details.agent_details.extra_features.clone();
    let storage_handlers = details.agent_details.storage_handlers.clone();
    let device_handlers = details.agent_details.device_handlers.clone();

    let point = "/run/kata-containers/sandbox/ephemeral/shared-scratch";
    let storage = agent::Storage {
        driver: "ephemeral".into(),
        source: "tmpfs".into(),
        fstype: "tmpfs".into(),
        mount_point: point.into(),
        shared: true,
        ..Default::default()
    };
    // Each container mounts the storage at /s and runs `script`.
    let create = |sandbox: &mut Sandbox, id: &str, script: &str| {
        let mut spec = container_spec(sandbox, &env, id, script);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            MountBuilder::default()
                .destination("/s")
                .typ("bind")
                .source(point)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        agent::CreateContainerRequest {
            container_id: id.into(),
            exec_id: id.into(),
            OCI: Some(convert::spec_to_grpc(&spec)).into(),
            storages: vec![storage.clone()],
            ..Default::default()
        }
    };

    let req = create(&mut sandbox, "w", "echo written > /s/file; echo ok");
    sandbox
        .agent()
        .create_container(req)
        .await
        .expect("create w");
    sandbox.agent().start_container("w").await.expect("start w");
    sandbox
        .agent()
        .wait_process("w", "w")
        .await
        .expect("wait w");
    let req = create(&mut sandbox, "r1", "cat /s/file");
    sandbox
        .agent()
        .create_container(req)
        .await
        .expect("create r1");
    // The writer goes: the reader still uses the storage.
    sandbox
        .agent()
        .remove_container("w")
        .await
        .expect("remove w");
    let while_used = console_run(&env, &sandbox, MOUNTED).await;
    let (r1, _) = finish(&sandbox, "r1").await;
    let after_last = console_run(&env, &sandbox, MOUNTED).await;
    // Used again after the last user went: a fresh, empty storage.
    let req = create(&mut sandbox, "r2", "cat /s/file 2>/dev/null || echo empty");
    sandbox
        .agent()
        .create_container(req)
        .await
        .expect("create r2");
    let (r2, _) = finish(&sandbox, "r2").await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    for f in ["passfd-io", "guest-hooks", "shared-storage"] {
        assert!(features.iter().any(|x| x == f), "{f} in {features:?}");
    }
    assert_eq!(
        storage_handlers,
        ["virtio-fs", "local", "ephemeral", "blk", "scsi", "mmioblk"],
        "every storage driver handled, Kata's block ones included"
    );
    assert_eq!(device_handlers, ["blk", "scsi", "mmioblk"]);
    assert_eq!(
        r1, "written\n",
        "the second container sees the first one's storage"
    );
    assert!(
        while_used.contains("mounts=1\r\n"),
        "one mount, kept: {while_used:?}"
    );
    assert!(
        after_last.contains("mounts=0\r\n"),
        "unmounted with the last user: {after_last:?}"
    );
    assert_eq!(r2, "empty\n");
}
