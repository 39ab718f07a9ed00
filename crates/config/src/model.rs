use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub agent: AgentSection,
    pub runtime: RuntimeConfig,
}

/// `[hypervisor.<name>]`: only QEMU for now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    pub qemu: QemuConfig,
}

/// `[hypervisor.qemu]`, with Kata's key names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuConfig {
    /// The `qemu-system-*` binary.
    pub path: PathBuf,
    pub kernel: PathBuf,
    /// An initrd whose `/init` is the agent. Exclusive with `image`.
    pub initrd: PathBuf,
    /// A root filesystem image whose `/init` is the agent, in Kata's DAX
    /// layout (`capsa assets build --image`). Exclusive with `initrd`; its
    /// boot initrd, if the kernel needs one to reach the image, is the
    /// file next to it named `<image>.initrd`.
    pub image: PathBuf,
    /// With `true`, `image` is a read-only virtio-blk disk instead of a
    /// read-only NVDIMM mapped with DAX.
    pub disable_image_nvdimm: bool,
    /// `q35` or `microvm`.
    pub machine_type: String,
    /// capsa's own key: `auto` (KVM only where the host really offers
    /// hardware virtualization, else TCG), `kvm` or `tcg`.
    pub accelerator: String,
    pub default_vcpus: u32,
    /// MiB.
    pub default_memory: u32,
    /// The most vCPUs the VM can be grown to by hot-plug; 0: the host's
    /// CPU count (capped at what the machine type allows).
    pub default_maxvcpus: u32,
    /// The most memory, MiB, the VM can be grown to by hot-plug; 0: the
    /// host's physical memory.
    pub default_maxmemory: u32,
    /// DIMM slots for memory hot-plug without virtio-mem: each growth of
    /// the memory takes one.
    pub memory_slots: u32,
    /// Memory beyond `default_memory` is one virtio-mem device that grows
    /// and shrinks (memory goes back to the host), instead of DIMMs that
    /// only grow.
    pub enable_virtio_mem: bool,
    /// Kata's key: a virtio-balloon device with free page reporting, so
    /// that memory the guest frees goes back to the host (and
    /// `deflate-on-oom`). On by default, unlike Kata: the density bench
    /// (docs/performance.md, "Density") measured 16–30 MiB less per idle
    /// pod at no cost in start time.
    pub reclaim_guest_freed_memory: bool,
    /// capsa's own key: MiB of TCG's translation cache (`-accel
    /// tcg,tb-size=`); 0 keeps QEMU's default (1 GiB on 64-bit hosts,
    /// touched as the guest runs). Ignored with KVM.
    pub tcg_tb_size: u32,
    /// Extra kernel parameters, space separated.
    pub kernel_params: String,
    /// `virtio-fs` or `none`.
    pub shared_fs: String,
    pub virtio_fs_daemon: PathBuf,
    /// `auto`, `always` or `never`.
    pub virtio_fs_cache: String,
    pub virtio_fs_extra_args: Vec<String>,
    /// capsa's own key: the vhost-user vsock backend, used when the host has
    /// no `/dev/vhost-vsock`.
    pub vhost_user_vsock_daemon: PathBuf,
    /// With `false`, a container rootfs that is a filesystem on a block
    /// device or an image file is hot-plugged into the VM instead of being
    /// mounted on the host and shared over virtio-fs.
    pub disable_block_device_use: bool,
    /// How drives are attached: `virtio-blk` or `virtio-scsi`.
    pub block_device_driver: String,
    /// PCIe root ports created at boot (q35): one per PCI device that can
    /// be hot-plugged at a time.
    pub pcie_root_port: u32,
    /// capsa's own key: seconds that bound every wait of a hot-plug or
    /// hot-unplug, on the host and in the guest.
    pub hotplug_timeout: u32,
    /// With `true`, virtio-net is served by QEMU in user space even where
    /// the host has `/dev/vhost-net`.
    pub disable_vhost_net: bool,
    pub enable_debug: bool,
    /// Kata's key: patterns (regular expressions, anchored by capsa) of
    /// the `io.katacontainers.config.hypervisor.<key>` pod annotations
    /// allowed, matched against `<key>`; empty: none (see
    /// `annotations`).
    pub enable_annotations: Vec<String>,
    /// Kata's key: globs of the QEMU binaries the `path` annotation may
    /// name; empty: only `path`.
    pub valid_hypervisor_paths: Vec<String>,
    /// Kata's key: globs of the virtiofsd binaries the `virtio_fs_daemon`
    /// annotation may name; empty: only `virtio_fs_daemon`.
    pub valid_virtio_fs_daemon_paths: Vec<String>,
}

/// `tcg_tb_size` by default, MiB: see docs/performance.md (translation
/// cache) for the measurement it comes from.
pub const DEFAULT_TCG_TB_SIZE: u32 = 128;

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            path: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/usr/share/capsa/vmlinuz".into(),
            initrd: "/usr/share/capsa/initrd.img".into(),
            image: PathBuf::new(),
            disable_image_nvdimm: false,
            machine_type: "q35".into(),
            accelerator: "auto".into(),
            default_vcpus: 1,
            default_memory: 512,
            default_maxvcpus: 0,
            default_maxmemory: 0,
            memory_slots: 10,
            enable_virtio_mem: false,
            reclaim_guest_freed_memory: true,
            tcg_tb_size: DEFAULT_TCG_TB_SIZE,
            kernel_params: String::new(),
            shared_fs: "virtio-fs".into(),
            virtio_fs_daemon: "/usr/local/bin/virtiofsd".into(),
            virtio_fs_cache: "auto".into(),
            virtio_fs_extra_args: Vec::new(),
            vhost_user_vsock_daemon: "/usr/local/bin/vhost-device-vsock".into(),
            disable_block_device_use: true,
            block_device_driver: "virtio-blk".into(),
            pcie_root_port: 8,
            hotplug_timeout: 15,
            disable_vhost_net: false,
            enable_debug: false,
            enable_annotations: Vec::new(),
            valid_hypervisor_paths: Vec::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
        }
    }
}

/// `[agent.<name>]`: capsa's agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    pub capsa: AgentConfig,
}

/// `[agent.capsa]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Seconds to wait for the agent to answer after the VM starts.
    pub dial_timeout: u32,
    /// Extra modules the agent loads in CreateSandbox (`"name param=value"`).
    pub kernel_modules: Vec<String>,
    pub enable_debug: bool,
    /// A shell in the VM's root environment on vsock port
    /// `debug_console_vport` (`capsa exec --vm`). Off by default.
    pub debug_console_enabled: bool,
    /// capsa's own key: seconds between health checks of the agent
    /// (`grpc.Health/Check`) by the sandbox's owner (the shim, or the
    /// owner of a `capsa run -d`); 0 disables them. An agent that fails
    /// [`HEALTH_CHECK_FAILURES`] checks in a row is declared dead and its
    /// VM killed. A stopped QEMU is declared dead at once, whatever this is.
    pub health_check_interval: u32,
    /// The pod's agent policy (Rego), sent as the agent's first request;
    /// not a file key: set from the annotation
    /// `io.katacontainers.config.agent.policy` (see `annotations`).
    #[serde(skip)]
    pub policy: Option<String>,
}

/// Failed health checks in a row after which a sandbox is declared dead.
pub const HEALTH_CHECK_FAILURES: u32 = 3;

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            dial_timeout: 30,
            kernel_modules: Vec::new(),
            enable_debug: false,
            debug_console_enabled: false,
            health_check_interval: 5,
            policy: None,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub enable_debug: bool,
    /// capsa's own key: where sandboxes keep their sockets and state.
    pub state_dir: PathBuf,
    /// How the pod's network namespace reaches the VM's NICs: `tcfilter`
    /// (a tap per veth, traffic mirrored by tc filters), `macvtap` (not
    /// supported yet) or `none` (no NIC).
    pub internetworking_model: String,
    /// capsa's key: the CNI configuration list of `capsa run --network
    /// bridge`; empty: `/etc/capsa/cni/capsa-bridge.conflist`, else
    /// `/usr/share/defaults/capsa/cni/capsa-bridge.conflist`, else the
    /// built-in one.
    pub cni_conflist: PathBuf,
    /// capsa's key: where CNI plugins are looked for, in order.
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// Kata's key: the shim and every process of the pod's VM (QEMU,
    /// virtiofsd, the vsock daemon) run in the pod's cgroup (the sandbox
    /// spec's `linux.cgroupsPath`), so the pod's limits cover the VM.
    pub sandbox_cgroup_only: bool,
    /// Kata's key: the VM boots at the default size plus what the pod's
    /// annotations (or a standalone task's own limits) ask for and is
    /// never resized. Off: it boots at the default size and grows and
    /// shrinks with its containers' limits.
    pub static_sandbox_resource_mgmt: bool,
    /// capsa's key: the shim writes each pod's start-up timeline (its
    /// steps and their durations, an SVG picture) to `<dir>/<pod id>.svg`
    /// once the pod is down. Empty: none.
    pub timeline_dir: PathBuf,
    /// Kata's key: patterns (anchored regular expressions) of the
    /// `io.katacontainers.config.runtime.<key>` and
    /// `io.katacontainers.config.agent.<key>` pod annotations allowed,
    /// matched against `runtime.<key>` / `agent.<key>` (e.g.
    /// `agent.policy`); empty: none.
    pub enable_annotations: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            enable_debug: false,
            state_dir: "/run/capsa".into(),
            internetworking_model: "tcfilter".into(),
            cni_conflist: PathBuf::new(),
            cni_plugin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            sandbox_cgroup_only: false,
            static_sandbox_resource_mgmt: false,
            timeline_dir: PathBuf::new(),
            enable_annotations: Vec::new(),
        }
    }
}
