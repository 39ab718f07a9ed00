//! Block storage against real VMs: drives hot-plugged for containers by
//! the runtime's resource layer (image files and loop devices; there is no
//! device-mapper here), found and mounted by the agent, unplugged when
//! their container goes.

use std::path::PathBuf;
use std::process::Command;

mod common;

use capsa_hypervisor::debug::Inventory;
use capsa_runtime::resource::{volume, HostMount, Rootfs};
use capsa_runtime::{ProcessSpec, Sandbox, Volume};
use capsa_test_infra::block::{ImageFile, LoopDevice};
use capsa_test_infra::{assert_no_leaks, TestEnv};
use common::{boot, read_all};

/// Creates container `cid` running `script` on `rootfs`, starts it, and
/// returns its output and exit code (the container stays until removed).
async fn run(
    sandbox: &mut Sandbox,
    cid: &str,
    rootfs: &Rootfs,
    script: &str,
    tweak: impl FnOnce(&mut oci_spec::runtime::Spec),
) -> (String, i32) {
    let mut spec = spec(sandbox, script);
    tweak(&mut spec);
    sandbox
        .create_container_from(cid, rootfs, spec)
        .await
        .expect("create the container");
    sandbox.agent().start_container(cid).await.expect("start");
    let out = read_all(sandbox, cid, cid).await;
    let code = sandbox.agent().wait_process(cid, cid).await.expect("wait");
    (out, code)
}

fn spec(sandbox: &Sandbox, script: &str) -> oci_spec::runtime::Spec {
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    capsa_runtime::spec::build(&process, "", &sandbox.hostname()).expect("spec")
}

/// The hypervisor's own view, over the VM's debug channel: its drives
/// and block backends.
async fn hypervisor_drives(env: &TestEnv, sandbox: &Sandbox) -> Inventory {
    let run_dir = env.state_dir.join(sandbox.id());
    capsa_hypervisor::debug::inventory(&run_dir)
        .await
        .expect("the debug channel answers")
}

fn config_env(extra: &str) -> TestEnv {
    TestEnv::with_qemu_extra(extra)
}

/// The block devices of the guest, as a container sees them in `/sys/block`.
const LIST_DISKS: &str = "ls /sys/block | grep -E '^(vd|sd)' | tr '\\n' ' '";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_container_gets_its_own_drive_and_loses_it_on_removal() {
    let env = TestEnv::new();
    let first = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let second = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let mut sandbox = boot(&env).await;
    let (out, code) = run(
        &mut sandbox,
        "c1",
        &Rootfs::Image(first.path().to_path_buf()),
        "grep ' / ' /proc/mounts; echo one > /written; sync",
        |_| {},
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("/dev/vd"), "the rootfs is a disk: {out}");
    let (out, code) = run(
        &mut sandbox,
        "c2",
        &Rootfs::Image(second.path().to_path_buf()),
        &format!("grep ' / ' /proc/mounts; echo two > /written; sync; {LIST_DISKS}"),
        |_| {},
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let devices = sandbox.record().devices.clone();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_ne!(devices[0].guest_address, devices[1].guest_address);
    assert_eq!(devices[1].container, "c2");
    assert_eq!(out.matches("vd").count(), 3, "/ and two disks: {out}");
    // Each drive has two backends (QEMU: a raw node over a file node).
    let id = Some(devices[1].id.clone());
    let drives = hypervisor_drives(&env, &sandbox).await;
    assert!(drives.drives.iter().any(|d| d.id == id), "{drives:?}");
    assert_eq!(
        (drives.drives.len(), drives.block_backends.len()),
        (2, 4),
        "{drives:?}"
    );

    sandbox.remove_container("c2").await.expect("remove c2");
    let drives = hypervisor_drives(&env, &sandbox).await;
    assert!(
        !drives.drives.iter().any(|d| d.id == id)
            && (drives.drives.len(), drives.block_backends.len()) == (1, 2),
        "unplugged from the hypervisor, device and backends: {drives:?}"
    );
    assert_eq!(sandbox.record().devices.len(), 1);
    let (out, code) = run(
        &mut sandbox,
        "c3",
        &Rootfs::Dir(env.rootfs.clone()),
        LIST_DISKS,
        |_| {},
    )
    .await;
    assert_eq!((out.trim().split(' ').count(), code), (1, 0), "{out}");
    sandbox.destroy().await.expect("destroy");
    assert_eq!(second.text("/written").as_deref(), Some("two\n"));
    assert_eq!(first.text("/written").as_deref(), Some("one\n"));
    assert_no_leaks(&env.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_block_device_is_usable_in_the_container() {
    let env = TestEnv::new();
    let raw = ImageFile::raw(env.dir.path(), 32);
    let device = LoopDevice::attach(raw.path(), false);
    let mut sandbox = boot(&env).await;
    let volume = Volume {
        source: device.path().to_path_buf(),
        destination: "/dev/xvdb".into(),
        readonly: false,
    };
    let script = "mke2fs -q /dev/xvdb >/dev/null && mkdir -p /mnt/x && mount /dev/xvdb /mnt/x \
                  && echo block-data > /mnt/x/f && umount /mnt/x \
                  && mount -o ro /dev/xvdb /mnt/x && cat /mnt/x/f";
    let (out, code) = run(
        &mut sandbox,
        "raw",
        &Rootfs::Dir(env.rootfs.clone()),
        script,
        |spec| {
            volume::add_volume(spec, &volume).expect("a raw device volume");
            add_sys_admin(spec);
        },
    )
    .await;
    assert_eq!((out.as_str(), code), ("block-data\n", 0));
    let devices = &sandbox.record().devices;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].role, "device /dev/xvdb");
    sandbox.destroy().await.expect("destroy");
    drop(device);
    assert_eq!(raw.text("/f").as_deref(), Some("block-data\n"));
    assert_no_leaks(&env.state_dir);
}

/// Mounting needs CAP_SYS_ADMIN in the container.
fn add_sys_admin(spec: &mut oci_spec::runtime::Spec) {
    use oci_spec::runtime::Capability;
    let process = spec.process_mut().as_mut().expect("process");
    let mut caps = process.capabilities().clone().unwrap_or_default();
    let mut set = caps.bounding().clone().unwrap_or_default();
    set.insert(Capability::SysAdmin);
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    process.set_capabilities(Some(caps));
}

/// The host's `/` is a disk: with block use on, a rootfs given as a
/// mount of it is not hot-plugged but mounted on the host and shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_own_disk_is_never_hot_plugged() {
    let env = config_env("disable_block_device_use = false");
    let root_device = host_root_device();
    let mut sandbox = boot(&env).await;
    let rootfs = Rootfs::Mounts(vec![HostMount {
        typ: "ext4".into(),
        source: root_device.display().to_string(),
        options: vec!["ro".into()],
    }]);
    // Read-only: the host cannot mount its own `/` a second time so
    // (EBUSY), which is fine here: what matters is that it was not
    // hot-plugged.
    let spec = spec(&sandbox, "true");
    let created = sandbox
        .create_container_from("hostdisk", &rootfs, spec)
        .await;
    assert!(sandbox.record().devices.is_empty(), "nothing hot-plugged");
    assert!(
        hypervisor_drives(&env, &sandbox).await == Inventory::default(),
        "the hypervisor has no drive"
    );
    if created.is_ok() {
        sandbox.remove_container("hostdisk").await.expect("remove");
    }
    // A directory on the host's root filesystem is shared, too.
    let (out, code) = run(
        &mut sandbox,
        "dir",
        &Rootfs::Dir(env.rootfs.clone()),
        "grep ' / ' /proc/mounts",
        |_| {},
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("virtiofs"), "{out}");
    assert!(sandbox.record().devices.is_empty());
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
}

fn host_root_device() -> PathBuf {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "/"])
        .output()
        .expect("findmnt");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A guest that cannot drive virtio-blk disks never sees the drive: the
/// agent's wait ends with an error naming the device and the wait, and
/// the drive is unplugged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_that_never_appears_is_an_error_and_is_unplugged() {
    // The driver is a module in Debian's kernel and built into capsa's.
    let env = config_env(
        "kernel_params = \"module_blacklist=virtio_blk initcall_blacklist=virtio_blk_init\"\nhotplug_timeout = 4",
    );
    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let mut sandbox = boot(&env).await;
    let rootfs = Rootfs::Image(image.path().to_path_buf());
    let err = sandbox
        .create_container_from("missing", &rootfs, spec(&sandbox, "true"))
        .await
        .expect_err("the drive does not appear");
    let text = capsa_runtime::error_chain(&err);
    assert!(text.contains("/00"), "names the PCI path: {text}");
    assert!(text.contains('4'), "names the wait: {text}");
    assert!(sandbox.record().devices.is_empty());
    assert_eq!(
        hypervisor_drives(&env, &sandbox).await,
        Inventory::default(),
        "unplugged"
    );
    // The sandbox goes on.
    let (out, code) = run(
        &mut sandbox,
        "after",
        &Rootfs::Dir(env.rootfs.clone()),
        "echo ok",
        |_| {},
    )
    .await;
    assert_eq!((out.as_str(), code), ("ok\n", 0));
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtio_scsi_drives_carry_rootfs_and_read_only_volumes() {
    let env = config_env("block_device_driver = \"virtio-scsi\"");
    let image = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let data_dir = env.dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("hello"), "from the host\n").unwrap();
    let data = ImageFile::ext4(env.dir.path(), 16, Some(&data_dir));
    let mut sandbox = boot(&env).await;
    let volume = Volume {
        source: data.path().to_path_buf(),
        destination: "/data".into(),
        readonly: true,
    };
    let script = "grep ' / ' /proc/mounts; cat /data/hello; \
                  for f in /sys/block/sd*/ro; do cat $f; done | tr '\\n' ' '; echo; \
                  echo x > /data/new || echo refused";
    let (out, code) = run(
        &mut sandbox,
        "scsi",
        &Rootfs::Image(image.path().to_path_buf()),
        script,
        |spec| volume::add_volume(spec, &volume).expect("volume"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("/dev/sd"), "{out}");
    assert_eq!(lines[1], "from the host");
    assert_eq!(
        lines[2].trim(),
        "0 1",
        "the volume's drive is read-only: {out}"
    );
    assert_eq!(lines[3], "refused", "{out}");
    let devices = sandbox.record().devices.clone();
    assert!(devices.iter().all(|d| d.driver == "virtio-scsi"));
    assert!(devices
        .iter()
        .any(|d| d.read_only && d.role == "volume /data"));
    sandbox.destroy().await.expect("destroy");
    assert_eq!(data.text("/new"), None, "the image is unchanged");
    assert_no_leaks(&env.state_dir);
}
