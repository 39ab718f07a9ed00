//! CopyFile: a file, a directory or a symbolic link from the host, written
//! below the sandbox directory (`/run/kata-containers`), with Kata's
//! semantics: parent directories are created (`dir_mode`, `uid`, `gid`);
//! a regular file comes in chunks (`data` at `offset`) into a temporary
//! file that replaces `path` once `file_size` bytes are there; `file_mode`'s
//! type bits choose a directory or a symbolic link (`data` is its target).
//!
//! Confinement: the path must be absolute, below the root, without `..`;
//! every lookup is an `openat2` from the root with `RESOLVE_BENEATH` and
//! `RESOLVE_NO_MAGICLINKS`, so a symbolic link (say one a container put in
//! the shared directory) that leads out of the root fails the request
//! instead of being followed; the last component is never followed.

use fs_err::os::unix::fs::FileExt;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use capsa_protocols::agent::CopyFileRequest;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fchmod, Mode, SFlag};
use nix::unistd::{fchown, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::GuestError;
use crate::validate::{self, Beneath};

/// The guest's sandbox directory, the only place CopyFile writes to.
pub const SANDBOX_DIR: &str = "/run/kata-containers";
/// Largest `data` of one request (a ttRPC frame cannot carry more).
pub const MAX_DATA: usize = ttrpc::proto::MESSAGE_LENGTH_MAX;
/// Largest `file_size` accepted (the sandbox directory is guest memory).
pub const MAX_FILE_SIZE: i64 = 256 << 20;

const DEFAULT_DIR_MODE: u32 = 0o755;
/// What the path is called in errors.
const KIND: &str = "copy file path";

/// What the request asks to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// The request's path relative to `root`, checked.
pub fn relative_path(root: &Path, path: &str) -> Result<PathBuf, GuestError> {
    Ok(validate::relative_below(KIND, root, path)?)
}

fn kind(file_mode: u32) -> Result<Kind, GuestError> {
    match file_mode & SFlag::S_IFMT.bits() {
        0 => Ok(Kind::File),
        t if t == SFlag::S_IFREG.bits() => Ok(Kind::File),
        t if t == SFlag::S_IFDIR.bits() => Ok(Kind::Dir),
        t if t == SFlag::S_IFLNK.bits() => Ok(Kind::Symlink),
        _ => Err(GuestError::FileType(file_mode)),
    }
}

/// Checks sizes and offsets before anything is touched.
fn check_sizes(req: &CopyFileRequest) -> Result<(), GuestError> {
    let len = req.data.len() as u64;
    if req.data.len() > MAX_DATA {
        return Err(GuestError::TooLarge {
            what: "copy file data",
            len,
            max: MAX_DATA as u64,
        });
    }
    if !(0..=MAX_FILE_SIZE).contains(&req.file_size) {
        return Err(GuestError::OutOfRange {
            what: "file size",
            value: req.file_size,
            range: "0 to 256 MiB",
        });
    }
    let end = req.offset.checked_add(len as i64);
    if req.offset < 0 || end.is_none_or(|end| end > req.file_size) {
        return Err(GuestError::PastEnd {
            path: req.path.clone(),
            offset: req.offset,
            len,
            size: req.file_size,
        });
    }
    Ok(())
}

/// Checks `req` (path below `root`, file type, sizes and offset) without
/// touching anything: what [`copy_file`] refuses before any I/O.
pub fn check(root: &Path, req: &CopyFileRequest) -> Result<(), GuestError> {
    checked(root, req).map(drop)
}

fn checked(root: &Path, req: &CopyFileRequest) -> Result<(PathBuf, Kind), GuestError> {
    let rel = relative_path(root, &req.path)?;
    let kind = kind(req.file_mode)?;
    check_sizes(req)?;
    Ok((rel, kind))
}

/// Does what `req` asks, below `root` (normally [`SANDBOX_DIR`]). Blocking.
pub fn copy_file(root: &Path, req: &CopyFileRequest) -> Result<(), GuestError> {
    let (rel, kind) = checked(root, req)?;
    fs_err::create_dir_all(root)?;
    let beneath = Beneath::open(KIND, root, &req.path)?;
    let owner = owner(req.uid, req.gid);
    let dir_mode = perms(req.dir_mode, DEFAULT_DIR_MODE);
    let parent = rel.parent().unwrap_or(Path::new(""));
    let parent_fd = beneath.make_dirs(parent, dir_mode, owner)?;
    let name = rel.file_name().unwrap_or(rel.as_os_str());
    match kind {
        Kind::Dir => {
            beneath.make_dirs(&rel, perms(req.file_mode, DEFAULT_DIR_MODE), owner)?;
        }
        Kind::Symlink => {
            let target = OsStr::from_bytes(&req.data);
            let at = Some(parent_fd.as_raw_fd());
            match unlinkat(at, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(beneath.error("replace", &rel, e).into()),
            }
            symlinkat(target, at, name).map_err(|e| beneath.error("create", &rel, e))?;
        }
        Kind::File => write_chunk(&beneath, &rel, &parent_fd, req, owner)?,
    }
    tracing::info!(path = %req.path, ?kind, offset = req.offset, len = req.data.len(), "file copied");
    Ok(())
}

fn perms(mode: u32, default: u32) -> Mode {
    match mode & 0o7777 {
        0 => Mode::from_bits_truncate(default),
        m => Mode::from_bits_truncate(m),
    }
}

fn owner(uid: i32, gid: i32) -> (Option<Uid>, Option<Gid>) {
    let uid = u32::try_from(uid).ok().map(Uid::from_raw);
    let gid = u32::try_from(gid).ok().map(Gid::from_raw);
    (uid, gid)
}

/// Writes one chunk of a regular file into its temporary file, and moves
/// it into place once complete.
fn write_chunk(
    beneath: &Beneath,
    rel: &Path,
    parent: &OwnedFd,
    req: &CopyFileRequest,
    owner: (Option<Uid>, Option<Gid>),
) -> Result<(), GuestError> {
    let name = rel.file_name().unwrap_or(rel.as_os_str());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".capsa-copy");
    let tmp = rel.with_file_name(&tmp_name);
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW;
    if req.offset == 0 {
        flags |= OFlag::O_TRUNC;
    }
    let fd = beneath
        .resolve(&tmp, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| beneath.error("open", &tmp, e))?;
    // fs_err names the file in the errors of the writes below.
    let file = fs_err::File::from_parts(std::fs::File::from(fd), &tmp);
    file.write_all_at(&req.data, req.offset as u64)?;
    if req.offset + (req.data.len() as i64) < req.file_size {
        return Ok(());
    }
    file.set_len(req.file_size as u64)?;
    let raw = file.as_raw_fd();
    fchmod(raw, perms(req.file_mode, 0o644)).map_err(|e| beneath.error("chmod", &tmp, e))?;
    fchown(raw, owner.0, owner.1).map_err(|e| beneath.error("chown", &tmp, e))?;
    let at = Some(parent.as_raw_fd());
    nix::fcntl::renameat(at, tmp_name.as_os_str(), at, name)
        .map_err(|e| beneath.error("rename", rel, e).into())
}

#[cfg(test)]
mod tests;
