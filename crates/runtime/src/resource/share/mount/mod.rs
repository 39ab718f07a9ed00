//! Host mounts made for a sandbox: bind mounts into its shared directory.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::Error;

pub mod source;

pub use source::{Source, SourceError};

/// Bind-mounts `source` (with its submounts) on `target` (which must
/// exist), read-only if asked, `nosuid,nodev`, private so nothing
/// propagates back to the host. The source is opened and checked first
/// ([`Source::open`]): a host system path is refused, with an error that
/// names `mount`, the mount being shared (its destination).
///
/// The mount is finished before it becomes visible: `target` usually
/// lies in a shared tree (the sandbox's `mounts/`) whose copies (the
/// guest's read-only view, virtiofsd's namespace) receive a copy of it
/// the moment it is attached, and later flag changes do not reach those
/// copies. So the tree is cloned detached (`open_tree` on the checked
/// fd), its flags and propagation set (`mount_setattr`, recursively) and
/// only then attached (`move_mount`).
pub fn bind(source: &Path, target: &Path, readonly: bool, mount: &str) -> Result<(), Error> {
    bind_source(&open(source, mount)?, target, readonly)
}

/// [`Source::open`], its error naming `mount`.
pub fn open(source: &Path, mount: &str) -> Result<Source, Error> {
    Source::open(source).map_err(|e| Error::BindSource {
        mount: mount.into(),
        path: source.into(),
        source: Box::new(e),
    })
}

/// Shares a bind mount's `source` at `target`, a path in a sandbox's
/// `mounts/` tree that does not exist yet: checks the source as [`bind`]
/// does, then creates `target` as a directory or an empty file to match
/// it, and binds it there. `mount` names the mount in errors.
pub fn share(source: &Path, target: &Path, readonly: bool, mount: &str) -> Result<(), Error> {
    let opened = open(source, mount)?;
    let made = if opened.is_dir() {
        fs_err::create_dir_all(target)
    } else {
        let parent = target.parent().unwrap_or(target);
        fs_err::create_dir_all(parent).and_then(|()| fs_err::write(target, b""))
    };
    made?;
    bind_source(&opened, target, readonly)
}

/// Bind-mounts an opened [`Source`] on `target`, as [`bind`] does.
pub fn bind_source(source: &Source, target: &Path, readonly: bool) -> Result<(), Error> {
    let err = |step: &str, e: std::io::Error| Error::Mount {
        what: format!("{} ({step})", source.resolved().display()),
        target: target.into(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
    };
    let tree = detached::clone_tree(source.fd()).map_err(|e| err("open_tree", e))?;
    detached::set_attr(&tree, readonly).map_err(|e| err("mount_setattr", e))?;
    detached::attach(&tree, target).map_err(|e| err("move_mount", e))
}

/// The new mount API (`capsa_hypervisor::mountapi`).
pub(crate) use capsa_hypervisor::mountapi as detached;

fn mount_err(source: &Path, target: &Path, e: nix::Error) -> Error {
    Error::Mount {
        what: source.display().to_string(),
        target: target.into(),
        source: e,
    }
}

/// Bind-mounts `dir` on itself with shared propagation, so that mounts made
/// below it later also appear in the mount namespace of virtiofsd, which
/// takes a slave copy of the host's mounts when it starts.
pub fn make_shared_mount(dir: &Path) -> Result<(), Error> {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| mount_err(dir, dir, e))?;
    // Private first, so the mount leaves the peer group of its parent (the
    // host's `/run` is usually shared): then shared, in a peer group of
    // its own. Mounts below it never propagate back to the host.
    for flags in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
        if let Err(e) = mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
            return Err(mount_err(dir, dir, e));
        }
    }
    Ok(())
}

/// Binds `source` (a shared mount point) on `view`, read-only, `nosuid`,
/// `nodev`, as a slave
/// of `source`'s peer group, itself shared: mounts made below `source`
/// appear below `view` (with their own flags, so a read-write rootfs
/// stays writable) and in copies of the mount namespace taken later
/// (virtiofsd's); nothing made below `view` goes back.
pub fn read_only_view(source: &Path, view: &Path) -> Result<(), Error> {
    mount(
        Some(source),
        view,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| mount_err(source, view, e))?;
    let steps = [
        MsFlags::MS_SLAVE,
        MsFlags::MS_SHARED,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
    ];
    for flags in steps {
        if let Err(e) = mount(None::<&str>, view, None::<&str>, flags, None::<&str>) {
            let _ = umount2(view, MntFlags::MNT_DETACH);
            return Err(mount_err(source, view, e));
        }
    }
    Ok(())
}

/// Detaches the mount on `target`; a target that is not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), Error> {
    // Never through a symlink: paths below a sandbox's share may be
    // renamed or replaced by the guest.
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::Mount {
            what: "unmount".into(),
            target: target.into(),
            source: e,
        }),
    }
}

/// Detaches every mount at or below `dir`, shallowest first: detaching a
/// mount takes its whole subtree along, so the paths used are the host's
/// own mount points (`mounts/`, `shared/`, `<id>/rootfs`), not paths
/// inside a tree the guest can rearrange.
pub fn unmount_all_below(dir: &Path) -> Result<(), Error> {
    let mut left = mounts_below(dir);
    // Stop when nothing is left or a round made no progress (the caller
    // finds what could not be detached).
    while let Some(top) = left.last().cloned() {
        unmount(&top)?;
        let now = mounts_below(dir);
        if now.len() >= left.len() {
            return Ok(());
        }
        left = now;
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mounts_below(&info, dir)
}

/// Mount points at or below `dir`, deepest first, from `info` (the text of
/// a `/proc/<pid>/mountinfo`).
pub fn parse_mounts_below(info: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = parse_mountinfo(info)
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// One line of `/proc/self/mountinfo`: what the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub point: PathBuf,
    pub fstype: String,
}

/// The mounts of this process's namespace (none if mountinfo is unreadable).
pub fn mountinfo() -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&info)
}

/// The mounts listed in `info` (the text of a `/proc/<pid>/mountinfo`);
/// lines that do not parse are skipped.
pub fn parse_mountinfo(info: &str) -> Vec<MountEntry> {
    info.lines().filter_map(parse_mountinfo_line).collect()
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER`.
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let point = PathBuf::from(unescape(fields.nth(3)?));
    let fstype = fields.skip_while(|f| *f != "-").nth(1)?;
    Some(MountEntry {
        id,
        point,
        fstype: unescape(fstype),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
    }

    #[test]
    fn parses_mountinfo_lines() {
        let line = "25 1 0:23 / /proc rw,nosuid shared:13 - proc proc rw";
        assert_eq!(
            parse_mountinfo_line(line),
            Some(MountEntry {
                id: 25,
                point: "/proc".into(),
                fstype: "proc".into()
            })
        );
        let line = "30 25 0:5 / /a\\040b rw - devtmpfs udev rw";
        assert_eq!(
            parse_mountinfo_line(line).unwrap().point,
            PathBuf::from("/a b")
        );
        assert_eq!(parse_mountinfo_line("garbage"), None);
    }

    #[test]
    fn proc_is_below_root() {
        assert!(mounts_below(Path::new("/")).contains(&PathBuf::from("/proc")));
        assert!(mounts_below(Path::new("/nonexistent-capsa")).is_empty());
    }
}
