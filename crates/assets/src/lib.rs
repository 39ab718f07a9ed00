//! Guest assets: the kernel the VM boots and the initrd whose `/init` is the
//! capsa agent.

use std::path::PathBuf;

/// Where the guest kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
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
}

/// The modules every capsa guest needs: virtio PCI, virtio-fs, vsock.
pub const DEFAULT_MODULES: &[&str] = &["virtio_pci", "virtiofs", "vmw_vsock_virtio_transport"];

mod cpio;
mod error;
mod kernel;
mod manifest;
mod modules;

pub use error::Error;
pub use manifest::{load_manifest, Manifest};
pub use modules::module_name;

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Builds the assets of `spec` in `spec.out_dir`, or returns the existing
/// manifest when no input changed.
pub fn build(spec: &AssetsSpec) -> Result<Manifest, Error> {
    std::fs::create_dir_all(&spec.out_dir).map_err(|e| Error::io(&spec.out_dir, e))?;
    let agent = std::fs::read(&spec.agent_binary).map_err(|e| Error::io(&spec.agent_binary, e))?;
    let kernel = match &spec.kernel {
        KernelSource::DebianPackage { name } => {
            kernel::from_package(name, &spec.out_dir.join("cache"))?
        }
        KernelSource::Path {
            kernel,
            modules_dir,
        } => kernel::from_path(kernel, modules_dir.as_deref())?,
    };
    let mut wanted: Vec<String> = DEFAULT_MODULES.iter().map(|m| m.to_string()).collect();
    wanted.extend(spec.modules.iter().cloned());
    let kernel_bytes = std::fs::read(&kernel.image).map_err(|e| Error::io(&kernel.image, e))?;
    let inputs = manifest::Inputs {
        kernel: kernel.input.clone(),
        kernel_sha256: sha256(&kernel_bytes),
        agent_sha256: sha256(&agent),
        modules: wanted.clone(),
        builder: env!("CARGO_PKG_VERSION").to_string(),
    };
    if let Some(existing) = manifest::up_to_date(&spec.out_dir, &inputs) {
        tracing::info!(out = %spec.out_dir.display(), "guest assets are up to date");
        return Ok(existing);
    }

    let (module_files, module_order) = match &kernel.root {
        Some(root) => {
            let tree = modules::ModuleTree::load(root, &kernel.version)?;
            let order = tree.resolve(&wanted)?;
            let dir = root.join("lib/modules").join(&kernel.version);
            let mut files = Vec::new();
            for rel in &order {
                let data = read_module(&dir.join(rel))?;
                files.push((plain_ko(rel), data));
            }
            (files, order.iter().map(|r| plain_ko(r)).collect())
        }
        None => (Vec::new(), Vec::new()),
    };
    let initrd = initrd(&agent, &kernel.version, &module_files, &module_order)?;

    let vmlinuz = spec.out_dir.join("vmlinuz");
    let initrd_path = spec.out_dir.join("initrd.img");
    write_atomic(&vmlinuz, &kernel_bytes)?;
    write_atomic(&initrd_path, &initrd)?;
    let manifest = Manifest {
        kernel_version: kernel.version.clone(),
        kernel: vmlinuz,
        initrd: initrd_path,
        modules: module_order,
        kernel_sha256: inputs.kernel_sha256.clone(),
        initrd_sha256: sha256(&initrd),
        inputs,
    };
    manifest::save(&spec.out_dir, &manifest)?;
    tracing::info!(out = %spec.out_dir.display(), version = %manifest.kernel_version, "guest assets built");
    Ok(manifest)
}

/// `kernel/fs/fuse/virtiofs.ko.xz` → `kernel/fs/fuse/virtiofs.ko`.
fn plain_ko(rel: &str) -> String {
    match rel.find(".ko") {
        Some(i) => format!("{}.ko", &rel[..i]),
        None => rel.to_string(),
    }
}

/// Reads a module, decompressing `.xz` and `.zst` files with Debian's tools.
fn read_module(path: &Path) -> Result<Vec<u8>, Error> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).map_err(|e| Error::io(path, e)),
        Some(tool) => {
            let out = std::process::Command::new(tool)
                .args(["-d", "-c"])
                .arg(path)
                .output()
                .map_err(|e| Error::Tool(tool.into(), e.to_string()))?;
            if !out.status.success() {
                return Err(Error::Tool(
                    tool.into(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            Ok(out.stdout)
        }
    }
}

/// The gzip-compressed cpio newc initrd: `/init` (the agent), the modules and
/// `/etc/capsa/modules.load`, with fixed metadata so the bytes depend only on
/// the inputs.
fn initrd(
    agent: &[u8],
    version: &str,
    modules: &[(String, Vec<u8>)],
    order: &[String],
) -> Result<Vec<u8>, Error> {
    use cpio::Entry;
    let load = order.iter().map(|m| format!("{m}\n")).collect::<String>();
    let moddir = format!("lib/modules/{version}");
    let mut dirs: Vec<String> = [
        "dev",
        "etc",
        "etc/capsa",
        "proc",
        "run",
        "sys",
        "tmp",
        "lib",
    ]
    .iter()
    .map(|d| d.to_string())
    .collect();
    for (rel, _) in modules {
        let mut parent = Path::new(&moddir).join(rel);
        while parent.pop() && !parent.as_os_str().is_empty() {
            let p = parent.to_string_lossy().into_owned();
            if !dirs.contains(&p) {
                dirs.push(p);
            }
        }
    }
    dirs.sort();
    let module_paths: Vec<String> = modules
        .iter()
        .map(|(r, _)| format!("{moddir}/{r}"))
        .collect();
    let mut entries: Vec<Entry<'_>> = dirs
        .iter()
        .map(|d| Entry::Dir {
            path: d,
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::CharDev {
        path: "dev/console",
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "etc/capsa/modules.load",
        mode: 0o644,
        data: load.as_bytes(),
    });
    entries.push(Entry::File {
        path: "init",
        mode: 0o755,
        data: agent,
    });
    for (path, (_, data)) in module_paths.iter().zip(modules) {
        entries.push(Entry::File {
            path,
            mode: 0o644,
            data,
        });
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    cpio::write(&mut gz, &entries).map_err(|e| Error::io("initrd", e))?;
    let out = gz.finish().map_err(|e| Error::io("initrd", e))?;
    Ok(out)
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
