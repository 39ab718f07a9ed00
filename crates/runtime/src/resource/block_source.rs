//! What a block source on the host is (a block device or an image file),
//! and whether it may be handed to a guest.
//!
//! A guest that gets a block device writes to it below every cache and
//! lock of the host: a device (or an image) that the host itself uses —
//! a mounted filesystem, a member of a device-mapper or md stack, swap,
//! the disk of `/` — would be corrupted, or would hand the guest the
//! host's data. [`BlockSource::check_hotplug`] refuses those; the host's
//! view of its disks is read in [`usage`].

mod superblock;
mod usage;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub use superblock::filesystem_of;

use crate::resource::share::mount::{Source, SourceError};

/// A block device or a regular image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    Device { major: u32, minor: u32 },
    Image,
}

/// A host block device or image file, inspected.
#[derive(Debug, Clone)]
pub struct BlockSource {
    path: PathBuf,
    kind: BlockKind,
    /// `st_dev` and `st_ino` of an image file (0 for a device).
    file_id: (u64, u64),
}

#[derive(Debug, thiserror::Error)]
pub enum BlockSourceError {
    #[error("inspect {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image file {path}")]
    SystemPath {
        path: PathBuf,
        #[source]
        source: Box<SourceError>,
    },
}

/// Why a source must not be hot-plugged (it would hand a host disk, or
/// one in use on the host, to the guest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} is not given to the guest: {reason}")]
pub struct Refusal {
    pub path: PathBuf,
    pub reason: String,
}

impl BlockSource {
    /// `Some` if `path` is a block device or a regular file, `None` for
    /// anything else (a directory). Symlinks are followed; an image file
    /// below a host system path (`/proc`, `/sys`, `/dev`) is an error.
    pub fn inspect(path: &Path) -> Result<Option<Self>, BlockSourceError> {
        let io = |source| BlockSourceError::Io {
            path: path.into(),
            source,
        };
        let resolved = std::fs::canonicalize(path).map_err(io)?;
        let meta = std::fs::metadata(&resolved).map_err(io)?;
        if meta.file_type().is_block_device() {
            let rdev = meta.rdev();
            let kind = BlockKind::Device {
                major: nix::sys::stat::major(rdev) as u32,
                minor: nix::sys::stat::minor(rdev) as u32,
            };
            return Ok(Some(Self {
                path: resolved,
                kind,
                file_id: (0, 0),
            }));
        }
        if !meta.is_file() {
            return Ok(None);
        }
        // The bind-mount check, for the same reason: no host system file
        // (a /proc/kcore, a /sys attribute) reaches the guest.
        let opened = Source::open(path).map_err(|e| BlockSourceError::SystemPath {
            path: path.into(),
            source: Box::new(e),
        })?;
        Ok(Some(Self {
            path: opened.resolved().to_path_buf(),
            kind: BlockKind::Image,
            file_id: (meta.dev(), meta.ino()),
        }))
    }

    /// The resolved path (what the hypervisor opens).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> &BlockKind {
        &self.kind
    }

    /// The filesystem its superblock shows (`ext4`, `ext3`, `ext2`,
    /// `xfs`), or `None` (raw data, unknown, or unreadable).
    pub fn filesystem(&self) -> Option<&'static str> {
        use std::io::Read;
        let mut head = Vec::with_capacity(superblock::LEN);
        std::fs::File::open(&self.path)
            .and_then(|f| f.take(superblock::LEN as u64).read_to_end(&mut head))
            .ok()?;
        filesystem_of(&head)
    }

    /// Refuses a source that backs a host mount, has holders, is (a
    /// partition of) the disk of the host's `/`, is used as swap, or an
    /// image attached to a loop device in use; a disk is judged with its
    /// partitions, a partition with its disk, a loop device with what it
    /// lies on. When the host's state cannot be read the source is
    /// refused too: nothing is given on a guess.
    pub fn check_hotplug(&self) -> Result<(), Refusal> {
        let refuse = |reason: String| Refusal {
            path: self.path.clone(),
            reason,
        };
        let host = usage::Host::read().map_err(refuse)?;
        let reason = match self.kind {
            BlockKind::Device { major, minor } => host.device_in_use((major, minor), "it"),
            BlockKind::Image => host.image_in_use(&self.path, self.file_id),
        };
        match reason {
            Some(reason) => Err(refuse(reason)),
            None => Ok(()),
        }
    }
}
