//! A container's root filesystem: a directory shared over virtio-fs,
//! containerd's snapshot mounts made on the host and shared, or a
//! filesystem on a block device or image hot-plugged as a drive and
//! mounted by the agent.

use std::path::{Path, PathBuf};

use capsa_protocols::guest_block_rootfs_path;
use tracing::Instrument;

use super::manager::ContainerAttach;
use super::{block, share, HostMount, Rootfs, BLOCK_FILESYSTEMS};
use crate::Error;

/// Attaches the rootfs of the container of `ctx`; returns the guest's
/// path of it.
pub async fn attach(ctx: &mut ContainerAttach<'_>, rootfs: &Rootfs) -> Result<String, Error> {
    let cid = ctx.cid;
    let (share, guest_root) = ctx.share.container(cid);
    match rootfs {
        Rootfs::Dir(dir) => {
            let _step = crate::step!("rootfs share").entered();
            share::attach_rootfs_dir(&share, dir)?;
            ctx.share.note_rootfs(cid, dir);
            Ok(guest_root)
        }
        Rootfs::Image(image) => {
            let fstype = image_filesystem("rootfs", image)?;
            attach_drive(ctx, image, fstype, &[]).await
        }
        Rootfs::Mounts(mounts) => {
            if let Some(m) = block_rootfs(mounts) {
                if let Some(root) = try_drive(ctx, m).await? {
                    return Ok(root);
                }
            }
            if !ctx.drives.policy().shared_fs {
                return Err(Error::NoSharedFs {
                    what: format!("rootfs {}", describe(rootfs).display()),
                });
            }
            ctx.share
                .attach_rootfs_mounts(cid, mounts)
                .instrument(crate::step!("rootfs share"))
                .await?;
            ctx.share.note_rootfs(cid, &describe(rootfs));
            Ok(guest_root)
        }
    }
}

/// Hot-plugs a rootfs mount (a filesystem on a block device or an
/// image) if block use is on and the device may be given to the
/// guest; `None` when it is to be mounted on the host instead.
async fn try_drive(ctx: &mut ContainerAttach<'_>, m: &HostMount) -> Result<Option<String>, Error> {
    let cid = ctx.cid;
    if !ctx.drives.policy().rootfs {
        tracing::debug!(
            container = cid,
            "block device use is off: rootfs mounted on the host"
        );
        return Ok(None);
    }
    let source = Path::new(&m.source);
    match block::inspect("rootfs", source)? {
        None => return Ok(None),
        Some(found) => {
            if let Err(refusal) = found.check_hotplug() {
                tracing::warn!(container = cid, "rootfs not hot-plugged: {refusal}; it is mounted on the host and shared over virtio-fs");
                return Ok(None);
            }
        }
    }
    let root = attach_drive(ctx, source, &m.typ, &m.options).await?;
    Ok(Some(root))
}

async fn attach_drive(
    ctx: &mut ContainerAttach<'_>,
    source: &Path,
    fstype: &str,
    options: &[String],
) -> Result<String, Error> {
    let read_only = options.iter().any(|o| o == "ro");
    let device = ctx.drives.prepare("rootfs", source, read_only)?;
    let address = block::attach(ctx, "rootfs", &device).await?;
    let mount_point = guest_block_rootfs_path(ctx.cid);
    ctx.attached.storages.push(block::storage(
        device.driver,
        &address,
        fstype,
        block::guest_options(options),
        mount_point.clone(),
    ));
    ctx.share.note_rootfs(ctx.cid, source);
    Ok(mount_point)
}

/// What the record shows as a container's rootfs.
pub(super) fn describe(rootfs: &Rootfs) -> PathBuf {
    match rootfs {
        Rootfs::Dir(p) | Rootfs::Image(p) => p.clone(),
        Rootfs::Mounts(m) => m
            .first()
            .map(|m| m.source.clone().into())
            .unwrap_or_default(),
    }
}

/// The mount of a rootfs that may go to the guest as a drive: a single
/// filesystem mount from an absolute path (a device, or an image with
/// `loop`).
pub(super) fn block_rootfs(mounts: &[HostMount]) -> Option<&HostMount> {
    match mounts {
        [m] if BLOCK_FILESYSTEMS.contains(&m.typ.as_str()) && m.source.starts_with('/') => Some(m),
        _ => None,
    }
}

/// The filesystem of an image given as a rootfs or volume.
pub(super) fn image_filesystem(what: &str, image: &Path) -> Result<&'static str, Error> {
    let found = block::inspect(what, image)?.ok_or_else(|| Error::NotBlock {
        what: what.into(),
        path: image.into(),
    })?;
    found.filesystem().ok_or_else(|| Error::BadSpec {
        what: what.into(),
        reason: format!(
            "{} has no filesystem capsa can mount ({})",
            image.display(),
            BLOCK_FILESYSTEMS.join(", ")
        ),
    })
}

/// Refuses, before a VM boots for it, a rootfs that would share a host
/// system path or hand the guest a disk the host uses.
pub fn check(rootfs: &Rootfs) -> Result<(), Error> {
    match rootfs {
        Rootfs::Dir(dir) => {
            if !dir.is_dir() {
                return Err(Error::Rootfs(dir.clone()));
            }
            share::mount::open(dir, "/")?;
        }
        Rootfs::Image(image) => {
            image_filesystem("rootfs", image)?;
            block::check_drive("rootfs", image)?;
        }
        Rootfs::Mounts(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(typ: &str, source: &str) -> HostMount {
        HostMount {
            typ: typ.into(),
            source: source.into(),
            options: vec![],
        }
    }

    #[test]
    fn only_a_single_filesystem_mount_is_a_block_rootfs() {
        assert!(block_rootfs(&[mount("ext4", "/dev/loop3")]).is_some());
        assert!(block_rootfs(&[mount("xfs", "/var/img")]).is_some());
        assert!(block_rootfs(&[mount("overlay", "overlay")]).is_none());
        assert!(block_rootfs(&[mount("ext4", "relative")]).is_none());
        assert!(block_rootfs(&[mount("ext4", "/a"), mount("ext4", "/b")]).is_none());
        // An empty image's snapshot (overlayfs or native): a bind of a
        // directory, shared, never the disk that directory is on.
        let bind = HostMount {
            options: vec!["rbind".into(), "rw".into()],
            ..mount("bind", "/var/lib/containerd/snapshots/1/fs")
        };
        assert!(block_rootfs(&[bind]).is_none());
    }
}
