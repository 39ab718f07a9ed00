//! Devices attached to a running VM, and how the guest finds them.
//!
//! A driver offers each kind of device through a capability trait of its
//! own ([`BlockHotplug`], [`NetworkHotplug`], [`ResourceHotplug`] for
//! vCPUs and memory). A driver (or a machine) without a capability answers
//! [`Error::NotSupported`] naming itself and the capability: never a
//! silent no-op.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use capsa_config::BlockDriver;

use crate::Error;

/// A drive to attach: a host block device or a regular image file, given
/// to the guest as it is (raw).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockDevice {
    /// Unique among this VM's devices; `[A-Za-z0-9_-]`, at most 32 bytes
    /// (it names QEMU objects).
    pub id: String,
    /// The host block device or image file.
    pub path: PathBuf,
    /// The guest cannot write the drive (checked by the device model, not
    /// only by a mount option in the guest).
    pub read_only: bool,
    pub driver: BlockDriver,
}

/// Where the guest finds an attached device, in Kata's notations: what the
/// agent gets as `Storage.source` or `Device.id`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GuestAddress {
    /// A PCI path: the slot of each device from the root bus down, two
    /// hex digits each, `/`-separated (`02/00`: the device in slot 0 behind
    /// the bridge or root port in slot 2 of the root bus).
    Pci { slots: Vec<u8> },
    /// A SCSI disk on the VM's virtio-scsi controller: `scsi-id:lun`.
    Scsi { id: u16, lun: u32 },
    /// A disk the guest finds by its kernel name, `/dev/<name>` (a
    /// driver whose disks are not on a bus the host addresses: UML's
    /// `ubda`); Kata's `mmioblk` storages and devices name disks so.
    Node { name: String },
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci { slots } => {
                let parts: Vec<String> = slots.iter().map(|s| format!("{s:02x}")).collect();
                f.write_str(&parts.join("/"))
            }
            Self::Scsi { id, lun } => write!(f, "{id}:{lun}"),
            Self::Node { name } => write!(f, "/dev/{name}"),
        }
    }
}

/// An attached drive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedBlock {
    pub device: BlockDevice,
    pub address: GuestAddress,
}

/// Block devices attached to and detached from a running VM.
#[async_trait::async_trait]
pub trait BlockHotplug: Send {
    /// Attaches `device` and returns where the guest finds it. Bounded by
    /// the VM's hot-plug timeout; on error nothing of it stays attached.
    async fn attach_block(&mut self, device: &BlockDevice) -> Result<GuestAddress, Error>;
    /// Detaches the drive `id`: asks the guest to release it, waits until
    /// it has (bounded by the hot-plug timeout), then removes the backend.
    async fn detach_block(&mut self, id: &str) -> Result<(), Error>;
    /// The drives attached now.
    fn attached_blocks(&self) -> Vec<AttachedBlock>;
}

/// A NIC: a virtio-net device in the guest whose backend is a host tap.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetDevice {
    /// Unique among this VM's devices; `[A-Za-z0-9_-]`, at most 32 bytes
    /// (it names QEMU objects).
    pub id: String,
    /// Name of the tap the device reads and writes (it must exist; the
    /// driver opens it, it does not create it).
    pub tap: String,
    /// The network namespace the tap lives in (`/var/run/netns/NAME`,
    /// `/proc/PID/ns/net`); `None`: the host's.
    pub netns: Option<PathBuf>,
    /// The guest interface's MAC address.
    pub mac: MacAddr,
    /// The MTU offered to the guest (virtio-net's `host_mtu`); 0 leaves
    /// the guest's default (1500).
    pub mtu: u32,
    /// Use vhost-net, if the host has `/dev/vhost-net`; otherwise (and
    /// when false) the device model runs in the hypervisor (userspace
    /// virtio-net).
    pub vhost: bool,
}

/// A MAC address; parsed from and shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid MAC address {s:?} (expected aa:bb:cc:dd:ee:ff)");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// An attached NIC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedNic {
    pub device: NetDevice,
    pub address: GuestAddress,
}

/// NICs attached to and detached from a running VM.
#[async_trait::async_trait]
pub trait NetworkHotplug: Send {
    /// Opens `device.tap` (in its netns), attaches a virtio-net device on
    /// it and returns its PCI path. Bounded by the VM's hot-plug timeout;
    /// on error nothing of it stays attached.
    async fn attach_nic(&mut self, device: &NetDevice) -> Result<GuestAddress, Error>;
    /// Detaches the NIC `id`: asks the guest to release it, waits until it
    /// has (bounded by the hot-plug timeout), then removes the backend
    /// (closing the tap; the tap itself stays).
    async fn detach_nic(&mut self, id: &str) -> Result<(), Error>;
    /// The NICs attached now, cold-plugged ones included.
    fn attached_nics(&self) -> Vec<AttachedNic>;
}

/// Memory is added in multiples of this (MiB): the memory block of the
/// x86-64 Linux guest, the unit it onlines and offlines.
pub const MEMORY_BLOCK_MIB: u32 = 128;

/// The size of a running VM and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct VmResources {
    /// vCPUs plugged now (boot vCPUs included).
    pub vcpus: u32,
    /// Memory plugged now, MiB (boot memory included; with virtio-mem,
    /// what the guest has plugged, which may trail the request).
    pub memory_mib: u32,
    /// The most vCPUs the VM can have (its `maxcpus`).
    pub max_vcpus: u32,
    /// The most memory the VM can have, MiB (its `maxmem`).
    pub max_memory_mib: u32,
    /// Whether memory can shrink (virtio-mem) or only grow (DIMMs).
    pub virtio_mem: bool,
}

/// vCPUs and memory of a running VM, grown and shrunk (Kata's
/// `ResizeVCPUs` / `ResizeMemory`).
///
/// Targets are totals, not deltas. A target beyond the VM's maxima (or
/// below its boot size, which is never removed) is capped, and the call
/// returns the size actually reached: the caller compares it with what it
/// asked for and logs the difference; it is not an error. Every QMP
/// command and wait is bounded by the VM's hot-plug timeout. On error the
/// VM keeps what was plugged before the failing step, nothing half-added
/// stays, and [`ResourceHotplug::current`] is exact.
///
/// Growth returns once the guest has seen each new vCPU and DIMM (its
/// ACPI `_OST` answer, waited for within the hot-plug timeout; a guest
/// that does not answer is logged, the device stays plugged). Seen is not
/// yet usable: hot-added vCPUs stay offline until the guest onlines them,
/// so call the agent's `OnlineCPUMem` after each growth (`nb_cpus` = the
/// vCPUs added). Memory is onlined by the guest kernel itself (the
/// driver boots a VM with memory headroom with `memhp_default_state=online`);
/// `OnlineCPUMem` onlines any block left offline.
#[async_trait::async_trait]
pub trait ResourceHotplug: Send {
    /// Plugs or unplugs vCPUs until the VM has `vcpus` (capped to
    /// [boot vCPUs, max]); returns the count reached. Removing asks the
    /// guest to release each vCPU added last and waits for it; a guest
    /// that does not release one in time fails the call, and the vCPU
    /// stays counted. A driver that cannot remove vCPUs safely (QEMU
    /// under TCG) keeps them and returns the count it has.
    async fn resize_vcpus(&mut self, vcpus: u32) -> Result<u32, Error>;
    /// Grows or shrinks the memory towards `memory_mib` (capped to [boot
    /// memory, max]); returns the MiB reached. Growth is rounded up to
    /// whole [`MEMORY_BLOCK_MIB`] (within the maximum). With virtio-mem it
    /// waits, bounded, until the guest has plugged or unplugged the
    /// difference and returns what it reached then (a guest that cannot
    /// free memory in use shrinks less). Without virtio-mem each growth
    /// is one DIMM (at most `memory_slots` of them; with none left the
    /// size stays) and memory never shrinks: a smaller target returns the
    /// current size.
    async fn resize_memory(&mut self, memory_mib: u32) -> Result<u32, Error>;
    /// The size now and the maxima.
    fn current(&self) -> VmResources;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_use_katas_notation() {
        let pci = GuestAddress::Pci {
            slots: vec![0x02, 0x00],
        };
        assert_eq!(pci.to_string(), "02/00");
        assert_eq!(GuestAddress::Scsi { id: 0, lun: 3 }.to_string(), "0:3");
        let node = GuestAddress::Node {
            name: "ubda".into(),
        };
        assert_eq!(node.to_string(), "/dev/ubda");
    }

    #[test]
    fn mac_addresses_parse_and_show() {
        let mac: MacAddr = "02:00:ca:FE:00:01".parse().unwrap();
        assert_eq!(mac.0, [2, 0, 0xca, 0xfe, 0, 1]);
        assert_eq!(mac.to_string(), "02:00:ca:fe:00:01");
        for bad in [
            "",
            "02:00:ca:fe:00",
            "02:00:ca:fe:00:01:02",
            "2:00:ca:fe:00:01",
            "zz:00:ca:fe:00:01",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
