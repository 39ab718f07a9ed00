//! Idmapped share mounts, for a VM whose share server runs as an
//! unprivileged host uid and gid (a driver that jails it,
//! `Vm::host_identity`): what the host mounts for a container (its
//! rootfs, its volumes) is given to the guest through a copy of those
//! mounts idmapped with a user namespace that maps id 0 to that uid and
//! gid. Host root's files are then that uid's for the server, which
//! serves them as their owner (to the guest's root), and what it creates
//! there is host root's on disk, as with a server running as root. Files
//! of other host ids are unmapped in the copy (the overflow id), readable
//! as their modes let anyone, never writable through it.
//!
//! A container image's rootfs (containerd's overlayfs snapshot) cannot be
//! idmapped: it is made on idmapped layers instead ([`super::overlay`]),
//! and attached once the share is covered. A share holding another
//! filesystem that cannot be idmapped (an overlay given as a volume, or
//! made where the kernel refuses idmapped layers) is left as it is, with
//! a log line: host root's files there stay host root's, which the server
//! may read as anyone, not write.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::Error;

/// A user namespace mapping id 0 to one host uid and one host gid.
#[derive(Debug)]
pub struct RootAs {
    userns: OwnedFd,
    uid: u32,
    gid: u32,
}

impl RootAs {
    /// The user namespace, made by a short-lived child that enters it
    /// and is killed once it is opened (the descriptor keeps it).
    pub fn new(uid: u32, gid: u32) -> Result<Self, Error> {
        Ok(Self {
            userns: super::mount::detached::userns_mapping_root_to(uid, gid)?,
            uid,
            gid,
        })
    }

    /// A detached overlay of `spec` on layers idmapped as this share's.
    pub fn overlay(&self, spec: &super::overlay::OverlaySpec) -> Result<OwnedFd, String> {
        super::overlay::make(spec, &self.userns, self.uid, self.gid)
    }

    /// Covers `dir` (a container's share directory) with an idmapped copy
    /// of itself and every mount below it, private, `nosuid,nodev`, then
    /// attaches `rootfs` (a detached overlay on idmapped layers) on its
    /// `rootfs`. The mounts under the copy stay (the share's teardown
    /// detaches both). When a mount below cannot be idmapped (its
    /// filesystem does not support it: overlayfs), nothing is covered, and
    /// the log says so.
    ///
    /// The copy's root is shared, in a peer group of its own: the rootfs
    /// attached on it after it is attached reaches the copies of the
    /// share (the server's), which are its slaves.
    pub fn cover(&self, dir: &Path, rootfs: Option<OwnedFd>) -> Result<(), Error> {
        let err = |step: &str, e: std::io::Error| Error::Mount {
            what: format!(
                "{} (idmapped as uid {} gid {}: {step})",
                dir.display(),
                self.uid,
                self.gid
            ),
            target: dir.into(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
        };
        let source = File::open(dir).map_err(|e| err("open", e))?;
        let tree = super::mount::detached::clone_tree(&OwnedFd::from(source))
            .map_err(|e| err("open_tree", e))?;
        let attach_rootfs = |rootfs: Option<OwnedFd>| match rootfs {
            Some(fd) => super::mount::detached::attach(&fd, &dir.join("rootfs"))
                .map_err(|e| err("move_mount of the rootfs", e)),
            None => Ok(()),
        };
        match super::mount::detached::set_idmap(&tree, &self.userns) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(
                    share = %dir.display(),
                    "not idmapped (a filesystem in it cannot be): host root's files there are read-only to the guest"
                );
                return attach_rootfs(rootfs);
            }
            Err(e) => return Err(err("mount_setattr", e)),
        }
        if rootfs.is_some() {
            super::mount::detached::set_shared(&tree).map_err(|e| err("mount_setattr", e))?;
        }
        super::mount::detached::attach(&tree, dir).map_err(|e| err("move_mount", e))?;
        attach_rootfs(rootfs)
    }
}
