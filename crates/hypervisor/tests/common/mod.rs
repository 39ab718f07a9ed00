//! Shared pieces of the hypervisor tests: a per-test directory and VM
//! configuration, a guard that kills what a failed test left running, and
//! process checks.

// Each test binary uses a part of this module.
#![allow(dead_code)]

pub mod initrd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_config::{MachineType, QemuSettings};
use capsa_hypervisor::{AcceleratorChoice, BlockDriver, DriverSettings, SharedFs, VmConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Tests run one at a time: two TCG guests on two cores slow each other
/// down, and "no child process is left" is only meaningful for one test.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Mount tag of the test share.
pub const TAG: &str = "capsa-test";

/// One test's directory: `run/` (the VM's run_dir), `shared/`, the console
/// log and the initrd. Dropping it first kills, by pid, every process whose
/// command line names the directory (what a failed test left running).
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("capsa-hv-test-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        for d in ["run", "shared"] {
            std::fs::create_dir(dir.path().join(d)).expect("create test dir");
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    pub fn shared(&self) -> PathBuf {
        self.path().join("shared")
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.path().join("console.log")).unwrap_or_default()
    }

    /// A TCG VM of `machine` booting the test kernel and an initrd whose
    /// `/init` is `script`, with the test share and vhost-user vsock.
    /// The console line the guest printed that starts with `capsa-test:
    /// {event} ` and contains `needle`, waiting for it up to `limit`.
    #[allow(dead_code)]
    pub async fn guest_line(&self, event: &str, needle: &str, limit: Duration) -> String {
        let prefix = format!("capsa-test: {event} ");
        let find = || {
            self.console()
                .lines()
                .find(|l| l.starts_with(&prefix) && l.contains(needle))
                .map(str::to_string)
        };
        wait_for(limit, || find().is_some()).await;
        find().unwrap_or_else(|| {
            panic!(
                "the guest printed no {prefix:?} line with {needle:?}; console:\n{}",
                self.console()
            )
        })
    }

    pub fn config(&self, machine: &str, script: &str) -> VmConfig {
        self.config_with_modules(machine, script, &[])
    }

    /// [`TestDir::config`], the guest loading the modules `extra` too.
    pub fn config_with_modules(&self, machine: &str, script: &str, extra: &[&str]) -> VmConfig {
        let guest = initrd::build_with_modules(self.path(), script, extra);
        VmConfig {
            id: format!("test-{}", std::process::id()),
            run_dir: self.run_dir(),
            console_log: self.path().join("console.log"),
            kernel: guest.vmlinuz,
            initrd: Some(guest.initrd),
            image: None,
            kernel_params: vec![],
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 1,
            max_memory_mib: 256,
            shared_fs: Some(SharedFs {
                daemon: tool("virtiofsd"),
                shared_dir: self.shared(),
                tag: TAG.into(),
                cache: capsa_config::VirtioFsCache::Auto,
                extra_args: vec![],
            }),
            guest_cid: 3,
            hotplug_timeout: Duration::from_secs(20),
            block_driver: BlockDriver::VirtioBlk,
            nics: vec![],
            debug: false,
            driver: DriverSettings::Qemu(QemuSettings {
                machine_type: match machine {
                    "microvm" => MachineType::Microvm,
                    _ => MachineType::Q35,
                },
                accelerator: AcceleratorChoice::Tcg,
                vhost_user_vsock_daemon: tool("vhost-device-vsock"),
                pcie_root_port: 2,
                tcg_tb_size: 0,
                reclaim_guest_freed_memory: false,
                ..QemuSettings::default()
            }),
        }
    }
}

/// QEMU's settings of `cfg`.
pub fn qemu(cfg: &mut VmConfig) -> &mut QemuSettings {
    match &mut cfg.driver {
        DriverSettings::Qemu(q) => q,
        other => panic!("not a QEMU configuration: {other:?}"),
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let left = processes_naming(self.path());
        for (pid, cmdline) in &left {
            eprintln!("test guard: killing {pid} ({cmdline})");
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// `virtiofsd` and `vhost-device-vsock` as installed by `make deps`.
pub fn tool(name: &str) -> PathBuf {
    ["/usr/local/bin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (make deps)"))
}

/// Live processes whose command line contains `path`, as (pid, cmdline).
pub fn processes_naming(path: &Path) -> Vec<(i32, String)> {
    let needle = path.to_string_lossy().into_owned();
    proc_entries()
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Children of this test process, zombies included, as (pid, name).
pub fn children() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    proc_entries()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parens.
            let (head, tail) = stat.rsplit_once(") ")?;
            let ppid: i32 = tail.split_whitespace().nth(1)?.parse().ok()?;
            let comm = head.split_once(" (")?.1.to_string();
            (ppid == me).then_some((pid, comm))
        })
        .collect()
}

fn proc_entries() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

/// Waits up to `limit` for `cond`, polling (test-infra's bounded wait).
pub async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    capsa_test_infra::wait_until_async(limit, || std::future::ready(cond())).await
}

/// What must hold after `shutdown`: no child process (not even a zombie),
/// nothing running that names the test directory, `run_dir` empty.
pub fn assert_all_gone(t: &TestDir) {
    assert_eq!(children(), vec![], "child processes left");
    assert_eq!(processes_naming(t.path()), vec![], "processes left");
    let left: Vec<_> = std::fs::read_dir(t.run_dir())
        .expect("read run_dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert!(left.is_empty(), "files left in run_dir: {left:?}");
}
