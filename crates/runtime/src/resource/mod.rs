//! Host-side resources of a sandbox: what the runtime prepares on the
//! host and attaches to the VM for a container. Each kind has the same
//! shape — prepare (check the host side), attach, detach, clean up:
//!
//! | kind | prepare | attach | detach / clean up |
//! |---|---|---|---|
//! | [`share`]: a directory or file over virtio-fs | open and check the source ([`crate::mount::Source`]) | bind it into the sandbox's share | unmount, remove the share's directory |
//! | [`block`]: a drive (block device or image file) | inspect it, refuse a host disk ([`BlockSource::check_hotplug`]) | hot-plug it into the VM; the agent gets a `blk`/`scsi` storage or device | after the guest let go of it: hot-unplug |
//!
//! [`container`] puts them together for one container, from a spec with
//! host paths to the agent's `CreateContainer`: the same code for
//! `capsa run` and for the shim. [`network`] turns the links of a pod's
//! network namespace into endpoints (a tap per veth) for the VM's NICs.

use std::path::PathBuf;

use capsa_hypervisor::BlockDriver;

pub mod block;
pub mod block_source;
pub mod container;
mod loopdev;
pub mod network;
pub mod share;
pub mod sizing;

pub use block_source::{BlockKind, BlockSource, BlockSourceError, Refusal};

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
