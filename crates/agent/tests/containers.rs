//! Runs real containers through the sandbox API, on this machine.
//!
//! Needs root, `/bin/busybox` and a cgroup v2 hierarchy at /sys/fs/cgroup;
//! ignored by default. On a cgroup v1 or hybrid host, run it in a private
//! mount namespace with cgroup2 mounted there:
//!
//! ```sh
//! unshare -m sh -c 'umount -R /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup;
//!   cargo test -p capsa-agent --test containers -- --ignored --test-threads 1'
//! ```

use std::path::Path;
use std::time::Duration;

use capsa_agent::reaper::Reaper;
use capsa_agent::sandbox::{ContainerRequest, Sandbox, SandboxError};
use oci_spec::runtime::{BoxBuilder, ProcessBuilder, RootBuilder, Spec};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "tty", "stty", "id", "ls", "true",
];

fn rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
}

fn spec(root: &Path, args: &[&str], terminal: bool) -> Spec {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .terminal(terminal)
        .capabilities(
            spec.process()
                .as_ref()
                .unwrap()
                .capabilities()
                .clone()
                .unwrap(),
        )
        .build()
        .unwrap();
    spec.set_process(Some(process));
    spec.set_root(Some(RootBuilder::default().path(root).build().unwrap()));
    spec
}

fn request(id: &str, spec: Spec) -> ContainerRequest {
    ContainerRequest {
        container_id: id.to_string(),
        exec_id: id.to_string(),
        spec,
        storages: Vec::new(),
        shared_storages: Vec::new(),
        sandbox_pidns: false,
        io: Default::default(),
        devices: Vec::new(),
    }
}

async fn read_all(sandbox: &Sandbox, id: &str, stderr: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = sandbox.read_output(id, id, 1024, stderr).await.unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk);
    }
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("timed out")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, busybox and cgroup v2"]
async fn containers_run_through_the_sandbox() {
    capsa_agent::logging::init(false);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    rootfs(&root);
    let reaper = Reaper::new();
    reaper.spawn().unwrap();
    let sandbox = Sandbox::new(reaper, false);

    // Pipes: stdout, stderr, exit code.
    let script = "echo out; echo err >&2; exit 3";
    let req = request("pipes", spec(&root, &["sh", "-c", script], false));
    with_timeout(sandbox.create_container(req)).await.unwrap();
    let dup = request("pipes", spec(&root, &["true"], false));
    assert!(matches!(
        sandbox.create_container(dup).await,
        Err(SandboxError::ContainerExists(_))
    ));
    sandbox.close_stdin("pipes", "pipes").await.unwrap();
    sandbox.start_container("pipes").await.unwrap();
    assert_eq!(
        with_timeout(read_all(&sandbox, "pipes", false)).await,
        b"out\n"
    );
    assert_eq!(
        with_timeout(read_all(&sandbox, "pipes", true)).await,
        b"err\n"
    );
    assert_eq!(
        with_timeout(sandbox.wait_process("pipes", "pipes"))
            .await
            .unwrap(),
        3
    );
    assert_eq!(sandbox.wait_process("pipes", "").await.unwrap(), 3, "kept");
    with_timeout(sandbox.remove_container("pipes", Duration::ZERO))
        .await
        .unwrap();
    assert!(matches!(
        sandbox.wait_process("pipes", "pipes").await,
        Err(SandboxError::NoContainer(_))
    ));

    // Stdin reaches the workload; EOF after CloseStdin.
    let req = request("stdin", spec(&root, &["cat"], false));
    with_timeout(sandbox.create_container(req)).await.unwrap();
    sandbox.start_container("stdin").await.unwrap();
    assert_eq!(
        sandbox.write_stdin("stdin", "stdin", b"abc").await.unwrap(),
        3
    );
    sandbox.close_stdin("stdin", "stdin").await.unwrap();
    assert_eq!(
        with_timeout(read_all(&sandbox, "stdin", false)).await,
        b"abc"
    );
    assert_eq!(
        with_timeout(sandbox.wait_process("stdin", "stdin"))
            .await
            .unwrap(),
        0
    );
    with_timeout(sandbox.remove_container("stdin", Duration::from_secs(10)))
        .await
        .unwrap();

    // A terminal, of the spec's size.
    let mut tty = spec(&root, &["sh", "-c", "tty; stty size; echo hi"], true);
    let size = BoxBuilder::default()
        .height(24u64)
        .width(80u64)
        .build()
        .unwrap();
    tty.process_mut()
        .as_mut()
        .unwrap()
        .set_console_size(Some(size));
    let req = request("tty", tty);
    with_timeout(sandbox.create_container(req)).await.unwrap();
    sandbox.start_container("tty").await.unwrap();
    let out = String::from_utf8(with_timeout(read_all(&sandbox, "tty", false)).await).unwrap();
    assert_eq!(out, "/dev/pts/0\r\n24 80\r\nhi\r\n");
    assert_eq!(
        with_timeout(sandbox.wait_process("tty", "tty"))
            .await
            .unwrap(),
        0
    );
    with_timeout(sandbox.remove_container("tty", Duration::ZERO))
        .await
        .unwrap();

    // SIGTERM to an init that ignores it becomes SIGKILL.
    let req = request("sleep", spec(&root, &["sleep", "1000"], false));
    with_timeout(sandbox.create_container(req)).await.unwrap();
    sandbox.start_container("sleep").await.unwrap();
    sandbox.signal_process("sleep", "sleep", 15).await.unwrap();
    assert_eq!(
        with_timeout(sandbox.wait_process("sleep", "sleep"))
            .await
            .unwrap(),
        137
    );
    assert!(matches!(
        sandbox.signal_process("sleep", "sleep", 15).await,
        Err(SandboxError::Exited { .. })
    ));
    with_timeout(sandbox.remove_container("sleep", Duration::ZERO))
        .await
        .unwrap();

    // Removing a running container kills it.
    let req = request("running", spec(&root, &["sleep", "1000"], false));
    with_timeout(sandbox.create_container(req)).await.unwrap();
    sandbox.start_container("running").await.unwrap();
    with_timeout(sandbox.remove_container("running", Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(!Path::new("/run/capsa-agent/running").exists());

    // A missing executable fails CreateContainer, and leaves nothing.
    let req = request("bad", spec(&root, &["/nonexistent"], false));
    let err = with_timeout(sandbox.create_container(req))
        .await
        .unwrap_err();
    let msg = capsa_agent::error::chain(&err);
    assert!(msg.contains("nonexistent"), "{msg}");
    assert!(!Path::new("/run/capsa-agent/bad").exists());

    // Leave the host as it was.
    let _ = std::fs::remove_dir("/sys/fs/cgroup/capsa");
    let _ = std::fs::remove_dir("/run/capsa-agent");
    let _ = std::fs::remove_dir("/run/capsa-console");
}
