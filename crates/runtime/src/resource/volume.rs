//! A container's mounts and devices, from a spec that names host paths:
//! a bind shared over virtio-fs, a filesystem on a block device or image
//! hot-plugged (a volume), `/dev/shm` a guest tmpfs, the rest the guest's
//! own; each block device of `linux.devices` hot-plugged (renumbered by
//! the agent). `capsa run -v` volumes become such mounts and devices
//! ([`add_volume`]).

use std::path::{Path, PathBuf};

use capsa_protocols::guest_block_volume_path;
use oci_spec::runtime::{
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, Mount, MountBuilder, Spec,
};

use super::manager::ContainerAttach;
use super::{block, rootfs, share, BlockKind, Rootfs, BLOCK_FILESYSTEMS};
use crate::spec::Volume;
use crate::Error;

/// One mount of the spec, attached for the container of `ctx`; returns
/// it as the guest sees it.
pub async fn attach_mount(
    ctx: &mut ContainerAttach<'_>,
    n: usize,
    m: Mount,
) -> Result<Mount, Error> {
    let options = m.options().clone().unwrap_or_default();
    let readonly = options.iter().any(|o| o == "ro");
    let destination = m.destination().display().to_string();
    let volume = match block_bind_source(&m) {
        Some(source) => Some((source.clone(), bound_filesystem(&destination, &source)?)),
        None => block_volume_source(&m).map(|s| (s, m.typ().clone().unwrap_or_default())),
    };
    if volume.is_none() && is_bind(&m) {
        if m.destination() == Path::new("/dev/shm") {
            return guest_shm();
        }
        let Some(source) = m.source().clone() else {
            return Ok(m);
        };
        let (share, guest_root) = ctx.share.container(ctx.cid);
        let guest_share = Path::new(&guest_root).parent().unwrap_or(Path::new("/"));
        let guest_source =
            share::attach_source(&share, guest_share, n, &source, readonly, &destination)?;
        let mut shared = m;
        shared.set_source(Some(guest_source.into()));
        return Ok(shared);
    }
    let Some((source, fstype)) = volume else {
        return Ok(m);
    };
    let what = format!("mount {destination}");
    let device = ctx.drives.prepare(&what, &source, readonly)?;
    let address = block::attach(ctx, &format!("volume {destination}"), &device).await?;
    let mount_point = guest_block_volume_path(&device.id);
    ctx.attached.storages.push(block::storage(
        device.driver,
        &address,
        &fstype,
        block::guest_options(&options),
        mount_point.clone(),
    ));
    let mode = if readonly { "ro" } else { "rw" };
    Ok(MountBuilder::default()
        .destination(m.destination())
        .typ("bind")
        .source(mount_point)
        .options(vec!["rbind".to_string(), mode.to_string()])
        .build()?)
}

/// Hot-plugs the host block devices of `linux.devices`; the agent
/// gives each the guest's numbers.
pub async fn attach_devices(ctx: &mut ContainerAttach<'_>, spec: &Spec) -> Result<(), Error> {
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for d in devices.iter().filter(|d| d.typ() == LinuxDeviceType::B) {
        let path = d.path().display().to_string();
        let what = format!("device {path}");
        let host = block::host_device_path(d.major(), d.minor())?;
        let device = ctx.drives.prepare(&what, &host, false)?;
        let address = block::attach(ctx, &what, &device).await?;
        ctx.attached
            .devices
            .push(block::device(device.driver, &address, &path));
    }
    Ok(())
}

/// The host source of a filesystem mount that is a block volume: a
/// block device or an image file on the host.
fn block_volume_source(m: &Mount) -> Option<PathBuf> {
    let typ = m.typ().as_deref()?;
    let source = m.source().as_ref()?;
    let is_file_or_device = source.is_absolute()
        && std::fs::metadata(source)
            .map(|meta| {
                use std::os::unix::fs::FileTypeExt;
                meta.file_type().is_block_device() || meta.is_file()
            })
            .unwrap_or(false);
    (BLOCK_FILESYSTEMS.contains(&typ) && is_file_or_device).then(|| source.clone())
}

/// The host block device a bind mount names (what CRI makes of a
/// Kubernetes filesystem volume whose `hostPath` is a device): it is
/// hot-plugged and its filesystem mounted in the guest, never shared
/// over virtio-fs (a device node is no directory to share, and `/dev` is
/// a host system path).
fn block_bind_source(m: &Mount) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let source = m.source().as_ref()?;
    let is_device = std::fs::metadata(source)
        .map(|meta| meta.file_type().is_block_device())
        .unwrap_or(false);
    (is_bind(m) && source.is_absolute() && is_device).then(|| source.clone())
}

/// The filesystem on a block device bound at `destination`; one capsa
/// cannot mount is an error naming the mount (a raw device belongs in
/// `linux.devices`).
fn bound_filesystem(destination: &str, device: &Path) -> Result<String, Error> {
    let what = format!("mount {destination}");
    let found = block::inspect(&what, device)?.ok_or_else(|| Error::NotBlock {
        what: what.clone(),
        path: device.into(),
    })?;
    let fstype = found.filesystem().ok_or_else(|| Error::BadSpec {
        what,
        reason: format!(
            "{} has no filesystem capsa can mount ({}); give a raw device as a device, not a mount",
            device.display(),
            BLOCK_FILESYSTEMS.join(", ")
        ),
    })?;
    Ok(fstype.to_string())
}

/// Whether `m` is a bind mount (a host path), not a mount the guest makes.
pub fn is_bind(m: &Mount) -> bool {
    let options = m.options().as_deref().unwrap_or_default();
    m.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// The sandbox's `/dev/shm` is the guest's own tmpfs.
fn guest_shm() -> Result<Mount, Error> {
    Ok(MountBuilder::default()
        .destination("/dev/shm")
        .typ("tmpfs")
        .source("shm")
        .options(vec![
            "nosuid".into(),
            "noexec".into(),
            "nodev".into(),
            "mode=1777".into(),
        ])
        .build()?)
}

/// Refuses, before a VM boots for it, a container whose rootfs or mounts
/// would share a host system path or hand the guest a disk the host uses
/// (each is checked again when it is attached). containerd's binds
/// (`/etc/hosts`, `resolv.conf`, the sandbox's `/dev/shm`) and guest
/// mounts (`proc`, `sysfs`, `tmpfs`, ...) pass.
pub fn check_sources(rootfs: &Rootfs, spec: &Spec) -> Result<(), Error> {
    rootfs::check(rootfs)?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let destination = m.destination().display().to_string();
        if let Some(device) = block_bind_source(m) {
            bound_filesystem(&destination, &device)?;
            block::check_drive(&format!("mount {destination}"), &device)?;
        } else if is_bind(m) && m.destination() != Path::new("/dev/shm") {
            if let Some(source) = m.source() {
                share::mount::open(source, &destination)?;
            }
        } else if let Some(source) = block_volume_source(m) {
            block::check_drive(&format!("mount {destination}"), &source)?;
        }
    }
    Ok(())
}

/// Adds a `capsa run -v` volume to a spec with host paths: a directory
/// or an ordinary file is a bind mount (shared over virtio-fs); a block
/// device or image file with a filesystem is a filesystem mount (a
/// drive, mounted in the guest); a block device without a filesystem
/// appears in the container as a device node at the destination.
pub fn add_volume(spec: &mut Spec, volume: &Volume) -> Result<(), Error> {
    let what = format!("volume {}", volume.destination);
    let mode = if volume.readonly { "ro" } else { "rw" };
    let found = block::inspect(&what, &volume.source)?;
    let (fs, device) = match &found {
        Some(f) => (
            f.filesystem(),
            match f.kind() {
                BlockKind::Device { major, minor } => Some((*major, *minor)),
                BlockKind::Image => None,
            },
        ),
        None => (None, None),
    };
    let mount = match (fs, device) {
        (Some(fstype), _) => MountBuilder::default()
            .destination(&volume.destination)
            .typ(fstype)
            .source(
                found
                    .as_ref()
                    .map(|f| f.path().to_path_buf())
                    .unwrap_or_default(),
            )
            .options(vec![mode.to_string()])
            .build()?,
        (None, Some((major, minor))) => return add_raw_device(spec, volume, major, minor),
        (None, None) => MountBuilder::default()
            .destination(&volume.destination)
            .typ("bind")
            .source(&volume.source)
            .options(vec!["rbind".to_string(), mode.to_string()])
            .build()?,
    };
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// A raw block device in `linux.devices` at the volume's destination,
/// allowed by the device cgroup (`rw`, or `r` when read-only).
fn add_raw_device(spec: &mut Spec, volume: &Volume, major: u32, minor: u32) -> Result<(), Error> {
    let (major, minor) = (i64::from(major), i64::from(minor));
    let device = LinuxDeviceBuilder::default()
        .path(&volume.destination)
        .typ(LinuxDeviceType::B)
        .major(major)
        .minor(minor)
        .file_mode(0o660u32)
        .uid(0u32)
        .gid(0u32)
        .build()?;
    let access = if volume.readonly { "r" } else { "rwm" };
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::B)
        .major(major)
        .minor(minor)
        .access(access)
        .build()?;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.push(device);
    linux.set_devices(Some(devices));
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    rules.push(rule);
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    Ok(())
}

/// Refuses, before a VM boots for it, a container that needs the shared
/// filesystem when the configuration has none (`shared_fs = "none"`): a
/// directory rootfs, a rootfs mounted on the host, a bind of a host path.
pub fn check_shared_fs(
    rootfs: &Rootfs,
    spec: &Spec,
    config: &capsa_config::Config,
) -> Result<(), Error> {
    needs_no_share(rootfs, spec, crate::vm::block_policy(config))
}

/// [`check_shared_fs`] under the sandbox's block policy.
pub fn needs_no_share(
    rootfs: &Rootfs,
    spec: &Spec,
    policy: super::BlockPolicy,
) -> Result<(), Error> {
    if policy.shared_fs {
        return Ok(());
    }
    let what = match rootfs {
        Rootfs::Dir(dir) => Some(format!("rootfs {} (a directory)", dir.display())),
        Rootfs::Mounts(m) if !(policy.rootfs && rootfs::block_rootfs(m).is_some()) => {
            Some(format!("rootfs {}", rootfs::describe(rootfs).display()))
        }
        Rootfs::Image(_) | Rootfs::Mounts(_) => None,
    };
    let bind = || {
        spec.mounts()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| {
                is_bind(m)
                    && m.destination() != Path::new("/dev/shm")
                    && block_bind_source(m).is_none()
            })
    };
    match what.or_else(|| bind().map(|m| format!("mount {}", m.destination().display()))) {
        Some(what) => Err(Error::NoSharedFs { what }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mounts_and_binds_are_not_block_volumes() {
        let m = |typ: &str, source: &str| {
            MountBuilder::default()
                .destination("/x")
                .typ(typ)
                .source(source)
                .build()
                .unwrap()
        };
        assert!(block_volume_source(&m("proc", "proc")).is_none());
        assert!(block_volume_source(&m("ext4", "/nonexistent-capsa")).is_none());
        // A directory is no drive.
        assert!(block_volume_source(&m("ext4", "/")).is_none());
        assert!(is_bind(&m("bind", "/etc/hosts")));
        assert!(block_bind_source(&m("bind", "/etc/hosts")).is_none());
        assert!(block_bind_source(&m("bind", "/")).is_none());
    }
}
