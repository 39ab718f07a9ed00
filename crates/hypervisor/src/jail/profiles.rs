//! The seccomp profiles of the programs a UML pod runs: the UML kernel
//! process (with its guest processes, which inherit the filter) and its
//! vhost-user helpers. Lists taken from `strace -f -c` of each program
//! here, checked against their sources (UML: `arch/um/os-Linux`,
//! `arch/um/drivers/*_user.c`; virtiofsd: its own `seccomp.rs`).
//!
//! The guest's own system calls never reach this filter: UML runs guest
//! processes under `PTRACE_SYSEMU`, which stops them at syscall entry and
//! skips the call before seccomp runs. What the filter bounds is the UML
//! kernel process itself (if a guest takes it over) and the stub code UML
//! runs inside each guest process (`mmap`, `munmap`, `mprotect`, a trap).

use super::seccomp::{Deny, SeccompProfile};

/// What any glibc or Rust program calls to run: memory, threads, signals,
/// time, descriptors, polling.
const RUNTIME: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_arch_prctl,
    libc::SYS_prlimit64,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_tgkill,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_membarrier,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_ioctl,
    libc::SYS_prctl,
];

/// Threads (`clone3` answers ENOSYS: glibc then uses `clone`).
const THREADS: &[i64] = &[libc::SYS_clone];

/// A vhost-user backend's sockets: it listens on a Unix socket and
/// exchanges messages carrying descriptors (guest memory, eventfds).
const VHOST_USER: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// What the UML kernel process adds: tracing its guest processes, its
/// timers and signals (SIGALRM, SIGIO), its block and memory files, the
/// vhost-user and vector transports, and its helper threads.
const UML: &[i64] = &[
    libc::SYS_epoll_create,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_delete,
    libc::SYS_setitimer,
    libc::SYS_getitimer,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_pause,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_socketpair,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_flock,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_umask,
    libc::SYS_fchmod,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_getpgrp,
    libc::SYS_setsid,
    libc::SYS_sched_setaffinity,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_personality,
];

/// The `ptrace(2)` requests UML makes (`arch/um/os-Linux`,
/// `arch/x86/um`): it traces only the children it clones, which ask for
/// it (`PTRACE_TRACEME`); attaching to anything else
/// (`PTRACE_ATTACH`, `PTRACE_SEIZE`) is refused.
const UML_PTRACE: &[u64] = &[
    0,      // PTRACE_TRACEME
    3,      // PTRACE_PEEKUSER
    6,      // PTRACE_POKEUSER
    7,      // PTRACE_CONT
    8,      // PTRACE_KILL
    12,     // PTRACE_GETREGS
    13,     // PTRACE_SETREGS
    14,     // PTRACE_GETFPREGS
    15,     // PTRACE_SETFPREGS
    18,     // PTRACE_GETFPXREGS
    19,     // PTRACE_SETFPXREGS
    21,     // PTRACE_OLDSETOPTIONS
    24,     // PTRACE_SYSCALL
    25,     // PTRACE_GET_THREAD_AREA
    26,     // PTRACE_SET_THREAD_AREA
    30,     // PTRACE_ARCH_PRCTL
    31,     // PTRACE_SYSEMU
    32,     // PTRACE_SYSEMU_SINGLESTEP
    0x4200, // PTRACE_SETOPTIONS
    0x4202, // PTRACE_GETSIGINFO
    0x4204, // PTRACE_GETREGSET
    0x4205, // PTRACE_SETREGSET
];

/// Socket families UML opens: Unix (vhost-user, its management console).
/// The pod's tap is opened by the driver and passed as a descriptor
/// (vector `transport=fd`), so no packet socket is needed.
const UML_SOCKET_FAMILIES: &[u64] = &[libc::AF_UNIX as u64];

/// The UML kernel process and its guest processes. A call outside it
/// fails with `EPERM`: UML reports the failing call in its console log,
/// where a kill would leave only the kernel's audit line.
pub fn uml_kernel() -> SeccompProfile {
    let sockets: Vec<i64> = VHOST_USER
        .iter()
        .copied()
        .filter(|&nr| nr != libc::SYS_socket)
        .collect();
    SeccompProfile::new("uml-kernel", Deny::Errno(libc::EPERM))
        .allow(RUNTIME)
        .allow(THREADS)
        .allow(&sockets)
        .allow(UML)
        .allow_values(libc::SYS_ptrace, 0, UML_PTRACE)
        .allow_values(libc::SYS_socket, 0, UML_SOCKET_FAMILIES)
}

/// `vhost-device-vsock`: a vhost-user backend that also connects to and
/// accepts on the host side's Unix sockets. It has no filter of its own.
pub fn vhost_device_vsock() -> SeccompProfile {
    SeccompProfile::new("vhost-device-vsock", Deny::Errno(libc::EPERM))
        .allow(RUNTIME)
        .allow(THREADS)
        .allow(VHOST_USER)
        .allow_values(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])
}

/// File-system calls virtiofsd makes on the shared directory.
const VIRTIOFSD_FS: &[i64] = &[
    libc::SYS_open,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_copy_file_range,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_flock,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_utimensat,
    libc::SYS_umask,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
];

/// virtiofsd run unprivileged (`--sandbox=none`: this jail is its
/// sandbox). Its own, stricter allow-list (`--seccomp=kill`, the default)
/// stacks on this one once it has started, so this one covers its start
/// too: capability probing, installing that filter, `unshare(CLONE_FS)`
/// per thread.
pub fn virtiofsd() -> SeccompProfile {
    SeccompProfile::new("virtiofsd", Deny::Errno(libc::EPERM))
        .allow(RUNTIME)
        .allow(THREADS)
        .allow(VHOST_USER)
        .allow(VIRTIOFSD_FS)
        .allow(&[
            libc::SYS_capget,
            libc::SYS_capset,
            libc::SYS_getgroups,
            libc::SYS_getresuid,
            libc::SYS_getresgid,
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_seccomp,
            libc::SYS_unshare,
        ])
        .allow_values(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_compiles() {
        for p in [uml_kernel(), vhost_device_vsock(), virtiofsd()] {
            let programs = p.programs().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                programs.len(),
                2,
                "{}: ENOSYS answers and allow-list",
                p.name
            );
        }
    }

    #[test]
    fn uml_traces_and_clones_but_makes_no_namespace_or_mount() {
        let p = uml_kernel();
        for nr in [
            libc::SYS_ptrace,
            libc::SYS_wait4,
            libc::SYS_clone,
            libc::SYS_execve,
        ] {
            assert!(p.allows(nr), "{nr}");
        }
        for nr in [
            libc::SYS_unshare,
            libc::SYS_mount,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_keyctl,
            libc::SYS_process_vm_writev,
            libc::SYS_seccomp,
        ] {
            assert!(!p.allows(nr), "{nr}");
        }
    }
}
