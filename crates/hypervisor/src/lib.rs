//! Hypervisor drivers.
//!
//! A driver turns a [`VmConfig`] into a running virtual machine and gives the
//! rest of capsa a [`Vm`]: something that can be started, asked where its agent
//! listens, and shut down. [`create`] is the one factory: callers hold a
//! `Box<dyn Vm>` and never name a driver. QEMU is the first driver
//! ([`qemu::QemuVm`]); what only QEMU has (machine type, accelerator, the
//! vhost-user vsock daemon) is in [`DriverConfig::Qemu`].
//!
//! Devices attached to a running VM are capabilities of their own
//! ([`device::BlockHotplug`] through [`Vm::block`],
//! [`device::NetworkHotplug`] through [`Vm::network`]), and so is
//! resizing it ([`device::ResourceHotplug`] through [`Vm::resources`]:
//! vCPU and memory hot-plug); a driver without one answers
//! [`Error::NotSupported`].

use std::path::PathBuf;
use std::time::Duration;

pub mod accel;
pub mod device;
pub mod error;
pub mod jail;
mod process;
pub mod qemu;
pub mod virtiofsd;

pub use accel::{Accelerator, AcceleratorChoice, HostVirt};
pub use device::{
    AttachedBlock, AttachedNic, BlockDevice, BlockDriver, BlockHotplug, GuestAddress, MacAddr,
    NetDevice, NetworkHotplug, ResourceHotplug, VmResources, MEMORY_BLOCK_MIB,
};
pub use error::Error;

/// Where the guest agent can be reached from the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AgentEndpoint {
    /// Kernel vsock (`/dev/vhost-vsock` on the host): connect to `cid:port`.
    Vsock { cid: u32, port: u32 },
    /// Hybrid vsock: connect to the Unix socket `path`, write `CONNECT <port>\n`,
    /// read `OK <n>\n`, then the stream is raw.
    HybridVsock { path: PathBuf, port: u32 },
}

/// A virtio-fs share served by one `virtiofsd` for this VM.
#[derive(Debug, Clone)]
pub struct SharedFs {
    /// Path of the `virtiofsd` binary.
    pub daemon: PathBuf,
    /// Host directory exported to the guest.
    pub shared_dir: PathBuf,
    /// Mount tag seen by the guest (`kataShared`).
    pub tag: String,
    /// `--cache` value: `auto`, `always` or `never`.
    pub cache: String,
    /// Extra arguments passed to `virtiofsd` as they are.
    pub extra_args: Vec<String>,
}

/// Settings only the QEMU driver has.
#[derive(Debug, Clone)]
pub struct QemuSettings {
    /// `q35` (default) or `microvm`.
    pub machine_type: String,
    pub accelerator: AcceleratorChoice,
    /// Path of the `vhost-device-vsock` binary, used when the host has no
    /// `/dev/vhost-vsock`.
    pub vhost_user_vsock_daemon: PathBuf,
    /// PCIe root ports created at boot on q35, one per PCI device that can
    /// be hot-plugged at a time (Kata's `pcie_root_port`).
    pub pcie_root_ports: u32,
    /// MiB of TCG's translation cache (`-accel tcg,tb-size=`); 0 keeps
    /// QEMU's default. Not used with KVM.
    pub tcg_tb_size_mib: u32,
}

/// The driver of a VM and its own settings.
#[derive(Debug, Clone)]
pub enum DriverConfig {
    Qemu(QemuSettings),
}

/// A root filesystem image in Kata's DAX layout (`capsa assets build
/// --image`): the root is partition 1, ext4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootImage {
    pub path: PathBuf,
    /// An NVDIMM on a shared, read-only mapping of the file, mounted with
    /// DAX (the guest reads the host's page cache: every VM shares it);
    /// `false`: a read-only virtio-blk disk.
    pub nvdimm: bool,
}

/// Everything a driver needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Sandbox id; used in process names and logs.
    pub id: String,
    /// Directory owned by this VM for sockets (QMP, vsock, virtiofsd). It must
    /// exist; the driver removes what it creates there on shutdown.
    pub run_dir: PathBuf,
    /// File the guest serial console is written to.
    pub console_log: PathBuf,
    /// Path of the hypervisor's binary (`qemu-system-*`).
    pub hypervisor_path: PathBuf,
    pub kernel: PathBuf,
    /// With [`VmConfig::image`], the boot initrd that reaches the image
    /// (if the kernel needs modules for it); else the initrd whose
    /// `/init` is the agent.
    pub initrd: Option<PathBuf>,
    /// The root filesystem image the guest boots from, read-only.
    pub image: Option<RootImage>,
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
    /// DIMM slots for memory hot-plug without virtio-mem (`-m ...,slots=`):
    /// each growth of the memory takes one.
    pub memory_slots: u32,
    /// Memory beyond `memory_mib` is one virtio-mem device (sized
    /// `max_memory_mib - memory_mib`, nothing plugged at boot) that grows
    /// and shrinks, instead of DIMMs that only grow.
    pub virtio_mem: bool,
    /// A balloon device with free page reporting: pages the guest frees
    /// go back to the host (Kata's `reclaim_guest_freed_memory`). The
    /// balloon is never inflated; it deflates on OOM.
    pub free_page_reporting: bool,
    pub shared_fs: Option<SharedFs>,
    /// Guest context id of the vsock device (3 or more).
    pub guest_cid: u32,
    /// Bounds every wait of a hot-plug or hot-unplug.
    pub hotplug_timeout: Duration,
    /// How drives are attached ([`device::BlockDriver`]); with
    /// `virtio-scsi` the controller is created at boot.
    pub block_driver: BlockDriver,
    /// NICs present at boot (cold-plugged), each behind a PCIe root port
    /// of its own on q35; [`Vm::network`] adds more later.
    pub nics: Vec<NetDevice>,
    pub debug: bool,
    pub driver: DriverConfig,
}

/// The driver `cfg` names, not started yet.
pub fn create(cfg: VmConfig) -> Box<dyn Vm> {
    match cfg.driver {
        DriverConfig::Qemu(_) => Box::new(qemu::QemuVm::new(cfg)),
    }
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
