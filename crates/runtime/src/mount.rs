//! Host mounts made for a sandbox: bind mounts into its shared directory.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::Error;

/// Bind-mounts `source` on `target` (a directory that must exist),
/// read-only if asked, and makes the mount private so nothing propagates
/// back to the host.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), Error> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| mount_err(source, target, e))?;
    let mut steps = vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC];
    if readonly {
        steps.push(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY);
    }
    for flags in steps {
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(mount_err(source, target, e));
        }
    }
    Ok(())
}

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

/// Binds `source` (a shared mount point) on `view`, read-only, as a slave
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
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
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
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::Mount {
            what: "unmount".into(),
            target: target.into(),
            source: e,
        }),
    }
}

/// Mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
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
    fn proc_is_below_root() {
        assert!(mounts_below(Path::new("/")).contains(&PathBuf::from("/proc")));
        assert!(mounts_below(Path::new("/nonexistent-capsa")).is_empty());
    }
}
