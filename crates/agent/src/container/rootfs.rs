//! The container's rootfs gets a mount of its own, `nodev`.
//!
//! The rootfs is a directory of the virtio-fs share, which is mounted
//! `nodev,nosuid` (see `storage`): a bind mount keeps those flags, so
//! without this a setuid binary of the image (`su`, `ping`) would not work,
//! unlike under runc. The agent bind-mounts the rootfs on itself and
//! remounts it with setuid allowed and device nodes still inert (`nodev`:
//! the container's `/dev` is a tmpfs of its own, where the spec's devices
//! are created). libcontainer's own bind of the rootfs copies these flags.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

/// The flags of the mount at `path` that a bind remount must keep.
fn kept_flags(path: &Path) -> nix::Result<MsFlags> {
    let current = statvfs(path)?.flags();
    let mut flags = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(st) {
            flags |= ms;
        }
    }
    Ok(flags)
}

/// Bind-mounts `root` on itself, `nodev` and setuid allowed. Blocking.
pub fn mount_rootfs(root: &Path) -> nix::Result<()> {
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    let remount = kept_flags(root).and_then(|kept| {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV | kept;
        mount(None::<&str>, root, None::<&str>, flags, None::<&str>)
    });
    if let Err(e) = remount {
        let _ = umount2(root, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

/// Undoes [`mount_rootfs`] (lazily: the container's processes may still
/// be exiting). Best effort, logged.
pub fn unmount_rootfs(root: &Path) {
    if let Err(e) = umount2(root, MntFlags::MNT_DETACH) {
        tracing::warn!(root = %root.display(), error = %e, "cannot unmount the rootfs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root (CI): a rootfs under a nodev,nosuid mount becomes nodev and
    /// setuid-capable, and is gone after unmounting.
    #[test]
    fn the_rootfs_is_nodev_with_setuid() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it mounts"
        );
        let share = tempfile::tempdir().unwrap();
        let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        mount(
            Some("tmpfs"),
            share.path(),
            Some("tmpfs"),
            flags,
            None::<&str>,
        )
        .unwrap();
        let root = share.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        let mounted = mount_rootfs(&root);
        let got = statvfs(&root).map(|s| s.flags());
        if mounted.is_ok() {
            unmount_rootfs(&root);
        }
        let after = statvfs(&root).map(|s| s.flags());
        umount2(share.path(), MntFlags::MNT_DETACH).unwrap();
        mounted.expect("mount");
        let got = got.unwrap();
        assert!(got.contains(FsFlags::ST_NODEV), "{got:?}");
        assert!(!got.contains(FsFlags::ST_NOSUID), "{got:?}");
        assert!(after.unwrap().contains(FsFlags::ST_NOSUID), "unmounted");
    }
}
