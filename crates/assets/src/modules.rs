//! Kernel modules: from names to files in load order, dependencies first.

use fs_err as fs;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::files::run;
use crate::initrd::Module;
use crate::Error;

/// A kernel module tree (`lib/modules/<version>`) with its dependency table.
pub struct ModuleTree {
    /// Module name (`_` for `-`) → path relative to the tree.
    paths: BTreeMap<String, String>,
    /// Path relative to the tree → dependency paths.
    deps: BTreeMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

/// `virtio-pci`, `virtio_pci.ko`, `kernel/.../virtio_pci.ko.xz` → `virtio_pci`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// `kernel/fs/fuse/virtiofs.ko.xz` → `kernel/fs/fuse/virtiofs.ko`.
pub fn plain_ko(rel: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| rel.strip_suffix(ext))
        .unwrap_or(rel)
}

/// The modules of `names` and their dependencies, in load order, read (and
/// decompressed) from the tree `dir`.
pub fn collect(dir: &Path, version: &str, names: &[String]) -> Result<Vec<Module>, Error> {
    let tree = ModuleTree::load(dir, version)?;
    tree.resolve(names)?
        .iter()
        .map(|rel| {
            Ok(Module {
                path: plain_ko(rel).to_string(),
                data: read_module(&dir.join(rel))?,
            })
        })
        .collect()
}

impl ModuleTree {
    /// Reads `modules.dep` and `modules.builtin` of `dir`. A tree without
    /// `modules.dep` (Debian's packages ship none) gets one from
    /// `depmod -n`, which writes nothing into the tree.
    pub fn load(dir: &Path, version: &str) -> Result<Self, Error> {
        let dep_file = dir.join("modules.dep");
        let dep = if dep_file.is_file() {
            fs::read_to_string(&dep_file)?
        } else {
            depmod(dir, version)?
        };
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        Ok(Self::parse(&dep, &builtin))
    }

    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut paths = BTreeMap::new();
        let mut deps = BTreeMap::new();
        for line in modules_dep.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            paths.insert(module_name(module), module.to_string());
            deps.insert(
                module.to_string(),
                rest.split_whitespace().map(String::from).collect(),
            );
        }
        let builtin = modules_builtin.lines().map(module_name).collect();
        Self {
            paths,
            deps,
            builtin,
        }
    }

    /// The files to load for `names`, each after its dependencies, once.
    /// Built-in modules are skipped; an unknown module is an error.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<String>, Error> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let name = module_name(name);
            if self.builtin.contains(&name) {
                tracing::debug!(module = %name, "built into the kernel");
                continue;
            }
            let path = self
                .paths
                .get(&name)
                .ok_or_else(|| Error::UnknownModule(name.clone()))?;
            self.visit(path, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        for dep in self.deps.get(path).into_iter().flatten() {
            self.visit(dep, seen, order);
        }
        order.push(path.to_string());
    }
}

/// `modules.dep` of the tree `dir`, computed by `depmod -n` over a scratch
/// base directory whose `lib/modules/<version>` points at `dir`.
fn depmod(dir: &Path, version: &str) -> Result<String, Error> {
    let base = tempfile::tempdir()?;
    let link_dir = base.path().join("lib/modules");
    fs::create_dir_all(&link_dir)?;
    let target = fs::canonicalize(dir)?;
    fs::os::unix::fs::symlink(&target, link_dir.join(version))?;
    let out = run(
        "depmod",
        Command::new("depmod")
            .arg("-n")
            .arg("-b")
            .arg(base.path())
            .arg(version),
    )?;
    // modules.dep comes first; the other files follow, each under a comment.
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .take_while(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// Reads a module, decompressing `.xz` and `.zst` with Debian's tools and
/// `.gz` in process.
fn read_module(path: &Path) -> Result<Vec<u8>, Error> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        let file = fs::File::open(path)?;
        let mut data = Vec::new();
        flate2::read::GzDecoder::new(file).read_to_end(&mut data)?;
        return Ok(data);
    } else {
        return Ok(fs::read(path)?);
    };
    run(tool, Command::new(tool).args(["-d", "-c"]).arg(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/fuse/fuse.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
";

    #[test]
    fn dependencies_come_first_once() {
        let tree = ModuleTree::parse(DEP, "kernel/drivers/block/loop.ko\n");
        let order = tree
            .resolve(&[
                "virtiofs".into(),
                "vmw-vsock-virtio-transport".into(),
                "loop".into(),
                "virtio".into(),
            ])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/fs/fuse/fuse.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/fs/fuse/virtiofs.ko",
                "kernel/net/vmw_vsock/vsock.ko",
                "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz",
                "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz",
            ],
            "dependencies first, no duplicates, built-in loop skipped"
        );
    }

    #[test]
    fn unknown_module_is_named() {
        let tree = ModuleTree::parse(DEP, "");
        let err = tree
            .resolve(&["no-such-mod".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_mod"), "{err}");
    }

    #[test]
    fn names_and_plain_paths() {
        assert_eq!(module_name("kernel/a/virtio-pci.ko.zst"), "virtio_pci");
        assert_eq!(plain_ko("kernel/a/b.ko.zst"), "kernel/a/b.ko");
        assert_eq!(plain_ko("kernel/a/b.ko"), "kernel/a/b.ko");
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"\x7fELF pretend module".to_vec();
        let plain = dir.path().join("m.ko");
        std::fs::write(&plain, &data).unwrap();
        for (tool, ext) in [("xz", "xz"), ("zstd", "zst"), ("gzip", "gz")] {
            let status = Command::new(tool)
                .args(["-k", "-q"])
                .arg(&plain)
                .status()
                .unwrap();
            assert!(status.success(), "{tool}");
            let packed = dir.path().join(format!("m.ko.{ext}"));
            assert_ne!(std::fs::read(&packed).unwrap(), data);
            assert_eq!(read_module(&packed).unwrap(), data, "{ext}");
        }
    }
}
