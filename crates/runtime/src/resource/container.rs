//! A container's resources, from a spec that names host paths to the
//! agent's `CreateContainer`: the rootfs (shared, mounted on the host and
//! shared, or hot-plugged), each mount (a bind shared over virtio-fs, a
//! filesystem on a block device or image hot-plugged, `/dev/shm` a guest
//! tmpfs, the rest the guest's own), each block device of
//! `linux.devices` (hot-plugged, renumbered by the agent). Used by
//! `capsa run` and by the shim alike.

use std::path::{Path, PathBuf};

use capsa_hypervisor::{BlockDevice, GuestAddress};
use capsa_protocols::{agent, guest_block_rootfs_path, guest_block_volume_path};
use oci_spec::runtime::{
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, Mount, MountBuilder, Spec,
};
use tracing::Instrument;

use super::sizing::Limits;
use super::{block, share, BlockKind, HostMount, Rootfs, BLOCK_FILESYSTEMS};
use crate::record::DeviceRecord;
use crate::spec::Volume;
use crate::{mount, Error, Sandbox};

/// What the agent gets besides the spec.
#[derive(Default)]
struct Attached {
    storages: Vec<agent::Storage>,
    devices: Vec<agent::Device>,
}

impl Sandbox {
    /// Creates container `cid` from `spec`, whose mounts and devices name
    /// host paths, with `rootfs` as its root: attaches each resource,
    /// points the spec at the guest's paths, and creates the container.
    /// On error, what was attached for it is detached again.
    pub async fn create_container_from(
        &mut self,
        cid: &str,
        rootfs: &Rootfs,
        spec: Spec,
    ) -> Result<(), Error> {
        self.create_container_steps(cid, rootfs, spec)
            .instrument(crate::step!("container create"))
            .await
    }

    async fn create_container_steps(
        &mut self,
        cid: &str,
        rootfs: &Rootfs,
        mut spec: Spec,
    ) -> Result<(), Error> {
        needs_no_share(rootfs, &spec, self.block_policy())?;
        let limits = Limits::of(spec.linux().as_ref().and_then(|l| l.resources().as_ref()));
        let sized = self
            .size_for(cid, limits)
            .instrument(crate::step!("resize"))
            .await;
        if let Err(e) = sized {
            self.unsize(cid).await;
            return Err(e);
        }
        let mut attached = Attached::default();
        let made = self
            .attach_container(cid, rootfs, &mut spec, &mut attached)
            .instrument(crate::step!("attach resources"))
            .await;
        let created = match made {
            Ok(()) => {
                let (storages, devices) = (attached.storages, attached.devices);
                self.create_container_request(cid, &spec, storages, devices)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            self.detach_container(cid).await;
            self.unsize(cid).await;
            return Err(e);
        }
        Ok(())
    }

    async fn attach_container(
        &mut self,
        cid: &str,
        rootfs: &Rootfs,
        spec: &mut Spec,
        attached: &mut Attached,
    ) -> Result<(), Error> {
        let guest_root = self.attach_rootfs(cid, rootfs, attached).await?;
        if let Some(root) = spec.root_mut() {
            root.set_path(PathBuf::from(guest_root));
        }
        default_path(spec);
        let mounts = spec.mounts().clone().unwrap_or_default();
        let mut out = Vec::with_capacity(mounts.len());
        for (n, m) in mounts.into_iter().enumerate() {
            out.push(self.attach_mount(cid, n, m, attached).await?);
        }
        spec.set_mounts(Some(out));
        self.attach_devices(cid, spec, attached).await
    }

    /// Attaches the rootfs; returns the guest's path of it.
    async fn attach_rootfs(
        &mut self,
        cid: &str,
        rootfs: &Rootfs,
        attached: &mut Attached,
    ) -> Result<String, Error> {
        let (share, guest_root) = self.container_share(cid);
        match rootfs {
            Rootfs::Dir(dir) => {
                let _step = crate::step!("rootfs share").entered();
                share::attach_rootfs_dir(&share, dir)?;
                self.note_rootfs(cid, dir);
                Ok(guest_root)
            }
            Rootfs::Image(image) => {
                let fstype = image_filesystem("rootfs", image)?;
                self.attach_rootfs_drive(cid, image, fstype, &[], attached)
                    .await
            }
            Rootfs::Mounts(mounts) => {
                if let Some(m) = block_rootfs(mounts) {
                    if let Some(root) = self.try_rootfs_drive(cid, m, attached).await? {
                        return Ok(root);
                    }
                }
                if !self.block_policy().shared_fs {
                    return Err(Error::NoSharedFs {
                        what: format!("rootfs {}", describe(rootfs).display()),
                    });
                }
                share::attach_rootfs_mounts(&share, mounts)
                    .instrument(crate::step!("rootfs share"))
                    .await?;
                self.note_rootfs(cid, &describe(rootfs));
                Ok(guest_root)
            }
        }
    }

    /// Hot-plugs a rootfs mount (a filesystem on a block device or an
    /// image) if block use is on and the device may be given to the
    /// guest; `None` when it is to be mounted on the host instead.
    async fn try_rootfs_drive(
        &mut self,
        cid: &str,
        m: &HostMount,
        attached: &mut Attached,
    ) -> Result<Option<String>, Error> {
        if !self.block_policy().rootfs {
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
        let root = self
            .attach_rootfs_drive(cid, source, &m.typ, &m.options, attached)
            .await?;
        Ok(Some(root))
    }

    async fn attach_rootfs_drive(
        &mut self,
        cid: &str,
        source: &Path,
        fstype: &str,
        options: &[String],
        attached: &mut Attached,
    ) -> Result<String, Error> {
        let read_only = options.iter().any(|o| o == "ro");
        let device = self.prepare_drive("rootfs", source, read_only)?;
        let address = self.attach_drive(cid, "rootfs", &device).await?;
        let mount_point = guest_block_rootfs_path(cid);
        attached.storages.push(block::storage(
            device.driver,
            &address,
            fstype,
            block::guest_options(options),
            mount_point.clone(),
        ));
        self.note_rootfs(cid, source);
        Ok(mount_point)
    }

    /// One mount of the spec, attached; returns it as the guest sees it.
    async fn attach_mount(
        &mut self,
        cid: &str,
        n: usize,
        m: Mount,
        attached: &mut Attached,
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
            let (share, guest_root) = self.container_share(cid);
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
        let device = self.prepare_drive(&what, &source, readonly)?;
        let address = self
            .attach_drive(cid, &format!("volume {destination}"), &device)
            .await?;
        let mount_point = guest_block_volume_path(&device.id);
        attached.storages.push(block::storage(
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
    async fn attach_devices(
        &mut self,
        cid: &str,
        spec: &Spec,
        attached: &mut Attached,
    ) -> Result<(), Error> {
        let devices = spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().clone())
            .unwrap_or_default();
        for d in devices.iter().filter(|d| d.typ() == LinuxDeviceType::B) {
            let path = d.path().display().to_string();
            let what = format!("device {path}");
            let host = block::host_device_path(d.major(), d.minor())?;
            let device = self.prepare_drive(&what, &host, false)?;
            let address = self.attach_drive(cid, &what, &device).await?;
            attached
                .devices
                .push(block::device(device.driver, &address, &path));
        }
        Ok(())
    }

    fn prepare_drive(
        &mut self,
        what: &str,
        source: &Path,
        read_only: bool,
    ) -> Result<BlockDevice, Error> {
        let id = self.next_drive_id();
        block::prepare(what, source, read_only, id, self.block_policy().driver)
    }

    /// Hot-plugs `device` for container `cid` (`role` says what for) and
    /// records it.
    async fn attach_drive(
        &mut self,
        cid: &str,
        role: &str,
        device: &BlockDevice,
    ) -> Result<GuestAddress, Error> {
        let attached = self
            .attach_block(device)
            .instrument(crate::step!("drive hot-plug"))
            .await;
        let address = attached.map_err(|e| match e {
            Error::Vm(source) => Error::Hotplug {
                what: role.into(),
                source,
            },
            other => other,
        })?;
        tracing::info!(container = cid, drive = %device.id, source = %device.path.display(), %address, role, "drive hot-plugged");
        let record = DeviceRecord {
            id: device.id.clone(),
            container: cid.into(),
            role: role.into(),
            source: device.path.clone(),
            driver: device.driver.to_string(),
            guest_address: address.to_string(),
            read_only: device.read_only,
        };
        self.update_record(|r| r.devices.push(record));
        Ok(address)
    }

    /// Detaches what was attached for container `cid` (its drives, once
    /// the guest let go of them, and its share); failures are logged and
    /// the first returned.
    pub(crate) async fn detach_container(&mut self, cid: &str) -> Option<Error> {
        let mut first = None;
        let drives: Vec<String> = self
            .record()
            .devices
            .iter()
            .filter(|d| d.container == cid)
            .map(|d| d.id.clone())
            .collect();
        for id in drives {
            match self.detach_block(&id).await {
                Ok(()) => {
                    tracing::info!(container = cid, drive = %id, "drive unplugged");
                    self.update_record(|r| r.devices.retain(|d| d.id != id));
                }
                Err(e) => {
                    tracing::warn!(container = cid, drive = %id, error = %crate::error_chain(&e), "drive not unplugged");
                    first.get_or_insert(e);
                }
            }
        }
        let (share, _) = self.container_share(cid);
        if let Err(e) = share::detach(&share) {
            first.get_or_insert(e);
        }
        first
    }
}

/// What the record shows as a container's rootfs.
fn describe(rootfs: &Rootfs) -> PathBuf {
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
fn block_rootfs(mounts: &[HostMount]) -> Option<&HostMount> {
    match mounts {
        [m] if BLOCK_FILESYSTEMS.contains(&m.typ.as_str()) && m.source.starts_with('/') => Some(m),
        _ => None,
    }
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

/// The filesystem of an image given as a rootfs or volume.
fn image_filesystem(what: &str, image: &Path) -> Result<&'static str, Error> {
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

/// runc looks commands up in a default PATH when the spec has none
/// (`ctr run --rootfs` gives none); libcontainer does not: add it.
fn default_path(spec: &mut Spec) {
    const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    if let Some(process) = spec.process_mut() {
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.into());
            process.set_env(Some(env));
        }
    }
}

/// Refuses, before a VM boots for it, a container whose rootfs or mounts
/// would share a host system path or hand the guest a disk the host uses
/// (each is checked again when it is attached). containerd's binds
/// (`/etc/hosts`, `resolv.conf`, the sandbox's `/dev/shm`) and guest
/// mounts (`proc`, `sysfs`, `tmpfs`, ...) pass.
pub fn check_sources(rootfs: &Rootfs, spec: &Spec) -> Result<(), Error> {
    match rootfs {
        Rootfs::Dir(dir) => {
            if !dir.is_dir() {
                return Err(Error::Rootfs(dir.clone()));
            }
            mount::open(dir, "/")?;
        }
        Rootfs::Image(image) => {
            image_filesystem("rootfs", image)?;
            check_drive("rootfs", image)?;
        }
        Rootfs::Mounts(_) => {}
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let destination = m.destination().display().to_string();
        if let Some(device) = block_bind_source(m) {
            bound_filesystem(&destination, &device)?;
            check_drive(&format!("mount {destination}"), &device)?;
        } else if is_bind(m) && m.destination() != Path::new("/dev/shm") {
            if let Some(source) = m.source() {
                mount::open(source, &destination)?;
            }
        } else if let Some(source) = block_volume_source(m) {
            check_drive(&format!("mount {destination}"), &source)?;
        }
    }
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

fn needs_no_share(rootfs: &Rootfs, spec: &Spec, policy: super::BlockPolicy) -> Result<(), Error> {
    if policy.shared_fs {
        return Ok(());
    }
    let what = match rootfs {
        Rootfs::Dir(dir) => Some(format!("rootfs {} (a directory)", dir.display())),
        Rootfs::Mounts(m) if !(policy.rootfs && block_rootfs(m).is_some()) => {
            Some(format!("rootfs {}", describe(rootfs).display()))
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

fn check_drive(what: &str, source: &Path) -> Result<(), Error> {
    let found = block::inspect(what, source)?.ok_or_else(|| Error::NotBlock {
        what: what.into(),
        path: source.into(),
    })?;
    found.check_hotplug().map_err(|refusal| Error::Refused {
        what: what.into(),
        refusal,
    })
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
