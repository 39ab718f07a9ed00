//! The guest root image (`image = PATH`, `capsa assets build --image`):
//! on an NVDIMM mounted with DAX, on a virtio-blk disk, and shared by the
//! VMs that boot it.

use std::path::Path;

use capsa_test_infra::cli::{
    assert_all_gone, capsa, capsa_with_input, mem_total_kib, text, Detached,
};
use capsa_test_infra::{image_path, TestEnv};

/// A world booting the test assets' image, with the debug console on
/// (the guest's own `/proc/mounts` is read through it).
fn image_env(extra: &str) -> TestEnv {
    let env = TestEnv::with_image(extra);
    env.append_config("[agent.capsa]\ndebug_console_enabled = true");
    env
}

/// A detached sandbox running `sleep`, removed when the test ends, even if
/// it fails.
fn detached<'a>(env: &'a TestEnv, id: &str) -> Detached<'a> {
    Detached::start(env, id, &["sleep", "1000"])
}

/// The guest's mount table (the VM's root environment, not the
/// container's).
fn guest_mounts(sb: &Detached) -> String {
    let out = capsa_with_input(
        sb.env,
        &["exec", "--vm", &sb.id],
        b"cat /proc/mounts; exit\n",
    );
    assert!(out.status.success(), "exec --vm: {out:?}");
    text(&out.stdout)
}

/// The device and options of the guest's `/` in `mounts`.
fn root_mount(mounts: &str) -> (String, Vec<String>) {
    let line = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .rfind(|f| f.len() >= 4 && f[1] == "/")
        .unwrap_or_else(|| panic!("no / in the guest's mounts:\n{mounts}"));
    let options = line[3].split(',').map(String::from).collect();
    (line[0].to_string(), options)
}

/// A container runs in a VM booted from the image on an NVDIMM: the
/// guest's `/` is the image's partition on `/dev/pmem0`, read-only, with
/// DAX.
#[test]
fn a_container_runs_from_the_dax_image() {
    let env = image_env("");
    let rootfs = env.rootfs.to_string_lossy().into_owned();
    let out = capsa(
        &env,
        &[
            "run",
            "--rootfs",
            &rootfs,
            "--",
            "echo",
            "hello from the image",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "hello from the image");

    let sb = detached(&env, "dax");
    let (device, options) = root_mount(&guest_mounts(&sb));
    assert_eq!(device, "/dev/pmem0p1");
    assert!(options.iter().any(|o| o == "ro"), "{options:?}");
    assert!(
        options.iter().any(|o| o == "dax" || o == "dax=always"),
        "no dax in {options:?}"
    );
    drop(sb);
    assert_all_gone(&env);
}

/// `disable_image_nvdimm = true`: the same image is a read-only virtio-blk
/// disk, `/` its first partition, without DAX.
#[test]
fn a_container_runs_from_the_image_on_virtio_blk() {
    let env = image_env("disable_image_nvdimm = true");
    let sb = detached(&env, "blk");
    let (device, options) = root_mount(&guest_mounts(&sb));
    assert_eq!(device, "/dev/vda1");
    assert!(options.iter().any(|o| o == "ro"), "{options:?}");
    assert!(!options.iter().any(|o| o.starts_with("dax")), "{options:?}");
    let out = capsa(&env, &["exec", "blk", "--", "echo", "ok"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "ok");
    drop(sb);
    assert_all_gone(&env);
}

/// The mapping of `image` in process `pid`: its permissions and the
/// kB of it resident and shared with another process (`Shared_Clean`).
fn image_mapping(pid: i32, image: &Path) -> (String, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let name = image.to_string_lossy();
    let mut lines = smaps.lines();
    while let Some(l) = lines.next() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 6 && f[5] == name {
            let shared = lines
                .by_ref()
                .take_while(|l| !l.starts_with("VmFlags"))
                .find_map(|l| l.strip_prefix("Shared_Clean:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            return (f[1].to_string(), shared);
        }
    }
    panic!("QEMU {pid} does not map {name}");
}

/// Two pods booted from one image map the image file shared (`s` in the
/// permissions) and read-only, and the pages they read are the same host
/// pages (`Shared_Clean` counts pages mapped by more than one process).
#[test]
fn two_pods_share_the_image_pages() {
    let env = image_env("");
    let image = image_path().canonicalize().unwrap();
    let a = detached(&env, "one");
    let b = detached(&env, "two");
    for sb in [&a, &b] {
        let (perms, shared_kib) = image_mapping(sb.hypervisor_pid(), &image);
        assert_eq!(perms, "r--s", "{}: a read-only shared mapping", sb.id);
        assert!(shared_kib > 0, "{}: no page of the image shared", sb.id);
    }
    drop((a, b));
    assert_all_gone(&env);
}

/// The NVDIMM takes a memory slot and room beyond `maxmem` of its own:
/// DIMM hot-plug (`capsa update --memory`) still reaches the guest.
#[test]
fn memory_hot_plug_works_next_to_the_nvdimm() {
    let env = image_env("default_memory = 512\ndefault_maxmemory = 2048\nmemory_slots = 2");
    let sb = detached(&env, "grow");
    let before = mem_total_kib(&env, "grow");
    let out = capsa(&env, &["update", "grow", "--memory", "768"]);
    assert!(out.status.success(), "update: {out:?}");
    let after = mem_total_kib(&env, "grow");
    assert!(
        after >= before + 768 * 1024,
        "MemTotal {before} KiB -> {after} KiB, expected +768 MiB"
    );
    drop(sb);
    assert_all_gone(&env);
}
