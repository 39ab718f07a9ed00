//! The containerd harness proven with runc (`io.containerd.runc.v2`), before
//! capsa's shim exists: real containerd, real runc, real host state.

use capsa_test_infra::containerd::{Containerd, Opts, PAUSE_IMAGE};
use capsa_test_infra::leaks::processes_naming;
use std::path::Path;
use std::time::Duration;

fn start() -> Containerd {
    Containerd::start(Opts::default())
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Asserts that nothing of the instance in `dir` is left on the host.
fn assert_gone(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let procs = processes_naming(&needle);
    assert!(procs.is_empty(), "processes left:\n{}", procs.join("\n"));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&needle)).collect();
    assert!(mounts.is_empty(), "mounts left:\n{}", mounts.join("\n"));
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[test]
fn starts_private_instance_and_answers() {
    let c = start();
    assert!(c.socket().as_os_str().len() < 100, "{:?}", c.socket());
    assert!(c.socket().starts_with(c.dir()));
    let version = c.ctr_ok(&["version"]);
    assert!(version.contains("1.6"), "{version}");
    // The process was started with this instance's configuration.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", c.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains(&c.dir().display().to_string()),
        "{cmdline}"
    );
    let plugins = c.ctr_ok(&["plugins", "ls"]);
    let cri = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.contains("cri"));
    assert!(
        cri.is_some_and(|l| l.trim_end().ends_with("ok")),
        "{plugins}"
    );
}

#[test]
fn ctr_run_prints_output_and_returns_exit_code() {
    let c = start();
    let image = c.import_busybox();
    let root = c.runc_root();
    let run = |id: &str, cmd: &str| -> Vec<String> {
        let root = root.to_str().unwrap().to_string();
        [
            "run",
            "--rm",
            "--runc-root",
            &root,
            &image,
            id,
            "sh",
            "-c",
            cmd,
        ]
        .map(String::from)
        .to_vec()
    };

    let out = c.ctr(&args(&run("hello", "echo hi; echo err >&2")));
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let out = c.ctr(&args(&run("failing", "exit 7")));
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    let cmd = run("stdin", "read line; echo got $line");
    let out = c.ctr_with_input(&args(&cmd), b"from-stdin\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got from-stdin\n",
        "{out:?}"
    );
    // --rm removed the containers; runc's state was private.
    assert_eq!(c.ctr_ok(&["containers", "ls", "-q"]), "");
    assert!(root.join("k8s.io").is_dir(), "runc root {root:?} unused");
}

#[test]
fn cri_pod_with_runc_container() {
    let c = start();
    let image = c.import_busybox();
    assert_eq!(c.import_pause(), PAUSE_IMAGE);
    let cri = c.cri();
    assert_eq!(cri.version().runtime_name, "containerd");

    let config = cri.pod_config("web");
    let pod = cri.run_pod_with(config.clone(), "");
    let status = cri.pod_status(&pod);
    assert_eq!(
        status.state,
        k8s_cri::v1::PodSandboxState::SandboxReady as i32
    );
    let ctr = cri.create_container(&pod, &config, "app", &image, &["sleep", "3600"]);
    cri.start(&ctr);
    let status = cri.container_status(&ctr);
    assert_eq!(
        status.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );

    let t = Duration::from_secs(30);
    let (out, err, code) = cri.exec_sync(&ctr, &["sh", "-c", "echo out; echo err >&2; exit 3"], t);
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 3));
    // Host network namespace: the container sees the host's interfaces.
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let (out, _, code) = cri.exec_sync(&ctr, &["readlink", "/proc/self/ns/net"], t);
    assert_eq!((out.trim(), code), (host_net.to_str().unwrap(), 0));

    cri.stop_container(&ctr, Duration::from_secs(5));
    let status = cri.container_status(&ctr);
    assert_eq!(
        status.state,
        k8s_cri::v1::ContainerState::ContainerExited as i32
    );
    cri.remove_container(&ctr);
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    assert!(cri.list_pods().is_empty());
}

#[test]
fn drop_leaves_nothing_even_with_running_containers() {
    let c = start();
    let dir = c.dir().to_path_buf();
    let image = c.import_busybox();
    c.import_pause();
    // A detached ctr task and a running CRI pod, left for Drop to clean.
    let root = c.runc_root();
    let root = root.to_str().unwrap();
    c.ctr_ok(&[
        "run",
        "-d",
        "--runc-root",
        root,
        &image,
        "bg",
        "sleep",
        "3600",
    ]);
    let cri = c.cri();
    let config = cri.pod_config("left");
    let pod = cri.run_pod_with(config.clone(), "");
    let ctr = cri.create_container(&pod, &config, "app", &image, &["sleep", "3600"]);
    cri.start(&ctr);
    assert!(!processes_naming(&format!("{}/", dir.display())).is_empty());
    drop(cri);
    drop(c);
    assert_gone(&dir);
}

#[test]
fn drop_cleans_up_after_a_panicking_test() {
    let dir = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let c = start();
        *dir.lock().unwrap() = Some(c.dir().to_path_buf());
        let image = c.import_busybox();
        let root = c.runc_root();
        let root = root.to_str().unwrap();
        c.ctr_ok(&[
            "run",
            "-d",
            "--runc-root",
            root,
            &image,
            "bg",
            "sleep",
            "3600",
        ]);
        panic!("test failure");
    });
    assert!(result.is_err());
    assert_gone(&dir.into_inner().unwrap().expect("started"));
}

/// containerd's Tasks API with explicit rootfs mounts (what a devmapper or
/// blockfile snapshotter hands over): a bind-style rootfs, `echo` in a
/// capsa VM, the exit status and the output back, nothing left.
#[test]
fn a_task_with_explicit_rootfs_mounts_runs_in_a_capsa_vm() {
    use capsa_test_infra::containerd::{Mount, MountExt};
    let env = capsa_test_infra::TestEnv::short();
    let shim = capsa_test_infra::shim_binary();
    let c = Containerd::start(Opts {
        shim_dir: shim.parent().map(Path::to_path_buf),
        capsa_config: Some(env.config.clone()),
        ..Default::default()
    });
    let spec = c.default_spec(&["sh", "-c", "echo hello; uname -r >&2; exit 3"]);
    let done = c.run_task(
        "io.containerd.capsa.v2",
        "rootfs-mounts",
        &spec,
        &[Mount::bind(&env.rootfs)],
    );
    assert_eq!(done.exit_status, 3, "{done:?}\n{}", c.log_tail());
    assert_eq!(String::from_utf8_lossy(&done.stdout), "hello\n");
    // The guest's kernel, not the host's: it ran in a VM.
    let host = nix::sys::utsname::uname().unwrap();
    let guest = String::from_utf8_lossy(&done.stderr);
    assert!(!guest.trim().is_empty(), "{done:?}");
    assert_ne!(guest.trim(), host.release().to_string_lossy(), "{done:?}");
    assert!(c.log().contains("pod VM started"), "{}", c.log_tail());
    // Task and container are deleted: the shim and its VM are gone.
    let out = c.ctr_ok(&["containers", "ls", "-q"]);
    assert!(out.trim().is_empty(), "containers left: {out}");
    let dir = c.dir().to_path_buf();
    drop(c);
    assert_gone(&dir);
    capsa_test_infra::assert_no_leaks(&env.state_dir);
}
