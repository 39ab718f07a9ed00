//! The guest's defences against a hostile workload and the DestroySandbox
//! reply, in real VMs (issue 9): the device cgroup, the share and rootfs
//! mounted `nodev`, execs in the namespaces the container was created
//! with, and a DestroySandbox that is always answered.

mod common;
mod guest_common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use capsa_agent_client::until;
use capsa_protocols::agent;
use capsa_runtime::{ProcessSpec, Sandbox};
use capsa_test_infra::{assert_no_leaks, TestEnv};
use common::{boot, read_all};
use guest_common::{console_run, CALL, CONSOLE_PARAMS};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxDeviceCgroupBuilder, LinuxDeviceType, Spec,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A spec for container `id` running `sh -c script` (stderr joined to
/// stdout) as `uid`, its rootfs shared.
fn spec(sandbox: &mut Sandbox, env: &TestEnv, id: &str, uid: u32, script: &str) -> Spec {
    let root = sandbox.share_rootfs(id, &env.rootfs).expect("share rootfs");
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), format!("exec 2>&1; {script}")],
        uid,
        gid: uid,
        ..Default::default()
    };
    capsa_runtime::spec::build(&process, &root, "hardening").expect("spec")
}

/// Creates, starts and waits for container `id`; its output and exit code.
async fn run(sandbox: &mut Sandbox, id: &str, spec: &Spec) -> (String, i32) {
    sandbox
        .create_container_spec(id, spec)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    sandbox.agent().start_container(id).await.expect("start");
    let out = read_all(sandbox, id, id).await;
    let code = tokio::time::timeout(LIMIT, sandbox.agent().wait_process(id, id))
        .await
        .expect("the container exits")
        .expect("wait");
    eprintln!("--- {id} exited with {code}:\n{out}");
    (out, code)
}

/// The `KEY=value` words of `out`.
fn values(out: &str) -> HashMap<String, String> {
    out.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn value<'a>(v: &'a HashMap<String, String>, key: &str, out: &str) -> &'a str {
    v.get(key)
        .unwrap_or_else(|| panic!("no {key}= in the output:\n{out}"))
}

/// Gives the container's process CAP_MKNOD, as containerd's default
/// capabilities do (`capsa run`'s, runc's defaults, lack it).
fn with_mknod(spec: &mut Spec) {
    let process = spec.process_mut().as_mut().unwrap();
    let mut caps = process.capabilities().clone().unwrap();
    let add = |set: &Option<Capabilities>| {
        let mut set = set.clone().unwrap_or_default();
        set.insert(Capability::Mknod);
        Some(set)
    };
    caps.set_bounding(add(caps.bounding()));
    caps.set_effective(add(caps.effective()));
    caps.set_permitted(add(caps.permitted()));
    process.set_capabilities(Some(caps));
}

/// Hole 2: with containerd's default capabilities (CAP_MKNOD) a container makes
/// the guest's `/dev/kmsg` (1:11) and `/dev/ttyS0` (4:64) and writes to
/// them (lines on the console, which reaches the host's logs). The device
/// cgroup refuses, as runc does; the standard devices still work, and a
/// device the spec allows opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_cgroup_refuses_devices_the_spec_does_not_allow() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    // In /dev (a tmpfs without nodev: mknod works, only the cgroup can
    // refuse the write); and in /tmp (the rootfs, nodev) as the attack was
    // first tried.
    let attack = "for dir in /dev /tmp; do \
           mknod $dir/kmsg-$$ c 1 11 && echo x-capsa-injected > $dir/kmsg-$$; echo ${dir#/}-kmsg=$?; \
           mknod $dir/ttyS0-$$ c 4 64 && echo x-capsa-injected > $dir/ttyS0-$$; echo ${dir#/}-ttyS0=$?; \
         done; \
         echo x > /dev/null; echo null=$?; echo zero=$(head -c 3 /dev/zero | wc -c); \
         echo urandom=$(head -c 5 /dev/urandom | wc -c); \
         echo full=$(echo x 2>&1 > /dev/full | grep -c 'No space')";
    let mut denied = spec(&mut sandbox, &env, "denied", 0, attack);
    with_mknod(&mut denied);
    let (denied_out, denied_code) = run(&mut sandbox, "denied", &denied).await;

    let mut allowed = spec(
        &mut sandbox,
        &env,
        "allowed",
        0,
        "mknod /dev/kmsg-x c 1 11 && echo x-capsa-allowed > /dev/kmsg-x; echo kmsg=$?",
    );
    with_mknod(&mut allowed);
    let linux = allowed.linux_mut().as_mut().unwrap();
    let mut resources = linux.resources().clone().unwrap();
    let mut rules = resources.devices().clone().unwrap();
    rules.push(
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(11i64)
            .access("w")
            .build()
            .unwrap(),
    );
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    let (allowed_out, allowed_code) = run(&mut sandbox, "allowed", &allowed).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(denied_code, 0, "{denied_out}");
    let v = values(&denied_out);
    for key in ["dev-kmsg", "dev-ttyS0", "tmp-kmsg", "tmp-ttyS0"] {
        assert_ne!(value(&v, key, &denied_out), "0", "{key} must be refused");
    }
    // mknod worked (CAP_MKNOD, any node may be made): the open failed.
    for node in ["kmsg", "ttyS0"] {
        assert!(
            denied_out
                .lines()
                .any(|l| l.contains(&format!("can't create /dev/{node}-"))
                    && l.ends_with("Operation not permitted")),
            "opening /dev/{node}-* must fail with EPERM:\n{denied_out}"
        );
    }
    assert_eq!(value(&v, "null", &denied_out), "0");
    assert_eq!(value(&v, "zero", &denied_out), "3");
    assert_eq!(value(&v, "urandom", &denied_out), "5");
    assert_eq!(value(&v, "full", &denied_out), "1", "/dev/full: ENOSPC");

    assert_eq!(allowed_code, 0, "{allowed_out}");
    assert_eq!(
        value(&values(&allowed_out), "kmsg", &allowed_out),
        "0",
        "a device the spec allows opens"
    );
}

/// Puts `/euid` into `rootfs`: a static program, setuid root, that prints
/// its effective uid (busybox drops a setuid root for its applets).
fn setuid_euid(rootfs: &Path) {
    let source = rootfs.with_file_name("euid.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\n\
         int main(void) { printf(\"euid=%d\\n\", (int)geteuid()); return 0; }\n",
    )
    .unwrap();
    let binary = rootfs.join("euid");
    let built = std::process::Command::new("gcc")
        .args(["-static", "-O", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("gcc (make deps)");
    assert!(built.success(), "cannot build {}", binary.display());
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o4755)).unwrap();
}

/// Hole 4: a device node put into the rootfs on the host (here
/// `/devnull`, 1:3, mode 0666) cannot be opened in the container; the
/// share is mounted nodev,nosuid in the guest; the rootfs is nodev but
/// keeps setuid: a setuid-root binary gives euid 0 to uid 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_on_the_share_and_the_rootfs_are_inert() {
    let env = TestEnv::with_qemu_extra(CONSOLE_PARAMS);
    let node = env.rootfs.join("devnull");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod on the host (the tests run as root)");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    setuid_euid(&env.rootfs);
    let mut sandbox = boot(&env).await;
    let script = "echo x > /devnull; echo devnull=$?; \
                  echo root=$(awk '$2 == \"/\" { print $4 }' /proc/mounts | tail -n 1)";
    let container = spec(&mut sandbox, &env, "nodev", 0, script);
    let (out, code) = run(&mut sandbox, "nodev", &container).await;
    let mut setuid = spec(&mut sandbox, &env, "setuid", 1000, "id -u; /euid");
    let process = setuid.process_mut().as_mut().unwrap();
    process.set_no_new_privileges(Some(false));
    let (suid_out, suid_code) = run(&mut sandbox, "setuid", &setuid).await;
    let share = console_run(
        &env,
        &sandbox,
        "grep ' /run/kata-containers/shared/containers ' /proc/mounts; exit\n",
    )
    .await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(code, 0, "{out}");
    let v = values(&out);
    assert_eq!(value(&v, "devnull", &out), "1", "the node must not open");
    assert!(out.contains("Permission denied"), "{out}");
    let root: Vec<&str> = value(&v, "root", &out).split(',').collect();
    assert!(root.contains(&"nodev"), "rootfs options {root:?}");
    assert!(!root.contains(&"nosuid"), "setuid stays allowed: {root:?}");
    assert_eq!(suid_code, 0, "{suid_out}");
    assert!(
        suid_out.starts_with("1000\n") && suid_out.contains("euid=0"),
        "a setuid root binary of the rootfs works: {suid_out}"
    );
    let line = share
        .lines()
        .find(|l| l.contains(" virtiofs "))
        .unwrap_or_else(|| panic!("no share in the guest's /proc/mounts:\n{share}"));
    let options: Vec<&str> = line.split_whitespace().nth(3).unwrap().split(',').collect();
    assert!(options.contains(&"nodev"), "{line}");
    assert!(options.contains(&"nosuid"), "{line}");
}

/// Reads the stdout of `cid`'s init until it contains `marker`.
async fn read_until(sandbox: &Sandbox, cid: &str, marker: &str) -> String {
    let mut out = Vec::new();
    let read = async {
        while !String::from_utf8_lossy(&out).contains(marker) {
            let chunk = sandbox
                .agent()
                .read_stdout(cid, cid, 4096)
                .await
                .expect("read");
            assert!(!chunk.is_empty(), "EOF before {marker:?}");
            out.extend(chunk);
        }
    };
    if tokio::time::timeout(LIMIT, read).await.is_err() {
        panic!(
            "no {marker:?} in the output:\n{}",
            String::from_utf8_lossy(&out)
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Hole 5: an init running as uid 1000 unshares a user, mount and UTS
/// namespace and renames its host; an exec (as root, with the container's
/// capabilities) still runs in the namespaces the container was created
/// with: its hostname, user namespace (and uid map) and mount namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execs_join_the_namespaces_the_container_was_created_with() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let script = "echo init-user=$(readlink /proc/self/ns/user) \
                       init-mnt=$(readlink /proc/self/ns/mnt) \
                       init-uts=$(readlink /proc/self/ns/uts) init-host=$(hostname) \
                       init-uid=$(id -u); \
                  exec unshare -r -m -u sh -c \
                    'hostname evil && echo unshared=$(hostname) $(readlink /proc/self/ns/uts) \
                     && exec sleep 1000'";
    let container = spec(&mut sandbox, &env, "userns", 1000, script);
    sandbox
        .create_container_spec("userns", &container)
        .await
        .expect("create");
    sandbox
        .agent()
        .start_container("userns")
        .await
        .expect("start");
    let init = read_until(&sandbox, "userns", "unshared=").await;
    eprintln!("--- init:\n{init}");

    let process = oci_spec::runtime::ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo exec-user=$(readlink /proc/self/ns/user) \
                  exec-mnt=$(readlink /proc/self/ns/mnt) \
                  exec-uts=$(readlink /proc/self/ns/uts) exec-host=$(hostname) \
                  exec-uid=$(id -u) exec-map=$(cat /proc/self/uid_map | tr -s ' ' :)"
                .to_string(),
        ])
        .env(vec!["PATH=/usr/bin:/bin:/usr/sbin:/sbin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    let agent = sandbox.agent();
    agent
        .exec_process(
            "userns",
            "probe",
            capsa_protocols::convert::process_to_grpc(&process),
        )
        .await
        .expect("exec");
    let exec = read_all(&sandbox, "userns", "probe").await;
    let code = tokio::time::timeout(LIMIT, agent.wait_process("userns", "probe"))
        .await
        .expect("the exec exits")
        .expect("wait");
    eprintln!("--- exec ({code}):\n{exec}");
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    let (i, e) = (values(&init), values(&exec));
    assert_eq!(value(&i, "init-uid", &init), "1000");
    assert_eq!(
        value(&i, "unshared", &init),
        "evil",
        "the init renamed its host"
    );
    assert_eq!(code, 0, "{exec}");
    assert_eq!(value(&e, "exec-uid", &exec), "0");
    for kind in ["host", "uts", "mnt", "user"] {
        assert_eq!(
            value(&e, &format!("exec-{kind}"), &exec),
            value(&i, &format!("init-{kind}"), &init),
            "the exec's {kind} must be the container's as created"
        );
    }
    assert_eq!(
        value(&e, "exec-map", &exec),
        ":0:0:4294967295",
        "the container's uid map"
    );
}

/// Hole 8: DestroySandbox is answered before the VM powers off, every
/// time: twelve VMs (three at a time), each asked once by a raw ttRPC
/// client, each must reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_sandbox_is_always_answered() {
    let env = TestEnv::new();
    let once = |n: usize| {
        let env = &env;
        async move {
            let sandbox = boot(env).await;
            let reply = sandbox
                .agent()
                .raw()
                .destroy_sandbox(until(CALL), &agent::DestroySandboxRequest::new())
                .await;
            // The VM is going: the teardown finds it gone or stops it.
            sandbox.destroy().await.expect("destroy");
            reply.map(|_| ()).map_err(|e| format!("run {n}: {e:?}"))
        }
    };
    let mut failed = Vec::new();
    for round in 0..4 {
        let n = round * 3;
        let (a, b, c) = tokio::join!(once(n), once(n + 1), once(n + 2));
        failed.extend([a, b, c].into_iter().filter_map(Result::err));
    }
    assert_no_leaks(&env.state_dir);
    assert!(failed.is_empty(), "DestroySandbox not answered: {failed:?}");
}
