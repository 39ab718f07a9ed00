//! Elastic sizing through the CLI: `capsa update` resizes a running
//! `capsa run -d` sandbox's container and VM; `capsa inspect` shows the
//! VM's size and maxima. Real VMs (TCG), real QMP hot-plug.

use capsa_test_infra::cli::{capsa, exec, mem_total_kib, text, Removed};
use capsa_test_infra::{assert_no_leaks, TestEnv};

fn resources(env: &TestEnv, id: &str) -> serde_json::Value {
    let out = capsa(env, &["inspect", id]);
    assert!(out.status.success(), "inspect: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    v["resources"].clone()
}

#[test]
fn capsa_update_grows_the_vm_and_the_containers_limits() {
    let env = TestEnv::with_qemu_extra(
        "default_vcpus = 1\ndefault_maxvcpus = 2\ndefault_memory = 512\ndefault_maxmemory = 2048",
    );
    let rootfs = env.rootfs.to_string_lossy().into_owned();
    let id = "elastic";
    let _removed = Removed(&env, id);
    let out = capsa(
        &env,
        &[
            "run", "-d", "--name", id, "--rootfs", &rootfs, "--", "sleep", "1000",
        ],
    );
    assert!(out.status.success(), "run -d: {out:?}");

    // Booted at the default; inspect shows the size and the maxima.
    let r = resources(&env, id);
    assert_eq!(
        (
            &r["vcpus"],
            &r["max_vcpus"],
            &r["memory_mib"],
            &r["max_memory_mib"]
        ),
        (&1.into(), &2.into(), &512.into(), &2048.into()),
        "{r:#}"
    );
    assert_eq!(exec(&env, id, "nproc").trim(), "1");
    let before = mem_total_kib(&env, id);

    // One CPU and 768 MiB for the container: default + limits.
    let out = capsa(&env, &["update", id, "--cpus", "1", "--memory", "768"]);
    assert!(out.status.success(), "update: {out:?}");
    assert!(
        text(&out.stdout).contains("2 vCPUs (max 2)"),
        "update says the new size: {out:?}"
    );
    let r = resources(&env, id);
    assert_eq!(r["vcpus"], 2, "{r:#}");
    assert!(r["memory_mib"].as_u64().unwrap() >= 512 + 768, "{r:#}");
    let cpus = exec(
        &env,
        id,
        "nproc; cat /sys/devices/system/cpu/online; grep Cpus_allowed_list /proc/self/status",
    );
    assert!(
        cpus.starts_with("2\n0-1\n"),
        "CPUs in the container: {cpus}"
    );
    let after = mem_total_kib(&env, id);
    assert!(
        after >= before + 768 * 1024,
        "MemTotal {before} KiB -> {after} KiB, expected +768 MiB"
    );
    // The container's cgroup has the new limits.
    let limits = exec(
        &env,
        id,
        "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max",
    );
    assert!(
        limits.contains("100000 100000") && limits.contains(&(768u64 << 20).to_string()),
        "{limits}"
    );

    // Beyond the maxima: capped, the sandbox keeps running.
    let out = capsa(&env, &["update", id, "--cpus", "8"]);
    assert!(
        out.status.success(),
        "a capped update still succeeds: {out:?}"
    );
    assert_eq!(resources(&env, id)["vcpus"], 2);

    // Bad input is named.
    let out = capsa(&env, &["update", id]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--cpus"), "{out:?}");
    let out = capsa(&env, &["update", "nosuch", "--cpus", "1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nosuch"), "{out:?}");

    let out = capsa(&env, &["rm", "--force", id]);
    assert!(out.status.success(), "rm: {out:?}");
    assert_no_leaks(&env.state_dir);
}
