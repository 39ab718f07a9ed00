//! The source of a bind mount, opened once and checked as opened: host
//! system paths (the host's procfs, sysfs, device and kernel filesystems)
//! never reach the guest, however the path the user gave was spelled.
//!
//! The path is resolved (symlinks followed) once; the result is opened
//! with `openat2(RESOLVE_NO_SYMLINKS)`, so a component swapped for a
//! symlink in between makes the open fail rather than land elsewhere;
//! the *opened* object is checked (its path in `/proc/self/fd`, its
//! filesystem by `fstatfs` and by its mount's type in mountinfo, and the
//! mounts below it, which a recursive bind takes along); and that same fd
//! is what gets bound (`open_tree` on it), so nothing can be swapped
//! between the check and the mount.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Host paths whose content is the host itself, refused with all below them.
const SYSTEM_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Filesystems that expose the host kernel, its processes or its devices
/// (mountinfo's names); `devtmpfs` shares tmpfs's magic, so the mount's
/// type is read too.
const SYSTEM_FS: [&str; 18] = [
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "bpf",
    "pstore",
    "efivarfs",
    "configfs",
    "binfmt_misc",
    "fusectl",
    "mqueue",
    "nsfs",
    "selinuxfs",
];

/// `statfs.f_type` of the filesystems of [`SYSTEM_FS`] that have their own
/// magic (`<linux/magic.h>`).
const SYSTEM_MAGIC: [(i64, &str); 17] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x1cd1, "devpts"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0xcafe_4a11, "bpf"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0x6265_6570, "configfs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x6e73_6673, "nsfs"),
    (0xf97c_ff8c, "selinuxfs"),
];

/// Why a source is not shared.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("resolve {path}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open {path} (a path component changed while it was resolved?)")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {resolved}, a host system path ({why}): not shared with the guest")]
    HostSystemPath {
        path: PathBuf,
        resolved: PathBuf,
        why: String,
    },
}

/// A bind mount's source, open and checked: not a host system path, no
/// host system filesystem mounted below it.
#[derive(Debug)]
pub struct Source {
    fd: OwnedFd,
    resolved: PathBuf,
    is_dir: bool,
}

impl Source {
    /// Resolves and opens `path`, and refuses it if it is, or holds, a host
    /// system path or filesystem.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let resolved = std::fs::canonicalize(path).map_err(|source| SourceError::Resolve {
            path: path.into(),
            source,
        })?;
        let fd = open_no_symlinks(&resolved).map_err(|source| SourceError::Open {
            path: path.into(),
            source,
        })?;
        let open_err = |source| SourceError::Open {
            path: path.into(),
            source,
        };
        // The object opened, by its own path (what /proc/self/fd says).
        let real =
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(open_err)?;
        let meta =
            nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| open_err(std::io::Error::from(e)))?;
        let refuse = |why: String| SourceError::HostSystemPath {
            path: path.into(),
            resolved: real.clone(),
            why,
        };
        if let Some(sys) = SYSTEM_PATHS.iter().find(|s| real.starts_with(s)) {
            return Err(refuse(format!("below {sys}")));
        }
        if let Some(fs) = fs_magic(&fd) {
            return Err(refuse(format!("on the host's {fs}")));
        }
        let mounts = super::mountinfo();
        if let Some(fs) = mnt_id(&fd)
            .and_then(|id| mounts.iter().find(|m| m.id == id))
            .and_then(|m| system_fs(&m.fstype))
        {
            return Err(refuse(format!("on the host's {fs}")));
        }
        let below = mounts.iter().find(|m| {
            m.point != real
                && m.point.starts_with(&real)
                && (system_fs(&m.fstype).is_some()
                    || SYSTEM_PATHS.iter().any(|s| m.point.starts_with(s)))
        });
        if let Some(m) = below {
            return Err(refuse(format!(
                "the host's {} is mounted below it at {}",
                m.fstype,
                m.point.display()
            )));
        }
        Ok(Self {
            fd,
            resolved: real,
            is_dir: meta.st_mode & libc::S_IFMT == libc::S_IFDIR,
        })
    }

    /// The open object (an `O_PATH` fd).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Its path on the host, symlinks resolved.
    pub fn resolved(&self) -> &Path {
        &self.resolved
    }

    pub fn is_dir(&self) -> bool {
        self.is_dir
    }
}

fn system_fs(fstype: &str) -> Option<&'static str> {
    SYSTEM_FS.iter().find(|f| **f == fstype).copied()
}

/// The name of the host system filesystem `fd` lies on, if it does.
fn fs_magic(fd: &OwnedFd) -> Option<&'static str> {
    let stat = nix::sys::statfs::fstatfs(fd).ok()?;
    let magic = stat.filesystem_type().0 as i64;
    SYSTEM_MAGIC
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

/// The id of the mount `fd` lies on (`mnt_id` of `/proc/self/fdinfo`).
fn mnt_id(fd: &OwnedFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `openat2(path, O_PATH, RESOLVE_NO_SYMLINKS)`: fails (ELOOP) if any
/// component of `path` is a symlink. nix does not wrap openat2(2).
fn open_no_symlinks(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid `open_how`; the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2(2) reads the NUL-terminated path and `how` (of the
    // size passed), which outlive the call; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(path: &str) -> String {
        match Source::open(Path::new(path)) {
            Err(e @ SourceError::HostSystemPath { .. }) => e.to_string(),
            other => panic!("{path}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn host_system_paths_are_refused() {
        assert!(refused("/proc").contains("below /proc"));
        assert!(refused("/proc/self").contains("/proc/"));
        assert!(refused("/../proc").contains("/../proc is /proc"));
        assert!(refused("/sys/class/net").contains("below /sys"));
        assert!(refused("/dev").contains("below /dev"));
        assert!(refused("/").contains("mounted below it"));
    }

    #[test]
    fn a_symlink_to_root_does_not_hide_proc() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("evil")).unwrap();
        let text = refused(&format!("{}/evil/proc", dir.path().display()));
        assert!(text.contains("evil/proc is /proc"), "{text}");
    }

    #[test]
    fn a_bind_of_proc_elsewhere_is_refused_by_its_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("p");
        std::fs::create_dir(&at).unwrap();
        nix::mount::mount(
            Some("/proc"),
            &at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let result = Source::open(&at);
        nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH).unwrap();
        let text = result.unwrap_err().to_string();
        assert!(text.contains("host's proc"), "{text}");
    }

    #[test]
    fn ordinary_paths_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let src = Source::open(dir.path()).unwrap();
        assert!(src.is_dir());
        assert_eq!(src.resolved(), std::fs::canonicalize(dir.path()).unwrap());
        assert!(!Source::open(&dir.path().join("f")).unwrap().is_dir());
        assert!(matches!(
            Source::open(&dir.path().join("missing")),
            Err(SourceError::Resolve { .. })
        ));
    }
}
