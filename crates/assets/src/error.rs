use std::path::PathBuf;

/// Errors of building guest assets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed. The calls go through `fs_err`, whose
    /// `io::Error` names the operation and the path, so one transparent
    /// variant serves them all (no path field, no constructor per crate).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("write the initrd")]
    WriteInitrd(#[source] std::io::Error),
    #[error("lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("kernel {0} not found")]
    MissingKernel(PathBuf),
    #[error("module directory {0} not found")]
    MissingModulesDir(PathBuf),
    #[error("kernel {image} is version {image_version} but its modules are for {modules_version}")]
    VersionMismatch {
        image: PathBuf,
        image_version: String,
        modules_version: String,
    },
    #[error("package {0} is unknown to apt (is `apt-get update` done?)")]
    UnknownPackage(String),
    #[error("package {package} holds no busybox binary")]
    NoBusyboxInPackage { package: String },
    #[error("package {package} holds no kernel image")]
    NoKernelInPackage { package: String },
    #[error("downloaded {0} does not match the archive's sha256")]
    Checksum(PathBuf),
    #[error("module {0} is neither in the kernel's module tree nor built in")]
    UnknownModule(String),
    #[error("cannot run {tool}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Tool { tool: String, stderr: String },
    #[error("the root image's boot initrd runs busybox's shell: build with a shell package")]
    ImageNeedsShell,
    #[error("{0} is too large for the initrd")]
    TooLarge(String),
    #[error("no configuration fragment in kernel/{0} (the repository's kernel/ directory: --kernel-dir)")]
    NoFragments(String),
    #[error(
        "the kernel configuration of kernel/{arch} did not take (missing dependencies?): {missing}"
    )]
    ConfigNotApplied { arch: String, missing: String },
    #[error("kernel source: {0}")]
    Source(String),
    #[error("manifest {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
