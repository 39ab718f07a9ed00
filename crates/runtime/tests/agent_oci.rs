//! The OCI process and container features, as the agent applies them in a
//! real VM: seccomp, capabilities, no_new_privileges, masked and read-only
//! paths, a read-only rootfs, rlimits, hostname, sysctls, additional
//! groups, umask, and mounts (binds from the share, tmpfs, proc, sysfs,
//! devpts, mqueue). Several containers share one sandbox per test; each
//! container prints what it sees, the test asserts on that output and on
//! the exit code.

mod common;

use std::collections::HashMap;

use capsa_runtime::{ProcessSpec, Sandbox};
use capsa_test_infra::{assert_no_leaks, TestEnv};
use common::{boot, read_all};
use oci_spec::runtime::{
    Arch, Capability, LinuxCapabilitiesBuilder, LinuxSeccompAction, LinuxSeccompBuilder,
    LinuxSyscallBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Spec,
};

/// A spec for container `id` running `sh -c script` (stderr joined to
/// stdout), its rootfs shared.
fn spec(sandbox: &mut Sandbox, env: &TestEnv, id: &str, script: &str) -> Spec {
    let root = sandbox.share_rootfs(id, &env.rootfs).expect("share rootfs");
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), format!("exec 2>&1; {script}")],
        ..Default::default()
    };
    capsa_runtime::spec::build(&process, &root, id).expect("spec")
}

/// Creates, starts and waits for container `id`; its output and exit code.
async fn run(sandbox: &mut Sandbox, id: &str, spec: &Spec) -> (String, i32) {
    sandbox
        .create_container_spec(id, spec)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    sandbox
        .agent()
        .start_container(id)
        .await
        .unwrap_or_else(|e| panic!("start {id}: {e:?}"));
    let out = read_all(sandbox, id, id).await;
    let code = sandbox
        .agent()
        .wait_process(id, id)
        .await
        .unwrap_or_else(|e| panic!("wait {id}: {e:?}"));
    eprintln!("--- {id} exited with {code}:\n{out}");
    (out, code)
}

/// The `KEY=value` lines of `out`.
fn values(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value<'a>(v: &'a HashMap<String, String>, key: &str, out: &str) -> &'a str {
    v.get(key)
        .unwrap_or_else(|| panic!("no {key}= in the output:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_denies_with_its_errno() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let script =
        "mkdir /tmp/sc-$$; echo mkdir=$?; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
                  rmdir /tmp/sc-$$ 2>/dev/null; true";

    // ETXTBSY (26): an errno mkdir never returns by itself.
    let mut denied = spec(&mut sandbox, &env, "denied", script);
    let profile = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![Arch::ScmpArchX86_64])
        .syscalls(vec![LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(26u32)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    denied
        .linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(profile));
    let (denied_out, denied_code) = run(&mut sandbox, "denied", &denied).await;

    // Without no_new_privileges (Kubernetes' default) and without
    // CAP_SYS_ADMIN, the profile is loaded all the same.
    let mut privileged = denied.clone();
    privileged.set_root(spec(&mut sandbox, &env, "nnp0", script).root().clone());
    privileged.set_hostname(Some("nnp0".into()));
    privileged
        .process_mut()
        .as_mut()
        .unwrap()
        .set_no_new_privileges(Some(false));
    let (nnp0_out, nnp0_code) = run(&mut sandbox, "nnp0", &privileged).await;

    let free = spec(&mut sandbox, &env, "free", script);
    let (free_out, free_code) = run(&mut sandbox, "free", &free).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(denied_code, 0, "{denied_out}");
    assert!(
        denied_out.contains("Text file busy"),
        "mkdir must fail with the profile's errno:\n{denied_out}"
    );
    assert!(denied_out.contains("mkdir=1"), "{denied_out}");
    assert!(denied_out.contains("Seccomp:\t2"), "{denied_out}");
    assert_eq!(nnp0_code, 0, "{nnp0_out}");
    assert!(nnp0_out.contains("Text file busy"), "{nnp0_out}");
    assert!(nnp0_out.contains("Seccomp:\t2"), "{nnp0_out}");
    assert!(nnp0_out.contains("NoNewPrivs:\t0"), "{nnp0_out}");

    assert_eq!(free_code, 0, "{free_out}");
    assert!(free_out.contains("mkdir=0"), "{free_out}");
    assert!(free_out.contains("Seccomp:\t0"), "{free_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_privileges() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let script = "touch /tmp/own-$$; chown 1000 /tmp/own-$$; echo chown=$?; rm -f /tmp/own-$$; \
                  grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status";

    // The OCI defaults: AUDIT_WRITE, KILL, NET_BIND_SERVICE; no CHOWN.
    let without = spec(&mut sandbox, &env, "nochown", script);
    let (without_out, without_code) = run(&mut sandbox, "nochown", &without).await;

    let mut with = spec(&mut sandbox, &env, "chown", script);
    let caps: std::collections::HashSet<Capability> = [
        Capability::AuditWrite,
        Capability::Kill,
        Capability::NetBindService,
        Capability::Chown,
    ]
    .into();
    let process = with.process_mut().as_mut().unwrap();
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()
            .unwrap(),
    ));
    process.set_no_new_privileges(Some(false));
    let (with_out, with_code) = run(&mut sandbox, "chown", &with).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(without_code, 0, "{without_out}");
    assert!(without_out.contains("chown=1"), "{without_out}");
    assert!(
        without_out.contains("Operation not permitted"),
        "{without_out}"
    );
    // Bits 5 (KILL), 10 (NET_BIND_SERVICE), 29 (AUDIT_WRITE).
    assert!(
        without_out.contains("CapEff:\t0000000020000420"),
        "{without_out}"
    );
    assert!(
        without_out.contains("CapBnd:\t0000000020000420"),
        "{without_out}"
    );
    assert!(without_out.contains("NoNewPrivs:\t1"), "{without_out}");

    assert_eq!(with_code, 0, "{with_out}");
    assert!(with_out.contains("chown=0"), "{with_out}");
    assert!(with_out.contains("CapEff:\t0000000020000421"), "{with_out}");
    assert!(with_out.contains("NoNewPrivs:\t0"), "{with_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_and_read_only_paths_and_read_only_rootfs() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    // /proc/timer_list exists on every kernel (capsa's has no /proc/kcore).
    let script = "echo timer_list=$(wc -c < /proc/timer_list); \
                  echo 1 > /proc/sys/kernel/shm_rmid_forced; echo procsys=$?; \
                  touch /x-$$; echo touch=$?; \
                  echo 1 > /dev/shm/ok; echo devshm=$?";
    let mut ro = spec(&mut sandbox, &env, "ro", script);
    ro.root_mut().as_mut().unwrap().set_readonly(Some(true));
    let (out, code) = run(&mut sandbox, "ro", &ro).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(code, 0, "{out}");
    let v = values(&out);
    assert_eq!(
        value(&v, "timer_list", &out),
        "0",
        "masked: /dev/null:\n{out}"
    );
    assert_eq!(value(&v, "procsys", &out), "1", "{out}");
    assert!(
        out.contains("/proc/sys/kernel/shm_rmid_forced: Read-only file system"),
        "{out}"
    );
    assert_eq!(value(&v, "touch", &out), "1", "{out}");
    assert!(
        out.contains("/x-") && out.contains("Read-only file system"),
        "{out}"
    );
    assert_eq!(
        value(&v, "devshm", &out),
        "0",
        "tmpfs mounts stay writable:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimits_hostname_sysctls_groups_umask() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let script = "echo nofile=$(ulimit -n); echo nofilehard=$(ulimit -Hn); echo host=$(hostname); \
                  echo shm=$(cat /proc/sys/kernel/shm_rmid_forced); \
                  echo fwd=$(cat /proc/sys/net/ipv4/ip_forward); \
                  echo uid=$(id -u); echo groups=$(id -G); echo umask=$(umask); \
                  touch /scratch/f; echo mode=$(stat -c %a /scratch/f)";
    let scratch = MountBuilder::default()
        .destination("/scratch")
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec!["mode=1777".to_string(), "size=1m".to_string()])
        .build()
        .unwrap();

    let mut custom = spec(&mut sandbox, &env, "custom", script);
    custom.set_hostname(Some("oci-host".into()));
    custom.mounts_mut().as_mut().unwrap().push(scratch.clone());
    let process = custom.process_mut().as_mut().unwrap();
    process.set_rlimits(Some(vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(123u64)
        .hard(456u64)
        .build()
        .unwrap()]));
    let user = process.user_mut();
    user.set_uid(1000);
    user.set_gid(1000);
    user.set_additional_gids(Some(vec![10, 20]));
    user.set_umask(Some(0o027));
    custom.linux_mut().as_mut().unwrap().set_sysctl(Some(
        [
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
        ]
        .into(),
    ));
    let (custom_out, custom_code) = run(&mut sandbox, "custom", &custom).await;

    // Another container: its own IPC namespace keeps the default.
    let mut plain = spec(&mut sandbox, &env, "plain", script);
    plain.mounts_mut().as_mut().unwrap().push(scratch);
    let (plain_out, plain_code) = run(&mut sandbox, "plain", &plain).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(custom_code, 0, "{custom_out}");
    let v = values(&custom_out);
    let get = |k| value(&v, k, &custom_out);
    assert_eq!(get("nofile"), "123");
    assert_eq!(get("nofilehard"), "456");
    assert_eq!(get("host"), "oci-host");
    assert_eq!(get("shm"), "1");
    assert_eq!(get("fwd"), "1", "net.* sysctls set in the VM's network");
    assert_eq!(get("uid"), "1000");
    assert_eq!(get("groups"), "1000 10 20");
    assert_eq!(get("umask"), "0027", "the spec's umask");
    assert_eq!(get("mode"), "640");

    assert_eq!(plain_code, 0, "{plain_out}");
    let v = values(&plain_out);
    let get = |k| value(&v, k, &plain_out);
    assert_eq!(get("nofile"), "1024", "the OCI default");
    assert_eq!(get("host"), "plain");
    assert_eq!(
        get("shm"),
        "0",
        "kernel.shm_rmid_forced is per IPC namespace"
    );
    assert_eq!(get("uid"), "0");
    assert_eq!(get("groups"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_and_bind_confinement() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;

    // A host directory in the share, bound into the container.
    let volume = env.dir.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("hello.txt"), "from the host\n").unwrap();
    let shared = sandbox.share_rootfs("vol", &volume).expect("share volume");
    assert!(shared.starts_with("/run/kata-containers/shared/containers/"));

    let script = "cat /vol/hello.txt; echo > /vol/ro 2>/dev/null; echo volwrite=$?; \
                  awk '{print \"mnt \" $2 \" \" $3}' /proc/mounts; \
                  echo ptmx=$(ls /dev/pts/ptmx); echo sysfs=$(cat /sys/kernel/mm/transparent_hugepage/enabled >/dev/null 2>&1; echo $?)";
    let mut c = spec(&mut sandbox, &env, "mounts", script);
    let mounts = c.mounts_mut().as_mut().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/vol")
            .typ("bind")
            .source(&shared)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap(),
    );
    mounts.push(
        MountBuilder::default()
            .destination("/scratch")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["size=1m".to_string()])
            .build()
            .unwrap(),
    );
    let (out, code) = run(&mut sandbox, "mounts", &c).await;

    // A bind source elsewhere in the guest is refused, naming the mount.
    let mut escape = spec(&mut sandbox, &env, "escape", "cat /agent/init");
    escape.mounts_mut().as_mut().unwrap().push(
        MountBuilder::default()
            .destination("/agent")
            .typ("bind")
            .source("/")
            .options(vec!["rbind".to_string()])
            .build()
            .unwrap(),
    );
    let refused = sandbox.create_container_spec("escape", &escape).await;

    // The sandbox keeps working after the refusal.
    let after = spec(&mut sandbox, &env, "after", "echo after=ok");
    let (after_out, after_code) = run(&mut sandbox, "after", &after).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("from the host\n"), "{out}");
    assert!(out.contains("volwrite=1"), "the bind is read-only:\n{out}");
    for (dest, fstype) in [
        ("/vol", "virtiofs"),
        ("/scratch", "tmpfs"),
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/dev/mqueue", "mqueue"),
        ("/dev/shm", "tmpfs"),
    ] {
        let line = format!("mnt {dest} {fstype}\n");
        assert!(out.contains(&line), "no {line:?} in:\n{out}");
    }
    assert!(out.contains("ptmx=/dev/pts/ptmx"), "{out}");
    let v = values(&out);
    assert_eq!(value(&v, "sysfs", &out), "0", "{out}");

    let err = refused.expect_err("a bind from / of the guest must be refused");
    let message = format!("{err:?}");
    eprintln!("refused: {message}");
    assert!(message.contains("/agent"), "names the mount: {message}");
    assert!(
        message.contains("outside the shared directory"),
        "{message}"
    );
    assert_eq!(after_code, 0, "{after_out}");
    assert_eq!(after_out, "after=ok\n");
}
