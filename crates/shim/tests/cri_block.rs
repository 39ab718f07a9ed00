//! Kubernetes' block cases through containerd's CRI plugin with block
//! device use on (`disable_block_device_use = false`): a raw block
//! device (`volumeDevices`, reaching the shim as `linux.devices`), a
//! read-only filesystem-on-block volume, and the empty image (Kata's
//! `k8s-empty-image`: an image with no layers, whose rootfs is an empty
//! directory on the host's disk, must never make the host's disk a drive).
//! QEMU's own view (`query-block` on the pod VM's debug monitor) proves
//! what was attached and detached.

mod common;

use std::time::Duration;

use capsa_test_infra::block::{ext4_read, ImageFile, LoopDevice};
use capsa_test_infra::containerd::cri_v1::{Capability, Device, LinuxContainerSecurityContext};
use capsa_test_infra::containerd::cri_v1::{ContainerConfig, Mount};
use capsa_test_infra::containerd::Cri;
use common::Setup;

const EXEC_LIMIT: Duration = Duration::from_secs(60);

/// The files of the drives QEMU has open in pod `pod`'s VM.
fn hypervisor_drive_files(s: &Setup, pod: &str) -> Vec<String> {
    common::hypervisor_drive_files(&s.env.state_dir, pod)
}

fn with_security(mut config: ContainerConfig, capabilities: &[&str]) -> ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(LinuxContainerSecurityContext {
        capabilities: Some(Capability {
            add_capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// Runs `script` in container `id`; returns its output, failing the test
/// on a non-zero exit.
fn exec_ok(s: &Setup, id: &str, script: &str) -> String {
    let cri = s.ctrd.cri();
    let (out, err, code) = cri.exec_sync(id, &["sh", "-c", script], EXEC_LIMIT);
    assert_eq!(code, 0, "{script}: {out}{err}\n{}", s.ctrd.log_tail());
    out
}

#[test]
fn a_raw_block_device_and_a_read_only_block_volume_reach_the_containers() {
    let s = Setup::with_block();
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let dir = s.env.dir.path();
    let raw = ImageFile::raw(dir, 32);
    let raw_dev = LoopDevice::attach(raw.path(), false);
    let content = dir.join("volume-content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello"), "from-the-host\n").unwrap();
    let fs_image = ImageFile::ext4(dir, 16, Some(&content));
    let fs_dev = LoopDevice::attach(fs_image.path(), false);

    let config = cri.pod_config("blockpod");
    let pod = cri.run_pod_with(config.clone(), "capsa");
    assert!(hypervisor_drive_files(&s, &pod).is_empty(), "no drive yet");

    // volumeDevices: the loop device as /dev/xvdb, formatted and mounted
    // by the container (mounting needs CAP_SYS_ADMIN, not privileged).
    let mut raw_config = sleeper("raw", &s.image);
    raw_config.devices = vec![Device {
        container_path: "/dev/xvdb".into(),
        host_path: raw_dev.path().display().to_string(),
        permissions: "rwm".into(),
    }];
    let raw_config = with_security(raw_config, &["CAP_SYS_ADMIN"]);
    let raw_id = cri.create_container_with(&pod, &config, raw_config);
    cri.start(&raw_id);
    let out = exec_ok(
        &s,
        &raw_id,
        "test -b /dev/xvdb && mke2fs -q /dev/xvdb >/dev/null && mkdir -p /m && mount -t ext4 /dev/xvdb /m \
         && echo from-the-container > /m/f && umount /m && mount -t ext4 -o ro /dev/xvdb /m \
         && cat /m/f && umount /m",
    );
    assert_eq!(out, "from-the-container\n");

    // A filesystem on a block device as a read-only volume: hot-plugged,
    // mounted in the guest, writes refused.
    let mut ro_config = sleeper("ro", &s.image);
    ro_config.mounts = vec![Mount {
        container_path: "/vol".into(),
        host_path: fs_dev.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let ro_id = cri.create_container_with(&pod, &config, ro_config);
    cri.start(&ro_id);
    assert_eq!(exec_ok(&s, &ro_id, "cat /vol/hello"), "from-the-host\n");
    let (out, err, code) = cri.exec_sync(&ro_id, &["touch", "/vol/new"], EXEC_LIMIT);
    assert_ne!(code, 0, "a write to a read-only volume succeeded: {out}");
    assert!(err.contains("Read-only file system"), "{err}");
    let mounted = exec_ok(&s, &ro_id, "grep ' /vol ' /proc/mounts");
    assert!(
        mounted.starts_with("/dev/vd") && mounted.contains(" ext4 ro"),
        "the volume is the drive's filesystem, read-only: {mounted}"
    );

    // Each is a drive of QEMU's; deleting a container detaches its own.
    let drives = hypervisor_drive_files(&s, &pod);
    let raw_path = raw_dev.path().display().to_string();
    let fs_path = fs_dev.path().display().to_string();
    assert!(
        drives.contains(&raw_path) && drives.contains(&fs_path),
        "{drives:?}"
    );
    assert_eq!(drives.len(), 2, "only the two volumes: {drives:?}");
    cri.stop_container(&raw_id, Duration::from_secs(10));
    cri.remove_container(&raw_id);
    assert_eq!(hypervisor_drive_files(&s, &pod), vec![fs_path]);
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    assert!(cri.list_pods().is_empty());
    s.assert_all_gone();

    // What the container wrote is on the device, read from the host.
    drop(raw_dev);
    assert_eq!(
        ext4_read(raw.path(), "/f").unwrap(),
        b"from-the-container\n"
    );
    drop(fs_dev);
    assert!(
        fs_image.text("/new").is_none(),
        "nothing written to the read-only volume"
    );
}

#[test]
fn an_empty_image_runs_with_block_use_on_without_attaching_a_host_disk() {
    let s = Setup::with_block();
    s.ctrd.import_pause();
    let empty = s.ctrd.import_empty();
    let cri = s.ctrd.cri();
    // The image has nothing to run: a volume brings busybox.
    let busybox = s.env.dir.path().join("busybox");
    std::fs::copy("/bin/busybox", &busybox).expect("copy /bin/busybox");

    let config = cri.pod_config("emptypod");
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let mut c = ContainerConfig {
        command: vec!["/bin/busybox".into(), "sleep".into(), "1000".into()],
        ..sleeper("empty", &empty)
    };
    c.mounts = vec![Mount {
        container_path: "/bin/busybox".into(),
        host_path: busybox.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = cri.create_container_with(&pod, &config, c);
    cri.start(&id);

    // Its rootfs is the snapshot's directory, shared over virtio-fs.
    let (out, err, code) = cri.exec_sync(
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox grep ' / ' /proc/mounts; /bin/busybox ls /sys/block",
        ],
        EXEC_LIMIT,
    );
    assert_eq!(code, 0, "{err}\n{}", s.ctrd.log_tail());
    assert!(out.contains(" virtiofs "), "rootfs over virtio-fs: {out}");
    assert!(!out.contains("vd"), "no disk in the guest: {out}");
    let drives = hypervisor_drive_files(&s, &pod);
    assert!(drives.is_empty(), "no host device attached: {drives:?}");
    assert!(
        !s.ctrd.log().contains("drive hot-plugged"),
        "{}",
        s.ctrd.log_tail()
    );

    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    s.assert_all_gone();
}

/// CRI's configuration of container `name` of `image`, sleeping.
fn sleeper(name: &str, image: &str) -> ContainerConfig {
    Cri::container_config(name, image, &["sleep", "1000"])
}
