//! Storages: what the host asks the guest to mount (Kata's `Storage`).
//!
//! Drivers handled:
//! - `virtio-fs`: `source` is the virtio-fs tag, mounted with type `virtiofs`;
//! - `local`: a directory is created (`mode=` option, default 0777), as
//!   Kata's `/run/kata-containers/sandbox/local/<name>`;
//! - `ephemeral`: a tmpfs is mounted (options such as `size=` go to tmpfs);
//! - `blk` and `scsi`: a hot-plugged disk, `source` its PCI path or SCSI
//!   address (see [`crate::device`]), is waited for and its filesystem
//!   (`fstype`, required) mounted with the storage's options (`ro`
//!   included). A container rootfs on such a disk gets its own mount like
//!   one in the share (see `container::rootfs`); a block volume is then
//!   bind-mounted by the container's OCI mount.
//!
//! Mounts are always `nodev` and `nosuid`, whatever the options say: the
//! share holds what the host and every container wrote, so a device node
//! or a setuid file there must not work in the guest (as Kata mounts it
//! `nodev`). A container's rootfs in the share gets its own mount, where
//! setuid works again (see `container::rootfs`).
//!
//! Every mount point must be below the sandbox directory [`STORAGE_ROOT`]
//! (`/run/kata-containers`): it is checked lexically, then created and
//! opened with [`Beneath`], so a symbolic link on the way (the shared
//! directory is writable by the host and the containers) cannot move a
//! mount elsewhere; the mount is done on the opened directory
//! (`/proc/self/fd/N`), not on the path again.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use capsa_protocols::{DRIVER_BLK, DRIVER_MMIO_BLK, DRIVER_SCSI};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fchmod, Mode};

use crate::device::{self, DeviceError};
use crate::validate::{self, Beneath, ConfineError, ValidateError};

/// The directory every storage mount point must be below.
pub const STORAGE_ROOT: &str = "/run/kata-containers";
/// What a mount point is called in errors.
const KIND: &str = "storage mount point";

/// A storage request, independent of the wire format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageSpec {
    pub driver: String,
    pub source: String,
    pub fstype: String,
    pub options: Vec<String>,
    pub mount_point: String,
}

/// What was done for one storage, to undo it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub mount_point: PathBuf,
    /// `false` for `local` storages (a directory, nothing mounted).
    pub is_mount: bool,
    /// The node of a hot-plugged disk (`blk`, `scsi`): its filesystem is
    /// synced before it is unmounted, so the host may unplug it at once.
    pub device: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "unsupported storage driver {0:?} (supported: virtio-fs, local, ephemeral, blk, scsi)"
    )]
    Driver(String),
    #[error("storage of driver {0} has no fstype")]
    NoFstype(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("invalid storage")]
    Invalid(#[from] ValidateError),
    #[error("storage of driver virtio-fs has no source (the virtio-fs tag)")]
    NoTag,
    #[error("invalid mode option {0:?}")]
    Mode(String),
    #[error("cannot create {0}")]
    Mkdir(PathBuf, #[source] std::io::Error),
    #[error("cannot mount {fstype} {source_name:?} on {target}")]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        #[source]
        errno: nix::Error,
    },
}

/// Mount options split into flags, propagation flags and filesystem data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: String,
}

/// Splits `options` (as in `mount -o`) into flags and data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (set, clear, propagation) = match opt {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            "defaults" => (MsFlags::empty(), MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other);
                continue;
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
        out.propagation.insert(propagation);
    }
    out.data = data.join(",");
    out
}

/// Mode of a `local` storage: its `mode=` option (octal), 0777 by default.
pub fn local_mode(options: &[String]) -> Result<u32, StorageError> {
    match options
        .iter()
        .flat_map(|o| o.split(','))
        .find_map(|o| o.strip_prefix("mode="))
    {
        None => Ok(0o777),
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| StorageError::Mode(m.to_string())),
    }
}

/// Does what `storage` asks, below [`STORAGE_ROOT`]. Blocking (mount
/// calls).
pub fn add(storage: &StorageSpec) -> Result<Mounted, StorageError> {
    add_below(Path::new(STORAGE_ROOT), storage)
}

/// Does what `storage` asks, its mount point confined below `root`.
pub fn add_below(root: &Path, storage: &StorageSpec) -> Result<Mounted, StorageError> {
    let rel = validate::relative_below(KIND, root, &storage.mount_point)?;
    let target = root.join(&rel);
    let (source, fstype) = match storage.driver.as_str() {
        "virtio-fs" => {
            if storage.source.is_empty() {
                return Err(StorageError::NoTag);
            }
            (
                storage.source.as_str(),
                non_empty(&storage.fstype, "virtiofs"),
            )
        }
        "ephemeral" => (
            non_empty(&storage.source, "tmpfs"),
            non_empty(&storage.fstype, "tmpfs"),
        ),
        "local" => {
            let mode = local_mode(&storage.options)?;
            let dir = confined_dir(root, &rel, &storage.mount_point)?;
            fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(|e| StorageError::Mkdir(target.clone(), e.into()))?;
            tracing::info!(target = %target.display(), mode = format!("{mode:o}"), "local storage");
            return Ok(Mounted {
                mount_point: target,
                is_mount: false,
                device: None,
            });
        }
        driver @ (DRIVER_BLK | DRIVER_SCSI | DRIVER_MMIO_BLK) => {
            if storage.fstype.is_empty() {
                return Err(StorageError::NoFstype(driver.to_string()));
            }
            let source = device::Source::parse(driver, &storage.source)?;
            let block = device::System::guest().wait(&source, device::hotplug_timeout())?;
            let dir = confined_dir(root, &rel, &storage.mount_point)?;
            let node = block.node.to_string_lossy();
            let mounted = mount_fs(&node, &dir, &target, &storage.fstype, &storage.options)?;
            return Ok(Mounted {
                device: Some(block.node),
                ..mounted
            });
        }
        other => return Err(StorageError::Driver(other.to_string())),
    };
    let dir = confined_dir(root, &rel, &storage.mount_point)?;
    mount_fs(source, &dir, &target, fstype, &storage.options)
}

/// Creates (mode 0755) and opens the mount point `rel` below `root`.
fn confined_dir(root: &Path, rel: &Path, mount_point: &str) -> Result<OwnedFd, StorageError> {
    let mode = Mode::from_bits_truncate(0o755);
    // The root is the agent's own (a constant), not the request's.
    std::fs::create_dir_all(root).map_err(|e| StorageError::Mkdir(root.to_path_buf(), e))?;
    let beneath =
        Beneath::open(KIND, root, mount_point).and_then(|b| b.make_dirs(rel, mode, (None, None)));
    beneath.map_err(|e| match e {
        ConfineError::Invalid(e) => StorageError::Invalid(e),
        ConfineError::Sys(e) => StorageError::Mkdir(e.path, e.errno.into()),
    })
}

fn non_empty<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// Flags every storage mount gets, whatever its options.
const ENFORCED: MsFlags = MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID);

/// Mounts on the directory `dir` (opened at `target`), always with
/// [`ENFORCED`] flags.
fn mount_fs(
    source: &str,
    dir: &OwnedFd,
    target: &Path,
    fstype: &str,
    options: &[String],
) -> Result<Mounted, StorageError> {
    let opts = parse_options(options);
    let err = |errno| StorageError::Mount {
        fstype: fstype.to_string(),
        source_name: source.to_string(),
        target: target.to_path_buf(),
        errno,
    };
    let at = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let flags = opts.flags | ENFORCED;
    mount(Some(source), at.as_str(), Some(fstype), flags, data).map_err(err)?;
    if !opts.propagation.is_empty() {
        let propagated = mount(
            None::<&str>,
            target,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        );
        if let Err(errno) = propagated {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(err(errno));
        }
    }
    tracing::info!(%source, target = %target.display(), %fstype, "storage mounted");
    Ok(Mounted {
        mount_point: target.to_path_buf(),
        is_mount: true,
        device: None,
    })
}

/// Undoes `add` (lazy unmount; directories are left). Best effort.
///
/// A disk's filesystem is synced first: the lazy unmount lets it live
/// while something still holds it, and the host unplugs the disk when the
/// container is gone.
pub fn remove(mounted: &Mounted) {
    if !mounted.is_mount {
        return;
    }
    if let Some(device) = &mounted.device {
        let synced = std::fs::File::open(&mounted.mount_point)
            .and_then(|dir| nix::unistd::syncfs(dir.as_raw_fd()).map_err(std::io::Error::from));
        if let Err(e) = synced {
            let target = mounted.mount_point.display();
            tracing::warn!(%target, device = %device.display(), error = %e, "cannot sync before unmounting");
        }
    }
    match umount2(&mounted.mount_point, MntFlags::MNT_DETACH) {
        Ok(()) => tracing::info!(target = %mounted.mount_point.display(), "storage unmounted"),
        Err(e) => {
            tracing::warn!(target = %mounted.mount_point.display(), error = %e, "cannot unmount")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_become_flags_and_data() {
        let o = parse_options(&opts(&[
            "ro",
            "nosuid,nodev",
            "size=64m",
            "mode=1777",
            "rprivate",
        ]));
        assert_eq!(
            o.flags,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, "size=64m,mode=1777");
    }

    #[test]
    fn later_options_win() {
        let o = parse_options(&opts(&["ro", "rw", "noexec", "exec", "defaults"]));
        assert_eq!(o.flags, MsFlags::empty());
        assert_eq!(o.data, "");
    }

    #[test]
    fn local_modes() {
        assert_eq!(local_mode(&[]).unwrap(), 0o777);
        assert_eq!(local_mode(&opts(&["mode=0750"])).unwrap(), 0o750);
        assert!(matches!(
            local_mode(&opts(&["mode=9"])),
            Err(StorageError::Mode(_))
        ));
        assert!(matches!(
            local_mode(&opts(&["mode=77777"])),
            Err(StorageError::Mode(_))
        ));
    }

    #[test]
    fn local_storage_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sandbox/local/vol");
        let spec = StorageSpec {
            driver: "local".into(),
            source: "local".into(),
            mount_point: target.to_str().unwrap().into(),
            options: opts(&["mode=0700"]),
            ..Default::default()
        };
        let m = add_below(dir.path(), &spec).unwrap();
        assert!(!m.is_mount);
        assert_eq!(m.mount_point, target);
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        remove(&m);
        assert!(target.is_dir());
    }

    /// As root (CI): a tmpfs storage is nodev and nosuid even when its
    /// options ask for `dev,suid`.
    #[test]
    fn mounts_are_nodev_and_nosuid() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it mounts"
        );
        let root = tempfile::tempdir().unwrap();
        let storage = StorageSpec {
            driver: "ephemeral".into(),
            options: opts(&["dev,suid", "size=1m"]),
            mount_point: root.path().join("e").to_str().unwrap().into(),
            ..Default::default()
        };
        let m = add_below(root.path(), &storage).expect("mount");
        let flags = nix::sys::statvfs::statvfs(&m.mount_point).unwrap().flags();
        remove(&m);
        use nix::sys::statvfs::FsFlags;
        assert!(
            flags.contains(FsFlags::ST_NODEV | FsFlags::ST_NOSUID),
            "{flags:?}"
        );
    }

    #[test]
    fn a_missing_root_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run/kata-containers");
        let fd = confined_dir(&root, Path::new("shared/containers"), "/m").unwrap();
        drop(fd);
        assert!(root.join("shared/containers").is_dir());
    }

    #[test]
    fn mount_points_stay_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("shared")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("shared/evil")).unwrap();
        let local = |mp: String| StorageSpec {
            driver: "local".into(),
            mount_point: mp,
            ..Default::default()
        };
        let through_link = format!("{}/shared/evil/vol", root.display());
        let err = add_below(&root, &local(through_link.clone())).unwrap_err();
        assert_eq!(
            crate::error::chain(&err),
            format!(
                "invalid storage: storage mount point {through_link:?} escapes {} \
                 (through a symbolic link)",
                root.display()
            )
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let err = add_below(&root, &local("/etc/x".into())).unwrap_err();
        assert_eq!(
            crate::error::chain(&err),
            format!(
                "invalid storage: storage mount point \"/etc/x\" is not below {}",
                root.display()
            )
        );
        let err = add(&local("/run/kata-containers".into())).unwrap_err();
        assert!(matches!(
            err,
            StorageError::Invalid(ValidateError::NotBelow { .. })
        ));
        let ephemeral = StorageSpec {
            driver: "ephemeral".into(),
            ..local(format!("{}/../x", root.display()))
        };
        assert!(matches!(
            add_below(&root, &ephemeral),
            Err(StorageError::Invalid(ValidateError::ParentComponent { .. }))
        ));
    }

    #[test]
    fn bad_storages_are_refused() {
        let base = StorageSpec {
            driver: "virtio-fs".into(),
            mount_point: "/run/kata-containers/x".into(),
            ..Default::default()
        };
        assert!(matches!(add(&base), Err(StorageError::NoTag)));
        let nvdimm = StorageSpec {
            driver: "nvdimm".into(),
            ..base.clone()
        };
        let err = add(&nvdimm).unwrap_err();
        assert!(err.to_string().contains("\"nvdimm\""), "{err}");
        let blk = StorageSpec {
            driver: "blk".into(),
            source: "02/00".into(),
            ..base.clone()
        };
        let err = add(&blk).unwrap_err();
        assert_eq!(err.to_string(), "storage of driver blk has no fstype");
        let scsi = StorageSpec {
            driver: "scsi".into(),
            source: "02/00".into(),
            fstype: "ext4".into(),
            ..base.clone()
        };
        let err = add(&scsi).unwrap_err();
        assert_eq!(err.to_string(), "invalid SCSI address \"02/00\"");
        let relative = StorageSpec {
            mount_point: "run/x".into(),
            source: "tag".into(),
            ..base
        };
        assert!(matches!(add(&relative), Err(StorageError::Invalid(_))));
    }
}
