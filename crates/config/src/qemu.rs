//! `[hypervisor.qemu]`: the keys only the QEMU driver has (its
//! constraints are checked by the driver, `capsa-hypervisor`'s `qemu`
//! module).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The QEMU driver's own keys, with Kata's names where Kata has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuSettings {
    /// The `qemu-system-*` binary.
    pub path: PathBuf,
    pub machine_type: MachineType,
    /// capsa's own key: KVM only where the host really offers hardware
    /// virtualization (`auto`), or one forced.
    pub accelerator: AcceleratorChoice,
    /// capsa's own key: MiB of TCG's translation cache (`-accel
    /// tcg,tb-size=`); 0 keeps QEMU's default (1 GiB on 64-bit hosts,
    /// touched as the guest runs). Ignored with KVM.
    pub tcg_tb_size: u32,
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
    /// PCIe root ports created at boot (q35): one per PCI device that can
    /// be hot-plugged at a time.
    pub pcie_root_port: u32,
    /// With `true`, `image` is a read-only virtio-blk disk instead of a
    /// read-only NVDIMM mapped with DAX.
    pub disable_image_nvdimm: bool,
    /// capsa's own key: the vhost-user vsock backend, used when the host has
    /// no `/dev/vhost-vsock`.
    pub vhost_user_vsock_daemon: PathBuf,
}

/// `tcg_tb_size` by default, MiB: see docs/performance.md (translation
/// cache) for the measurement it comes from.
pub const DEFAULT_TCG_TB_SIZE: u32 = 128;

impl Default for QemuSettings {
    fn default() -> Self {
        Self {
            path: "/usr/bin/qemu-system-x86_64".into(),
            machine_type: MachineType::Q35,
            accelerator: AcceleratorChoice::Auto,
            tcg_tb_size: DEFAULT_TCG_TB_SIZE,
            memory_slots: 10,
            enable_virtio_mem: false,
            reclaim_guest_freed_memory: true,
            pcie_root_port: 8,
            disable_image_nvdimm: false,
            vhost_user_vsock_daemon: "/usr/local/bin/vhost-device-vsock".into(),
        }
    }
}

/// `machine_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// PCIe root ports: hot-plug of drives, NICs, vCPUs and memory.
    #[default]
    Q35,
    /// No PCI hot-plug.
    Microvm,
}

impl MachineType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Q35 => "q35",
            Self::Microvm => "microvm",
        }
    }
}

impl std::fmt::Display for MachineType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `accelerator`: what the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceleratorChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AcceleratorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!("unknown accelerator {other:?} (auto, kvm, tcg)")),
        }
    }
}
