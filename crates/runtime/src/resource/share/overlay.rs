//! A container image's rootfs (containerd's overlayfs snapshot) for an
//! idmapped share ([`super::idmap`]). An overlayfs mount cannot itself be
//! idmapped, but overlayfs accepts idmapped mounts as its layers: each
//! lower layer and the snapshot's upper and work directories are cloned
//! detached and idmapped (host root shown as the share server's uid and
//! gid), and the overlay is made on those clones, detached too, to be
//! attached once the share is covered ([`super::idmap::RootAs::cover`]).
//! The overlay then shows host root's files as the server's, which writes
//! them as their owner; what it creates lands in the snapshot's upper
//! directory as host root's, as through a plain overlay. The layer clones
//! live only as long as the overlay: nothing is left mounted by them.
//!
//! overlayfs does its own work on the layers (copy-up, whiteouts, its
//! work directory) with the credentials of whoever created it. Host root's
//! would be unmapped in the layers' idmapping (its writes fail with
//! EOVERFLOW, and overlayfs falls back to read-only): the overlay is made
//! in a thread of its own whose filesystem uid and gid are the server's,
//! capabilities kept (`SECBIT_NO_SETUID_FIXUP`), so that what overlayfs
//! makes is mapped back to host root. The thread ends with the overlay
//! made: no other work ever runs with those credentials.
//!
//! Layers given by path to a detached mount (`/proc/self/fd/N`) need
//! Linux 6.15 (detached mounts as overlayfs layers) and one layer per
//! `lowerdir+` parameter 6.8; where the kernel refuses, the caller falls
//! back to a plain overlay, not idmapped.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use super::mount::detached;
use crate::resource::HostMount;

/// `<linux/securebits.h>`.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
/// `<linux/mount.h>`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// What containerd's overlay mount options ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OverlaySpec {
    /// Top first, as in `lowerdir=`.
    pub lower: Vec<PathBuf>,
    /// The upper and work directories (absent for a read-only view).
    pub upper: Option<(PathBuf, PathBuf)>,
    /// `MOUNT_ATTR_*` of the overlay (`nosuid,nodev` always).
    pub attrs: u64,
    /// Other overlayfs parameters (`index=off`, `userxattr`...): a key
    /// and its value, if it has one.
    pub params: Vec<(String, Option<String>)>,
}

impl OverlaySpec {
    /// The overlay of mount `m`, if it is one.
    pub fn of(m: &HostMount) -> Result<Option<Self>, String> {
        if m.typ != "overlay" {
            return Ok(None);
        }
        let mut spec = Self {
            attrs: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            ..Self::default()
        };
        let (mut upper, mut work) = (None, None);
        for option in &m.options {
            match option.split_once('=') {
                Some(("lowerdir", dirs)) => {
                    spec.lower = dirs.split(':').map(PathBuf::from).collect();
                }
                Some(("upperdir", dir)) => upper = Some(PathBuf::from(dir)),
                Some(("workdir", dir)) => work = Some(PathBuf::from(dir)),
                Some((key, value)) => spec.params.push((key.into(), Some(value.into()))),
                None => match option.as_str() {
                    "ro" => spec.attrs |= MOUNT_ATTR_RDONLY,
                    "noexec" => spec.attrs |= MOUNT_ATTR_NOEXEC,
                    "rw" | "nosuid" | "nodev" | "loop" => {}
                    flag => spec.params.push((flag.into(), None)),
                },
            }
        }
        spec.upper = match (upper, work) {
            (Some(u), Some(w)) => Some((u, w)),
            (None, None) => None,
            _ => return Err("upperdir and workdir go together".into()),
        };
        let paths = spec
            .lower
            .iter()
            .chain(spec.upper.iter().flat_map(|(u, w)| [u, w]));
        for p in paths {
            if !p.is_absolute() {
                return Err(format!("layer {} is not an absolute path", p.display()));
            }
        }
        if spec.lower.is_empty() {
            return Err("no lowerdir".into());
        }
        Ok(Some(spec))
    }
}

/// The deepest directory above both `a` and `b` (absolute paths), and
/// their paths below it.
fn common_parent(a: &Path, b: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, cb): (Vec<Component>, Vec<Component>) =
        (a.components().collect(), b.components().collect());
    let n = ca
        .iter()
        .zip(&cb)
        .take_while(|(x, y)| x == y)
        .count()
        // Never a path itself: both must be below it.
        .min(ca.len() - 1)
        .min(cb.len() - 1);
    let parent: PathBuf = ca[..n].iter().collect();
    let rel = |c: &[Component]| c[n..].iter().collect::<PathBuf>();
    (parent, rel(&ca), rel(&cb))
}

/// An idmapped, detached clone of the mount at `dir` (that mount alone).
fn idmapped_clone(dir: &Path, userns: &OwnedFd) -> Result<OwnedFd, String> {
    let opened = File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
    let tree = detached::clone_mount(&OwnedFd::from(opened))
        .map_err(|e| format!("open_tree {}: {e}", dir.display()))?;
    detached::set_idmap(&tree, userns).map_err(|e| format!("idmap {}: {e}", dir.display()))?;
    Ok(tree)
}

/// The path of `rel` below the detached mount `fd`, through this
/// process's descriptor table.
fn fd_path(fd: &OwnedFd, rel: &Path) -> String {
    let base = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if rel.as_os_str().is_empty() {
        base.display().to_string()
    } else {
        base.join(rel).display().to_string()
    }
}

/// Makes the overlay of `spec` on layers idmapped with `userns` (which
/// maps 0 to `uid`/`gid`), detached.
pub fn make(spec: &OverlaySpec, userns: &OwnedFd, uid: u32, gid: u32) -> Result<OwnedFd, String> {
    let mut held = Vec::new();
    let mut params: Vec<(String, Option<String>)> = Vec::new();
    for dir in &spec.lower {
        let clone = idmapped_clone(dir, userns)?;
        params.push(("lowerdir+".into(), Some(fd_path(&clone, Path::new("")))));
        held.push(clone);
    }
    if let Some((upper, work)) = &spec.upper {
        // overlayfs wants both on one mount: one clone of their parent.
        let (parent, upper, work) = common_parent(upper, work);
        let clone = idmapped_clone(&parent, userns)?;
        params.push(("upperdir".into(), Some(fd_path(&clone, &upper))));
        params.push(("workdir".into(), Some(fd_path(&clone, &work))));
        held.push(clone);
    }
    params.extend(spec.params.iter().cloned());
    let attrs = spec.attrs;
    std::thread::scope(|s| {
        s.spawn(|| {
            as_fs_ids(uid, gid)?;
            create(&params, attrs)
        })
        .join()
        .map_err(|_| "the overlay's thread panicked".to_string())?
    })
    // `held` (the layers' clones) is dropped here: the overlay keeps its
    // own private clones of them.
}

/// This thread's filesystem ids become `uid`/`gid`, its capabilities
/// kept. Per thread: the calling thread must end afterwards.
fn as_fs_ids(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: prctl(2) with integer arguments only; it changes this
    // thread's credentials.
    let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if bits < 0 {
        return Err(format!(
            "PR_GET_SECUREBITS: {}",
            std::io::Error::last_os_error()
        ));
    }
    let bits = bits as libc::c_ulong | SECBIT_NO_SETUID_FIXUP;
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_SECUREBITS: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: setfsgid(2)/setfsuid(2) take an id and change only this
    // thread's filesystem ids; each returns the previous one, so the
    // second call reads back what the first set.
    let (g, u) = unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        (libc::setfsgid(gid), libc::setfsuid(uid))
    };
    if g as u32 != gid || u as u32 != uid {
        return Err(format!("setfsuid {uid} / setfsgid {gid} refused"));
    }
    Ok(())
}

/// fsopen, fsconfig, fsmount: the detached overlay; on failure, with
/// what overlayfs said.
fn create(params: &[(String, Option<String>)], attrs: u64) -> Result<OwnedFd, String> {
    let fs = detached::fsopen(c"overlay").map_err(|e| format!("fsopen overlay: {e}"))?;
    let said = |step: String, e: std::io::Error| {
        let log = detached::fs_log(&fs);
        if log.is_empty() {
            format!("{step}: {e}")
        } else {
            format!("{step}: {e} ({log})")
        }
    };
    for (key, value) in params {
        let k = CString::new(key.as_str()).map_err(|_| format!("parameter {key:?}"))?;
        let v = value
            .as_deref()
            .map(|v| CString::new(v).map_err(|_| format!("parameter {key}={v:?}")))
            .transpose()?;
        detached::fsconfig(&fs, &k, v.as_deref()).map_err(|e| {
            let shown = value.as_ref().map_or(key.clone(), |v| format!("{key}={v}"));
            said(format!("overlay parameter {shown}"), e)
        })?;
    }
    detached::fs_create(&fs).map_err(|e| said("overlay".into(), e))?;
    detached::fsmount(&fs, attrs).map_err(|e| said("fsmount overlay".into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[&str]) -> HostMount {
        HostMount {
            typ: "overlay".into(),
            source: "overlay".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn containerd_overlay_options_are_parsed() {
        let m = overlay(&[
            "index=off",
            "workdir=/s/2/work",
            "upperdir=/s/2/fs",
            "lowerdir=/s/1/fs:/s/0/fs",
            "rw",
        ]);
        let spec = OverlaySpec::of(&m).unwrap().unwrap();
        assert_eq!(spec.lower, [PathBuf::from("/s/1/fs"), "/s/0/fs".into()]);
        assert_eq!(spec.upper, Some(("/s/2/fs".into(), "/s/2/work".into())));
        assert_eq!(spec.params, [("index".into(), Some("off".into()))]);
        assert_eq!(spec.attrs, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
        let ro = OverlaySpec::of(&overlay(&["ro", "lowerdir=/a:/b", "userxattr"]))
            .unwrap()
            .unwrap();
        assert_eq!(ro.upper, None);
        assert_ne!(ro.attrs & MOUNT_ATTR_RDONLY, 0);
        assert_eq!(ro.params, [("userxattr".into(), None)]);
        for bad in [
            &["lowerdir=/a", "upperdir=/u"][..],
            &["lowerdir=a"],
            &["upperdir=/u", "workdir=/w"],
        ] {
            assert!(OverlaySpec::of(&overlay(bad)).is_err(), "{bad:?}");
        }
        let bind = HostMount {
            typ: "bind".into(),
            ..overlay(&["rbind"])
        };
        assert_eq!(OverlaySpec::of(&bind), Ok(None));
    }

    /// On the host (root): the overlay shows host root's files as the
    /// mapped uid, and what that uid writes lands in the upper directory
    /// as host root's; nothing stays mounted once it is detached.
    #[test]
    fn an_overlay_on_idmapped_layers_writes_host_root_files() {
        use std::os::unix::fs::MetadataExt;
        const ID: u32 = 1_900_123;
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel);
        for d in ["lower", "snap/fs", "snap/work", "mnt"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        std::fs::write(p("lower/image-file"), "image").unwrap();
        let root_as = super::super::idmap::RootAs::new(ID, ID).unwrap();
        let m = HostMount {
            typ: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", p("snap/work").display()),
                format!("upperdir={}", p("snap/fs").display()),
                format!("lowerdir={}", p("lower").display()),
            ],
        };
        let spec = OverlaySpec::of(&m).unwrap().unwrap();
        let fd = root_as.overlay(&spec).unwrap();
        detached::attach(&fd, &p("mnt")).unwrap();
        drop(fd);
        let owner = std::fs::metadata(p("mnt/image-file")).unwrap().uid();
        // Written as the mapped uid alone (its filesystem capabilities
        // dropped, as setfsuid does by default).
        let mnt = p("mnt");
        let written = std::thread::spawn(move || {
            // SAFETY: changes this thread's filesystem ids only; the
            // thread ends right after.
            unsafe {
                libc::setfsgid(ID);
                libc::setfsuid(ID);
            }
            std::fs::write(mnt.join("new"), "new")
                .and_then(|()| std::fs::write(mnt.join("image-file"), "changed"))
        })
        .join()
        .unwrap();
        let unmounted = super::super::mount::unmount(&p("mnt"));
        assert_eq!(owner, ID, "host root's file as the mapped uid");
        written.unwrap();
        unmounted.unwrap();
        for f in ["new", "image-file"] {
            let meta = std::fs::metadata(p("snap/fs").join(f)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{f} in the upper dir");
        }
        assert_eq!(
            std::fs::read_to_string(p("lower/image-file")).unwrap(),
            "image"
        );
        assert!(super::super::mount::mounts_below(dir.path()).is_empty());
    }

    #[test]
    fn upper_and_work_share_their_deepest_parent() {
        let (p, u, w) = common_parent(Path::new("/s/2/fs"), Path::new("/s/2/work"));
        assert_eq!((p, u, w), ("/s/2".into(), "fs".into(), "work".into()));
        let (p, u, w) = common_parent(Path::new("/a/b"), Path::new("/a/b/c"));
        assert_eq!((p, u, w), ("/a".into(), "b".into(), "b/c".into()));
    }
}
