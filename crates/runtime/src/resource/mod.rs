//! Host-side resources of a sandbox: what the runtime prepares on the
//! host and attaches to the VM, one module per kind (as Kata runtime-rs's
//! `resource` crate), all held by one [`Resources`] value the sandbox owns
//! ([`manager`]). A resource is given the driver capability it needs
//! (`BlockHotplug`, `NetworkHotplug`, `ResourceHotplug`) and the agent
//! client; nothing here knows the sandbox.
//!
//! | kind | prepare | attach | detach / clean up |
//! |---|---|---|---|
//! | [`share`]: a directory or file over virtio-fs | open and check the source ([`share::mount::Source`]) | bind it into the sandbox's share | unmount, remove the share's directory |
//! | [`block`]: a drive (block device or image file) | inspect it, refuse a host disk ([`BlockSource::check_hotplug`]) | hot-plug it into the VM; the agent gets a `blk`/`scsi` storage or device | after the guest let go of it: hot-unplug |
//! | [`rootfs`]: a container's root | check the directory or image | share it, or hot-plug it | with the share and the drives |
//! | [`volume`]: a container's mounts and devices | check each source ([`volume::check_sources`]) | share a bind, hot-plug a volume or device | with the share and the drives |
//! | [`network`]: the pod's netns | a tap per veth ([`network::setup`]) | a NIC per tap, configured by the agent | remove the taps and filters |
//! | [`cpu_mem`]: vCPUs and memory | the boot size (static sizing) | grow with each container's limits (elastic) | shrink as they go |
//! | [`cgroup`]: the pod's host cgroup (`sandbox_cgroup_only`) | check that the VM fits its limits | join it before the VM starts | leave it, remove what capsa made |
//!
//! What a sandbox is to be (its size, network, cgroup) is decided once,
//! from the configuration and an OCI spec, by [`crate::request`].

use std::path::PathBuf;

use capsa_hypervisor::BlockDriver;

pub mod block;
pub mod block_source;
pub mod cgroup;
pub mod cpu_mem;
pub mod manager;
pub mod network;
pub mod rootfs;
pub mod share;
pub mod volume;

pub use block_source::{BlockKind, BlockSource, BlockSourceError, Refusal};
pub use manager::Resources;

/// A filesystem mount as containerd gives it for a snapshot (its
/// `rootfs` mounts): made on the host, or handed to the guest whole when
/// it is a filesystem on a block device or an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// What a container's root filesystem is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A directory, shared over virtio-fs.
    Dir(PathBuf),
    /// Mounts to make, in order (containerd's snapshot mounts). A single
    /// filesystem mount of a block device or of an image file (`loop`) is
    /// hot-plugged when block use is on and the device is safe to give.
    Mounts(Vec<HostMount>),
    /// A filesystem image, always hot-plugged, never mounted on the host
    /// (`capsa run --rootfs-image`).
    Image(PathBuf),
}

/// How block devices are used, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPolicy {
    /// Hot-plug a rootfs given as a block-device mount (containerd's),
    /// rather than mount it on the host (`disable_block_device_use = false`).
    pub rootfs: bool,
    pub driver: BlockDriver,
    /// Whether the VM has a shared filesystem (`shared_fs`); without one,
    /// a rootfs or volume must be a drive.
    pub shared_fs: bool,
}

/// Filesystems a drive may carry to be mounted in the guest.
pub const BLOCK_FILESYSTEMS: &[&str] = &["ext4", "ext3", "ext2", "xfs"];
