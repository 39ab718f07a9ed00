//! What the host does with its block devices: mounts (`mountinfo`), swap
//! (`/proc/swaps`), holders and partitions (sysfs), loop devices and
//! their backing files. Read once per check into [`Host`], whose
//! questions are answered from that snapshot (and from a sysfs tree that
//! a unit test can fake).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use procfs_core::process::MountInfos;
use procfs_core::FromRead;

type Dev = (u32, u32);

/// A host mount, by the devices it lies on.
#[derive(Debug, Clone)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
    /// `st_dev` of its files and, when its source is a device node, that
    /// node's device (they differ on btrfs and for some stacked
    /// filesystems).
    pub devs: Vec<Dev>,
}

/// A swap area in `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    Device(Dev),
    /// A swap file, by `st_dev` and `st_ino`.
    File(u64, u64),
}

/// A snapshot of the host's use of its block devices.
#[derive(Debug, Clone)]
pub struct Host {
    /// sysfs's root (`/sys`).
    pub sys: PathBuf,
    pub mounts: Vec<Mount>,
    pub swaps: Vec<Swap>,
    /// The devices of the host's `/`.
    pub root: Vec<Dev>,
}

/// One device of a disk family (the disk and its partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    dev: Dev,
    name: String,
    /// sysfs directory (holders/ lies in it).
    dir: PathBuf,
    is_partition: bool,
}

impl Host {
    /// Reads the host's state; an error (a sentence) when part of it
    /// cannot be read.
    pub fn read() -> Result<Self, String> {
        let info = std::fs::read("/proc/self/mountinfo")
            .map_err(|e| format!("the host's mounts cannot be read (/proc/self/mountinfo: {e})"))?;
        let mounts = parse_mounts(&info)?;
        let swaps = std::fs::read_to_string("/proc/swaps")
            .map_err(|e| format!("the host's swap cannot be read (/proc/swaps: {e})"))?;
        let swaps = swap_paths(&swaps).filter_map(|p| swap_of(&p)).collect();
        let mut root: Vec<Dev> = mounts
            .iter()
            .filter(|m| m.point == Path::new("/"))
            .flat_map(|m| m.devs.clone())
            .collect();
        if let Ok(meta) = std::fs::metadata("/") {
            root.push(split_dev(meta.dev()));
        }
        Ok(Self {
            sys: PathBuf::from("/sys"),
            mounts,
            swaps,
            root,
        })
    }

    /// Why device `dev` (or a disk or partition of its family, or what a
    /// loop device lies on) must not go to a guest, as a sentence about
    /// `subject` ("it").
    pub fn device_in_use(&self, dev: Dev, subject: &str) -> Option<String> {
        self.device(dev, subject, &mut Vec::new())
    }

    /// Why image file `path` (`st_dev`, `st_ino` = `id`) must not go to a
    /// guest: it is swap, or a loop device over it is in use.
    pub fn image_in_use(&self, path: &Path, id: (u64, u64)) -> Option<String> {
        self.image(path, id, "it", &mut Vec::new())
    }

    /// [`Self::device_in_use`]; `seen` holds the devices being checked
    /// further up (a loop device's file leads back to its other loops).
    fn device(&self, dev: Dev, subject: &str, seen: &mut Vec<Dev>) -> Option<String> {
        seen.push(dev);
        let family = self.family(dev);
        let whose = |m: &Member| -> String {
            if m.dev == dev {
                subject.to_string()
            } else if m.is_partition {
                format!("{subject} has a partition /dev/{} that", m.name)
            } else {
                format!("{subject} is a partition of /dev/{}, which", m.name)
            }
        };
        if let Some(m) = family.iter().find(|m| self.root.contains(&m.dev)) {
            return Some(format!("{} holds the host's root filesystem /", whose(m)));
        }
        for m in &family {
            if let Some(mount) = self.mounts.iter().find(|mt| mt.devs.contains(&m.dev)) {
                return Some(format!(
                    "{} backs the host mount {} ({})",
                    whose(m),
                    mount.point.display(),
                    mount.fstype
                ));
            }
        }
        for m in &family {
            let holders = names_in(&m.dir.join("holders"));
            if !holders.is_empty() {
                return Some(format!("{} is held by {}", whose(m), holders.join(", ")));
            }
        }
        if let Some(m) = family
            .iter()
            .find(|m| self.swaps.contains(&Swap::Device(m.dev)))
        {
            return Some(format!("{} is in use as the host's swap", whose(m)));
        }
        // A loop device is what it lies on: a host disk, or a file that
        // another loop device, in use, lies on too.
        for m in &family {
            let Some(backing) = backing_file(&m.dir) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(&backing) else {
                continue; // deleted: nobody else can reach it
            };
            let over = format!(
                "{} is a loop device over {}, which",
                whose(m),
                backing.display()
            );
            let reason = if meta.file_type().is_block_device() {
                let lower = split_dev(meta.rdev());
                (!seen.contains(&lower))
                    .then(|| self.device(lower, &over, seen))
                    .flatten()
            } else {
                self.image(&backing, (meta.dev(), meta.ino()), &over, seen)
            };
            if reason.is_some() {
                return reason;
            }
        }
        None
    }

    /// [`Self::image_in_use`] as a sentence about `subject`.
    fn image(
        &self,
        path: &Path,
        id: (u64, u64),
        subject: &str,
        seen: &mut Vec<Dev>,
    ) -> Option<String> {
        if self.swaps.contains(&Swap::File(id.0, id.1)) {
            return Some(format!("{subject} is in use as the host's swap file"));
        }
        for (loop_dev, name) in self.loops_over(path, id) {
            if seen.contains(&loop_dev) {
                continue;
            }
            let that = format!("{subject} is attached to /dev/{name}, and that device");
            if let Some(reason) = self.device(loop_dev, &that, seen) {
                return Some(reason);
            }
        }
        None
    }

    /// The loop devices whose backing file is `path`: the same inode (its
    /// backing path still leads to it) or, failing that, the same path.
    fn loops_over(&self, path: &Path, id: (u64, u64)) -> Vec<(Dev, String)> {
        let mut found = Vec::new();
        for name in names_in(&self.sys.join("block")) {
            if !name.starts_with("loop") {
                continue;
            }
            let dir = self.sys.join("block").join(&name);
            let Some(backing) = backing_file(&dir) else {
                continue; // not attached
            };
            let same_inode = std::fs::metadata(&backing)
                .map(|m| (m.dev(), m.ino()) == id)
                .unwrap_or(false);
            if !(same_inode || backing == path) {
                continue;
            }
            if let Some(dev) = read_dev(&dir) {
                found.push((dev, name));
            }
        }
        found
    }

    /// `dev` and what shares its blocks: a disk's partitions, a
    /// partition's whole disk (not its sibling partitions, whose blocks
    /// are their own). Just `dev` when sysfs does not know it.
    fn family(&self, dev: Dev) -> Vec<Member> {
        let link = self.sys.join(format!("dev/block/{}:{}", dev.0, dev.1));
        let Ok(dir) = std::fs::canonicalize(&link) else {
            return vec![Member {
                dev,
                name: format!("{}:{}", dev.0, dev.1),
                dir: link,
                is_partition: false,
            }];
        };
        let mut family = Vec::new();
        if dir.join("partition").exists() {
            family.extend(member(&dir, true));
            family.extend(dir.parent().and_then(|disk| member(disk, false)));
        } else {
            family.extend(member(&dir, false));
            for name in names_in(&dir) {
                let sub = dir.join(&name);
                if sub.join("partition").exists() {
                    family.extend(member(&sub, true));
                }
            }
        }
        if !family.iter().any(|m| m.dev == dev) {
            family.push(Member {
                dev,
                name: format!("{}:{}", dev.0, dev.1),
                dir: link,
                is_partition: false,
            });
        }
        family
    }
}

fn member(dir: &Path, is_partition: bool) -> Option<Member> {
    Some(Member {
        dev: read_dev(dir)?,
        name: dir.file_name()?.to_string_lossy().into_owned(),
        dir: dir.to_path_buf(),
        is_partition,
    })
}

/// The backing file of the loop device whose sysfs directory is `dir`
/// (`None` if it is no attached loop device).
fn backing_file(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join("loop/backing_file")).ok()?;
    let text = text.trim_end_matches('\n');
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

/// A sysfs block directory's `dev` file (`MAJOR:MINOR`).
fn read_dev(dir: &Path) -> Option<Dev> {
    parse_dev(std::fs::read_to_string(dir.join("dev")).ok()?.trim())
}

fn parse_dev(text: &str) -> Option<Dev> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn split_dev(dev: u64) -> Dev {
    (
        nix::sys::stat::major(dev) as u32,
        nix::sys::stat::minor(dev) as u32,
    )
}

/// The entries of a directory, sorted (none if it cannot be read).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The mounts of `info` (a mountinfo), each with its devices: its
/// `st_dev` and, for a source that is a device node, the node's device.
pub fn parse_mounts(info: &[u8]) -> Result<Vec<Mount>, String> {
    let infos = MountInfos::from_read(info)
        .map_err(|e| format!("the host's mounts cannot be parsed (mountinfo: {e})"))?;
    Ok(infos
        .into_iter()
        .map(|m| {
            let mut devs: Vec<Dev> = parse_dev(&m.majmin).into_iter().collect();
            let source = m
                .mount_source
                .as_deref()
                .map(crate::resource::share::mount::unescape);
            if let Some(dev) = source.as_deref().and_then(device_node) {
                devs.push(dev);
            }
            Mount {
                point: PathBuf::from(crate::resource::share::mount::unescape(
                    &m.mount_point.to_string_lossy(),
                )),
                fstype: m.fs_type,
                devs,
            }
        })
        .collect())
}

/// The device of `source` if it is an absolute path to a block device.
fn device_node(source: &str) -> Option<Dev> {
    if !source.starts_with('/') {
        return None;
    }
    let meta = std::fs::metadata(source).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| split_dev(meta.rdev()))
}

/// The paths of `/proc/swaps` (its first column; `\040`-escaped, past
/// the header line).
fn swap_paths(text: &str) -> impl Iterator<Item = PathBuf> + '_ {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| PathBuf::from(crate::resource::share::mount::unescape(p)))
}

fn swap_of(path: &Path) -> Option<Swap> {
    let meta = std::fs::metadata(path).ok()?;
    Some(if meta.file_type().is_block_device() {
        Swap::Device(split_dev(meta.rdev()))
    } else {
        Swap::File(meta.dev(), meta.ino())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: disk `sda` (8:0) with partitions `sda1` (8:1) and
    /// `sda2` (8:2), `loop0` (7:0) over `backing`, `vdb` (254:16) alone.
    fn fake_sys(backing: &Path) -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let dev = |dir: &Path, d: &str| {
            std::fs::create_dir_all(dir.join("holders")).unwrap();
            std::fs::write(dir.join("dev"), format!("{d}\n")).unwrap();
        };
        let link = |d: &str, target: &Path| {
            std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
            std::os::unix::fs::symlink(target, sys.path().join("dev/block").join(d)).unwrap();
        };
        let sda = sys.path().join("devices/pci/block/sda");
        dev(&sda, "8:0");
        link("8:0", &sda);
        for (n, d) in [("sda1", "8:1"), ("sda2", "8:2")] {
            dev(&sda.join(n), d);
            std::fs::write(sda.join(n).join("partition"), "1\n").unwrap();
            link(d, &sda.join(n));
        }
        let loop0 = sys.path().join("devices/virtual/block/loop0");
        dev(&loop0, "7:0");
        std::fs::create_dir_all(loop0.join("loop")).unwrap();
        std::fs::write(
            loop0.join("loop/backing_file"),
            format!("{}\n", backing.display()),
        )
        .unwrap();
        link("7:0", &loop0);
        let vdb = sys.path().join("devices/pci/block/vdb");
        dev(&vdb, "254:16");
        link("254:16", &vdb);
        std::fs::create_dir_all(sys.path().join("block")).unwrap();
        for (n, target) in [("sda", &sda), ("loop0", &loop0), ("vdb", &vdb)] {
            std::os::unix::fs::symlink(target, sys.path().join("block").join(n)).unwrap();
        }
        sys
    }

    /// An image file, the fake sysfs whose loop0 lies on it, and a host
    /// with [`MOUNTS`] on that sysfs (keep the first two alive).
    fn fixture() -> (tempfile::NamedTempFile, tempfile::TempDir, Host) {
        let img = tempfile::NamedTempFile::new().unwrap();
        let sys = fake_sys(img.path());
        let h = host(sys.path(), MOUNTS);
        (img, sys, h)
    }

    fn host(sys: &Path, mounts: &str) -> Host {
        Host {
            sys: sys.into(),
            mounts: parse_mounts(mounts.as_bytes()).unwrap(),
            swaps: Vec::new(),
            root: vec![(254, 0)],
        }
    }

    const MOUNTS: &str = "\
27 1 254:0 / / rw,relatime - ext4 /nonexistent/vda rw
40 27 8:2 / /var/lib/a\\040b rw,relatime - ext4 /nonexistent/sda2 rw
41 27 0:50 / /srv/pool rw,relatime - btrfs /nonexistent/vdc rw
";

    #[test]
    fn a_mounted_partition_refuses_its_disk_and_a_mounted_disk_its_partitions() {
        let (_img, _sys, mut h) = fixture();
        assert_eq!(
            h.device_in_use((8, 2), "it").unwrap(),
            "it backs the host mount /var/lib/a b (ext4)"
        );
        assert_eq!(
            h.device_in_use((8, 0), "it").unwrap(),
            "it has a partition /dev/sda2 that backs the host mount /var/lib/a b (ext4)"
        );
        // A sibling partition has blocks of its own.
        assert_eq!(h.device_in_use((8, 1), "it"), None);
        h.mounts = parse_mounts(b"50 1 8:0 / /whole rw - ext2 /nonexistent/sda rw").unwrap();
        assert_eq!(
            h.device_in_use((8, 1), "it").unwrap(),
            "it is a partition of /dev/sda, which backs the host mount /whole (ext2)"
        );
        assert_eq!(h.device_in_use((254, 16), "it"), None);
    }

    #[test]
    fn the_root_device_holders_and_swap() {
        let (_img, sys, mut h) = fixture();
        assert_eq!(
            h.device_in_use((254, 0), "it").unwrap(),
            "it holds the host's root filesystem /"
        );
        let holder = sys.path().join("devices/pci/block/sda/sda1/holders/dm-0");
        std::fs::create_dir(&holder).unwrap();
        h.mounts.clear();
        assert_eq!(
            h.device_in_use((8, 0), "it").unwrap(),
            "it has a partition /dev/sda1 that is held by dm-0"
        );
        std::fs::remove_dir(&holder).unwrap();
        assert_eq!(h.device_in_use((8, 0), "it"), None);
        h.swaps.push(Swap::Device((254, 16)));
        assert_eq!(
            h.device_in_use((254, 16), "it").unwrap(),
            "it is in use as the host's swap"
        );
    }

    #[test]
    fn an_image_behind_a_busy_loop_device_is_refused() {
        let (img, _sys, mut h) = fixture();
        let meta = std::fs::metadata(img.path()).unwrap();
        let id = (meta.dev(), meta.ino());
        assert_eq!(h.image_in_use(img.path(), id), None);
        h.mounts = parse_mounts(b"50 27 7:0 / /mnt/img rw - ext4 /nonexistent/loop0 rw").unwrap();
        assert_eq!(
            h.image_in_use(img.path(), id).unwrap(),
            "it is attached to /dev/loop0, and that device backs the host mount /mnt/img (ext4)"
        );
        // Another file, even one whose path the loop does not name.
        let other = tempfile::NamedTempFile::new().unwrap();
        let m = std::fs::metadata(other.path()).unwrap();
        assert_eq!(h.image_in_use(other.path(), (m.dev(), m.ino())), None);
        h.swaps.push(Swap::File(m.dev(), m.ino()));
        assert_eq!(
            h.image_in_use(other.path(), (m.dev(), m.ino())).unwrap(),
            "it is in use as the host's swap file"
        );
    }

    #[test]
    fn swaps_and_mount_sources() {
        let text = "Filename\tType\tSize\tUsed\tPriority\n/dev/zram0 partition 8 0 100\n/swap\\040file file 8 0 -2\n";
        let paths: Vec<PathBuf> = swap_paths(text).collect();
        assert_eq!(
            paths,
            [PathBuf::from("/dev/zram0"), PathBuf::from("/swap file")]
        );
        // A source that is a device node adds that node's device.
        let m = parse_mounts(b"1 0 0:99 / /x rw - btrfs /dev/null rw").unwrap();
        assert_eq!(m[0].devs, vec![(0, 99)]); // /dev/null is no block device
        assert!(parse_mounts(b"garbage").is_err());
    }
}
