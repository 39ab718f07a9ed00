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
