//! `capsa run` with block storage: a rootfs image and image volumes
//! hot-plugged into real VMs, never mounted on the host; host disks refused.

use std::process::{Command, Output};
use std::time::Duration;

use capsa_test_infra::block::ImageFile;
use capsa_test_infra::{assert_no_leaks, run_bounded, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

fn capsa(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsa"));
    cmd.arg("--config").arg(&env.config).args(args);
    run_bounded(cmd, None, LIMIT)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

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
