//! Confinement of a host process that is a security boundary: a User-Mode
//! Linux kernel and its vhost-user helpers (models: Firecracker's `jailer`,
//! gVisor's `runsc` sandbox). Driver-agnostic: a driver builds a
//! [`JailConfig`] and calls [`spawn`].
//!
//! The program runs, from its first instruction:
//!
//! * as an unprivileged host uid/gid ([`Identity`]), mapped one to one in a
//!   new **user namespace** (see [`namespaces`] for why this and not a
//!   range with uid 0 inside);
//! * in its own **mount, PID, IPC, UTS and cgroup** namespaces (and,
//!   optionally, an empty network namespace); it is PID 1 of its PID
//!   namespace, so everything it forks dies with it;
//! * in a **private root**: a fresh tmpfs it cannot write, holding only the
//!   caller's [`BindMount`]s and [`Tmpfs`]es ([`root`]);
//! * with **no capabilities** in any set, the bounding set emptied, and
//!   `no_new_privs` ([`caps`]);
//! * under a **seccomp allow-list** ([`seccomp::SeccompProfile`]), installed
//!   before `execve`, so everything the program forks (UML's guest
//!   processes are its ptrace children) inherits it ([`profiles`] holds
//!   the profiles of the UML kernel and its helpers);
//! * with **resource limits** ([`Limits`]; no core dumps) and in the given
//!   **cgroups** ([`cgroup`]).
//!
//! The threat model this serves is `docs/threat-model-uml.md`.

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

pub mod caps;
pub mod cgroup;
pub mod namespaces;
mod process;
#[cfg(target_arch = "x86_64")]
pub mod profiles;
pub mod root;
pub mod seccomp;
mod spawn;

pub use process::JailedProcess;
pub use seccomp::{ArgCheck, Deny, SeccompProfile};
pub use spawn::spawn;

/// The unprivileged host ids the program runs as. Both must be non-zero.
/// Each pod should get its own (from root's subordinate range in
/// `/etc/subuid`), so that two pods never share a uid on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// A host path made visible inside the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (a directory, a regular file or a device node). Symbolic
    /// links are resolved on the host. The bind is made as the jail's uid:
    /// every directory above the source must be searchable by it.
    pub source: PathBuf,
    /// Absolute path inside the jail.
    pub target: PathBuf,
    /// Read-write; read-only otherwise.
    pub writable: bool,
    /// Files under it cannot be executed or mapped executable.
    pub noexec: bool,
    /// The mounts below the source come too, and so do those the host
    /// makes below it later (the jail's copies are slaves of the host's:
    /// nothing made in the jail goes back). Otherwise the bind is the
    /// source alone, and private.
    pub recursive: bool,
}

impl BindMount {
    /// `source`, read-only, at the same path inside the jail.
    pub fn read_only(source: impl Into<PathBuf>) -> Self {
        let source = source.into();
        Self {
            target: source.clone(),
            source,
            writable: false,
            noexec: false,
            recursive: false,
        }
    }

    /// `source`, read-write and not executable, at the same path inside.
    pub fn read_write(source: impl Into<PathBuf>) -> Self {
        Self {
            writable: true,
            noexec: true,
            ..Self::read_only(source)
        }
    }

    /// The same mount at another path inside the jail.
    pub fn at(mut self, target: impl Into<PathBuf>) -> Self {
        self.target = target.into();
        self
    }

    /// With the mounts below the source, now and later ([`BindMount::recursive`]).
    pub fn recursive(mut self) -> Self {
        self.recursive = true;
        self
    }

    /// Allows executable mappings (UML maps its guest RAM file `PROT_EXEC`).
    pub fn exec(mut self) -> Self {
        self.noexec = false;
        self
    }
}

/// A private, writable tmpfs inside the jail (`nosuid,nodev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub target: PathBuf,
    pub size_bytes: u64,
    /// Files under it cannot be executed or mapped executable.
    pub noexec: bool,
}

/// Resource limits, soft and hard alike. Core dumps are always off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE`: open files.
    pub open_files: u64,
    /// `RLIMIT_NPROC`: processes and threads of the jail's uid (for UML:
    /// the guest's processes, each a host process).
    pub processes: u64,
    /// `RLIMIT_AS`: bytes of address space, unlimited if `None`.
    pub address_space: Option<u64>,
    /// `RLIMIT_FSIZE`: largest file the program may write, unlimited if `None`.
    pub file_size: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            open_files: 1024,
            processes: 1024,
            address_space: None,
            file_size: None,
        }
    }
}

/// Everything [`spawn`] needs to start one confined program.
#[derive(Debug)]
pub struct JailConfig {
    /// For logs and errors.
    pub name: String,
    /// Path of the program inside the jail (it must be under a bind mount).
    pub program: PathBuf,
    /// Arguments after `argv[0]` (which is `program`).
    pub args: Vec<String>,
    /// The whole environment: nothing of the caller's is inherited.
    pub env: Vec<(String, String)>,
    /// Descriptors the program gets, as `(descriptor, number in the
    /// program)`. Numbers 0, 1 and 2 not given are `/dev/null`; every other
    /// descriptor of the caller is closed at exec.
    pub fds: Vec<(OwnedFd, RawFd)>,
    pub identity: Identity,
    pub binds: Vec<BindMount>,
    pub tmpfs: Vec<Tmpfs>,
    /// Symbolic links created in the root, as `(link, target)`
    /// (`/lib64` -> `usr/lib64`).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// Mount a `/proc` of the jail's own PID namespace.
    pub proc: bool,
    /// Working directory inside the jail.
    pub cwd: PathBuf,
    /// Host name in the jail's UTS namespace.
    pub hostname: String,
    /// Give the program a new, empty network namespace (only loopback,
    /// down). `false` keeps the caller's: UML's vector transport needs the
    /// pod's tap; vhost-user helpers need only Unix sockets.
    pub new_network: bool,
    pub seccomp: SeccompProfile,
    /// Seccomp programs installed with the profile's (filters stack: the
    /// strictest answer wins), e.g. virtiofsd's refusal of set-id modes.
    pub extra_filters: ExtraFilters,
    pub limits: Limits,
    /// Cgroup directories to join (one per hierarchy on a v1 host, one on
    /// a v2 host). Joined before the program starts, so all it forks is in
    /// them too.
    pub cgroups: Vec<PathBuf>,
    /// SIGKILL the program when the thread that spawned it exits (Linux's
    /// parent-death signal follows the thread, so spawn from a thread that
    /// lives as long as the program: a tokio worker, not `spawn_blocking`).
    pub kill_with_parent: bool,
}

impl JailConfig {
    /// A config with no mounts, the default limits and no cgroups.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        identity: Identity,
        seccomp: SeccompProfile,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            fds: Vec::new(),
            identity,
            binds: Vec::new(),
            tmpfs: Vec::new(),
            symlinks: Vec::new(),
            proc: false,
            cwd: PathBuf::from("/"),
            hostname: "capsa".into(),
            new_network: false,
            seccomp,
            extra_filters: ExtraFilters::default(),
            limits: Limits::default(),
            cgroups: Vec::new(),
            kill_with_parent: true,
        }
    }
}

/// Compiled seccomp programs for [`JailConfig::extra_filters`].
#[derive(Default)]
pub struct ExtraFilters(pub Vec<seccompiler::BpfProgram>);

impl std::fmt::Debug for ExtraFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} extra seccomp program(s)", self.0.len())
    }
}

/// Why a jailed program could not be started; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail {name}: {what} must not be 0 (root on the host)")]
    RootIdentity { name: String, what: &'static str },
    #[error("jail {name}: {what} {path:?} must be an absolute path without `..`")]
    BadPath {
        name: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("jail {name}: {what} contains a NUL byte")]
    Nul { name: String, what: String },
    #[error("jail {name}: bind source {path}")]
    BindSource {
        name: String,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("jail {name}: bind source {path} is not a directory, regular file or device")]
    BindKind { name: String, path: PathBuf },
    #[error("seccomp profile {profile}: {reason}")]
    Profile { profile: String, reason: String },
    #[error("read the capabilities to drop: {0}")]
    Capabilities(String),
    #[error("jail {name}: {what}")]
    Os {
        name: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail {name}: join cgroup {path}")]
    Cgroup {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail {name}: set {limit}")]
    Limit {
        name: String,
        limit: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("jail {name}: {step}")]
    Setup {
        name: String,
        step: String,
        #[source]
        source: nix::Error,
    },
}
