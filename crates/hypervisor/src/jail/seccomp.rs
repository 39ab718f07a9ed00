//! The seccomp allow-list of a jailed program: a [`SeccompProfile`] is data
//! (which syscalls, with which arguments), compiled with Firecracker's
//! `seccompiler` (pure Rust, no libseccomp to link) into the BPF programs
//! the jail installs before `execve`.
//!
//! Whatever a profile says, [`SeccompProfile::programs`] enforces:
//!
//! * `execve` is allowed (the filter is installed before the program
//!   starts; `no_new_privs` means an exec gains nothing);
//! * `clone` and `unshare` only without namespace flags (virtiofsd
//!   unshares `CLONE_FS` per thread), and `clone3` (whose flags sit in
//!   memory seccomp cannot read) answers `ENOSYS`, so libc falls back to
//!   `clone`: a jailed program never makes a namespace, so never regains
//!   capabilities in one;
//! * the calls in [`FORBIDDEN`] (namespaces, mounts, keyrings, BPF, kernel
//!   modules, io_uring, ...) are refused at build time if a profile lists
//!   them: a profile cannot open them by mistake.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::JailError;

/// What a syscall outside the allow-list gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    /// Fails with this errno (`EPERM`): the program sees an error it can
    /// report, and the host stays as it was.
    Errno(i32),
    /// The whole process is killed (`SIGSYS`, logged by the kernel's audit).
    KillProcess,
    /// Allowed but logged by the kernel: to find what a program needs,
    /// never for production.
    Log,
}

impl Deny {
    fn action(self) -> SeccompAction {
        match self {
            Deny::Errno(e) => SeccompAction::Errno(e as u32),
            Deny::KillProcess => SeccompAction::KillProcess,
            Deny::Log => SeccompAction::Log,
        }
    }
}

/// `(argument & mask) == value`, on the whole 64-bit argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    /// Index of the argument, 0 to 5.
    pub arg: u8,
    pub mask: u64,
    pub value: u64,
}

impl ArgCheck {
    /// The argument equals `value`.
    pub const fn eq(arg: u8, value: u64) -> Self {
        Self {
            arg,
            mask: u64::MAX,
            value,
        }
    }

    /// The bits of `mask` in the argument equal those of `value`.
    pub const fn masked(arg: u8, mask: u64, value: u64) -> Self {
        Self { arg, mask, value }
    }
}

/// When a syscall is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Always,
    /// If any of these lists matches (each list: all its checks hold).
    When(Vec<Vec<ArgCheck>>),
}

/// The namespace flags of `clone(2)`.
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;

/// Syscalls no profile may allow: they create or enter namespaces, change
/// mounts, or open kernel interfaces a confined program never needs and
/// that are frequent sources of kernel bugs.
pub const FORBIDDEN: &[(i64, &str)] = &[
    (libc::SYS_setns, "setns"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
];

/// A program's seccomp allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompProfile {
    pub name: String,
    pub deny: Deny,
    allowed: BTreeMap<i64, Allowed>,
    /// Calls answered with an errno instead of being run.
    answers: BTreeMap<i64, i32>,
}

impl SeccompProfile {
    /// An empty allow-list (only what the jail itself adds).
    pub fn new(name: impl Into<String>, deny: Deny) -> Self {
        Self {
            name: name.into(),
            deny,
            allowed: BTreeMap::new(),
            answers: BTreeMap::new(),
        }
    }

    /// Allows `syscalls` with any arguments.
    pub fn allow(mut self, syscalls: &[i64]) -> Self {
        for &nr in syscalls {
            self.allowed.insert(nr, Allowed::Always);
        }
        self
    }

    /// Allows `syscall` when all of `checks` hold (calls add alternatives).
    pub fn allow_when(mut self, syscall: i64, checks: &[ArgCheck]) -> Self {
        match self
            .allowed
            .entry(syscall)
            .or_insert_with(|| Allowed::When(Vec::new()))
        {
            Allowed::Always => {}
            Allowed::When(alternatives) => alternatives.push(checks.to_vec()),
        }
        self
    }

    /// Allows `syscall` when argument `arg` is one of `values`.
    pub fn allow_values(self, syscall: i64, arg: u8, values: &[u64]) -> Self {
        values
            .iter()
            .fold(self, |p, &v| p.allow_when(syscall, &[ArgCheck::eq(arg, v)]))
    }

    /// Answers `syscall` with `errno` without running it.
    pub fn answer(mut self, syscall: i64, errno: i32) -> Self {
        self.answers.insert(syscall, errno);
        self
    }

    /// Whether `syscall` may run, with some arguments at least.
    pub fn allows(&self, syscall: i64) -> bool {
        self.effective().0.contains_key(&syscall)
    }

    /// The allow-list and answers with the jail's rules applied.
    fn effective(&self) -> (BTreeMap<i64, Allowed>, BTreeMap<i64, i32>) {
        let mut allowed = self.allowed.clone();
        let mut answers = self.answers.clone();
        allowed.insert(libc::SYS_execve, Allowed::Always);
        let no_namespace = ArgCheck::masked(0, NAMESPACE_FLAGS, 0);
        for nr in [libc::SYS_clone, libc::SYS_unshare] {
            if let Some(call) = allowed.get_mut(&nr) {
                *call = match call {
                    Allowed::Always => Allowed::When(vec![vec![no_namespace]]),
                    Allowed::When(alts) => Allowed::When(
                        alts.iter()
                            .map(|a| a.iter().copied().chain([no_namespace]).collect())
                            .collect(),
                    ),
                };
            }
        }
        allowed.remove(&libc::SYS_clone3);
        answers.insert(libc::SYS_clone3, libc::ENOSYS);
        // An answered call passes the allow-list; its answer filter decides.
        for &nr in answers.keys() {
            allowed.insert(nr, Allowed::Always);
        }
        (allowed, answers)
    }

    fn error(&self, reason: impl Into<String>) -> JailError {
        JailError::Profile {
            profile: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Compiles the profile: one program per answered errno, then the
    /// allow-list, which must come last since installing a filter is a
    /// syscall the allow-list may not allow. The answered calls pass the
    /// allow-list, and an errno outranks an allow, so the answers decide.
    /// Built before the jail forks: building allocates.
    pub fn programs(&self) -> Result<Vec<BpfProgram>, JailError> {
        for &(nr, name) in FORBIDDEN {
            if self.allowed.contains_key(&nr) {
                return Err(self.error(format!("it allows {name}, which no jail may")));
            }
        }
        let (allowed, answers) = self.effective();
        let mut rules = BTreeMap::new();
        for (nr, allowed) in allowed {
            let list = match allowed {
                Allowed::Always => Vec::new(),
                Allowed::When(alts) => alts
                    .iter()
                    .map(|checks| self.rule(nr, checks))
                    .collect::<Result<_, _>>()?,
            };
            rules.insert(nr, list);
        }
        let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for (nr, errno) in answers {
            by_errno.entry(errno).or_default().insert(nr, Vec::new());
        }
        let mut programs = Vec::new();
        for (errno, rules) in by_errno {
            programs.push(self.compile(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
            )?);
        }
        programs.push(self.compile(rules, self.deny.action(), SeccompAction::Allow)?);
        Ok(programs)
    }

    fn rule(&self, nr: i64, checks: &[ArgCheck]) -> Result<SeccompRule, JailError> {
        let conditions = checks
            .iter()
            .map(|c| {
                SeccompCondition::new(
                    c.arg,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(c.mask),
                    c.value,
                )
                .map_err(|e| self.error(format!("syscall {nr}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        SeccompRule::new(conditions).map_err(|e| self.error(format!("syscall {nr}: {e}")))
    }

    fn compile(
        &self,
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        mismatch: SeccompAction,
        matched: SeccompAction,
    ) -> Result<BpfProgram, JailError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|e| self.error(format!("architecture: {e}")))?;
        let filter = SeccompFilter::new(rules, mismatch, matched, arch)
            .map_err(|e| self.error(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| self.error(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SeccompProfile {
        SeccompProfile::new("test", Deny::Errno(libc::EPERM)).allow(&[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_exit_group,
        ])
    }

    #[test]
    fn execve_is_always_allowed_and_clone3_always_answers_enosys() {
        let p = base();
        assert!(p.allows(libc::SYS_execve));
        let (allowed, answers) = p.effective();
        assert_eq!(answers.get(&libc::SYS_clone3), Some(&libc::ENOSYS));
        assert_eq!(allowed.get(&libc::SYS_clone3), Some(&Allowed::Always));
        assert!(!p.allows(libc::SYS_clone));
        // The ENOSYS answers, then the allow-list.
        assert_eq!(p.programs().unwrap().len(), 2);
    }

    #[test]
    fn clone_and_unshare_are_allowed_only_without_namespace_flags() {
        let no_ns = ArgCheck::masked(0, NAMESPACE_FLAGS, 0);
        let (allowed, _) = base()
            .allow(&[libc::SYS_clone, libc::SYS_unshare])
            .effective();
        for nr in [libc::SYS_clone, libc::SYS_unshare] {
            assert_eq!(allowed[&nr], Allowed::When(vec![vec![no_ns]]));
        }
        let thread = ArgCheck::masked(0, libc::CLONE_THREAD as u64, libc::CLONE_THREAD as u64);
        let (allowed, _) = base().allow_when(libc::SYS_clone, &[thread]).effective();
        assert_eq!(
            allowed[&libc::SYS_clone],
            Allowed::When(vec![vec![thread, no_ns]])
        );
    }

    #[test]
    fn forbidden_syscalls_are_refused_naming_them() {
        let err = base().allow(&[libc::SYS_mount]).programs().unwrap_err();
        assert_eq!(
            err.to_string(),
            "seccomp profile test: it allows mount, which no jail may"
        );
        let err = base()
            .allow_values(libc::SYS_setns, 1, &[0])
            .programs()
            .unwrap_err();
        assert!(err.to_string().contains("setns"), "{err}");
    }

    #[test]
    fn always_wins_over_conditions_and_values_add_alternatives() {
        let p = base().allow_values(libc::SYS_ptrace, 0, &[1, 2, 3]);
        match &p.effective().0[&libc::SYS_ptrace] {
            Allowed::When(alts) => assert_eq!(alts.len(), 3),
            other => panic!("{other:?}"),
        }
        let p = p
            .allow(&[libc::SYS_ptrace])
            .allow_values(libc::SYS_ptrace, 0, &[4]);
        assert_eq!(p.effective().0[&libc::SYS_ptrace], Allowed::Always);
    }

    #[test]
    fn answers_pass_the_allow_list_and_group_by_errno() {
        let p = base()
            .answer(libc::SYS_openat2, libc::ENOSYS)
            .answer(libc::SYS_memfd_secret, libc::EPERM);
        assert!(p.allows(libc::SYS_openat2));
        // EPERM answers, ENOSYS answers (clone3 and openat2), allow-list.
        assert_eq!(p.programs().unwrap().len(), 3);
    }

    #[test]
    fn a_bad_argument_index_names_the_syscall() {
        let err = base()
            .allow_when(libc::SYS_ioctl, &[ArgCheck::eq(9, 0)])
            .programs()
            .unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "seccomp profile test: syscall {}",
                libc::SYS_ioctl
            )),
            "{err}"
        );
    }
}
