//! The guest kernel of the tests: Debian's cloud kernel package, fetched
//! with `apt-get download` and unpacked with `dpkg-deb -x` (never installed)
//! into a cache directory, once per kernel version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Modules the test guests load, in dependency order: virtio over PCI,
/// virtio-fs, vsock.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// `vmlinuz` and `modules/<name>.ko` for each of [`MODULES`].
pub struct TestKernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The cached test kernel, fetched on first use.
pub fn test_kernel() -> &'static TestKernel {
    static KERNEL: OnceLock<TestKernel> = OnceLock::new();
    KERNEL.get_or_init(prepare)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CAPSA_TEST_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/capsa/test-kernel"))
}

fn prepare() -> TestKernel {
    let cache = cache_dir();
    let package = versioned_package();
    let dir = cache.join(&package);
    if !dir.join("vmlinuz").is_file() {
        std::fs::create_dir_all(&cache).expect("create the kernel cache");
        // Unpacked in a private directory, then renamed into place: another
        // test binary may be doing the same right now.
        let work = tempfile::tempdir_in(&cache).expect("temp dir");
        run(Command::new("timeout")
            .args(["300", "apt-get", "download", "-q", &package])
            .current_dir(work.path()));
        let deb = std::fs::read_dir(work.path())
            .expect("read download dir")
            .map(|e| e.expect("dir entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("apt-get download left no .deb");
        let root = work.path().join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        let staged = work.path().join("staged");
        stage(&root, &staged);
        if let Err(e) = std::fs::rename(&staged, &dir) {
            assert!(
                dir.join("vmlinuz").is_file(),
                "install {}: {e}",
                dir.display()
            );
        }
    }
    TestKernel {
        vmlinuz: dir.join("vmlinuz"),
        modules: dir.join("modules"),
    }
}

/// `linux-image-cloud-amd64` is a metapackage: the kernel is in the package
/// it depends on (`linux-image-6.1.0-NN-cloud-amd64`).
fn versioned_package() -> String {
    let out =
        run(Command::new("apt-cache").args(["depends", "--important", "linux-image-cloud-amd64"]));
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .unwrap_or_else(|| panic!("no kernel package in `apt-cache depends`: {out}"))
        .to_string()
}

/// Copies the kernel image and the wanted modules out of the unpacked package.
fn stage(root: &Path, staged: &Path) {
    let modules = staged.join("modules");
    std::fs::create_dir_all(&modules).expect("create staged dir");
    let mut files = Vec::new();
    walk(root, &mut files);
    let vmlinuz = files
        .iter()
        .find(|p| p.starts_with(root.join("boot")) && name_of(p).starts_with("vmlinuz-"))
        .expect("no boot/vmlinuz-* in the kernel package");
    std::fs::copy(vmlinuz, staged.join("vmlinuz")).expect("copy vmlinuz");
    for m in MODULES {
        let file = format!("{m}.ko");
        let src = files
            .iter()
            .find(|p| name_of(p) == file)
            .unwrap_or_else(|| panic!("module {file} not in the kernel package"));
        std::fs::copy(src, modules.join(&file)).expect("copy module");
    }
}

fn name_of(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            walk(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

/// Runs a command to completion; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
