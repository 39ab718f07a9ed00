//! The jail's private root: a fresh tmpfs, read-only once built, holding
//! only the caller's bind mounts, tmpfses and symbolic links.
//!
//! Built in the jail's own mount namespace (made private first, so nothing
//! propagates to the host), the way bubblewrap does: a tmpfs is mounted on
//! `/tmp` and `pivot_root` makes it `/`, the host's root moving to
//! [`HOST`]; each bind mount takes its source from there; then the host's
//! root is detached, and the tmpfs remounted read-only. The host sees no
//! mount at all, and every mount ends with the namespace (with the jail's
//! last process).
//!
//! Sources are resolved on the host before (links included); each bind
//! is non-recursive (mounts under a source stay out of the jail) and
//! private, unless it is asked recursive (a share whose mounts the host
//! makes later: then the namespace's mounts are slaves, not private, so
//! that the host's new mounts below the source reach the jail, and
//! nothing goes back),
//! `nosuid`, `nodev` unless it is a device node, read-only unless asked;
//! the flags the kernel locks on a mount made in a more privileged
//! namespace (`nodev`, `noexec`, `nosuid`, read-only, atime) are carried
//! over from the source, else the read-only remount would fail.
//!
//! [`RootPlan::prepare`] (in the parent) checks and converts everything;
//! the child only runs the prepared [`Op`]s: it may not allocate.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{stat, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};

use super::{JailConfig, JailError};

/// Where the host's root is while the jail's root is built.
pub const HOST: &str = "/.capsa-host";
/// Where the root tmpfs is mounted before `pivot_root` (in the jail's
/// mount namespace only).
pub const STAGING: &str = "/tmp";
/// The root tmpfs holds only mount points and links.
const ROOT_TMPFS: &str = "size=1m,nr_inodes=4096,mode=755";

/// One step of building the root, run in the child.
#[derive(Debug)]
pub enum Op {
    Dir(CString),
    File(CString),
    Bind {
        source: CString,
        target: CString,
        /// `MS_BIND`, with `MS_REC` for a recursive bind.
        flags: MsFlags,
        /// Flags of the remount that sets read-only, `nosuid`, ...
        remount: MsFlags,
        /// `MS_PRIVATE` for a bind that must not follow the host's
        /// mounts, none for one that does (a slave, as its source).
        propagation: Option<MsFlags>,
    },
    Tmpfs {
        target: CString,
        data: CString,
        flags: MsFlags,
    },
    Proc(CString),
    Symlink {
        link: CString,
        target: CString,
    },
}

impl Op {
    /// What this step does, for error messages.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Dir(p) => format!("create directory {} in the root", s(p)),
            Op::File(p) => format!("create mount point {} in the root", s(p)),
            Op::Bind { source, target, .. } => format!(
                "bind {} on {}",
                s(source).trim_start_matches(HOST),
                s(target)
            ),
            Op::Tmpfs { target, .. } => format!("mount tmpfs on {}", s(target)),
            Op::Proc(p) => format!("mount proc on {}", s(p)),
            Op::Symlink { link, target } => format!("link {} to {}", s(link), s(target)),
        }
    }

    /// Runs the step. Allocation-free: paths are `CStr`s.
    pub fn run(&self) -> nix::Result<()> {
        match self {
            Op::Dir(p) => match nix::unistd::mkdir(p.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Err(nix::Error::EEXIST) => Ok(()),
                other => other,
            },
            Op::File(p) => {
                let flags = nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_CLOEXEC;
                let fd = nix::fcntl::open(p.as_c_str(), flags, Mode::from_bits_truncate(0o644))?;
                nix::unistd::close(fd)
            }
            Op::Bind {
                source,
                target,
                flags,
                remount,
                propagation,
            } => {
                mount(
                    Some(source.as_c_str()),
                    target.as_c_str(),
                    None::<&CStr>,
                    *flags,
                    None::<&CStr>,
                )?;
                mount(
                    None::<&CStr>,
                    target.as_c_str(),
                    None::<&CStr>,
                    *remount,
                    None::<&CStr>,
                )?;
                match propagation {
                    Some(p) => mount(
                        None::<&CStr>,
                        target.as_c_str(),
                        None::<&CStr>,
                        *p,
                        None::<&CStr>,
                    ),
                    None => Ok(()),
                }
            }
            Op::Tmpfs {
                target,
                data,
                flags,
            } => mount(
                Some(c"tmpfs"),
                target.as_c_str(),
                Some(c"tmpfs"),
                *flags,
                Some(data.as_c_str()),
            ),
            Op::Proc(target) => mount(
                Some(c"proc"),
                target.as_c_str(),
                Some(c"proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&CStr>,
            ),
            Op::Symlink { link, target } => {
                nix::unistd::symlinkat(target.as_c_str(), None, link.as_c_str())
            }
        }
    }
}

/// Everything the child needs to build the root.
#[derive(Debug)]
pub struct RootPlan {
    pub ops: Vec<Op>,
    /// What the namespace's mounts become first: `MS_PRIVATE`, or
    /// `MS_SLAVE` when a recursive bind must follow the host's mounts
    /// (recursively, in both cases).
    pub propagation: MsFlags,
    pub staging: CString,
    pub host: CString,
    pub host_in_staging: CString,
    pub root_tmpfs: CString,
    pub cwd: CString,
}

impl RootPlan {
    /// Checks the config's paths and turns them into steps.
    pub fn prepare(cfg: &JailConfig) -> Result<Self, JailError> {
        let name = cfg.name.as_str();
        let mut ops = Vec::new();
        for bind in &cfg.binds {
            let target = check_target(name, "bind target", &bind.target)?;
            let err = |source| JailError::BindSource {
                name: name.into(),
                path: bind.source.clone(),
                source,
            };
            let st = stat(&bind.source).map_err(err)?;
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let device = kind == SFlag::S_IFCHR || kind == SFlag::S_IFBLK;
            if kind != SFlag::S_IFDIR && kind != SFlag::S_IFREG && !device {
                return Err(JailError::BindKind {
                    name: name.into(),
                    path: bind.source.clone(),
                });
            }
            let locked = statvfs(&bind.source).map_err(err)?.flags();
            let mut remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
            remount |= locked_flags(locked);
            if !bind.writable {
                remount |= MsFlags::MS_RDONLY;
            }
            if bind.noexec {
                remount |= MsFlags::MS_NOEXEC;
            }
            if !device {
                remount |= MsFlags::MS_NODEV;
            }
            parents(name, &target, &mut ops)?;
            let point = c_path(name, &target)?;
            ops.push(if kind == SFlag::S_IFDIR {
                Op::Dir(point.clone())
            } else {
                Op::File(point.clone())
            });
            // Resolved here, in the host's root: an absolute link under
            // the source would otherwise resolve in the jail's.
            let real = std::fs::canonicalize(&bind.source)
                .map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
            let mut source = Path::new(HOST).as_os_str().to_owned();
            source.push(real.as_os_str());
            let (flags, propagation) = if bind.recursive {
                (MsFlags::MS_BIND | MsFlags::MS_REC, None)
            } else {
                (MsFlags::MS_BIND, Some(MsFlags::MS_PRIVATE))
            };
            ops.push(Op::Bind {
                source: c_path(name, Path::new(&source))?,
                target: point,
                flags,
                remount,
                propagation,
            });
        }
        for t in &cfg.tmpfs {
            let target = check_target(name, "tmpfs target", &t.target)?;
            parents(name, &target, &mut ops)?;
            let point = c_path(name, &target)?;
            ops.push(Op::Dir(point.clone()));
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if t.noexec {
                flags |= MsFlags::MS_NOEXEC;
            }
            ops.push(Op::Tmpfs {
                target: point,
                data: CString::new(format!("size={},mode=700", t.size_bytes.max(4096)))
                    .expect("no NUL in a number"),
                flags,
            });
        }
        for (link, to) in &cfg.symlinks {
            let link = check_target(name, "symlink", link)?;
            parents(name, &link, &mut ops)?;
            ops.push(Op::Symlink {
                link: c_path(name, &link)?,
                target: c_path(name, to)?,
            });
        }
        if cfg.proc {
            // Before the host's root is detached: the kernel mounts a
            // proc only where one is already fully visible.
            ops.push(Op::Dir(c"/proc".into()));
            ops.push(Op::Proc(c"/proc".into()));
        }
        let cwd = check_target(name, "working directory", &cfg.cwd).or_else(|e| {
            if cfg.cwd == Path::new("/") {
                Ok(PathBuf::from("/"))
            } else {
                Err(e)
            }
        })?;
        let follow = cfg.binds.iter().any(|b| b.recursive);
        Ok(Self {
            ops,
            propagation: if follow {
                MsFlags::MS_SLAVE
            } else {
                MsFlags::MS_PRIVATE
            },
            staging: c_path(name, Path::new(STAGING))?,
            host: c_path(name, Path::new(HOST))?,
            host_in_staging: c_path(name, &Path::new(STAGING).join(&HOST[1..]))?,
            root_tmpfs: CString::new(ROOT_TMPFS).expect("constant"),
            cwd: c_path(name, &cwd)?,
        })
    }
}

/// The flags the kernel will not let a less privileged namespace clear.
fn locked_flags(f: FsFlags) -> MsFlags {
    let pairs = [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    let flags = pairs
        .into_iter()
        .filter(|(st, _)| f.contains(*st))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms);
    // Neither: the source is `strictatime`, which a remount must say (the
    // kernel's default is `relatime`).
    if f.intersects(FsFlags::ST_NOATIME | FsFlags::ST_RELATIME) {
        flags
    } else {
        flags | MsFlags::MS_STRICTATIME
    }
}

/// An absolute, normal path that is not `/` itself.
fn check_target(name: &str, what: &'static str, p: &Path) -> Result<PathBuf, JailError> {
    let bad = || JailError::BadPath {
        name: name.into(),
        what,
        path: p.into(),
    };
    if !p.is_absolute() || p.parent().is_none() {
        return Err(bad());
    }
    let mut clean = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => clean.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if clean.starts_with(HOST) {
        return Err(bad());
    }
    Ok(clean)
}

/// Directories to create before `target`'s mount point.
fn parents(name: &str, target: &Path, ops: &mut Vec<Op>) -> Result<(), JailError> {
    let mut dirs: Vec<&Path> = target.ancestors().skip(1).collect();
    dirs.pop(); // `/`
    for d in dirs.into_iter().rev() {
        ops.push(Op::Dir(c_path(name, d)?));
    }
    Ok(())
}

fn c_path(name: &str, p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Nul {
        name: name.into(),
        what: format!("path {}", p.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::{BindMount, Deny, Identity, SeccompProfile, Tmpfs};

    fn cfg() -> JailConfig {
        JailConfig::new(
            "t",
            "/bin/true",
            Identity { uid: 1, gid: 1 },
            SeccompProfile::new("t", Deny::KillProcess),
        )
    }

    #[test]
    fn targets_must_be_absolute_and_normal() {
        for bad in ["relative", "/a/../etc", "/", "/.capsa-host/x", "/a/./b"] {
            let r = check_target("t", "bind target", Path::new(bad));
            // `Path::components` drops `.` in the middle, so `/a/./b` is fine.
            if bad == "/a/./b" {
                assert_eq!(r.unwrap(), Path::new("/a/b"));
            } else {
                assert!(r.is_err(), "{bad} accepted");
            }
        }
    }

    #[test]
    fn binds_become_parents_mount_point_and_bind_with_locked_flags() {
        let mut c = cfg();
        c.binds = vec![
            BindMount::read_only("/dev/null"),
            BindMount::read_write(std::env::temp_dir()).at("/run/share"),
        ];
        c.tmpfs = vec![Tmpfs {
            target: "/tmp".into(),
            size_bytes: 1 << 20,
            noexec: true,
        }];
        c.symlinks = vec![("/lib64".into(), "usr/lib64".into())];
        let plan = RootPlan::prepare(&c).unwrap();
        let steps: Vec<String> = plan.ops.iter().map(Op::describe).collect();
        let tmp = std::env::temp_dir();
        assert_eq!(
            steps,
            [
                "create directory /dev in the root".to_string(),
                "create mount point /dev/null in the root".into(),
                "bind /dev/null on /dev/null".into(),
                "create directory /run in the root".into(),
                "create directory /run/share in the root".into(),
                format!("bind {} on /run/share", tmp.display()),
                "create directory /tmp in the root".into(),
                "mount tmpfs on /tmp".into(),
                "link /lib64 to usr/lib64".into(),
            ]
        );
        let Op::Bind { remount, .. } = &plan.ops[2] else {
            panic!()
        };
        assert!(remount.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert!(!remount.contains(MsFlags::MS_NODEV), "a device needs dev");
        let Op::Bind { remount, .. } = &plan.ops[5] else {
            panic!()
        };
        assert!(remount.contains(MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
        assert!(!remount.contains(MsFlags::MS_RDONLY));
        // Binds are single mounts, private, in a private namespace...
        let Op::Bind {
            flags, propagation, ..
        } = &plan.ops[2]
        else {
            panic!()
        };
        assert_eq!(
            (*flags, *propagation),
            (MsFlags::MS_BIND, Some(MsFlags::MS_PRIVATE))
        );
        assert_eq!(plan.propagation, MsFlags::MS_PRIVATE);
        // ... but a recursive one takes the mounts below its source and
        // follows the host's: the namespace's mounts are slaves.
        c.binds[1] = BindMount::read_write(std::env::temp_dir())
            .at("/run/share")
            .recursive();
        let plan = RootPlan::prepare(&c).unwrap();
        let Op::Bind {
            flags, propagation, ..
        } = &plan.ops[5]
        else {
            panic!()
        };
        assert_eq!(
            (*flags, *propagation),
            (MsFlags::MS_BIND | MsFlags::MS_REC, None)
        );
        assert_eq!(plan.propagation, MsFlags::MS_SLAVE);
    }

    #[test]
    fn a_missing_source_or_a_socket_is_named() {
        let mut c = cfg();
        c.binds = vec![BindMount::read_only("/nonexistent/capsa")];
        let err = RootPlan::prepare(&c).unwrap_err();
        assert_eq!(err.to_string(), "jail t: bind source /nonexistent/capsa");
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        c.binds = vec![BindMount::read_only(&sock)];
        let err = RootPlan::prepare(&c).unwrap_err();
        assert!(matches!(err, JailError::BindKind { .. }), "{err}");
    }

    #[test]
    fn proc_is_mounted_only_when_asked() {
        let mut c = cfg();
        assert!(RootPlan::prepare(&c).unwrap().ops.is_empty());
        c.proc = true;
        let plan = RootPlan::prepare(&c).unwrap();
        assert!(matches!(plan.ops.last(), Some(Op::Proc(_))));
    }
}
