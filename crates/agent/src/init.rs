//! PID 1 duties: the base filesystems, stdio, cgroups, the subreaper flag.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::mount::{mount, MsFlags};

/// Controllers enabled for containers in the root cgroup, when available.
pub const CGROUP_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create {0}")]
    Mkdir(PathBuf, #[source] std::io::Error),
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        errno: Errno,
    },
    #[error("cannot open /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error("cannot redirect fd {0} to /dev/null")]
    Dup(i32, #[source] Errno),
    #[error("cannot move the root onto a bind mount ({0})")]
    Root(&'static str, #[source] Errno),
    #[error("cannot become a child subreaper")]
    Subreaper(#[source] Errno),
}

/// Where the root is bind-mounted before it is moved onto `/`.
const NEW_ROOT: &str = "/.capsa-root";

/// Puts a bind mount of the root on top of `/` and chroots into it.
///
/// The initramfs is the kernel's `rootfs` mount, which has no parent, and
/// `pivot_root` refuses such a root (EINVAL) — in the containers' mount
/// namespaces too, which are copies of this one. On a bind mount of itself
/// (same files, no copy) the root has a parent and containers get a real
/// `pivot_root` instead of a chroot.
pub fn leave_rootfs() -> Result<(), InitError> {
    let step = |what: &'static str| move |errno| InitError::Root(what, errno);
    match std::fs::create_dir(NEW_ROOT) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(InitError::Mkdir(NEW_ROOT.into(), e)),
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some("/"), NEW_ROOT, None::<&str>, flags, None::<&str>).map_err(step("bind"))?;
    nix::unistd::chdir(NEW_ROOT).map_err(step("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(step("move"))?;
    nix::unistd::chroot(".").map_err(step("chroot"))?;
    nix::unistd::chdir("/").map_err(step("chdir"))?;
    let _ = std::fs::remove_dir(NEW_ROOT);
    Ok(())
}

/// Whether this process is the init of the VM.
pub fn is_init() -> bool {
    std::process::id() == 1
}

struct BaseMount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const fn base(
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
) -> BaseMount {
    BaseMount {
        target,
        fstype,
        flags,
        data,
    }
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The filesystems of a running guest, in mount order.
const BASE_MOUNTS: [BaseMount; 8] = [
    base("/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    base("/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    base("/dev", "devtmpfs", MsFlags::MS_NOSUID, "mode=0755"),
    base(
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "mode=0620,ptmxmode=0666,gid=5",
    ),
    base("/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
    base("/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    base("/tmp", "tmpfs", NOSUID_NODEV, "mode=1777"),
    base(CGROUP_ROOT, "cgroup2", NOSUID_NODEV_NOEXEC, ""),
];

/// Mounts the base filesystems (an already mounted one is kept).
pub fn mount_base() -> Result<(), InitError> {
    for m in &BASE_MOUNTS {
        std::fs::create_dir_all(m.target).map_err(|e| InitError::Mkdir(m.target.into(), e))?;
        let data = (!m.data.is_empty()).then_some(m.data);
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(errno) => {
                return Err(InitError::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    errno,
                })
            }
        }
    }
    Ok(())
}

/// Points fds 0, 1 and 2 at `/dev/null`: the kernel may have given init
/// the console, or nothing (then pipes would land on 0-2). Containers
/// without stdio inherit these.
pub fn null_stdio() -> Result<(), InitError> {
    let null: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(InitError::DevNull)?
        .into();
    for fd in 0..3 {
        if fd == null.as_raw_fd() {
            continue;
        }
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(|e| InitError::Dup(fd, e))?;
    }
    if null.as_raw_fd() <= 2 {
        // It is now one of 0-2: keep it open, without close-on-exec.
        let _ = fcntl(
            null.as_raw_fd(),
            FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        );
        std::mem::forget(null);
    }
    Ok(())
}

/// The controllers of `available` (a `cgroup.controllers` line) that the
/// agent enables, as a `cgroup.subtree_control` write.
pub fn controllers_to_enable(available: &str) -> Vec<String> {
    let available: Vec<&str> = available.split_whitespace().collect();
    CGROUP_CONTROLLERS
        .iter()
        .filter(|c| available.contains(c))
        .map(|c| format!("+{c}"))
        .collect()
}

/// Enables the container controllers in the root cgroup (each on its own, so
/// one refusal does not lose the others).
pub fn enable_cgroup_controllers() {
    let root = Path::new(CGROUP_ROOT);
    let available = match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the root cgroup's controllers");
            return;
        }
    };
    for c in controllers_to_enable(&available) {
        if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), &c) {
            tracing::warn!(controller = %c, error = %e, "cannot enable cgroup controller");
        }
    }
}

/// Makes this process the reaper of its orphaned descendants.
pub fn set_subreaper() -> Result<(), InitError> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointer.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Errno::result(rc).map(drop).map_err(InitError::Subreaper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_available_controllers_are_enabled() {
        assert_eq!(
            controllers_to_enable("cpuset cpu io memory hugetlb pids rdma misc\n"),
            vec!["+cpu", "+memory", "+pids", "+io"]
        );
        assert_eq!(
            controllers_to_enable("memory pids"),
            vec!["+memory", "+pids"]
        );
        assert!(controllers_to_enable("").is_empty());
    }

    #[test]
    fn base_mounts_come_in_dependency_order() {
        let pos = |t: &str| BASE_MOUNTS.iter().position(|m| m.target == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        assert!(pos("/sys") < pos(CGROUP_ROOT));
    }
}
