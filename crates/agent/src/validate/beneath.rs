//! Lookups confined below a directory: every path is resolved from the
//! directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so an
//! absolute symbolic link, a `..` that climbs out or a `/proc` magic link
//! fails the lookup (`EXDEV`, `ELOOP`) instead of leading out; a symbolic
//! link that stays below is followed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, Gid, Uid};

use super::ValidateError;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// A system call on a path failed (nix's calls, which name no path; the
/// std ones go through `fs_err`).
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct SysError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub errno: Errno,
}

impl SysError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> Self {
        Self {
            op,
            path: path.into(),
            errno,
        }
    }
}

/// Lookups confined below `root`, for the request path `path` of kind
/// `kind` (named in errors).
pub struct Beneath<'a> {
    kind: &'static str,
    root: &'a Path,
    path: &'a str,
    fd: OwnedFd,
}

impl<'a> Beneath<'a> {
    pub fn open(kind: &'static str, root: &'a Path, path: &'a str) -> Result<Self, ConfineError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(root, flags, Mode::empty())
            .map_err(|e| SysError::new("open", root, e))?;
        // SAFETY: `open` just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            kind,
            root,
            path,
            fd,
        })
    }

    /// Opens `rel` (the root itself when empty) below the root.
    pub fn resolve(&self, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let fd = openat2(self.fd.as_raw_fd(), path, how)?;
        // SAFETY: `openat2` just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The error for `errno` from `op` on `rel`: an escape (`EXDEV`, or
    /// `ELOOP` from a magic link or a final link that must not be followed)
    /// is the request's fault.
    pub fn error(&self, op: &'static str, rel: &Path, errno: Errno) -> ConfineError {
        match errno {
            Errno::EXDEV | Errno::ELOOP => ConfineError::Invalid(ValidateError::Escapes {
                kind: self.kind,
                path: self.path.to_string(),
                root: self.root.display().to_string(),
            }),
            errno => SysError::new(op, self.root.join(rel), errno).into(),
        }
    }

    /// Opens directory `rel` (read-only), creating what is missing of it
    /// with `mode` and `owner` (for the directories it creates).
    pub fn make_dirs(
        &self,
        rel: &Path,
        mode: Mode,
        owner: (Option<Uid>, Option<Gid>),
    ) -> Result<OwnedFd, ConfineError> {
        let dir = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        let open = |p: &Path| self.resolve(p, dir, Mode::empty());
        let mut at = open(Path::new("")).map_err(|e| self.error("open", Path::new(""), e))?;
        let mut so_far = PathBuf::new();
        for c in rel.components() {
            so_far.push(c);
            at = match open(&so_far) {
                Err(Errno::ENOENT) => {
                    match mkdirat(Some(at.as_raw_fd()), c.as_os_str(), mode) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.error("create", &so_far, e)),
                    }
                    let fd = open(&so_far).map_err(|e| self.error("open", &so_far, e))?;
                    fchmod(fd.as_raw_fd(), mode).map_err(|e| self.error("chmod", &so_far, e))?;
                    fchown(fd.as_raw_fd(), owner.0, owner.1)
                        .map_err(|e| self.error("chown", &so_far, e))?;
                    fd
                }
                other => other.map_err(|e| self.error("open", &so_far, e))?,
            };
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_below_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("a", root.join("in")).unwrap();
        let b = Beneath::open("mount point", &root, "/p").unwrap();
        let mode = Mode::from_bits_truncate(0o711);
        b.make_dirs(Path::new("a/b"), mode, (None, None)).unwrap();
        assert!(root.join("a/b").is_dir());
        b.make_dirs(Path::new("in/c"), mode, (None, None)).unwrap();
        assert!(root.join("a/c").is_dir(), "a link below is followed");
        for rel in ["abs/tmp/x", "up/x", "up"] {
            let err = b.make_dirs(Path::new(rel), mode, (None, None)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "mount point \"/p\" escapes {} (through a symbolic link)",
                    root.display()
                ),
                "{rel}"
            );
        }
        assert!(!dir.path().join("x").exists());
        let missing = Beneath::open("k", Path::new("/nonexistent/root"), "/p");
        assert!(matches!(missing, Err(ConfineError::Sys(_))));
    }
}
