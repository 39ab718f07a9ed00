//! containerd hands the shim a rootfs that is a filesystem on a block
//! device or an image file (what devmapper- and blockfile-style
//! snapshotters give), through its Tasks API: with block use on it is
//! hot-plugged into the pod's VM and never mounted on the host; with it
//! off (the default) it is mounted on the host and shared.

use std::path::Path;

use capsa_test_infra::block::{ImageFile, LoopDevice};
use capsa_test_infra::containerd::{Containerd, Mount, MountExt, Opts};
use capsa_test_infra::leaks::assert_no_loop_devices;
use capsa_test_infra::{assert_no_leaks, shim_binary, TestEnv};

const CAPSA: &str = "io.containerd.capsa.v2";

fn containerd(env: &TestEnv) -> Containerd {
    let shim = shim_binary();
    Containerd::start(Opts {
        shim_dir: shim.parent().map(Path::to_path_buf),
        capsa_config: Some(env.config.clone()),
        ..Default::default()
    })
}

/// The rootfs's device and filesystem, the guest's disks (`/sys/block`),
/// then a write to the rootfs.
const SCRIPT: &str = "grep ' / ' /proc/mounts | cut -d' ' -f1,3; \
                      echo disks: $(ls /sys/block | grep '^vd'); echo from-ctr > /written";

#[test]
fn block_rootfs_mounts_are_hot_plugged_when_block_use_is_on() {
    let env = TestEnv::short_with_qemu_extra("disable_block_device_use = false");
    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let device_image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let device = LoopDevice::attach(device_image.path(), false);
    let c = containerd(&env);
    let spec = c.default_spec(&["sh", "-c", SCRIPT]);

    // blockfile-style: an image file with the `loop` option.
    let rootfs = [Mount::filesystem("ext4", image.path(), &["loop"])];
    let done = c.run_task(CAPSA, "blockfile", &spec, &rootfs);
    assert_eq!(done.exit_status, 0, "{done:?}\n{}", c.log_tail());
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(out.starts_with("/dev/vd") && out.contains("ext4"), "{out}");
    assert!(out.contains("disks: vd"), "{out}");
    assert_eq!(image.read("/written").unwrap(), b"from-ctr\n");
    assert!(!image.used_by_host(), "the host never mounted it");

    // devmapper-style: a filesystem on a block device.
    let rootfs = [Mount::filesystem("ext4", device.path(), &[])];
    let done = c.run_task(CAPSA, "blockdev", &spec, &rootfs);
    assert_eq!(done.exit_status, 0, "{done:?}\n{}", c.log_tail());
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(out.starts_with("/dev/vd"), "{out}");
    assert!(c.log().contains("drive hot-plugged"), "{}", c.log_tail());
    drop(device);
    assert_eq!(device_image.read("/written").unwrap(), b"from-ctr\n");
    drop(c);
    assert_no_leaks(&env.state_dir);
    assert_no_loop_devices(env.dir.path());
}

#[test]
fn block_rootfs_mounts_are_shared_when_block_use_is_off() {
    let env = TestEnv::short();
    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let c = containerd(&env);
    let spec = c.default_spec(&["sh", "-c", SCRIPT]);
    let rootfs = [Mount::filesystem("ext4", image.path(), &["loop"])];
    let done = c.run_task(CAPSA, "shared", &spec, &rootfs);
    assert_eq!(done.exit_status, 0, "{done:?}\n{}", c.log_tail());
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(out.contains("virtiofs"), "shared, not hot-plugged: {out}");
    assert!(out.contains("disks:\n"), "no disk in the guest: {out}");
    assert_eq!(image.read("/written").unwrap(), b"from-ctr\n");
    // The loop device went with the mount (autoclear).
    assert!(!image.used_by_host());
    drop(c);
    assert_no_leaks(&env.state_dir);
    assert_no_loop_devices(env.dir.path());
}

/// A pod through the Tasks API with CRI's annotations (CRI itself takes
/// the rootfs from its own snapshotter): its sandbox and two containers,
/// each on its own image, each image its own drive in the one VM.
#[test]
fn a_pods_containers_each_get_their_own_drive() {
    let env = TestEnv::short_with_qemu_extra("disable_block_device_use = false");
    let images: Vec<ImageFile> = (0..3)
        .map(|_| ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs)))
        .collect();
    let sync = env.dir.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    let c = containerd(&env);
    let pod_spec = |id: &str, script: &str, role: &str| {
        // `ctr oci spec`'s one cgroup (`/<namespace>`) for all three: the
        // agent gives the later ones their own (removing a container kills
        // what is left in its cgroup, here the others).
        let mut spec = c.default_spec(&["sh", "-c", script]);
        assert_eq!(spec["linux"]["cgroupsPath"], "/k8s.io", "{id}");
        spec["annotations"] = serde_json::json!({
            "io.kubernetes.cri.container-type": role,
            "io.kubernetes.cri.sandbox-id": "pod",
        });
        let mounts = spec["mounts"].as_array_mut().expect("spec mounts");
        mounts.push(serde_json::json!({
            "destination": "/sync", "type": "bind",
            "source": sync.display().to_string(), "options": ["rbind", "rw"],
        }));
        spec
    };
    let rootfs = |n: usize| [Mount::filesystem("ext4", images[n].path(), &["loop"])];
    // The guests wait for the host's word in the shared directory.
    let until = |file: &str| format!("while [ ! -e /sync/{file} ]; do sleep 0.1; done");
    let root_device = "grep ' / ' /proc/mounts | cut -d' ' -f1";
    let sandbox = pod_spec(
        "pod",
        &format!("touch /sync/pod-up; {}", until("stop")),
        "sandbox",
    );
    let first = pod_spec(
        "first",
        &format!(
            "{root_device}; touch /sync/first-up; {}",
            until("first-stop")
        ),
        "container",
    );
    let second = pod_spec(
        "second",
        &format!("{root_device}; ls /sys/block | grep -c '^vd'"),
        "container",
    );

    let (sandbox_done, first_done, second_done) = std::thread::scope(|scope| {
        let sandbox = scope.spawn(|| c.run_task(CAPSA, "pod", &sandbox, &rootfs(0)));
        wait_until(|| sync.join("pod-up").exists() || sandbox.is_finished());
        let first = scope.spawn(|| {
            sync.join("pod-up")
                .exists()
                .then(|| c.run_task(CAPSA, "first", &first, &rootfs(1)))
        });
        wait_until(|| sync.join("first-up").exists() || first.is_finished());
        let second = sync
            .join("first-up")
            .exists()
            .then(|| c.run_task(CAPSA, "second", &second, &rootfs(2)));
        // Containers before their sandbox, as CRI stops them.
        std::fs::write(sync.join("first-stop"), b"").unwrap();
        let first = first.join().expect("first task");
        std::fs::write(sync.join("stop"), b"").unwrap();
        (sandbox.join().expect("sandbox task"), first, second)
    });
    assert_eq!(
        sandbox_done.exit_status,
        0,
        "{sandbox_done:?}\n{}",
        c.log_tail()
    );
    let first_done =
        first_done.unwrap_or_else(|| panic!("the pod never came up: {sandbox_done:?}"));
    assert_eq!(
        first_done.exit_status,
        0,
        "{first_done:?}\n{}",
        c.log_tail()
    );
    let second_done = second_done.unwrap_or_else(|| panic!("first never came up: {first_done:?}"));
    assert_eq!(second_done.exit_status, 0, "{second_done:?}");
    assert!(
        c.log().contains("cgroups path /k8s.io is container"),
        "the agent gave the containers their own cgroups\n{}",
        c.log_tail()
    );
    let first_out = String::from_utf8_lossy(&first_done.stdout).into_owned();
    let second_out = String::from_utf8_lossy(&second_done.stdout).into_owned();
    let second_lines: Vec<&str> = second_out.lines().collect();
    assert!(first_out.starts_with("/dev/vd"), "{first_out}");
    assert!(second_lines[0].starts_with("/dev/vd"), "{second_out}");
    assert_ne!(first_out.trim(), second_lines[0], "each its own drive");
    assert_eq!(
        second_lines.get(1),
        Some(&"3"),
        "the sandbox's, first's and second's: {second_out}"
    );
    drop(c);
    assert_no_leaks(&env.state_dir);
    assert_no_loop_devices(env.dir.path());
    for image in &images {
        assert!(!image.used_by_host());
    }
}

/// Waits (bounded) until `ready()`.
fn wait_until(ready: impl Fn() -> bool) {
    capsa_test_infra::wait_until(std::time::Duration::from_secs(240), ready);
}
