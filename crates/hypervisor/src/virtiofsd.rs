//! How virtiofsd is confined so that a hostile guest cannot plant, on the
//! host, a device node or a set-id file that a host user could use.
//!
//! virtiofsd runs as root and creates what the guest asks for with the
//! guest's uid and gid: as guest root, a char device `c 10 232` (the host's
//! `/dev/kvm`) or a root-owned `chmod 4755` binary would be real on the
//! host. Two layers stop that:
//!
//! * capabilities ([`MODCAPS`]): no `CAP_MKNOD` (no device nodes),
//!   `CAP_SETFCAP` (no `security.capability` xattr, i.e. no file
//!   capabilities, even with `--xattr`) or `CAP_FSETID` (a write or chown
//!   clears set-id bits; a set-gid bit for a foreign group is dropped);
//! * a seccomp filter ([`filters`]), installed in the child before it
//!   execs virtiofsd (filters survive exec and stack with virtiofsd's own):
//!   dropping capabilities cannot stop root from `chmod 4755` of a file it
//!   owns, so every call that sets a mode answers `EPERM` when that mode
//!   has `S_ISUID` or `S_ISGID` (or, for `mknod`, is a char or block
//!   device); `openat2`, whose mode sits in a structure seccomp cannot
//!   read, answers `ENOSYS`, and virtiofsd falls back to `openat`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::Error;

/// virtiofsd's `--modcaps`: the capabilities it must not keep.
pub const MODCAPS: &str = "--modcaps=-mknod:-setfcap:-fsetid";

/// `__O_TMPFILE` (`O_TMPFILE` without `O_DIRECTORY`): a file created
/// unnamed, with a mode, and linked later.
const O_TMPFILE_BIT: u64 = 0o20_000_000;

/// Where a syscall carries the mode it sets.
struct ModeCall {
    nr: i64,
    /// Index of the mode argument.
    mode: u8,
    /// Index of the open flags, for calls that create only with `O_CREAT`
    /// or `O_TMPFILE` (elsewhere their mode argument is not read).
    flags: Option<u8>,
    /// A `mknod`: a char or block device type is refused too.
    node: bool,
}

const fn call(nr: i64, mode: u8, flags: Option<u8>, node: bool) -> ModeCall {
    ModeCall {
        nr,
        mode,
        flags,
        node,
    }
}

/// `fchmodat2(2)` (Linux 6.6): its number is the same on every architecture.
const SYS_FCHMODAT2: i64 = 452;

fn mode_calls() -> Vec<ModeCall> {
    let mut calls = vec![
        call(libc::SYS_fchmod, 1, None, false),
        call(libc::SYS_fchmodat, 2, None, false),
        call(SYS_FCHMODAT2, 2, None, false),
        call(libc::SYS_mkdirat, 2, None, false),
        call(libc::SYS_mknodat, 2, None, true),
        call(libc::SYS_openat, 3, Some(2), false),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        call(libc::SYS_chmod, 1, None, false),
        call(libc::SYS_creat, 1, None, false),
        call(libc::SYS_mkdir, 1, None, false),
        call(libc::SYS_mknod, 1, None, true),
        call(libc::SYS_open, 2, Some(1), false),
    ]);
    calls
}

/// `(arg & mask) == value` on a 32-bit argument (modes and flags are ints).
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, Error> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .map_err(seccomp_err)
}

fn seccomp_err(e: impl std::fmt::Display) -> Error {
    Error::Seccomp(e.to_string())
}

/// The rules that refuse one call: any of them matching answers EPERM.
fn rules(call: &ModeCall) -> Result<Vec<SeccompRule>, Error> {
    let setid = [libc::S_ISUID as u64, libc::S_ISGID as u64];
    let mut sets: Vec<Vec<SeccompCondition>> = Vec::new();
    for bit in setid {
        let mode = masked(call.mode, bit, bit)?;
        match call.flags {
            None => sets.push(vec![mode]),
            Some(flags) => {
                let creat = libc::O_CREAT as u64;
                sets.push(vec![masked(flags, creat, creat)?, mode.clone()]);
                sets.push(vec![masked(flags, O_TMPFILE_BIT, O_TMPFILE_BIT)?, mode]);
            }
        }
    }
    if call.node {
        for kind in [libc::S_IFCHR, libc::S_IFBLK] {
            sets.push(vec![masked(call.mode, libc::S_IFMT as u64, kind as u64)?]);
        }
    }
    sets.into_iter()
        .map(|c| SeccompRule::new(c).map_err(seccomp_err))
        .collect()
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(seccomp_err)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(seccomp_err)?;
    BpfProgram::try_from(filter).map_err(seccomp_err)
}

/// The programs to install in virtiofsd's process before it execs: one
/// answering EPERM to set-id modes and device nodes, one answering ENOSYS
/// to `openat2`. Built before the fork (building allocates).
pub fn filters() -> Result<Vec<BpfProgram>, Error> {
    let mut refused = BTreeMap::new();
    for c in mode_calls() {
        refused.insert(c.nr, rules(&c)?);
    }
    let openat2 = BTreeMap::from([(libc::SYS_openat2, Vec::new())]);
    Ok(vec![
        compile(refused, libc::EPERM)?,
        compile(openat2, libc::ENOSYS)?,
    ])
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Runs `f` in a forked child with the filters installed; returns its
    /// exit code.
    fn in_filtered_child(f: impl FnOnce() -> i32) -> i32 {
        let programs = filters().unwrap();
        // SAFETY: the test's child only makes syscalls and exits; it never
        // returns into the test harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                for p in &programs {
                    if seccompiler::apply_filter(p).is_err() {
                        // SAFETY: _exit ends the child at once.
                        unsafe { libc::_exit(100) };
                    }
                }
                let code = f();
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("filtered child: {other:?}"),
                }
            }
        }
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn set_id_modes_and_device_nodes_are_refused_the_rest_works() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| CString::new(dir.path().join(name).to_str().unwrap()).unwrap();
        let (file, node, fifo, suid, sub) = (p("f"), p("kvm"), p("fifo"), p("suid"), p("d"));
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let code = in_filtered_child(|| {
            // SAFETY: each call reads NUL-terminated paths that outlive it.
            let results = unsafe {
                [
                    // Refused:
                    errno_of(libc::chmod(file.as_ptr(), 0o4755).into()) == libc::EPERM,
                    errno_of(libc::chmod(file.as_ptr(), 0o2755).into()) == libc::EPERM,
                    errno_of(
                        libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 232))
                            .into(),
                    ) == libc::EPERM,
                    errno_of(
                        libc::open(suid.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o4755).into(),
                    ) == libc::EPERM,
                    errno_of(libc::syscall(
                        libc::SYS_openat2,
                        libc::AT_FDCWD,
                        file.as_ptr(),
                        0,
                        0,
                    )) == libc::ENOSYS,
                    // Allowed:
                    errno_of(libc::chmod(file.as_ptr(), 0o755).into()) == 0,
                    errno_of(libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o644, 0).into()) == 0,
                    errno_of(libc::mkdir(sub.as_ptr(), 0o755).into()) == 0,
                    errno_of(libc::open(file.as_ptr(), libc::O_RDONLY).into()) == 0,
                ]
            };
            results
                .iter()
                .position(|ok| !ok)
                .map_or(0, |i| i as i32 + 1)
        });
        assert_eq!(code, 0, "check {code} failed (1-based, in the list above)");
        let mode = std::fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(!dir.path().join("kvm").exists());
        assert!(!dir.path().join("suid").exists());
    }
}
