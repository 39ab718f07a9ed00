//! Storages: what the host asks the guest to mount (Kata's `Storage`).
//!
//! Drivers handled:
//! - `virtio-fs`: `source` is the virtio-fs tag, mounted with type `virtiofs`;
//! - `local`: a directory is created (`mode=` option, default 0777);
//! - `ephemeral`: a tmpfs is mounted.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::validate::{self, ValidateError};

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
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported storage driver {0:?} (supported: virtio-fs, local, ephemeral)")]
    Driver(String),
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
fn local_mode(options: &[String]) -> Result<u32, StorageError> {
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

/// Does what `storage` asks. Blocking (mount calls).
pub fn add(storage: &StorageSpec) -> Result<Mounted, StorageError> {
    let target = validate::guest_path("storage mount point", &storage.mount_point)?;
    match storage.driver.as_str() {
        "virtio-fs" => {
            if storage.source.is_empty() {
                return Err(StorageError::NoTag);
            }
            let fstype = non_empty(&storage.fstype, "virtiofs");
            mount_fs(&storage.source, &target, fstype, &storage.options)
        }
        "ephemeral" => {
            let fstype = non_empty(&storage.fstype, "tmpfs");
            let source = non_empty(&storage.source, "tmpfs");
            mount_fs(source, &target, fstype, &storage.options)
        }
        "local" => {
            let mode = local_mode(&storage.options)?;
            std::fs::create_dir_all(&target).map_err(|e| StorageError::Mkdir(target.clone(), e))?;
            std::fs::set_permissions(&target, Permissions::from_mode(mode))
                .map_err(|e| StorageError::Mkdir(target.clone(), e))?;
            Ok(Mounted {
                mount_point: target,
                is_mount: false,
            })
        }
        other => Err(StorageError::Driver(other.to_string())),
    }
}

fn non_empty<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    options: &[String],
) -> Result<Mounted, StorageError> {
    std::fs::create_dir_all(target).map_err(|e| StorageError::Mkdir(target.to_path_buf(), e))?;
    let opts = parse_options(options);
    let err = |errno| StorageError::Mount {
        fstype: fstype.to_string(),
        source_name: source.to_string(),
        target: target.to_path_buf(),
        errno,
    };
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    mount(Some(source), target, Some(fstype), opts.flags, data).map_err(err)?;
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(err)?;
    }
    tracing::info!(%source, target = %target.display(), %fstype, "storage mounted");
    Ok(Mounted {
        mount_point: target.to_path_buf(),
        is_mount: true,
    })
}

/// Undoes `add` (lazy unmount; directories are left). Best effort.
pub fn remove(mounted: &Mounted) {
    if !mounted.is_mount {
        return;
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
        let target = dir.path().join("a/b");
        let spec = StorageSpec {
            driver: "local".into(),
            mount_point: target.to_str().unwrap().into(),
            options: opts(&["mode=0700"]),
            ..Default::default()
        };
        let m = add(&spec).unwrap();
        assert!(!m.is_mount);
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        remove(&m);
        assert!(target.is_dir());
    }

    #[test]
    fn bad_storages_are_refused() {
        let base = StorageSpec {
            driver: "virtio-fs".into(),
            mount_point: "/run/x".into(),
            ..Default::default()
        };
        assert!(matches!(add(&base), Err(StorageError::NoTag)));
        let blk = StorageSpec {
            driver: "blk".into(),
            ..base.clone()
        };
        let err = add(&blk).unwrap_err();
        assert!(err.to_string().contains("\"blk\""), "{err}");
        let relative = StorageSpec {
            mount_point: "run/x".into(),
            source: "tag".into(),
            ..base
        };
        assert!(matches!(add(&relative), Err(StorageError::Invalid(_))));
    }
}
