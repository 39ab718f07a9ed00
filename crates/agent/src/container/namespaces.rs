//! The namespaces of a container as it was created, for its execs.
//!
//! libcontainer's tenant builder (`runc exec`) joins the namespaces it finds
//! in `/proc/<pid>/ns/*` of the pid in the container's state: the init's.
//! But the init is the workload, and it may `unshare` new namespaces (an
//! unprivileged user namespace and, owned by it, new mount and UTS
//! namespaces): every later exec, as root with the container's
//! capabilities, would then run in namespaces the workload made.
//!
//! So the agent opens the init's namespaces when the container is created
//! (the init is then parked by libcontainer, before the workload runs) and
//! keeps them. For an exec it starts a short-lived holder process in exactly
//! those namespaces and gives the tenant builder a copy of the container's
//! state whose pid is the holder's ([`Holder`]): the tenant builder has no
//! way to be given namespace paths, and its lookup of
//! `/proc/<pid>/ns` cannot be redirected otherwise. The holder lives in the
//! container's PID namespace (its `ns/pid` is what the tenant joins) only
//! while the exec is built, then it is killed.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("cannot create a pipe for the namespace holder")]
    Pipe(#[source] nix::Error),
    #[error("cannot fork the namespace holder")]
    Fork(#[source] nix::Error),
    #[error("the namespace holder could not join the container's namespaces")]
    Holder,
}

/// The namespaces joined by execs besides the PID namespace (no user
/// namespace: libcontainer's tenant builder never joins one), the mount
/// namespace last: after it, the holder sees the container's filesystem.
const KINDS: [(&str, libc::c_int); 6] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
    ("mnt", libc::CLONE_NEWNS),
];

/// Open namespace files of a container's init, taken at creation.
#[derive(Debug)]
pub struct Namespaces {
    pid: OwnedFd,
    /// `(setns flag, namespace)`, in [`KINDS`] order.
    others: Vec<(libc::c_int, OwnedFd)>,
}

fn open_ns(pid: i32, kind: &str) -> Result<OwnedFd, NamespaceError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    File::open(&path)
        .map(OwnedFd::from)
        .map_err(|e| NamespaceError::Open(path, e))
}

impl Namespaces {
    /// Opens the namespaces of process `pid` (the created, not yet started,
    /// init of a container). A kind the kernel lacks (`time`) is skipped.
    pub fn capture(pid: i32) -> Result<Self, NamespaceError> {
        let mut others = Vec::with_capacity(KINDS.len());
        for (kind, flag) in KINDS {
            match open_ns(pid, kind) {
                Ok(fd) => others.push((flag, fd)),
                Err(NamespaceError::Open(_, e))
                    if e.kind() == std::io::ErrorKind::NotFound && kind == "time" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            pid: open_ns(pid, "pid")?,
            others,
        })
    }
}

/// A process parked in a container's original namespaces; killed when
/// dropped. Its exit status goes to the agent's reaper (it is an orphan,
/// reparented to PID 1).
#[derive(Debug)]
pub struct Holder {
    pid: i32,
}

impl Holder {
    /// Starts a holder in `ns`. Blocking (until the holder is in place).
    ///
    /// A child of the agent joins the PID namespace (which only its own
    /// children enter) and forks the holder, which joins the other
    /// namespaces and reports it is ready; the child writes the holder's
    /// pid, as the agent sees it, and exits.
    pub fn spawn(ns: &Namespaces) -> Result<Self, NamespaceError> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(NamespaceError::Pipe)?;
        let others: Vec<(RawFd, libc::c_int)> = ns
            .others
            .iter()
            .map(|(flag, fd)| (fd.as_raw_fd(), *flag))
            .collect();
        // SAFETY: the agent is multi-threaded; the child only makes
        // async-signal-safe system calls (`holder_child`: setns, pipe2, fork,
        // read, write, pause, _exit) on memory prepared before the fork,
        // and never returns.
        match unsafe { nix::unistd::fork() }.map_err(NamespaceError::Fork)? {
            nix::unistd::ForkResult::Child => {
                holder_child(ns.pid.as_raw_fd(), &others, write.as_raw_fd())
            }
            nix::unistd::ForkResult::Parent { .. } => {}
        }
        drop(write);
        let mut pid = [0u8; 4];
        let mut got = 0;
        while got < pid.len() {
            match nix::unistd::read(read.as_raw_fd(), &mut pid[got..]) {
                Ok(0) => return Err(NamespaceError::Holder),
                Ok(n) => got += n,
                Err(nix::Error::EINTR) => continue,
                Err(_) => return Err(NamespaceError::Holder),
            }
        }
        Ok(Self {
            pid: i32::from_ne_bytes(pid),
        })
    }

    /// The holder's pid, as the agent sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

/// The forked child of [`Holder::spawn`]. Async-signal-safe only.
fn holder_child(pidns: RawFd, others: &[(RawFd, libc::c_int)], report: RawFd) -> ! {
    // SAFETY: plain system calls on descriptors that stay open in this
    // process; the buffers live on this stack; no allocation, no locks.
    unsafe {
        if libc::setns(pidns, libc::CLONE_NEWPID) != 0 {
            libc::_exit(1);
        }
        let mut ready = [0 as libc::c_int; 2];
        if libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            libc::_exit(1);
        }
        let holder = libc::fork();
        if holder < 0 {
            libc::_exit(1);
        }
        if holder == 0 {
            libc::close(ready[0]);
            for &(fd, flag) in others {
                if libc::setns(fd, flag) != 0 {
                    libc::_exit(1);
                }
            }
            let byte = 1u8;
            libc::write(ready[1], (&byte as *const u8).cast(), 1);
            libc::close(ready[1]);
            loop {
                libc::pause();
            }
        }
        libc::close(ready[1]);
        let mut byte = 0u8;
        if libc::read(ready[0], (&mut byte as *mut u8).cast(), 1) != 1 {
            libc::kill(holder, libc::SIGKILL);
            libc::_exit(1);
        }
        let pid = holder.to_ne_bytes();
        libc::write(report, pid.as_ptr().cast(), pid.len());
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_id(pid: i32, kind: &str) -> PathBuf {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
    }

    /// A holder of this test process's own namespaces has them (setns
    /// needs CAP_SYS_ADMIN: fails unless the tests run as root, as in CI).
    #[test]
    fn a_holder_has_the_captured_namespaces() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: setns needs CAP_SYS_ADMIN"
        );
        let me = std::process::id() as i32;
        let ns = Namespaces::capture(me).expect("capture");
        let holder = Holder::spawn(&ns).expect("holder");
        for kind in ["ipc", "uts", "net", "cgroup", "mnt", "pid"] {
            assert_eq!(ns_id(holder.pid(), kind), ns_id(me, kind), "{kind}");
        }
        let pid = holder.pid();
        drop(holder);
        // Not our child (its parent exited): wait until it is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while kill(Pid::from_raw(pid), None).is_ok()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false)
        {
            assert!(std::time::Instant::now() < deadline, "holder not killed");
            std::thread::yield_now();
        }
    }
}
