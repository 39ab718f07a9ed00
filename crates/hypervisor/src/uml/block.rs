//! Disks: UML's own block driver (`ubd`, `arch/um/drivers/ubd_kern.c`),
//! hot-plugged through the management console: `config ubdN[r]d=FILE`
//! opens FILE in the kernel process and adds the disk `/dev/ubdX` (X the
//! letter of N), `remove ubdN` takes it away once the guest has closed it
//! (the console answers an error while it is open). `d`: the file is the
//! disk's data, never read as a COW header; `r`: read-only, for the
//! kernel's open as well as the guest.
//!
//! The kernel opens FILE itself, as the jail's uid, inside its jail: each
//! disk is bound on `<run_dir>/disks/<id>`, in a small tmpfs bound into
//! the kernel's jail at the same path with the mounts made below it
//! later. An image file's bind is idmapped (host root shown as the jail's
//! uid, as the share is), so a root-owned image is the jail's to open; a
//! block device (devtmpfs cannot be idmapped) gets a node of its own,
//! owned by the jail's uid, bound there. Nothing else of the host is
//! reachable. The guest finds the disk by its kernel name
//! ([`GuestAddress::Node`]).

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::mconsole::Mconsole;
use crate::jail::Identity;
use crate::{mountapi, AttachedBlock, BlockDevice, Error, GuestAddress};

/// The disks' directory, in the run directory.
pub const DISKS_DIR: &str = "disks";
/// ubd's `MAX_DEV`.
const MAX_DISKS: usize = 16;
/// Between two `remove` tries while the guest still holds the disk.
const REMOVE_RETRY: Duration = Duration::from_millis(50);

/// One disk plugged.
struct Disk {
    index: usize,
    bind: PathBuf,
    block: AttachedBlock,
}

/// The disks of one UML VM.
#[derive(Default)]
pub struct Disks {
    /// `<run_dir>/disks`, once made.
    dir: Option<PathBuf>,
    /// The idmapping of the disks' binds (root as the jail's uid).
    userns: Option<OwnedFd>,
    plugged: Vec<Disk>,
}

fn hotplug_error(device: &str, reason: impl std::fmt::Display) -> Error {
    Error::Hotplug {
        device: device.to_string(),
        reason: reason.to_string(),
    }
}

/// `ubda` for disk 0: the guest's name of disk `index`.
pub fn guest_name(index: usize) -> String {
    format!("ubd{}", (b'a' + index as u8) as char)
}

/// The management console's command that plugs disk `index` from `file`.
pub fn config_command(index: usize, file: &Path, read_only: bool) -> String {
    let ro = if read_only { "r" } else { "" };
    format!("config ubd{index}{ro}d={}", file.display())
}

impl Disks {
    /// Makes `<run_dir>/disks`, a small tmpfs (root's, searchable by
    /// the jail) to be bound into the kernel's jail before it starts,
    /// shared in a peer group of its own, so that the disks bound below
    /// it later reach the jail's copy (a slave of it).
    pub fn make_dir(&mut self, run_dir: &Path) -> Result<PathBuf, Error> {
        use nix::mount::{mount, MsFlags};
        let dir = run_dir.join(DISKS_DIR);
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        super::remove_all(&dir);
        std::fs::create_dir(&dir)?;
        self.dir = Some(dir.clone());
        let none = None::<&str>;
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("size=64k,mode=0711"),
        )
        .map_err(std::io::Error::from)?;
        for flags in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
            mount(none, &dir, none, flags, none).map_err(std::io::Error::from)?;
        }
        Ok(dir)
    }

    pub fn attached(&self) -> Vec<AttachedBlock> {
        self.plugged.iter().map(|d| d.block.clone()).collect()
    }

    /// Plugs `device` through `console`, the bind made as `id`'s.
    pub async fn attach(
        &mut self,
        console: &Mconsole,
        id: Identity,
        device: &BlockDevice,
        limit: Duration,
    ) -> Result<GuestAddress, Error> {
        crate::qemu::block::validate_id(&device.id)?;
        let name = &device.id;
        if self.plugged.iter().any(|d| &d.block.device.id == name) {
            return Err(hotplug_error(name, "a drive with this id is attached"));
        }
        let index = (0..MAX_DISKS)
            .find(|i| self.plugged.iter().all(|d| d.index != *i))
            .ok_or_else(|| hotplug_error(name, format!("all {MAX_DISKS} ubd disks are in use")))?;
        let dir = self
            .dir
            .clone()
            .ok_or_else(|| hotplug_error(name, "the VM is not running"))?;
        if self.userns.is_none() {
            let ns = mountapi::userns_mapping_root_to(id.uid, id.gid)
                .map_err(|e| hotplug_error(name, e))?;
            self.userns = Some(ns);
        }
        let userns = self.userns.as_ref().expect("made above");
        let bind = dir.join(name);
        bind_disk(&device.path, &bind, userns, id, device.read_only)
            .map_err(|e| hotplug_error(name, e))?;
        let command = config_command(index, &bind, device.read_only);
        let answered = console.command(&command, limit).await;
        let failed = match answered {
            Ok(reply) if !reply.error => None,
            Ok(reply) => Some(format!("{command:?}: {}", reply.text)),
            Err(e) => Some(format!("{command:?}: {e}")),
        };
        if let Some(reason) = failed {
            unbind(&bind);
            return Err(hotplug_error(name, reason));
        }
        let address = GuestAddress::Node {
            name: guest_name(index),
        };
        self.plugged.push(Disk {
            index,
            bind,
            block: AttachedBlock {
                device: device.clone(),
                address: address.clone(),
            },
        });
        Ok(address)
    }

    /// Unplugs disk `id` once the guest has closed it (bounded by
    /// `limit`), then removes its bind.
    pub async fn detach(
        &mut self,
        console: &Mconsole,
        id: &str,
        limit: Duration,
    ) -> Result<(), Error> {
        let at = self
            .plugged
            .iter()
            .position(|d| d.block.device.id == id)
            .ok_or_else(|| hotplug_error(id, "no drive with this id is attached"))?;
        let command = format!("remove ubd{}", self.plugged[at].index);
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = console
                .command(&command, left.max(REMOVE_RETRY))
                .await
                .map_err(|e| hotplug_error(id, format!("{command:?}: {e}")))?;
            if !reply.error {
                break;
            }
            // "Device is currently open": the guest still uses it.
            if Instant::now() >= deadline {
                return Err(hotplug_error(
                    id,
                    format!("{command:?}: {} (after {limit:?})", reply.text),
                ));
            }
            sleep(REMOVE_RETRY).await;
        }
        let disk = self.plugged.remove(at);
        unbind(&disk.bind);
        Ok(())
    }

    /// Removes every bind and the directory (the VM is gone).
    pub fn clear(&mut self) {
        for disk in self.plugged.drain(..) {
            unbind(&disk.bind);
        }
        if let Some(dir) = self.dir.take() {
            match nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "disks' directory not unmounted")
                }
            }
            super::remove_all(&dir);
        }
        self.userns = None;
    }
}

impl Drop for Disks {
    /// A VM dropped without a shutdown (its owner failed) leaves no bind.
    fn drop(&mut self) {
        self.clear();
    }
}

/// Binds `source` on `bind` (made empty) for the jail's uid: an image
/// file through an idmapped bind (read-only if asked); a block device
/// (devtmpfs cannot be idmapped) through a node of its own owned by
/// `id`, mode 0600 (0400 if read-only), made beside it (`.<name>`) and
/// bound on it: the directory is `nodev` in the jail, the bind is not.
fn bind_disk(
    source: &Path,
    bind: &Path,
    userns: &OwnedFd,
    id: Identity,
    read_only: bool,
) -> std::io::Result<()> {
    let meta = std::fs::metadata(source)?;
    let device = meta.file_type().is_block_device();
    if !device && !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is neither a file nor a block device", source.display()),
        ));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(bind)?;
    let attached = if device {
        bind_node(meta.rdev(), bind, id, read_only)
    } else {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(source)?;
        mountapi::clone_mount(&OwnedFd::from(opened))
            .and_then(|tree| {
                mountapi::set_idmap_disk(&tree, userns, read_only, false)?;
                Ok(tree)
            })
            .and_then(|tree| mountapi::attach(&tree, bind))
    };
    if let Err(e) = attached {
        let _ = std::fs::remove_file(bind);
        return Err(e);
    }
    Ok(())
}

/// The node of a block device's bind: `.<name>` beside it.
fn node_of(bind: &Path) -> PathBuf {
    let name = bind.file_name().unwrap_or_default().to_string_lossy();
    bind.with_file_name(format!(".{name}"))
}

/// Makes block device `rdev`'s node for `id` and binds it on `bind`.
fn bind_node(rdev: u64, bind: &Path, id: Identity, read_only: bool) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sys::stat::{mknod, Mode, SFlag};
    let node = node_of(bind);
    let mode = Mode::from_bits_truncate(if read_only { 0o400 } else { 0o600 });
    mknod(&node, SFlag::S_IFBLK, mode, rdev).map_err(std::io::Error::from)?;
    let made = std::os::unix::fs::chown(&node, Some(id.uid), Some(id.gid)).and_then(|()| {
        mount(
            Some(&node),
            bind,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&node);
    }
    made
}

/// Detaches and removes a disk's bind (and its node, for a device).
fn unbind(bind: &Path) {
    if let Err(e) = nix::mount::umount2(bind, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(bind = %bind.display(), error = %e, "disk bind not unmounted");
    }
    if let Err(e) = std::fs::remove_file(bind) {
        tracing::warn!(bind = %bind.display(), error = %e, "disk bind not removed");
    }
    super::remove_all(&node_of(bind));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_named_and_configured_as_ubd_wants() {
        assert_eq!(guest_name(0), "ubda");
        assert_eq!(guest_name(15), "ubdp");
        let p = Path::new("/run/capsa/p/disks/drive1");
        assert_eq!(
            config_command(1, p, false),
            "config ubd1d=/run/capsa/p/disks/drive1"
        );
        assert_eq!(
            config_command(0, p, true),
            "config ubd0rd=/run/capsa/p/disks/drive1"
        );
    }
}
