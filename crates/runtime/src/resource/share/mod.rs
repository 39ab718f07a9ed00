//! Directories and files shared with the guest over virtio-fs: a
//! container's share is `<mounts>/<container-id>/` on the host, seen by
//! the guest at `<GUEST_SHARED_DIR>/<container-id>/`, with the rootfs at
//! `rootfs/` and the bind mounts' sources at `mounts/<n>`.

use fs_err as fs;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::HostMount;
use crate::Error;

mod idmap;
mod loopdev;
pub mod mount;
mod overlay;

/// The share of one sandbox: its containers' directories below the
/// sandbox's shared `mounts/` directory.
#[derive(Debug)]
pub struct Share {
    /// `<state>/<id>/mounts`, the host side of the guest's
    /// `GUEST_SHARED_DIR`.
    dir: PathBuf,
    /// What each container's rootfs is on the host (for the record).
    roots: HashMap<String, PathBuf>,
    /// The idmapping of the containers' shares, when the VM's share
    /// server runs unprivileged ([`Share::map_root_to`]).
    root_as: Option<idmap::RootAs>,
    /// Containers' rootfs overlays on idmapped layers, made and not yet
    /// attached: they go on the share once it is covered.
    overlays: HashMap<String, OwnedFd>,
}

impl Share {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            roots: HashMap::new(),
            root_as: None,
            overlays: HashMap::new(),
        }
    }

    /// From now on each container's share is given to the guest idmapped,
    /// host root shown as `uid`/`gid` (see [`idmap`]): for a VM whose share
    /// server runs as them.
    pub fn map_root_to(&mut self, uid: u32, gid: u32) -> Result<(), Error> {
        self.root_as = Some(idmap::RootAs::new(uid, gid)?);
        Ok(())
    }

    /// Once everything of container `container_id` is mounted in its
    /// share: covers the share with its idmapped copy, if the shares are
    /// idmapped and the container has one (a block rootfs may not).
    pub fn idmap_container(&mut self, container_id: &str) -> Result<(), Error> {
        let (dir, _) = self.container(container_id);
        let rootfs = self.overlays.remove(container_id);
        match &self.root_as {
            Some(root_as) if dir.is_dir() => root_as.cover(&dir, rootfs),
            _ => Ok(()),
        }
    }

    /// Makes containerd's snapshot mounts of container `container_id` at
    /// `<share>/rootfs` ([`attach_rootfs_mounts`]). An overlay for an
    /// idmapped share is made on idmapped layers instead, and attached by
    /// [`Share::idmap_container`]; where the kernel refuses that, it is
    /// mounted as for any share (and read-only to an unprivileged server).
    pub async fn attach_rootfs_mounts(
        &mut self,
        container_id: &str,
        mounts: &[HostMount],
    ) -> Result<(), Error> {
        let (dir, _) = self.container(container_id);
        if let (Some(root_as), [m]) = (&self.root_as, mounts) {
            let spec = overlay::OverlaySpec::of(m).map_err(|reason| Error::RootfsMount {
                typ: m.typ.clone(),
                device: m.source.clone(),
                reason,
            })?;
            if let Some(spec) = spec {
                match root_as.overlay(&spec) {
                    Ok(fd) => {
                        fs::create_dir_all(dir.join("rootfs"))?;
                        self.overlays.insert(container_id.to_string(), fd);
                        return Ok(());
                    }
                    Err(reason) => tracing::warn!(
                        container = container_id,
                        %reason,
                        "rootfs overlay not made on idmapped layers (Linux 6.15 or later needed): host root's files in it are read-only to the guest"
                    ),
                }
            }
        }
        attach_rootfs_mounts(&dir, mounts).await
    }

    /// The host directory shared with the guest for container
    /// `container_id` (`<mounts>/<container-id>`), and the guest's path of
    /// its `rootfs` subdirectory. The caller mounts what it needs below it.
    pub fn container(&self, container_id: &str) -> (PathBuf, String) {
        (
            self.dir.join(container_id),
            capsa_protocols::guest_rootfs_path(container_id),
        )
    }

    /// Remembers what the record shows as a container's rootfs.
    pub fn note_rootfs(&mut self, container_id: &str, rootfs: &Path) {
        self.roots
            .insert(container_id.to_string(), rootfs.to_path_buf());
    }

    /// What container `container_id`'s rootfs is on the host.
    pub fn rootfs(&self, container_id: &str) -> Option<&Path> {
        self.roots.get(container_id).map(PathBuf::as_path)
    }

    /// Forgets container `container_id`.
    pub fn forget(&mut self, container_id: &str) {
        self.roots.remove(container_id);
        self.overlays.remove(container_id);
    }

    /// Detaches everything shared for container `container_id` (a rootfs
    /// overlay not yet attached is released).
    pub fn detach_container(&mut self, container_id: &str) -> Result<(), Error> {
        self.overlays.remove(container_id);
        detach(&self.container(container_id).0)
    }
}

/// Attaches the directory `rootfs` at `<share>/rootfs` (checked: a host
/// system path is refused).
pub fn attach_rootfs_dir(share: &Path, rootfs: &Path) -> Result<(), Error> {
    if !rootfs.is_dir() {
        return Err(Error::Rootfs(rootfs.into()));
    }
    let host_root = share.join("rootfs");
    fs::create_dir_all(&host_root)?;
    mount::bind(rootfs, &host_root, false, "/")
}

/// Makes containerd's snapshot mounts at `<share>/rootfs`, `nosuid,nodev`
/// on the host side: what the guest makes there is never a device or a
/// set-id program for the host. (containerd-shim's mount helper handles
/// overlay and bind mounts as containerd's own shims do; an image with the
/// `loop` option gets its loop device here, released when unmounted.)
pub async fn attach_rootfs_mounts(share: &Path, mounts: &[HostMount]) -> Result<(), Error> {
    let host_root = share.join("rootfs");
    fs::create_dir_all(&host_root)?;
    for m in mounts {
        let mut options: Vec<String> = m.options.iter().filter(|o| *o != "loop").cloned().collect();
        options.extend(["nosuid".to_string(), "nodev".to_string()]);
        let (typ, target) = (m.typ.clone(), host_root.clone());
        let looped = m.options.iter().any(|o| o == "loop");
        let source = m.source.clone();
        let made = tokio::task::spawn_blocking(move || {
            let read_only = options.iter().any(|o| o == "ro");
            let device = looped
                .then(|| loopdev::Loop::attach(Path::new(&source), read_only))
                .transpose()
                .map_err(|e| format!("attach a loop device: {e}"))?;
            let source = device
                .as_ref()
                .map_or(source, |d| d.path().display().to_string());
            containerd_shim::mount::mount_rootfs(Some(&typ), Some(&source), &options, &target)
                .map_err(|e| e.to_string())
        })
        .await;
        let failed = match made {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        return Err(Error::RootfsMount {
            typ: m.typ.clone(),
            device: m.source.clone(),
            reason: failed,
        });
    }
    Ok(())
}

/// Attaches a bind mount's `source` at `<share>/mounts/<n>` (checked,
/// read-only if asked); returns the path the guest sees it at.
/// `destination` names the mount in errors.
pub fn attach_source(
    share: &Path,
    guest_share: &Path,
    n: usize,
    source: &Path,
    readonly: bool,
    destination: &str,
) -> Result<String, Error> {
    let rel = Path::new("mounts").join(n.to_string());
    mount::share(source, &share.join(&rel), readonly, destination)?;
    Ok(guest_share.join(rel).display().to_string())
}

/// Detaches everything shared for a container and removes its share.
pub fn detach(share: &Path) -> Result<(), Error> {
    mount::unmount_all_below(share)?;
    if share.exists() && mount::mounts_below(share).is_empty() {
        fs::remove_dir_all(share)?;
    }
    Ok(())
}
