//! The new mount API, which nix does not wrap (syscalls of Linux 5.2 and
//! 5.12; the structures and constants are those of `<linux/mount.h>`):
//! detached mount trees, their attributes and idmappings, filesystem
//! contexts. Used by the runtime for the share and by drivers that give
//! a jailed program host files (the UML driver's disks).

use std::ffi::{CStr, CString};
use std::io::Error;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::from_raw_os_error(libc::EINVAL))
}

/// A detached copy of the mount tree at the open `source`.
pub fn clone_tree(source: &OwnedFd) -> Result<OwnedFd, Error> {
    open_tree(source, libc::AT_RECURSIVE as libc::c_uint)
}

/// A detached copy of the mount at the open `source`, without the
/// mounts below it.
pub fn clone_mount(source: &OwnedFd) -> Result<OwnedFd, Error> {
    open_tree(source, 0)
}

fn open_tree(source: &OwnedFd, recursive: libc::c_uint) -> Result<OwnedFd, Error> {
    let empty = c"";
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | recursive
        | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: open_tree(2) reads the empty NUL-terminated path, which
    // lives for the call; `source` is an open fd; it returns a new fd
    // or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            empty.as_ptr(),
            flags,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Private propagation, `nosuid,nodev`, and read-only if asked, for
/// the whole tree: what the guest makes in a share is never a device
/// or a set-id program through the share's host mounts.
pub fn set_attr(tree: &OwnedFd, readonly: bool) -> Result<(), Error> {
    let rdonly = if readonly { MOUNT_ATTR_RDONLY } else { 0 };
    mount_setattr(
        tree,
        &MountAttr {
            attr_set: rdonly | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
        },
        true,
    )
}

/// Idmaps every mount of a detached tree with user namespace `userns`
/// (private propagation, `nosuid,nodev` too): all or none.
pub fn set_idmap(tree: &OwnedFd, userns: &OwnedFd) -> Result<(), Error> {
    idmap(tree, userns, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
}

/// [`set_idmap`] for the bind of one file given to a jailed program as
/// a disk: `nosuid`, read-only if asked, and `nodev` unless the file is
/// a device node (which must stay usable).
pub fn set_idmap_disk(
    tree: &OwnedFd,
    userns: &OwnedFd,
    read_only: bool,
    device: bool,
) -> Result<(), Error> {
    let mut attrs = MOUNT_ATTR_NOSUID;
    if read_only {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    if !device {
        attrs |= MOUNT_ATTR_NODEV;
    }
    idmap(tree, userns, attrs)
}

fn idmap(tree: &OwnedFd, userns: &OwnedFd, attrs: u64) -> Result<(), Error> {
    mount_setattr(
        tree,
        &MountAttr {
            attr_set: MOUNT_ATTR_IDMAP | attrs,
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: userns.as_raw_fd() as u64,
        },
        true,
    )
}

/// mount_setattr(2) on the root mount of the detached `tree`, or on every
/// mount of it if `recursive` (all or none).
fn mount_setattr(tree: &OwnedFd, attr: &MountAttr, recursive: bool) -> Result<(), Error> {
    let empty = c"";
    let flags = if recursive {
        libc::AT_EMPTY_PATH | libc::AT_RECURSIVE
    } else {
        libc::AT_EMPTY_PATH
    };
    // SAFETY: mount_setattr(2) reads `attr` (of the size passed) and the
    // empty path; both outlive the call; `tree` is an open fd, and so is
    // a user namespace fd in `attr`, held by the caller.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags as libc::c_uint,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Shared propagation, in a peer group of its own, for the root mount
/// of a detached tree: mounts made on it once attached reach the
/// copies the attachment propagates (as slaves of it).
pub fn set_shared(tree: &OwnedFd) -> Result<(), Error> {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_SHARED,
        userns_fd: 0,
    };
    mount_setattr(tree, &attr, false)
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn new_fd(fd: libc::c_long) -> Result<OwnedFd, Error> {
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A filesystem context of type `fstype` (fsopen(2)).
pub fn fsopen(fstype: &CStr) -> Result<OwnedFd, Error> {
    // SAFETY: fsopen(2) reads the NUL-terminated name, which outlives
    // the call; it returns a new fd or -1.
    new_fd(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })
}

/// Sets parameter `key` of context `fs`: to `value`, or as a flag.
pub fn fsconfig(fs: &OwnedFd, key: &CStr, value: Option<&CStr>) -> Result<(), Error> {
    let (cmd, value) = match value {
        Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
        None => (FSCONFIG_SET_FLAG, std::ptr::null()),
    };
    // SAFETY: fsconfig(2) reads the NUL-terminated key and value (or
    // none), which outlive the call; `fs` is an open fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            key.as_ptr(),
            value,
            0,
        )
    };
    if rc < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Creates the superblock of context `fs`.
pub fn fs_create(fs: &OwnedFd) -> Result<(), Error> {
    let none: *const libc::c_char = std::ptr::null();
    // SAFETY: fsconfig(2) with no key or value; `fs` is an open fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            none,
            none,
            0,
        )
    };
    if rc < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// A detached mount of the superblock of context `fs`, with the
/// `MOUNT_ATTR_*` flags `attrs`.
pub fn fsmount(fs: &OwnedFd, attrs: u64) -> Result<OwnedFd, Error> {
    // SAFETY: fsmount(2) takes integers; it returns a new fd or -1.
    new_fd(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
}

/// The messages the filesystem left in context `fs`, one a line.
pub fn fs_log(fs: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    // Each read(2) returns one message; ENODATA when none is left.
    while let Ok(n) = nix::unistd::read(fs.as_raw_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
    }
    lines.join("; ")
}

/// Attaches the detached tree on `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> Result<(), Error> {
    let to = cpath(target)?;
    let empty = c"";
    // SAFETY: move_mount(2) reads the two NUL-terminated paths, which
    // outlive the call; `tree` is an open fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// A user namespace mapping id 0 to host `uid` and `gid` (one id each),
/// for idmapped mounts: made by a short-lived child that enters it and is
/// killed once it is opened (the descriptor keeps it).
pub fn userns_mapping_root_to(uid: u32, gid: u32) -> Result<OwnedFd, Error> {
    use std::os::unix::process::CommandExt;
    let io = |what: &str| {
        let what = format!("user namespace mapping root to {uid}:{gid} ({what})");
        move |e: Error| Error::new(e.kind(), format!("{what}: {e}"))
    };
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and
    // only calls unshare(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io("start a child"))?;
    let pid = child.id();
    let made = (|| {
        std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))
            .map_err(io("uid_map"))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n"))
            .map_err(io("gid_map"))?;
        std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map(OwnedFd::from)
            .map_err(io("open"))
    })();
    let _ = child.kill();
    let _ = child.wait();
    made
}
