//! The `uml` driver end to end: a User-Mode Linux VM boots capsa's agent
//! from the agent's initrd, with virtio-fs and hybrid vsock served by
//! jailed `virtiofsd` and `vhost-device-vsock`; the agent answers over
//! vsock; every process of the VM is confined as seen from the host; the
//! VM halts through UML's management console, and nothing is left.
//!
//! Assets: `$CAPSA_TEST_ASSETS/linux-uml` (capsa's UML kernel,
//! `kernel/um/`) and `$CAPSA_TEST_ASSETS/initrd.img` (the agent's
//! initrd). Root is required (the jails map ids and chown).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_config::{UmlSettings, VirtioFsCache};
use capsa_hypervisor::jail::Identity;
use capsa_hypervisor::uml::UmlVm;
use capsa_hypervisor::{
    BlockDevice, BlockDriver, DriverSettings, Error, SharedFs, Vm, VmConfig, VmProcessRole,
};
use capsa_test_infra::wait_until;
use tokio::time::Instant;

const BOOT: Duration = Duration::from_secs(60);

fn assets() -> PathBuf {
    std::env::var_os("CAPSA_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/capsa/assets"))
}

/// `$CAPSA_TEST_ASSETS/<name>`, or a failure naming it.
fn asset(name: &str, what: &str) -> PathBuf {
    let path = assets().join(name);
    assert!(
        path.is_file(),
        "$CAPSA_TEST_ASSETS/{name} ({}) is missing: {what}",
        path.display()
    );
    path
}

/// `virtiofsd` and `vhost-device-vsock` as installed by `make deps`.
fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/local/bin").join(name);
    assert!(path.is_file(), "{} is missing (make deps)", path.display());
    path
}

/// An identity of its own per test run: nothing else on the host uses it.
fn identity(n: u32) -> Identity {
    let id = 1_980_000 + (std::process::id() % 1000) * 10 + n;
    Identity { uid: id, gid: id }
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

fn ns(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Host pids in the PID namespace of `pid` (a jail's program and all it
/// forked: for the UML kernel, the guest's processes too).
fn pid_namespace_members(pid: u32) -> Vec<u32> {
    let id = ns(pid, "pid");
    assert!(!id.is_empty(), "no pid namespace for {pid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| ns(*p, "pid") == id)
        .collect()
}

/// A directory of the test, searchable (not readable) by the jail's uid.
struct Dirs {
    dir: tempfile::TempDir,
}

impl Dirs {
    fn new(id: Identity) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("capsa-uml-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        let share = dir.path().join("shared");
        std::fs::create_dir(&share).unwrap();
        std::os::unix::fs::chown(&share, Some(id.uid), Some(id.gid)).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The console log and the helpers' logs, for failure messages.
    fn console(&self) -> String {
        let mut text = std::fs::read_to_string(self.path().join("console.log")).unwrap_or_default();
        for log in ["virtiofsd.log", "vhost-device-vsock.log"] {
            let body = std::fs::read_to_string(self.path().join("run").join(log));
            text += &format!("\n--- {log}:\n{}", body.unwrap_or_default());
        }
        text
    }

    fn config(&self, id: Identity) -> VmConfig {
        let kernel = asset(
            "linux-uml",
            "capsa's UML kernel (kernel/um/, `make assets`)",
        );
        VmConfig {
            id: format!("uml-test-{}", std::process::id()),
            run_dir: self.path().join("run"),
            console_log: self.path().join("console.log"),
            kernel,
            initrd: Some(asset("initrd.img", "the agent's initrd (`make assets`)")),
            image: None,
            // CAPSA_UML_KERNEL_PARAMS="loglevel=8" shows the boot.
            kernel_params: std::env::var("CAPSA_UML_KERNEL_PARAMS")
                .map(|p| p.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 1,
            max_memory_mib: 256,
            shared_fs: Some(SharedFs {
                daemon: tool("virtiofsd"),
                shared_dir: self.path().join("shared"),
                tag: capsa_protocols::SHARED_FS_TAG.into(),
                cache: VirtioFsCache::Auto,
                extra_args: vec![],
            }),
            guest_cid: 3,
            hotplug_timeout: Duration::from_secs(10),
            block_driver: BlockDriver::VirtioBlk,
            nics: vec![],
            debug: false,
            driver: DriverSettings::Uml(UmlSettings {
                vhost_user_vsock_daemon: tool("vhost-device-vsock"),
                jail_uid: id.uid,
                jail_gid: id.gid,
            }),
        }
    }
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the UML driver test needs root: the jails map ids and chown"
    );
}

#[tokio::test]
async fn a_uml_vm_runs_the_agent_confined_and_halts_leaving_nothing() {
    require_root();
    let id = identity(1);
    let dirs = Dirs::new(id);
    let cfg = dirs.config(id);
    let run_dir = cfg.run_dir.clone();
    // The driver's own type (what `create` returns for a UML config),
    // for its exit status and its processes.
    let mut vm = UmlVm::new(cfg);
    assert_eq!(vm.name(), "User-Mode Linux");
    vm.start()
        .await
        .unwrap_or_else(|e| panic!("start: {e}; console:\n{}", dirs.console()));
    let kernel_pid = vm.pid().expect("the kernel's pid");
    let roles: Vec<VmProcessRole> = vm.processes().iter().map(|p| p.role).collect();
    assert_eq!(
        roles,
        [
            VmProcessRole::Hypervisor,
            VmProcessRole::SharedFs,
            VmProcessRole::Vsock
        ]
    );
    assert_eq!(vm.host_identity(), Some(id));
    assert!(
        vm.wait_guest_ready(BOOT).await.unwrap(),
        "the UML kernel did not come up; console:\n{}",
        dirs.console()
    );

    // The agent, over hybrid vsock.
    let endpoint = vm.agent_endpoint(capsa_protocols::AGENT_VSOCK_PORT);
    let agent = AgentClient::connect(&endpoint, Instant::now() + BOOT)
        .await
        .unwrap_or_else(|e| panic!("agent: {e}; console:\n{}", dirs.console()));
    agent.check().await.expect("health check");
    let version = agent.version().await.expect("version");
    assert!(!version.agent_version.is_empty(), "{version:?}");

    // What UML cannot do is said, not ignored.
    for (what, err) in [
        ("network", vm.network().err()),
        ("resources", vm.resources().err()),
    ] {
        assert!(
            matches!(err, Some(Error::NotSupported { .. })),
            "{what}: {err:?}"
        );
    }

    // Confined, seen from the host: the kernel, the guest's processes
    // (host processes in the kernel's PID namespace) and the helpers.
    let mut all = pid_namespace_members(kernel_pid);
    assert!(all.len() >= 2, "the kernel and at least the agent: {all:?}");
    let helpers: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            status_field(*p, "Uid")
                .map(|u| u.split_whitespace().next() == Some(&id.uid.to_string()))
                .unwrap_or(false)
        })
        .filter(|p| !all.contains(p))
        .collect();
    assert!(
        helpers.len() >= 2,
        "virtiofsd and vhost-device-vsock run as uid {}: {helpers:?}",
        id.uid
    );
    all.extend(&helpers);
    let my_mnt = ns(std::process::id(), "mnt");
    for p in &all {
        let field = |f: &str| status_field(*p, f).unwrap_or_else(|| panic!("pid {p} gone"));
        assert_eq!(field("Seccomp"), "2", "pid {p}");
        assert_eq!(field("NoNewPrivs"), "1", "pid {p}");
        assert_eq!(field("CapEff"), "0000000000000000", "pid {p}");
        let uid = field("Uid");
        assert!(
            uid.split_whitespace().all(|u| u == id.uid.to_string()),
            "pid {p}: uid {uid}"
        );
        assert_ne!(ns(*p, "mnt"), my_mnt, "pid {p} shares the host's mounts");
        // A bounded address space (RLIMIT_AS), and no core dumps.
        let limits = std::fs::read_to_string(format!("/proc/{p}/limits")).unwrap();
        let limit = |name: &str| {
            let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        assert_ne!(
            limit("Max address space"),
            "unlimited",
            "pid {p}:\n{limits}"
        );
        assert_eq!(limit("Max core file size"), "0", "pid {p}");
    }
    eprintln!(
        "UML VM: agent {}, processes {all:?} (kernel {kernel_pid})",
        version.agent_version
    );
    drop(agent);

    // A clean halt through the management console, an exit reported.
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
    assert!(vm.wait_exit(Duration::ZERO).await.unwrap());
    let status = vm.exit_status().expect("an exit status");
    assert!(
        status.success(),
        "halted through the management console, UML exits 0: {status}; console:\n{}",
        dirs.console()
    );
    assert!(vm.processes().is_empty());
    assert!(
        wait_until(Duration::from_secs(10), || all
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())),
        "processes left: {:?}",
        all.iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect::<Vec<_>>()
    );
    let left: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the run directory: {left:?}");
    // Shutting down twice is harmless.
    vm.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// An ext4 image of `mib` MiB holding the file `hello`.
fn ext4_image(dirs: &Dirs, name: &str, mib: u32) -> PathBuf {
    let content = dirs.path().join(format!("{name}.d"));
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello"), "hello").unwrap();
    let image = dirs.path().join(format!("{name}.img"));
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg(format!("{mib}M"))
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    image
}

/// The mount count of an ext4 image (its superblock, read on the host:
/// a read-write mount writes it at once).
fn mount_count(image: &Path) -> String {
    let out = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .expect("dumpe2fs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Mount count:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Disks hot-plugged as ubd through the management console: the guest's
/// agent finds `/dev/ubda` (a `mmioblk` storage) and mounts it read-write
/// (the host sees the mount counted in the image's superblock); a
/// disk the guest does not use is removed, one it has mounted is not;
/// the binds that gave the jailed kernel the images are gone after.
#[tokio::test]
async fn ubd_disks_are_hot_plugged_found_by_the_agent_and_unplugged() {
    require_root();
    let id = identity(4);
    let dirs = Dirs::new(id);
    let cfg = dirs.config(id);
    let run_dir = cfg.run_dir.clone();
    let mut vm = capsa_hypervisor::create(cfg);
    vm.start()
        .await
        .unwrap_or_else(|e| panic!("start: {e}; console:\n{}", dirs.console()));
    assert!(
        vm.wait_guest_ready(BOOT).await.unwrap(),
        "{}",
        dirs.console()
    );
    let endpoint = vm.agent_endpoint(capsa_protocols::AGENT_VSOCK_PORT);
    let agent = AgentClient::connect(&endpoint, Instant::now() + BOOT)
        .await
        .unwrap_or_else(|e| panic!("agent: {e}; console:\n{}", dirs.console()));
    let (rw, ro) = (ext4_image(&dirs, "rw", 8), ext4_image(&dirs, "ro", 8));
    let disk = |name: &str, path: &Path, read_only: bool| BlockDevice {
        id: name.into(),
        path: path.into(),
        read_only,
        driver: BlockDriver::VirtioBlk,
    };
    let block = vm.block().expect("UML hot-plugs ubd disks");
    let rw_addr = block.attach_block(&disk("rw", &rw, false)).await.unwrap();
    let ro_addr = block.attach_block(&disk("ro", &ro, true)).await.unwrap();
    assert_eq!(rw_addr.to_string(), "/dev/ubda");
    assert_eq!(ro_addr.to_string(), "/dev/ubdb");
    let again = block.attach_block(&disk("rw", &rw, false)).await;
    assert!(matches!(again, Err(Error::Hotplug { .. })), "{again:?}");
    let missing = block
        .attach_block(&disk("gone", &dirs.path().join("none.img"), false))
        .await;
    assert!(matches!(missing, Err(Error::Hotplug { .. })), "{missing:?}");
    assert_eq!(block.attached_blocks().len(), 2);
    // A host block device (a loop device over a third image): the kernel
    // opens its own node of it, and lets it go when removed.
    let dev_image = ext4_image(&dirs, "dev", 8);
    let loop_dev = capsa_test_infra::block::LoopDevice::attach(&dev_image, false);
    let dev_addr = block
        .attach_block(&disk("dev", loop_dev.path(), false))
        .await
        .unwrap_or_else(|e| panic!("attach a block device: {e}; console:\n{}", dirs.console()));
    assert_eq!(dev_addr.to_string(), "/dev/ubdc");
    block
        .detach_block("dev")
        .await
        .expect("an unused device is removed");
    assert!(!run_dir.join("disks/dev").exists() && !run_dir.join("disks/.dev").exists());
    drop(loop_dev);

    let mount_point = "/run/kata-containers/sandbox/ubd";
    let storage = capsa_protocols::agent::Storage {
        driver: capsa_protocols::DRIVER_MMIO_BLK.into(),
        source: rw_addr.to_string(),
        fstype: "ext4".into(),
        mount_point: mount_point.into(),
        ..Default::default()
    };
    let req = capsa_protocols::agent::CreateSandboxRequest {
        hostname: "ubd".into(),
        sandbox_id: "ubd".into(),
        storages: vec![storage],
        ..Default::default()
    };
    agent.create_sandbox(req).await.unwrap_or_else(|e| {
        panic!(
            "the agent mounts /dev/ubda: {e}; console:\n{}",
            dirs.console()
        )
    });
    assert_eq!(
        mount_count(&rw),
        "1",
        "the guest mounted the image read-write"
    );
    assert_eq!(mount_count(&ro), "0");

    let block = vm.block().unwrap();
    block
        .detach_block("ro")
        .await
        .expect("an unused disk is removed");
    let in_use = block.detach_block("rw").await;
    assert!(
        matches!(&in_use, Err(Error::Hotplug { reason, .. }) if reason.contains("remove ubd0")),
        "a mounted disk stays: {in_use:?}"
    );
    let ids: Vec<String> = block
        .attached_blocks()
        .into_iter()
        .map(|b| b.device.id)
        .collect();
    assert_eq!(ids, ["rw"]);
    assert!(!run_dir.join("disks/ro").exists());
    drop(agent);
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dirs.path().display().to_string();
    let mounts: Vec<&str> = info.lines().filter(|l| l.contains(&dir)).collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert_eq!(std::fs::read_dir(&run_dir).unwrap().count(), 0);
}

#[tokio::test]
async fn a_missing_kernel_is_named_and_nothing_is_started() {
    require_root();
    let id = identity(2);
    let dirs = Dirs::new(id);
    let mut cfg = dirs.config(id);
    cfg.kernel = dirs.path().join("no-linux-uml");
    let run_dir = cfg.run_dir.clone();
    let mut vm = capsa_hypervisor::create(cfg);
    let err = vm.start().await.unwrap_err().to_string();
    assert!(err.contains("no-linux-uml"), "{err}");
    assert!(vm.pid().is_none());
    assert_eq!(std::fs::read_dir(&run_dir).unwrap().count(), 0);
}

#[tokio::test]
async fn a_killed_kernel_is_an_exit_and_shutdown_leaves_nothing() {
    require_root();
    let id = identity(3);
    let dirs = Dirs::new(id);
    let cfg = dirs.config(id);
    let run_dir = cfg.run_dir.clone();
    let mut vm = capsa_hypervisor::create(cfg);
    vm.start()
        .await
        .unwrap_or_else(|e| panic!("start: {e}; console:\n{}", dirs.console()));
    assert!(
        vm.wait_guest_ready(BOOT).await.unwrap(),
        "console:\n{}",
        dirs.console()
    );
    let kernel = vm.pid().unwrap();
    let guest = pid_namespace_members(kernel);
    assert!(!vm.wait_exit(Duration::ZERO).await.unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kernel as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        vm.wait_exit(Duration::from_secs(10)).await.unwrap(),
        "a killed kernel is an exit"
    );
    // Its guest processes die with it (its PID namespace ends).
    assert!(
        wait_until(Duration::from_secs(10), || guest
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())),
        "guest processes left: {guest:?}"
    );
    vm.shutdown(Duration::from_secs(5)).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the run directory: {left:?}");
}
