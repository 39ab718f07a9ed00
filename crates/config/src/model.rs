use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::driver::{DriverSettings, HypervisorConfig};
pub use crate::qemu::{AcceleratorChoice, MachineType, QemuSettings, DEFAULT_TCG_TB_SIZE};
pub use crate::uml::UmlSettings;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub agent: AgentSection,
    pub runtime: RuntimeConfig,
}

/// The keys of a `[hypervisor.<driver>]` table that every driver shares,
/// with Kata's names: read once into this driver-neutral value. The
/// driver's own keys are in its settings ([`DriverSettings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSettings {
    pub kernel: PathBuf,
    /// An initrd whose `/init` is the agent. Exclusive with `image`.
    pub initrd: PathBuf,
    /// A root filesystem image whose `/init` is the agent, in Kata's DAX
    /// layout (`capsa assets build --image`). Exclusive with `initrd`; its
    /// boot initrd, if the kernel needs one to reach the image, is the
    /// file next to it named `<image>.initrd`.
    pub image: PathBuf,
    pub default_vcpus: u32,
    /// MiB.
    pub default_memory: u32,
    /// The most vCPUs the VM can be grown to by hot-plug; 0: the host's
    /// CPU count (capped at what the driver allows).
    pub default_maxvcpus: u32,
    /// The most memory, MiB, the VM can be grown to by hot-plug; 0: the
    /// host's physical memory.
    pub default_maxmemory: u32,
    /// Extra kernel parameters, space separated.
    pub kernel_params: String,
    pub shared_fs: SharedFs,
    pub virtio_fs_daemon: PathBuf,
    pub virtio_fs_cache: VirtioFsCache,
    pub virtio_fs_extra_args: Vec<String>,
    /// With `false`, a container rootfs that is a filesystem on a block
    /// device or an image file is hot-plugged into the VM instead of being
    /// mounted on the host and shared over virtio-fs.
    pub disable_block_device_use: bool,
    /// How drives are attached.
    pub block_device_driver: BlockDriver,
    /// capsa's own key: seconds that bound every wait of a hot-plug or
    /// hot-unplug, on the host and in the guest.
    pub hotplug_timeout: u32,
    /// With `true`, virtio-net is served by the hypervisor in user space
    /// even where the host has `/dev/vhost-net`.
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

impl Default for VmSettings {
    fn default() -> Self {
        Self {
            kernel: "/usr/share/capsa/vmlinuz".into(),
            initrd: "/usr/share/capsa/initrd.img".into(),
            image: PathBuf::new(),
            default_vcpus: 1,
            default_memory: 512,
            default_maxvcpus: 0,
            default_maxmemory: 0,
            kernel_params: String::new(),
            shared_fs: SharedFs::VirtioFs,
            virtio_fs_daemon: "/usr/local/bin/virtiofsd".into(),
            virtio_fs_cache: VirtioFsCache::Auto,
            virtio_fs_extra_args: Vec::new(),
            disable_block_device_use: true,
            block_device_driver: BlockDriver::VirtioBlk,
            hotplug_timeout: 15,
            disable_vhost_net: false,
            enable_debug: false,
            enable_annotations: Vec::new(),
            valid_hypervisor_paths: Vec::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
        }
    }
}

impl VmSettings {
    /// The root image, if the VM boots one instead of an initrd (the
    /// validation makes them exclusive).
    pub fn root_image(&self) -> Option<&std::path::Path> {
        (!self.image.as_os_str().is_empty()).then_some(self.image.as_path())
    }
}

/// `shared_fs`: how the host's files reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SharedFs {
    /// One virtiofsd per VM.
    #[default]
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    #[serde(rename = "none")]
    None,
}

/// `virtio_fs_cache`: virtiofsd's `--cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtioFsCache {
    #[default]
    Auto,
    Always,
    Never,
    Metadata,
}

impl VirtioFsCache {
    /// The value of virtiofsd's `--cache`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
            Self::Metadata => "metadata",
        }
    }
}

impl std::fmt::Display for VirtioFsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a block device is presented to the guest (Kata's
/// `block_device_driver` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BlockDriver {
    /// One virtio-blk PCI device per drive.
    #[default]
    #[serde(rename = "virtio-blk")]
    VirtioBlk,
    /// One virtio-scsi controller, created at boot; each drive is a SCSI
    /// disk on it.
    #[serde(rename = "virtio-scsi")]
    VirtioScsi,
}

impl BlockDriver {
    pub const NAMES: &'static [&'static str] = &["virtio-blk", "virtio-scsi"];
}

impl std::fmt::Display for BlockDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::VirtioBlk => "virtio-blk",
            Self::VirtioScsi => "virtio-scsi",
        })
    }
}

impl std::str::FromStr for BlockDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "virtio-blk" => Ok(Self::VirtioBlk),
            "virtio-scsi" => Ok(Self::VirtioScsi),
            other => Err(format!(
                "unknown block device driver {other:?} (expected one of {})",
                Self::NAMES.join(", ")
            )),
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
    /// VM killed. A stopped hypervisor is declared dead at once, whatever this is.
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
    /// Kata's key: the shim and every process of the pod's VM (the hypervisor,
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
    /// Kata's key: export the sandbox's start-up steps, and the agent's
    /// handling of each request they make, as OpenTelemetry spans.
    pub enable_tracing: bool,
    /// Kata's key (runtime-rs's name): where spans go, an OTLP/gRPC
    /// collector `http://HOST:PORT` (no TLS).
    pub tracing_endpoint: String,
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
            enable_tracing: false,
            tracing_endpoint: "http://127.0.0.1:4317".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_driver_names() {
        assert_eq!(
            "virtio-scsi".parse::<BlockDriver>(),
            Ok(BlockDriver::VirtioScsi)
        );
        let err = "nvdimm".parse::<BlockDriver>().unwrap_err();
        assert!(err.contains("virtio-blk, virtio-scsi"), "{err}");
        assert_eq!(BlockDriver::VirtioScsi.to_string(), "virtio-scsi");
        assert_eq!(VirtioFsCache::Metadata.as_str(), "metadata");
    }
}
