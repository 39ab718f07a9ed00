//! Block storages and devices over the agent API, against a real VM: a
//! drive hot-plugged with `Sandbox::attach_block` and given to the agent as
//! a `blk` or `scsi` storage (a container rootfs, a read-only volume) or as
//! a `Device` of the spec's `linux.devices`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use capsa_hypervisor::device::{BlockDevice, BlockDriver};
use capsa_protocols::{agent, convert, DRIVER_BLK, DRIVER_SCSI};
use capsa_runtime::{ProcessSpec, Sandbox};
use capsa_test_infra::{assert_no_leaks, run_bounded, TestEnv};
use oci_spec::runtime::{
    Capability, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, MountBuilder, Spec,
};

mod common;
mod guest_common;

use common::boot;
use guest_common::{assert_serving, console_run, container_spec, finish, status, CONSOLE_PARAMS};

/// Bound of the host tools run on an image.
const TOOL: Duration = Duration::from_secs(60);
/// The host's device number the specs give the raw drive (a loop device's
/// major); the agent rewrites it to the guest's.
const HOST_MAJOR: i64 = 7;
const HOST_MINOR: i64 = 99;

/// An ext4 image of `size` holding the files of `dir`, made without
/// mounting anything on the host.
fn ext4_image(env: &TestEnv, name: &str, dir: &Path, size: &str) -> PathBuf {
    let img = env.dir.path().join(name);
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-F", "-q", "-d"]).arg(dir).arg(&img).arg(size);
    let out = run_bounded(mkfs, None, TOOL);
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    img
}

/// The file `path` of ext4 image `img`, read with debugfs (no mount).
fn debugfs_cat(img: &Path, path: &str) -> String {
    let mut cmd = Command::new("debugfs");
    cmd.arg("-R").arg(format!("cat {path}")).arg(img);
    let out = run_bounded(cmd, None, TOOL);
    assert!(out.status.success(), "debugfs: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn drive(id: &str, path: &Path, read_only: bool, driver: BlockDriver) -> BlockDevice {
    BlockDevice {
        id: id.into(),
        path: path.to_path_buf(),
        read_only,
        driver,
    }
}

fn storage(driver: &str, source: &str, options: &[&str], mount_point: &str) -> agent::Storage {
    agent::Storage {
        driver: driver.into(),
        source: source.into(),
        fstype: "ext4".into(),
        options: options.iter().map(|o| o.to_string()).collect(),
        mount_point: mount_point.into(),
        ..Default::default()
    }
}

fn request(id: &str, spec: &Spec, storages: Vec<agent::Storage>) -> agent::CreateContainerRequest {
    agent::CreateContainerRequest {
        container_id: id.into(),
        exec_id: id.into(),
        OCI: Some(convert::spec_to_grpc(spec)).into(),
        storages,
        ..Default::default()
    }
}

/// Runs the container of `req` to its end, checks that the VM has no disk
/// mounted once it is removed, unplugs drive `drive`, destroys the
/// sandbox and checks that nothing is left; the container's output and
/// exit code.
async fn run_then_unplug(
    mut sandbox: Sandbox,
    env: &TestEnv,
    req: agent::CreateContainerRequest,
    drive: &str,
) -> (String, i32) {
    let id = req.container_id.clone();
    sandbox.agent().create_container(req).await.expect("create");
    let (out, code) = finish(&sandbox, &id).await;
    let mounted = console_run(env, &sandbox, DISKS_MOUNTED).await;
    sandbox.detach_block(drive).await.expect("detach");
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
    assert!(
        mounted.contains("disks=0\r\n"),
        "RemoveContainer unmounts the container's disks: {mounted:?}"
    );
    (out, code)
}

/// Prints the source of the container's `/` and writes `/written` (no
/// sync: the agent syncs the disk when the container is removed).
const ROOTFS_SCRIPT: &str =
    "awk '$2 == \"/\" { print $1 }' /proc/mounts; echo on-the-disk > /written && echo ok";

/// Counts the disks mounted in the VM (outside every container).
const DISKS_MOUNTED: &str = "echo disks=$(grep -c '^/dev/[sv]d' /proc/mounts); exit\n";

/// A test environment whose VMs open the debug console, with `extra` in
/// the `[hypervisor.qemu]` table.
fn env_with(extra: &str) -> TestEnv {
    TestEnv::with_qemu_extra(&format!("{CONSOLE_PARAMS}\n{extra}"))
}

/// A container runs on an ext4 image hot-plugged with `driver` and given
/// as a storage of `storage_driver`: it sees `/` on the disk (`/dev/<prefix>*`),
/// and what it wrote is in the image once it is removed and the drive
/// unplugged.
async fn block_rootfs(env: TestEnv, driver: BlockDriver, storage_driver: &str, prefix: &str) {
    let img = ext4_image(&env, "rootfs.img", &env.rootfs, "64M");
    let mut sandbox = boot(&env).await;
    let address = sandbox
        .attach_block(&drive("root0", &img, false, driver))
        .await
        .expect("attach the rootfs drive");
    let root = capsa_protocols::guest_block_rootfs_path("c1");
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), ROOTFS_SCRIPT.into()],
        ..Default::default()
    };
    let spec = capsa_runtime::spec::build(&process, &root, "block-test").expect("spec");
    let req = request(
        "c1",
        &spec,
        vec![storage(storage_driver, &address.to_string(), &[], &root)],
    );
    let (out, code) = run_then_unplug(sandbox, &env, req, "root0").await;

    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    let source = lines.next().unwrap_or_default();
    assert!(
        source.starts_with(prefix),
        "/ is on {source:?}, not {prefix}*"
    );
    assert_eq!(lines.next(), Some("ok"), "{out}");
    assert_eq!(debugfs_cat(&img, "/written"), "on-the-disk\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_on_a_virtio_blk_rootfs() {
    block_rootfs(env_with(""), BlockDriver::VirtioBlk, DRIVER_BLK, "/dev/vd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_on_a_virtio_scsi_rootfs() {
    let env = env_with("block_device_driver = \"virtio-scsi\"");
    block_rootfs(env, BlockDriver::VirtioScsi, DRIVER_SCSI, "/dev/sd").await;
}

/// A read-only drive mounted `ro` as a volume: the container's root cannot
/// write it, and reads what the image holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_block_volume_refuses_writes_even_for_root() {
    let env = env_with("");
    let content = env.dir.path().join("volume");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello"), "from-the-image\n").unwrap();
    let img = ext4_image(&env, "volume.img", &content, "16M");
    let mut sandbox = boot(&env).await;
    let address = sandbox
        .attach_block(&drive("vol0", &img, true, BlockDriver::VirtioBlk))
        .await
        .expect("attach the volume");
    let point = capsa_protocols::guest_block_volume_path("vol0");
    let script = "id -u; cat /data/hello; touch /data/new 2>&1; echo touch=$?; \
                  grep ' /data ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1";
    let mut spec = container_spec(&mut sandbox, &env, "v1", script);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(&point)
            .options(vec!["rbind".to_string()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let vol = storage(DRIVER_BLK, &address.to_string(), &["ro"], &point);
    let req = request("v1", &spec, vec![vol]);
    let (out, code) = run_then_unplug(sandbox, &env, req, "vol0").await;

    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "runs as root: {out}");
    assert_eq!(lines.get(1), Some(&"from-the-image"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("touch=1"), "{out}");
    assert_eq!(lines.last(), Some(&"ro"), "{out}");
}

/// A raw drive in `linux.devices` at `/dev/xvdb` (Kubernetes'
/// `volumeDevices`): the container makes a filesystem on it (busybox `mke2fs`), mounts it,
/// writes and reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_drive_is_usable_in_the_container() {
    let env = env_with("");
    let img = env.dir.path().join("raw.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 << 20))
        .expect("raw image");
    let mut sandbox = boot(&env).await;
    let address = sandbox
        .attach_block(&drive("raw0", &img, false, BlockDriver::VirtioBlk))
        .await
        .expect("attach the raw drive");
    let script = "mke2fs /dev/xvdb >/dev/null 2>&1 && mkdir -p /tmp/m && \
                  mount /dev/xvdb /tmp/m && echo on-raw > /tmp/m/f && umount /tmp/m && \
                  mount -o ro /dev/xvdb /tmp/m && cat /tmp/m/f && umount /tmp/m; echo rc=$?";
    let mut spec = container_spec(&mut sandbox, &env, "r1", script);
    with_raw_device(&mut spec);
    let mut req = request("r1", &spec, Vec::new());
    req.devices = vec![agent::Device {
        type_: DRIVER_BLK.into(),
        id: address.to_string(),
        container_path: "/dev/xvdb".into(),
        ..Default::default()
    }];
    let (out, code) = run_then_unplug(sandbox, &env, req, "raw0").await;

    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "on-raw\nrc=0\n");
}

/// A storage whose PCI path has no device is refused once the hotplug
/// timeout has passed, naming the path and the wait; nothing of the
/// container is kept and the sandbox keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_without_its_device_is_named_and_the_sandbox_keeps_working() {
    let env = TestEnv::with_qemu_extra("hotplug_timeout = 3");
    let mut sandbox = boot(&env).await;
    let spec = container_spec(&mut sandbox, &env, "m1", "true");
    let point = capsa_protocols::guest_block_volume_path("missing");
    let missing = storage(DRIVER_BLK, "1f/00", &[], &point);
    let refused = sandbox
        .agent()
        .raw()
        .create_container(
            capsa_agent_client::until(Duration::from_secs(120)),
            &request("m1", &spec, vec![missing]),
        )
        .await;
    let refused = status(refused);
    assert_serving(&sandbox).await;
    let (out, code) = guest_common::run(&mut sandbox, &env, "m1", "echo again").await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(
        refused.code(),
        ttrpc::Code::DEADLINE_EXCEEDED,
        "{refused:?}"
    );
    let msg = refused.message();
    assert!(
        msg.contains("PCI path 1f/00") && msg.contains("after waiting 3s"),
        "{msg}"
    );
    assert_eq!((out.as_str(), code), ("again\n", 0), "the id is free again");
}

/// Adds `/dev/xvdb` (the host's number) to the spec's devices and device
/// cgroup, and CAP_SYS_ADMIN (for mount) to the process.
fn with_raw_device(spec: &mut Spec) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let device = LinuxDeviceBuilder::default()
        .path("/dev/xvdb")
        .typ(LinuxDeviceType::B)
        .major(HOST_MAJOR)
        .minor(HOST_MINOR)
        .file_mode(0o660u32)
        .build()
        .unwrap();
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.push(device);
    linux.set_devices(Some(devices));
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    rules.push(
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::B)
            .major(HOST_MAJOR)
            .minor(HOST_MINOR)
            .access("rwm")
            .build()
            .unwrap(),
    );
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    let mut process = spec.process().clone().unwrap();
    let mut caps = process.capabilities().clone().unwrap_or_default();
    let with_admin = |set: &Option<oci_spec::runtime::Capabilities>| {
        let mut set = set.clone().unwrap_or_default();
        set.insert(Capability::SysAdmin);
        Some(set)
    };
    let (bounding, effective) = (with_admin(caps.bounding()), with_admin(caps.effective()));
    let permitted = with_admin(caps.permitted());
    caps.set_bounding(bounding);
    caps.set_effective(effective);
    caps.set_permitted(permitted);
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));
}
