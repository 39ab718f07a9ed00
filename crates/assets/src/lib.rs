//! Guest assets: the kernel the VM boots and the initrd whose `/init` is the
//! capsa agent.
//!
//! [`build`] writes `vmlinuz`, `initrd.img` and `manifest.json` into an
//! output directory. The kernel is capsa's own build ([`KernelSource::Build`],
//! module [`kbuild`]: Debian's kernel source with the repository's
//! configuration fragments, everything built in, no modules), a Debian
//! package (downloaded and unpacked under `<out_dir>/cache`, never
//! installed) or files on disk; `vmlinuz` is that kernel whatever its
//! format (capsa's build is an uncompressed ELF `vmlinux` with a PVH entry).
//! The initrd holds the agent, the modules the guest needs (dependencies
//! first, decompressed), `/etc/capsa/modules.load`, their load order, and
//! a shell for the debug console (`/bin/busybox` from Debian's
//! `busybox-static`, `/bin/sh` a link to it).
//! The manifest records the inputs, so a build with unchanged inputs
//! returns the existing assets without writing anything.

use fs_err as fs;
use std::path::{Path, PathBuf};

/// Where the guest kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// capsa's x86_64 guest kernel, built from the fragments and patches
    /// under `kernel_dir` (the repository's `kernel/`) and cached in
    /// `cache` ([`kbuild::DEFAULT_CACHE`]).
    Build { kernel_dir: PathBuf, cache: PathBuf },
    /// A distribution package fetched with `apt-get download` and unpacked
    /// (never installed), for example `linux-image-cloud-amd64`.
    DebianPackage { name: String },
    /// A kernel image on disk, with the module tree it was built with
    /// (`.../lib/modules/<version>`), if it has modules.
    Path {
        kernel: PathBuf,
        modules_dir: Option<PathBuf>,
    },
}

/// What to build.
#[derive(Debug, Clone)]
pub struct AssetsSpec {
    /// Output directory; holds `vmlinuz`, `initrd.img` and `manifest.json`.
    pub out_dir: PathBuf,
    pub kernel: KernelSource,
    /// The statically linked agent, installed as `/init`.
    pub agent_binary: PathBuf,
    /// Module names the guest loads at boot, in this order; their
    /// dependencies are added before them.
    pub modules: Vec<String>,
    /// Also build the root filesystem image (`capsa.img`, Kata's DAX
    /// layout) and its boot initrd (`capsa.img.initrd`).
    pub image: bool,
}

/// The image's file name in the output directory.
pub const IMAGE_FILE: &str = "capsa.img";
/// The boot initrd of an image: its path with this suffix.
pub const IMAGE_INITRD_SUFFIX: &str = ".initrd";

/// The modules every capsa guest needs: virtio PCI, virtio-fs, vsock, the
/// disks hot-plugged for block storages (virtio-blk, virtio-scsi and its
/// SCSI disk driver; about 0.1 s of boot under TCG), virtio-net for
/// the pod's NICs, virtio-mem for VMs whose memory grows and shrinks
/// (`enable_virtio_mem`) and virtio-balloon for free page reporting
/// (`reclaim_guest_freed_memory`), both harmless without their device
/// (the kernel's `CONFIG_PAGE_REPORTING` is built in). ext4 is built
/// into the kernel; `xfs` loads cleanly but is left out: it took 0.8 s of
/// every boot under TCG (add it with `capsa assets build --module xfs`).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtiofs",
    "vmw_vsock_virtio_transport",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "virtio_net",
    "virtio_mem",
    "virtio_balloon",
];

mod apt;
mod error;
mod files;
mod image;
mod initrd;
pub mod kbuild;
mod kernel;
mod manifest;
mod modules;
mod shell;

pub use error::Error;
pub use image::{BOOT_MODULES, DAX_HEADER, FS_OFFSET};
pub use initrd::{unpack_lz4, MODULES_LOAD};
pub use kbuild::{missing_options, Arch, BuiltKernel};
pub use kernel::{identify as identify_kernel, Identity as KernelIdentity};
pub use manifest::{load_manifest, Inputs, KernelInput, Manifest, Outputs, ShellInput};
pub use modules::module_name;
pub use shell::SHELL_PACKAGE;

use files::{sha256, write_atomic};

/// Builds the assets of `spec` in `spec.out_dir`, or returns the existing
/// manifest when no input changed and the outputs are intact. Concurrent
/// builds into one directory wait for each other. The initrd gets the
/// shell of [`SHELL_PACKAGE`].
pub fn build(spec: &AssetsSpec) -> Result<Manifest, Error> {
    build_with_shell(spec, Some(SHELL_PACKAGE))
}

/// [`build`], with the shell of Debian package `shell_package` (none:
/// no shell, no debug console).
pub fn build_with_shell(spec: &AssetsSpec, shell_package: Option<&str>) -> Result<Manifest, Error> {
    build_with_cache(spec, shell_package, None)
}

/// [`build_with_shell`], with downloaded packages kept in `cache` instead
/// of `<out_dir>/cache` (several output directories share one cache).
pub fn build_with_cache(
    spec: &AssetsSpec,
    shell_package: Option<&str>,
    cache: Option<&Path>,
) -> Result<Manifest, Error> {
    build_with_progress(spec, shell_package, cache, &|note| tracing::info!("{note}"))
}

/// The file name of the kernel's configuration in the output directory,
/// for a kernel capsa built.
pub const KERNEL_CONFIG_FILE: &str = "kernel.config";

/// [`build_with_cache`], telling `progress` what a kernel build does and
/// why (it takes minutes).
pub fn build_with_progress(
    spec: &AssetsSpec,
    shell_package: Option<&str>,
    cache: Option<&Path>,
    progress: &dyn Fn(&str),
) -> Result<Manifest, Error> {
    fs::create_dir_all(&spec.out_dir)?;
    let out_dir = fs::canonicalize(&spec.out_dir)?;
    let _lock = files::lock_dir(&out_dir)?;
    let cache = cache.map_or_else(|| out_dir.join("cache"), Path::to_path_buf);

    let agent = fs::read(&spec.agent_binary)?;
    let kernel = match &spec.kernel {
        KernelSource::Build {
            kernel_dir,
            cache: builds,
        } => kernel::from_build(kernel_dir, builds, progress)?,
        KernelSource::DebianPackage { name } => kernel::from_package(name, &cache)?,
        KernelSource::Path {
            kernel,
            modules_dir,
        } => kernel::from_path(kernel, modules_dir.as_deref())?,
    };
    let kernel_bytes = fs::read(&kernel.image)?;
    let shell = shell_package
        .map(|name| shell::from_package(name, &cache))
        .transpose()?;
    let inputs = Inputs {
        format: manifest::FORMAT,
        kernel: kernel.input.clone(),
        kernel_sha256: sha256(&kernel_bytes),
        agent_sha256: sha256(&agent),
        modules: requested_modules(&spec.modules),
        shell: shell.as_ref().map(|s| s.input.clone()),
        image: spec.image,
    };
    if let Some(existing) = manifest::current(&out_dir, &inputs, &kernel_bytes) {
        tracing::info!(out = %out_dir.display(), "guest assets are up to date");
        return Ok(existing);
    }
    // Without a manifest, a build cut short is redone next time.
    let _ = std::fs::remove_file(out_dir.join(manifest::FILE));

    let modules = match &kernel.modules_dir {
        Some(dir) => modules::collect(dir, &kernel.version, &inputs.modules)?,
        None => {
            tracing::info!("kernel without modules: none added to the initrd");
            Vec::new()
        }
    };
    let busybox = shell.as_ref().map(|s| s.busybox.as_slice());
    let initrd = initrd::build(&agent, &kernel.version, &modules, busybox)?;
    let vmlinuz = out_dir.join("vmlinuz");
    let initrd_path = out_dir.join("initrd.img");
    write_if_changed(&vmlinuz, &kernel_bytes)?;
    write_if_changed(&initrd_path, &initrd)?;
    let kernel_config = match &kernel.config {
        Some(config) => {
            let path = out_dir.join(KERNEL_CONFIG_FILE);
            let text = fs::read(config)?;
            write_if_changed(&path, &text)?;
            Some(path)
        }
        None => {
            let _ = std::fs::remove_file(out_dir.join(KERNEL_CONFIG_FILE));
            None
        }
    };
    let (image, image_initrd) = if spec.image {
        // The boot initrd's /init is busybox's shell: checked before the
        // image is written, so that a refused build leaves no image.
        let shell = shell.as_ref().ok_or(Error::ImageNeedsShell)?;
        let image = out_dir.join(IMAGE_FILE);
        image::build(&agent, &kernel.version, &modules, busybox, &image)?;
        let boot_modules = match &kernel.modules_dir {
            Some(dir) => {
                let names: Vec<String> = BOOT_MODULES.iter().map(|m| m.to_string()).collect();
                modules::collect(dir, &kernel.version, &names)?
            }
            None => Vec::new(),
        };
        let boot = initrd::build(
            image::BOOT_INIT.as_bytes(),
            &kernel.version,
            &boot_modules,
            Some(&shell.busybox),
        )?;
        let boot_path = out_dir.join(format!("{IMAGE_FILE}{IMAGE_INITRD_SUFFIX}"));
        write_if_changed(&boot_path, &boot)?;
        (Some(image), Some(boot_path))
    } else {
        (None, None)
    };
    let outputs = manifest::Outputs {
        kernel_sha256: inputs.kernel_sha256.clone(),
        initrd_sha256: sha256(&initrd),
        image_sha256: image.as_ref().and_then(|i| files::sha256_file(i)),
    };

    let manifest = Manifest {
        kernel_version: kernel.version,
        kernel: vmlinuz,
        initrd: initrd_path,
        image,
        image_initrd,
        modules: modules.into_iter().map(|m| m.path).collect(),
        kernel_config,
        inputs,
        outputs,
    };
    manifest::save(&out_dir, &manifest)?;
    tracing::info!(
        out = %out_dir.display(),
        version = %manifest.kernel_version,
        modules = manifest.modules.len(),
        "guest assets built"
    );
    Ok(manifest)
}

/// The User-Mode Linux kernel's file name in an output directory (its
/// configuration: with `.config` appended).
pub const UML_FILE: &str = "linux-uml";

/// Builds (or takes from the build cache `cache`) the User-Mode Linux
/// kernel of `kernel_dir/um` and writes it to `<out_dir>/linux-uml`, its
/// configuration to `<out_dir>/linux-uml.config`. The returned kernel's
/// `image` and `config` are those files.
pub fn build_uml(
    kernel_dir: &Path,
    cache: &Path,
    out_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<BuiltKernel, Error> {
    use std::os::unix::fs::PermissionsExt;

    let recipe = kbuild::Recipe::load(kernel_dir, Arch::Um)?;
    let built = kbuild::build(&recipe, cache, progress)?;
    fs::create_dir_all(out_dir)?;
    let image = out_dir.join(UML_FILE);
    let config = out_dir.join(format!("{UML_FILE}.config"));
    for (from, to) in [(&built.image, &image), (&built.config, &config)] {
        let data = fs::read(from)?;
        write_if_changed(to, &data)?;
    }
    fs::set_permissions(&image, std::fs::Permissions::from_mode(0o755))?;
    Ok(BuiltKernel {
        image,
        config,
        ..built
    })
}

/// [`DEFAULT_MODULES`] then `extra`, each name once.
fn requested_modules(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in DEFAULT_MODULES
        .iter()
        .map(|m| m.to_string())
        .chain(extra.iter().cloned())
    {
        if !names.iter().any(|n| module_name(n) == module_name(&name)) {
            names.push(name);
        }
    }
    names
}

/// Leaves `path` alone (and its mtime) when it already holds `data`.
fn write_if_changed(path: &Path, data: &[u8]) -> Result<(), Error> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    write_atomic(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_first_and_names_are_not_repeated() {
        let names = requested_modules(&["overlay".into(), "virtio-pci".into(), "overlay".into()]);
        let mut expected: Vec<&str> = DEFAULT_MODULES.to_vec();
        expected.push("overlay");
        assert_eq!(names, expected);
        assert_eq!(
            &names[..3],
            ["virtio_pci", "virtiofs", "vmw_vsock_virtio_transport"]
        );
    }

    #[test]
    fn builds_from_a_kernel_path_without_modules() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        let agent = dir.path().join("agent");
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        std::fs::write(&agent, b"agent").unwrap();
        let spec = AssetsSpec {
            out_dir: dir.path().join("out"),
            kernel: KernelSource::Path {
                kernel: kernel.clone(),
                modules_dir: None,
            },
            agent_binary: agent,
            modules: vec!["anything".into()],
            image: false,
        };
        let m = build_with_shell(&spec, None).unwrap();
        assert_eq!(m.kernel_version, "unknown");
        assert_eq!(m.inputs.shell, None);
        assert!(m.modules.is_empty());
        assert_eq!(std::fs::read(&m.kernel).unwrap(), b"not really a kernel");
        assert_eq!(load_manifest(&dir.path().join("out")).unwrap(), m);
        assert_eq!(build_with_shell(&spec, None).unwrap(), m);

        let missing = AssetsSpec {
            kernel: KernelSource::Path {
                kernel: dir.path().join("missing-kernel"),
                modules_dir: None,
            },
            ..spec
        };
        let err = build_with_shell(&missing, None).unwrap_err().to_string();
        assert!(err.contains("missing-kernel"), "{err}");
    }
}
