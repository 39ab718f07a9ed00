//! `capsa run` with block storage: a rootfs image and image volumes
//! hot-plugged into real VMs, never mounted on the host; host disks refused.

use std::process::Command;

use capsa_test_infra::block::ImageFile;
use capsa_test_infra::cli::{capsa, text, Removed};
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::{assert_no_leaks, TestEnv};

#[test]
fn a_rootfs_image_is_a_disk_of_the_guest_and_keeps_what_was_written() {
    let env = TestEnv::new();
    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let img = image.path().display().to_string();
    let out = capsa(
        &env,
        &[
            "run",
            "--rootfs-image",
            &img,
            "--",
            "sh",
            "-c",
            "grep ' / ' /proc/mounts; echo kept > /written",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let mounts = text(&out.stdout);
    assert!(mounts.starts_with("/dev/vd"), "{mounts}");
    assert!(mounts.contains(" ext4 "), "{mounts}");
    assert_eq!(image.text("/written").as_deref(), Some("kept\n"));
    assert!(!image.used_by_host());
    assert_no_leaks(&env.state_dir);
}

#[test]
fn a_detached_sandbox_shows_its_drive_the_host_never_mounts() {
    let env = TestEnv::new();
    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let img = image.path().display().to_string();
    let out = capsa(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "disk",
            "--rootfs-image",
            &img,
            "--",
            "sleep",
            "1000",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let inspected = capsa(&env, &["inspect", "disk"]);
    // Removed before asserting: a failed assertion leaves nothing running.
    let using = image.used_by_host();
    let rm = capsa(&env, &["rm", "--force", "disk"]);
    assert!(rm.status.success(), "{rm:?}");
    assert!(inspected.status.success(), "{inspected:?}");
    let v: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let devices = v["devices"].as_array().expect("inspect lists devices");
    assert_eq!(devices.len(), 1, "{v:#}");
    assert_eq!(devices[0]["role"], "rootfs");
    assert_eq!(devices[0]["driver"], "virtio-blk");
    assert_eq!(devices[0]["source"], img.as_str());
    let address = devices[0]["guest_address"].as_str().unwrap();
    assert!(address.ends_with("/00"), "a PCI path: {address}");
    assert!(
        !using,
        "the host mounted the image or attached it to a loop device"
    );
    assert_no_leaks(&env.state_dir);
}

#[test]
fn a_read_only_image_volume_refuses_writes_even_for_root() {
    let env = TestEnv::new();
    let data_dir = env.dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("hello"), "from the host\n").unwrap();
    let data = ImageFile::ext4(env.dir.path(), 16, Some(&data_dir));
    let volume = format!("{}:/data:ro", data.path().display());
    let rootfs = env.rootfs.display().to_string();
    let script = "cat /data/hello; cat /sys/block/vda/ro; \
                  echo x > /data/new 2>/dev/null || echo refused; id -u";
    let out = capsa(
        &env,
        &[
            "run", "--rootfs", &rootfs, "-v", &volume, "--", "sh", "-c", script,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "from the host\n1\nrefused\n0\n");
    assert_eq!(data.text("/new"), None, "the image is unchanged");
    assert!(!data.used_by_host());
    assert_no_leaks(&env.state_dir);
}

#[test]
fn a_volume_on_the_hosts_own_disk_is_refused_before_any_vm_boots() {
    let env = TestEnv::new();
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "/"])
        .output()
        .expect("findmnt");
    let root = text(&out.stdout).trim().to_string();
    let rootfs = env.rootfs.display().to_string();
    let volume = format!("{root}:/disk");
    let out = capsa(
        &env,
        &["run", "--rootfs", &rootfs, "-v", &volume, "--", "true"],
    );
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("/disk") && err.contains(&root), "{err}");
    assert!(
        !env.state_dir.exists() || std::fs::read_dir(&env.state_dir).unwrap().next().is_none(),
        "no sandbox was made"
    );
    assert_no_leaks(&env.state_dir);
}

/// `shared_fs = "none"`: a rootfs image needs no shared filesystem. The
/// sandbox boots without virtiofsd and the guest mounts no virtio-fs.
#[test]
fn a_rootfs_image_needs_no_shared_fs() {
    let env = TestEnv::with_qemu_extra("shared_fs = \"none\"");
    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let img = image.path().display().to_string();
    let id = "noshare";
    let mut args = vec!["run", "-d", "--name", id, "--rootfs-image", &img];
    args.extend(["--", "sleep", "1000"]);
    let out = capsa(&env, &args);
    let removed = Removed(&env, id);
    assert!(out.status.success(), "{out:?}");
    let helpers = processes_naming(&env.state_dir.to_string_lossy());
    assert!(
        helpers.iter().any(|p| p.contains("qemu-system")),
        "no VM: {helpers:?}"
    );
    assert!(
        !helpers.iter().any(|p| p.contains("virtiofsd")),
        "virtiofsd started without a shared fs: {helpers:?}"
    );
    let out = capsa(&env, &["exec", id, "--", "cat", "/proc/mounts"]);
    assert!(out.status.success(), "{out:?}");
    let mounts = text(&out.stdout);
    assert!(mounts.starts_with("/dev/vd"), "{mounts}");
    assert!(!mounts.contains("virtiofs"), "{mounts}");
    drop(removed);
    assert_no_leaks(&env.state_dir);
}

/// `shared_fs = "none"`: what needs the shared filesystem (a directory
/// rootfs, a directory volume) is refused before any VM boots, naming
/// `shared_fs`.
#[test]
fn without_a_shared_fs_a_directory_is_refused_before_boot() {
    let env = TestEnv::with_qemu_extra("shared_fs = \"none\"");
    let rootfs = env.rootfs.display().to_string();
    let out = capsa(&env, &["run", "--rootfs", &rootfs, "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("shared_fs = \"none\""), "{err}");
    assert!(err.contains(&format!("rootfs {rootfs}")), "{err}");

    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let img = image.path().display().to_string();
    let volume = format!("{}:/data", env.dir.path().display());
    let out = capsa(
        &env,
        &["run", "--rootfs-image", &img, "-v", &volume, "--", "true"],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("mount /data") && err.contains("shared_fs"),
        "{err}"
    );
    // Nothing was started: no state, no process.
    let states = std::fs::read_dir(&env.state_dir).map_or(0, |d| d.count());
    assert_eq!(states, 0, "a sandbox was started");
    assert!(processes_naming(&env.state_dir.to_string_lossy()).is_empty());
    assert_no_leaks(&env.state_dir);
}
