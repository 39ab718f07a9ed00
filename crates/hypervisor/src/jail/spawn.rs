//! Starting the jailed process.
//!
//! The parent prepares everything (paths, argv, environment, seccomp
//! programs, the capability list) and `clone(2)`s a child into new
//! namespaces ([`namespaces`]). The child waits on a pipe while the parent,
//! still host root, writes its id maps, moves it into the cgroups and sets
//! its limits. Then the child builds its root, drops its capabilities,
//! sets `no_new_privs`, installs the seccomp programs and execs. The caller
//! is multi-threaded and the child was cloned from one of its threads, so
//! the child may not allocate (another thread may have held the
//! allocator's lock): it only makes syscalls on what was prepared.
//!
//! A failing step is reported on a close-on-exec pipe as
//! `(stage, index, errno)`; an exec that succeeds closes it empty.

use std::convert::Infallible;
use std::ffi::{CStr, CString, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use ::caps::Capability;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{clone, unshare, CloneFlags};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};
use seccompiler::BpfProgram;

use super::root::RootPlan;
use super::{caps, cgroup, namespaces, JailConfig, JailError, JailedProcess};

/// Stack of the cloned child until it execs.
const CHILD_STACK: usize = 1 << 20;

/// The child's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Stage {
    Wait = 1,
    Ids,
    PrivateMounts,
    RootTmpfs,
    PivotRoot,
    Root,
    Hostname,
    DetachHost,
    RootReadOnly,
    Cwd,
    CgroupNamespace,
    Fds,
    Capabilities,
    NoNewPrivs,
    Seccomp,
    Exec,
}

const STAGES: [Stage; 16] = [
    Stage::Wait,
    Stage::Ids,
    Stage::PrivateMounts,
    Stage::RootTmpfs,
    Stage::PivotRoot,
    Stage::Root,
    Stage::Hostname,
    Stage::DetachHost,
    Stage::RootReadOnly,
    Stage::Cwd,
    Stage::CgroupNamespace,
    Stage::Fds,
    Stage::Capabilities,
    Stage::NoNewPrivs,
    Stage::Seccomp,
    Stage::Exec,
];

/// A failed step of the child.
#[derive(Debug, Clone, Copy)]
struct Failure {
    stage: Stage,
    index: u32,
    errno: i32,
}

impl Failure {
    fn at(stage: Stage, index: usize) -> impl Fn(nix::Error) -> Failure + Copy {
        move |e| Failure {
            stage,
            index: index as u32,
            errno: e as i32,
        }
    }

    fn encode(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&(self.stage as u32).to_le_bytes());
        b[4..8].copy_from_slice(&self.index.to_le_bytes());
        b[8..].copy_from_slice(&self.errno.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if b.len() != 12 {
            return None;
        }
        let stage = *STAGES.iter().find(|s| **s as u32 == word(0))?;
        Some(Self {
            stage,
            index: word(4),
            errno: word(8) as i32,
        })
    }
}

/// What the child reads; all of it built before the clone.
struct Prepared {
    plan: RootPlan,
    programs: Vec<BpfProgram>,
    bounding: Vec<Capability>,
    program: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    hostname: OsString,
    /// `(descriptor in the parent, number in the program)`.
    fds: Vec<(RawFd, RawFd)>,
    /// Lowest number the child moves descriptors to while it arranges them.
    scratch_base: RawFd,
    uid: Uid,
    gid: Gid,
    kill_with_parent: bool,
}

fn cstring(name: &str, what: &str, s: &[u8]) -> Result<CString, JailError> {
    CString::new(s).map_err(|_| JailError::Nul {
        name: name.into(),
        what: what.into(),
    })
}

impl Prepared {
    fn new(cfg: &JailConfig, devnull: &OwnedFd) -> Result<Self, JailError> {
        let name = cfg.name.as_str();
        namespaces::check_identity(name, cfg.identity)?;
        let plan = RootPlan::prepare(cfg)?;
        // The extra programs first: the profile may not allow seccomp(2)
        // itself once installed (the UML kernel's does not). The order
        // does not change what is refused: every program runs, the most
        // restrictive answer wins.
        let mut programs = cfg.extra_filters.0.clone();
        programs.extend(cfg.seccomp.programs()?);
        let bounding = caps::bounding_to_drop()?;
        let program = cstring(name, "program path", cfg.program.as_os_str().as_bytes())?;
        let mut strings = vec![program.clone()];
        for a in &cfg.args {
            strings.push(cstring(name, &format!("argument {a:?}"), a.as_bytes())?);
        }
        let argc = strings.len();
        for (k, v) in &cfg.env {
            if k.contains('=') {
                return Err(JailError::Nul {
                    name: name.into(),
                    what: format!("environment name {k:?} (it has `=`)"),
                });
            }
            strings.push(cstring(
                name,
                &format!("variable {k}"),
                format!("{k}={v}").as_bytes(),
            )?);
        }
        let ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        let mut argv = ptrs[..argc].to_vec();
        argv.push(std::ptr::null());
        let mut envp = ptrs[argc..].to_vec();
        envp.push(std::ptr::null());
        let mut fds: Vec<(RawFd, RawFd)> =
            cfg.fds.iter().map(|(fd, n)| (fd.as_raw_fd(), *n)).collect();
        for std_fd in 0..3 {
            if !fds.iter().any(|(_, n)| *n == std_fd) {
                fds.push((devnull.as_raw_fd(), std_fd));
            }
        }
        let scratch_base = fds.iter().map(|(a, b)| (*a).max(*b)).max().unwrap_or(2) + 1;
        Ok(Self {
            plan,
            programs,
            bounding,
            program,
            _strings: strings,
            argv,
            envp,
            hostname: OsString::from(&cfg.hostname),
            fds,
            scratch_base,
            uid: Uid::from_raw(cfg.identity.uid),
            gid: Gid::from_raw(cfg.identity.gid),
            kill_with_parent: cfg.kill_with_parent,
        })
    }

    /// What stage `f` was doing, in words.
    fn describe(&self, cfg: &JailConfig, f: Failure) -> String {
        let i = f.index as usize;
        match f.stage {
            Stage::Wait => "wait for the parent".into(),
            Stage::Ids => format!(
                "switch to uid {} gid {}",
                cfg.identity.uid, cfg.identity.gid
            ),
            Stage::PrivateMounts => "make the mounts private (or slaves)".into(),
            Stage::RootTmpfs => "mount the root tmpfs".into(),
            Stage::PivotRoot => "pivot_root into the new root".into(),
            Stage::Root => self
                .plan
                .ops
                .get(i)
                .map_or_else(|| format!("root step {i}"), |op| op.describe()),
            Stage::Hostname => format!("set host name {}", cfg.hostname),
            Stage::DetachHost => "detach the host's root".into(),
            Stage::RootReadOnly => "make the root read-only".into(),
            Stage::Cwd => format!("enter {}", cfg.cwd.display()),
            Stage::CgroupNamespace => "enter a cgroup namespace".into(),
            Stage::Fds => format!("pass descriptor {i}"),
            Stage::Capabilities => "drop capabilities".into(),
            Stage::NoNewPrivs => "set no_new_privs".into(),
            Stage::Seccomp => format!("install seccomp program {i} of {}", cfg.seccomp.name),
            Stage::Exec => format!("exec {}", cfg.program.display()),
        }
    }
}

/// Descriptors of the two pipes, as the child sees them.
#[derive(Clone, Copy)]
struct Pipes {
    go_read: RawFd,
    go_write: RawFd,
    err_read: RawFd,
    err_write: RawFd,
}

/// Starts `cfg.program` confined. Blocks until the program is executing
/// (or failed to): a few milliseconds of mount calls.
pub fn spawn(mut cfg: JailConfig) -> Result<JailedProcess, JailError> {
    let name = cfg.name.clone();
    let os = |what: &str| {
        let (name, what) = (name.clone(), what.to_string());
        move |e: nix::Error| JailError::Os {
            name,
            what,
            source: e.into(),
        }
    };
    let devnull =
        OwnedFd::from(
            std::fs::File::open("/dev/null").map_err(|source| JailError::Os {
                name: name.clone(),
                what: "open /dev/null".into(),
                source,
            })?,
        );
    let prepared = Prepared::new(&cfg, &devnull)?;
    let (go_read, go_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(os("pipe"))?;
    let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(os("pipe"))?;
    let pipes = Pipes {
        go_read: go_read.as_raw_fd(),
        go_write: go_write.as_raw_fd(),
        err_read: err_read.as_raw_fd(),
        err_write: err_write.as_raw_fd(),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    let mut scratch = vec![-1 as RawFd; prepared.fds.len()];
    let child = Box::new(|| {
        let mut report = pipes.err_write;
        let Err(f) = child_main(&prepared, pipes, &mut report, &mut scratch);
        let msg = f.encode();
        // SAFETY: writes 12 bytes from a live buffer to a descriptor the
        // child owns; nothing else can be done about a failure here.
        unsafe { libc::write(report, msg.as_ptr().cast(), msg.len()) };
        1
    });
    let flags = namespaces::clone_flags(cfg.new_network);
    // SAFETY: the child runs `child_main` on its own stack in a copy of
    // this address space (no CLONE_VM); it only makes syscalls on data
    // prepared above, never allocates or takes a lock, and leaves by execve
    // or by returning (clone then calls _exit).
    let pid = unsafe { clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(os("clone into new namespaces"))?;
    drop(go_read);
    drop(err_write);
    let process = JailedProcess::adopt(&name, pid).map_err(|source| JailError::Os {
        name: name.clone(),
        what: "pidfd_open".into(),
        source,
    })?;
    // From here the child is ours: `process` kills and reaps it on error.
    namespaces::write_id_maps(&name, pid, cfg.identity)?;
    cgroup::join(&name, pid, &cfg.cgroups)?;
    caps::set_limits(&name, pid, &cfg.limits)?;
    nix::unistd::write(&go_write, b"g").map_err(os("start the child"))?;
    drop(go_write);
    let mut report = Vec::new();
    std::fs::File::from(err_read)
        .read_to_end(&mut report)
        .map_err(|source| JailError::Os {
            name: name.clone(),
            what: "read the child's report".into(),
            source,
        })?;
    drop(std::mem::take(&mut cfg.fds));
    if report.is_empty() {
        tracing::debug!(name, pid = pid.as_raw(), program = %cfg.program.display(), "jailed");
        return Ok(process);
    }
    let failure = Failure::decode(&report).unwrap_or(Failure {
        stage: Stage::Wait,
        index: 0,
        errno: libc::EIO,
    });
    Err(JailError::Setup {
        name,
        step: prepared.describe(&cfg, failure),
        source: nix::Error::from_raw(failure.errno),
    })
}

/// The child's side: returns only on failure.
fn child_main(
    p: &Prepared,
    pipes: Pipes,
    report: &mut RawFd,
    scratch: &mut [RawFd],
) -> Result<Infallible, Failure> {
    let _ = nix::unistd::close(pipes.go_write);
    let _ = nix::unistd::close(pipes.err_read);
    // The program starts with no blocked signal and SIGPIPE at its default
    // (the Rust runtime ignores it, and an ignored signal stays so at exec).
    let signals = Failure::at(Stage::Wait, 1);
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(signals)?;
    // SAFETY: restores the default disposition; no handler is installed.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map_err(signals)?;
    if p.kill_with_parent {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(Failure::at(Stage::Wait, 0))?;
    }
    let mut go = [0u8; 1];
    match nix::unistd::read(pipes.go_read, &mut go) {
        Ok(1) => {}
        // The parent gave up (or died): leave without a word.
        Ok(_) => return Err(Failure::at(Stage::Wait, 0)(nix::Error::EPIPE)),
        Err(e) => return Err(Failure::at(Stage::Wait, 0)(e)),
    }
    let _ = nix::unistd::close(pipes.go_read);

    // The ids first, so that what the child creates in its root is owned
    // by a mapped id. Setting them from an unmapped uid (host root) keeps
    // the namespace creator's capabilities: the kernel clears them only on
    // leaving the namespace's uid 0, and uid 0 is not mapped.
    //
    // Raw system calls, not libc's wrappers: glibc's setgroups/setres[ug]id
    // broadcast the change to every thread it knows of (nptl's setxid),
    // and this child, cloned without fork's bookkeeping, still lists the
    // parent's threads: the wrapper waits for threads that do not exist
    // here, forever (seen as concurrent jail spawns hanging). The kernel
    // call changes the calling thread's ids, the only thread there is.
    let ids = Failure::at(Stage::Ids, 0);
    let id_call = |rc: libc::c_long| {
        if rc == 0 {
            Ok(())
        } else {
            Err(ids(nix::Error::last()))
        }
    };
    // SAFETY: setgroups(2) with an empty list (no pointer read); the
    // setres[ug]id(2) calls take integers only.
    id_call(unsafe {
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
    })?;
    id_call(unsafe {
        libc::syscall(
            libc::SYS_setresgid,
            p.gid.as_raw(),
            p.gid.as_raw(),
            p.gid.as_raw(),
        )
    })?;
    id_call(unsafe {
        libc::syscall(
            libc::SYS_setresuid,
            p.uid.as_raw(),
            p.uid.as_raw(),
            p.uid.as_raw(),
        )
    })?;
    // Changing the effective ids cleared the parent-death signal (the
    // kernel does on every such change): set it again, or a jailed
    // program outlives a SIGKILLed owner (`capsa run` killed -9: found by
    // the `run` suite on UML). Set before the ids too, so that the wait
    // for "go" is covered.
    if p.kill_with_parent {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(Failure::at(Stage::Ids, 1))?;
    }

    build_root(p)?;
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(Failure::at(Stage::CgroupNamespace, 0))?;
    arrange_fds(p, report, scratch)?;
    caps::drop_all(&p.bounding).map_err(Failure::at(Stage::Capabilities, 0))?;
    nix::sys::prctl::set_no_new_privs().map_err(Failure::at(Stage::NoNewPrivs, 0))?;
    for (i, program) in p.programs.iter().enumerate() {
        seccompiler::apply_filter(program).map_err(|_| Failure {
            stage: Stage::Seccomp,
            index: i as u32,
            errno: nix::Error::last() as i32,
        })?;
    }
    // nix's execve builds its pointer arrays (allocates): ours are ready.
    // SAFETY: `program` is a C string; `argv` and `envp` are
    // null-terminated arrays of pointers to C strings in `p._strings`,
    // alive until the exec replaces this image.
    unsafe { libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
    Err(Failure::at(Stage::Exec, 0)(nix::Error::last()))
}

/// Mounts the private root and enters it.
fn build_root(p: &Prepared) -> Result<(), Failure> {
    let plan = &p.plan;
    mount(
        None::<&CStr>,
        c"/",
        None::<&CStr>,
        MsFlags::MS_REC | plan.propagation,
        None::<&CStr>,
    )
    .map_err(Failure::at(Stage::PrivateMounts, 0))?;
    mount(
        Some(c"tmpfs"),
        plan.staging.as_c_str(),
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(plan.root_tmpfs.as_c_str()),
    )
    .map_err(Failure::at(Stage::RootTmpfs, 0))?;
    let pivot = Failure::at(Stage::PivotRoot, 0);
    nix::unistd::mkdir(
        plan.host_in_staging.as_c_str(),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )
    .map_err(pivot)?;
    nix::unistd::pivot_root(plan.staging.as_c_str(), plan.host_in_staging.as_c_str())
        .map_err(pivot)?;
    nix::unistd::chdir(c"/").map_err(pivot)?;
    for (i, op) in plan.ops.iter().enumerate() {
        op.run().map_err(Failure::at(Stage::Root, i))?;
    }
    nix::unistd::sethostname(&p.hostname).map_err(Failure::at(Stage::Hostname, 0))?;
    let detach = Failure::at(Stage::DetachHost, 0);
    umount2(plan.host.as_c_str(), MntFlags::MNT_DETACH).map_err(detach)?;
    nix::unistd::unlinkat(
        None,
        plan.host.as_c_str(),
        nix::unistd::UnlinkatFlags::RemoveDir,
    )
    .map_err(detach)?;
    mount(
        None::<&CStr>,
        c"/",
        None::<&CStr>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&CStr>,
    )
    .map_err(Failure::at(Stage::RootReadOnly, 0))?;
    nix::unistd::chdir(plan.cwd.as_c_str()).map_err(Failure::at(Stage::Cwd, 0))
}

/// Gives the program its descriptors under their numbers; every other
/// descriptor closes at exec. The report pipe moves out of their way:
/// `report` is its new number.
fn arrange_fds(p: &Prepared, report: &mut RawFd, scratch: &mut [RawFd]) -> Result<(), Failure> {
    let high = |fd: RawFd, i: usize| {
        fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(p.scratch_base)).map_err(Failure::at(Stage::Fds, i))
    };
    *report = high(*report, 0)?;
    for (i, (from, _)) in p.fds.iter().enumerate() {
        scratch[i] = high(*from, i)?;
    }
    // Everything close-on-exec (CLOSE_RANGE_CLOEXEC: Linux 5.11), then the
    // program's descriptors without the flag (dup2 clears it).
    // SAFETY: close_range(2) with integer arguments; it only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            0u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(Failure::at(Stage::Fds, 0)(nix::Error::last()));
    }
    for (i, (_, to)) in p.fds.iter().enumerate() {
        nix::unistd::dup2(scratch[i], *to).map_err(Failure::at(Stage::Fds, i))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_survives_the_pipe() {
        let f = Failure {
            stage: Stage::Seccomp,
            index: 1,
            errno: libc::EINVAL,
        };
        let back = Failure::decode(&f.encode()).unwrap();
        assert_eq!(
            (back.stage, back.index, back.errno),
            (Stage::Seccomp, 1, libc::EINVAL)
        );
        assert!(Failure::decode(&[1, 2, 3]).is_none());
        assert!(Failure::decode(&[99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }
}
