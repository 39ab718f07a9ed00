//! What a block source on the host is (a block device or an image file),
//! and whether it may be handed to a guest.

use std::path::{Path, PathBuf};

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
}

#[derive(Debug, thiserror::Error)]
pub enum BlockSourceError {
    #[error("inspect {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    /// anything else (a directory).
    pub fn inspect(path: &Path) -> Result<Option<Self>, BlockSourceError> {
        let _ = path;
        todo!("h-host")
    }

    /// The resolved path (what the hypervisor opens).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> &BlockKind {
        &self.kind
    }

    /// The filesystem its superblock shows (`ext4`, `ext3`, `ext2`,
    /// `xfs`), or `None` (raw data, or unknown).
    pub fn filesystem(&self) -> Option<&'static str> {
        todo!("h-host")
    }

    /// Refuses a source that backs a host mount, has holders, is (a
    /// partition of) the disk of the host's `/`, is used as swap, or an
    /// image attached to a loop device in use.
    pub fn check_hotplug(&self) -> Result<(), Refusal> {
        todo!("h-host")
    }
}
