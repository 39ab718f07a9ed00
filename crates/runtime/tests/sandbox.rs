//! The runtime's `Sandbox` against a real VM: a container is created from a
//! full OCI spec, its output read and its exit code waited for. Also the
//! template for the agent API tests of this directory.

use std::time::Duration;

mod common;

use capsa_agent_client::until;
use capsa_protocols::agent;
use capsa_runtime::ProcessSpec;
use capsa_test_infra::{assert_no_leaks, TestEnv};
use common::{boot, read_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_from_a_full_spec_runs_and_exits() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let root = sandbox
        .share_rootfs("c1", &env.rootfs)
        .expect("share rootfs");
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), "hostname; exit 7".into()],
        ..Default::default()
    };
    let mut spec = capsa_runtime::spec::build(&process, &root, "spec-host").unwrap();
    spec.set_hostname(Some("spec-host".into()));
    sandbox
        .create_container_spec("c1", &spec)
        .await
        .expect("create");
    sandbox.agent().start_container("c1").await.expect("start");
    let out = read_all(&sandbox, "c1", "c1").await;
    let code = sandbox
        .agent()
        .wait_process("c1", "c1")
        .await
        .expect("wait");
    // A raw call through the generated client, as the other tests do.
    let check = sandbox
        .agent()
        .raw()
        .wait_process(
            until(Duration::from_secs(10)),
            &agent::WaitProcessRequest {
                container_id: "c1".into(),
                exec_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("raw WaitProcess");
    sandbox.destroy().await.expect("destroy");
    assert_eq!(out, "spec-host\n");
    assert_eq!(code, 7);
    assert_eq!(check.status, 7);
    assert_no_leaks(&env.state_dir);
}

/// A sandbox dropped without `destroy` (a panicking test, a cancelled
/// start) still leaves nothing: its helpers are killed, its mounts and
/// state directory removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sandbox_leaves_nothing() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    sandbox
        .share_rootfs("c1", &env.rootfs)
        .expect("share rootfs");
    drop(sandbox);
    // SIGKILL was sent on drop; give the kernel a moment to end them.
    let state = env.state_dir.to_string_lossy().into_owned();
    capsa_test_infra::wait_until_async(Duration::from_secs(10), || {
        std::future::ready(capsa_test_infra::leaks::processes_naming(&state).is_empty())
    })
    .await;
    assert_no_leaks(&env.state_dir);
}

/// The guest sees the share read-only: it cannot plant entries (a symlink
/// where the host will mount next) beside the host's mount points, but a
/// container's own rootfs stays writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_is_read_only_but_the_rootfs_is_not() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let root = sandbox
        .share_rootfs("c1", &env.rootfs)
        .expect("share rootfs");
    let script = "touch /rootfs-ok && echo rootfs=ok; \
                  ln -s /etc /share/c2 2>/dev/null && echo planted || echo share=ro; \
                  touch /share/c1/rootfs/via-share && echo via-share=ok";
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let mut spec = capsa_runtime::spec::build(&process, &root, "h").unwrap();
    let share = oci_spec::runtime::MountBuilder::default()
        .destination("/share")
        .typ("bind")
        .source(capsa_protocols::GUEST_SHARED_DIR)
        .options(vec!["rbind".to_string()])
        .build()
        .unwrap();
    spec.mounts_mut().as_mut().unwrap().push(share);
    sandbox
        .create_container_spec("c1", &spec)
        .await
        .expect("create");
    sandbox.agent().start_container("c1").await.expect("start");
    let out = read_all(&sandbox, "c1", "c1").await;
    let code = sandbox
        .agent()
        .wait_process("c1", "c1")
        .await
        .expect("wait");
    let planted = env.state_dir.join(sandbox.id()).join("mounts/c2");
    let written = env.rootfs.join("rootfs-ok").exists();
    sandbox.destroy().await.expect("destroy");
    let _ = std::fs::remove_file(env.rootfs.join("rootfs-ok"));
    let _ = std::fs::remove_file(env.rootfs.join("via-share"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "rootfs=ok\nshare=ro\nvia-share=ok\n");
    assert!(
        written,
        "the container's write did not reach the host rootfs"
    );
    assert!(!planted.exists());
    assert_no_leaks(&env.state_dir);
}
