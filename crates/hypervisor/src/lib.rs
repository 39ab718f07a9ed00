//! Hypervisor drivers.
//!
//! A driver turns a [`VmConfig`] into a running virtual machine and gives the
//! rest of capsa a [`Vm`]: something that can be started, asked where its agent
//! listens, and shut down. [`create`] is the one factory: callers hold a
//! `Box<dyn Vm>` and never name a driver. The configuration's
//! `[hypervisor.<driver>]` table is read into the driver-neutral
//! [`capsa_config::VmSettings`] and the driver's own settings
//! ([`DriverSettings`]); each driver checks its own keys ([`Driver::validate`],
//! run by [`load_config`]) and reports what the host offers it
//! ([`check_host`], for `capsa check`). QEMU is the first driver, User-Mode
//! Linux (`uml`: the guest kernel a jailed host process) the second.
//!
//! Devices attached to a running VM are capabilities of their own
//! ([`device::BlockHotplug`] through [`Vm::block`],
//! [`device::NetworkHotplug`] through [`Vm::network`]), and so is
//! resizing it ([`device::ResourceHotplug`] through [`Vm::resources`]:
//! vCPU and memory hot-plug); a driver without one answers
//! [`Error::NotSupported`]. What a running VM holds can be read from
//! outside its owner, for tools and tests, in driver-neutral terms
//! ([`debug`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod accel;
pub mod debug;
pub mod device;
pub mod error;
pub mod jail;
pub mod mountapi;
mod process;
#[cfg(feature = "internals")]
pub mod qemu;
#[cfg(not(feature = "internals"))]
mod qemu;
mod tap;
#[cfg(feature = "internals")]
pub mod uml;
#[cfg(not(feature = "internals"))]
mod uml;
pub mod virtiofsd;

pub use accel::{Accelerator, HostVirt};
pub use capsa_agent_client::AgentEndpoint;
pub use capsa_config::AcceleratorChoice;
pub use capsa_config::{BlockDriver, DriverSettings};
pub use device::{
    AttachedBlock, AttachedNic, BlockDevice, BlockHotplug, GuestAddress, MacAddr, NetDevice,
    NetworkHotplug, ResourceHotplug, VmResources, MEMORY_BLOCK_MIB,
};
pub use error::Error;
pub use process::{VmProcess, VmProcessRole};
/// Kata's kernel parameters for a fast boot (the benches print them).
pub use qemu::FAST_BOOT_PARAMS;

use capsa_config::{Config, HypervisorConfig, Invalid, Source, VmSettings};

/// A virtio-fs share served by one `virtiofsd` for this VM.
#[derive(Debug, Clone)]
pub struct SharedFs {
    /// Path of the `virtiofsd` binary.
    pub daemon: PathBuf,
    /// Host directory exported to the guest.
    pub shared_dir: PathBuf,
    /// Mount tag seen by the guest (`kataShared`).
    pub tag: String,
    /// `--cache` value.
    pub cache: capsa_config::VirtioFsCache,
    /// Extra arguments passed to `virtiofsd` as they are.
    pub extra_args: Vec<String>,
}

/// Everything a driver needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Sandbox id; used in process names and logs.
    pub id: String,
    /// Directory owned by this VM for sockets (QMP, vsock, virtiofsd). It must
    /// exist; the driver removes what it creates there on shutdown.
    pub run_dir: PathBuf,
    /// File the guest serial console is written to. The driver opens it
    /// for appending (`O_APPEND`) and keeps it so: the owner rotates it by
    /// copying and truncating it in place (capsa-runtime's console
    /// keeper), and the driver's next line must land at the new end.
    pub console_log: PathBuf,
    pub kernel: PathBuf,
    /// With [`VmConfig::image`], the boot initrd that reaches the image
    /// (if the kernel needs modules for it); else the initrd whose
    /// `/init` is the agent.
    pub initrd: Option<PathBuf>,
    /// The root filesystem image the guest boots from, read-only, in
    /// Kata's DAX layout (the root is partition 1, ext4); how it is
    /// attached is the driver's choice (QEMU: an NVDIMM unless
    /// `disable_image_nvdimm`).
    pub image: Option<PathBuf>,
    /// Extra kernel command line parameters, appended after the driver's own.
    pub kernel_params: Vec<String>,
    /// vCPUs at boot; never hot-removed.
    pub vcpus: u32,
    /// Guest RAM at boot, MiB; never hot-removed.
    pub memory_mib: u32,
    /// The most vCPUs [`ResourceHotplug::resize_vcpus`] can reach
    /// (`-smp vcpus,maxcpus=`). 0: the host's CPU count. The driver caps
    /// it at what its machine type allows and raises it to `vcpus`
    /// ([`ResourceHotplug::current`] shows the value in use).
    pub max_vcpus: u32,
    /// The most memory, MiB, [`ResourceHotplug::resize_memory`] can reach
    /// (`-m memory_mib,maxmem=`). 0: the host's physical memory. Raised
    /// to `memory_mib`; equal to it, memory cannot be hot-plugged.
    pub max_memory_mib: u32,
    pub shared_fs: Option<SharedFs>,
    /// Guest context id of the vsock device (3 or more).
    pub guest_cid: u32,
    /// Bounds every wait of a hot-plug or hot-unplug.
    pub hotplug_timeout: Duration,
    /// How drives are attached ([`BlockDriver`]); with
    /// `virtio-scsi` the controller is created at boot.
    pub block_driver: BlockDriver,
    /// NICs present at boot (cold-plugged), each behind a PCIe root port
    /// of its own on q35; [`Vm::network`] adds more later.
    pub nics: Vec<NetDevice>,
    pub debug: bool,
    /// The driver and its own settings (`[hypervisor.<driver>]`).
    pub driver: DriverSettings,
}

/// What a driver module offers besides its VMs, implemented by a unit
/// type per driver (`qemu::Qemu`); [`create`], [`validate`] and
/// [`check_host`] pick the implementation from [`DriverSettings`].
pub trait Driver {
    /// The driver's name for people (`QEMU`).
    const NAME: &'static str;
    /// The driver's own keys (`capsa_config::QemuSettings`).
    type Settings;
    /// Checks the driver's constraints on its own keys and on the shared
    /// ones (`config.driver` holds `own`); the error names the key with
    /// [`HypervisorConfig::key`].
    fn validate(config: &HypervisorConfig, own: &Self::Settings) -> Result<(), Invalid>;
    /// What the host offers this driver and what it would use, one line
    /// each (`capsa check`).
    fn check_host(vm: &VmSettings, own: &Self::Settings) -> Vec<HostCheck>;
    /// A VM of this driver, not started yet.
    fn create(cfg: VmConfig) -> Box<dyn Vm>;
}

/// One line of [`check_host`]: what was looked at and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck {
    /// `accelerator`, `kernel`, `virtiofsd`, ...
    pub what: String,
    /// What was found (`ok: /usr/bin/qemu-system-x86_64`), or what is
    /// missing.
    pub detail: String,
    /// Something the driver needs is missing: the VM would not start.
    pub missing: bool,
}

impl HostCheck {
    pub fn info(what: &str, detail: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            detail: detail.into(),
            missing: false,
        }
    }

    /// A file the VM needs: `ok: PATH`, or missing.
    pub fn file(what: &str, path: &Path) -> Self {
        let missing = !path.is_file();
        let ok = if missing { "" } else { "ok: " };
        Self {
            what: what.into(),
            detail: format!("{ok}{}", path.display()),
            missing,
        }
    }
}

/// The driver the configuration names: a VM of it, not started yet.
pub fn create(cfg: VmConfig) -> Box<dyn Vm> {
    match &cfg.driver {
        DriverSettings::Qemu(_) => qemu::Qemu::create(cfg),
        DriverSettings::Uml(_) => uml::Uml::create(cfg),
    }
}

/// The driver's checks of the configuration ([`Driver::validate`]).
pub fn validate(config: &Config) -> Result<(), Invalid> {
    let h = &config.hypervisor;
    match &h.driver {
        DriverSettings::Qemu(q) => qemu::Qemu::validate(h, q),
        DriverSettings::Uml(u) => uml::Uml::validate(h, u),
    }
}

/// What the host offers the configured driver ([`Driver::check_host`]),
/// after a line naming the driver.
pub fn check_host(config: &HypervisorConfig) -> Vec<HostCheck> {
    let (name, lines) = match &config.driver {
        DriverSettings::Qemu(q) => (qemu::Qemu::NAME, qemu::Qemu::check_host(&config.vm, q)),
        DriverSettings::Uml(u) => (uml::Uml::NAME, uml::Uml::check_host(&config.vm, u)),
    };
    let table = config.driver.name();
    let driver = HostCheck::info("driver", format!("{name} ([hypervisor.{table}])"));
    std::iter::once(driver).chain(lines).collect()
}

/// Finds, reads and checks the configuration: the shared keys
/// ([`capsa_config::load`]) and the driver's ([`validate`]). What every
/// command and the shim load the configuration with.
pub fn load_config(explicit: Option<&Path>) -> Result<(Config, Source), capsa_config::Error> {
    capsa_config::load_checked(explicit, validate)
}

/// [`load_config`] of `text`, read from `path`.
pub fn parse_config(text: &str, path: &Path) -> Result<Config, capsa_config::Error> {
    capsa_config::parse_checked(text, path, validate)
}

/// A virtual machine controlled by a driver.
#[async_trait::async_trait]
pub trait Vm: Send + Sync {
    /// The driver's name for messages (`QEMU`).
    fn name(&self) -> &'static str;
    /// Starts the helpers and the hypervisor. On error nothing is left running.
    async fn start(&mut self) -> Result<(), Error>;
    /// The accelerator in use (known once started).
    fn accelerator(&self) -> Option<Accelerator>;
    /// Pid of the hypervisor process, once started.
    fn pid(&self) -> Option<u32>;
    /// Every host process the VM owns now (the hypervisor and its
    /// helpers), with its role: what the owner records so that a
    /// forced removal ends exactly them.
    fn processes(&self) -> Vec<VmProcess>;
    /// The unprivileged host uid and gid the VM's processes run as, when
    /// they do not run as root (a driver that jails them); `None`: root.
    /// Before [`Vm::start`], the owner lets this group search the VM's run
    /// directory and read the share (`SharedFs::shared_dir`), and what it
    /// mounts in the share it mounts idmapped, host root shown as this
    /// uid and gid: the share's server, running as them, serves those
    /// files as their owner, as a root one would.
    fn host_identity(&self) -> Option<jail::Identity> {
        None
    }
    /// Waits up to `limit` until a connection to the guest's agent may be
    /// attempted; returns false if that did not happen, or the VM exited.
    /// What it waits for is the driver's business (QEMU with the
    /// vhost-user vsock backend: the guest driver has set the vsock device
    /// up, virtio DRIVER_OK, since a connection request queued earlier can
    /// wedge vhost-device-vsock for good).
    async fn wait_guest_ready(&mut self, limit: Duration) -> Result<bool, Error>;
    /// Where the agent listening on vsock `port` is reached from the host.
    fn agent_endpoint(&self, port: u32) -> AgentEndpoint;
    /// Waits up to `timeout` for the hypervisor to exit on its own (for example
    /// after the guest powered off). Returns true if it exited.
    async fn wait_exit(&mut self, timeout: Duration) -> Result<bool, Error>;
    /// Stops the VM: asks the hypervisor to quit and waits up to `grace`,
    /// then kills it; stops the helpers and removes their sockets.
    /// Safe to call more than once and on a VM that never started.
    async fn shutdown(&mut self, grace: Duration) -> Result<(), Error>;
    /// Block device hot-plug, or [`Error::NotSupported`] if this driver
    /// (or its machine type) cannot do it.
    fn block(&mut self) -> Result<&mut dyn BlockHotplug, Error>;
    /// NIC hot-plug, or [`Error::NotSupported`] if this driver (or its
    /// machine type) cannot do it.
    fn network(&mut self) -> Result<&mut dyn NetworkHotplug, Error>;
    /// vCPU and memory hot-plug of a running VM, or
    /// [`Error::NotSupported`] if this driver (or its machine type)
    /// cannot do it.
    fn resources(&mut self) -> Result<&mut dyn ResourceHotplug, Error>;
}
