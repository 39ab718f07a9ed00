//! Kernel modules: from names to files in load order, dependencies first.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

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

impl ModuleTree {
    /// Reads `modules.dep` and `modules.builtin` of `dir`, running
    /// `depmod -b <root> <version>` first if the tree has no `modules.dep`
    /// (Debian's kernel packages ship none).
    pub fn load(root: &Path, version: &str) -> Result<Self, Error> {
        let dir = root.join("lib/modules").join(version);
        if !dir.join("modules.dep").is_file() {
            let out = Command::new("depmod")
                .arg("-b")
                .arg(root)
                .arg(version)
                .output()
                .map_err(|e| Error::Tool("depmod".into(), e.to_string()))?;
            if !out.status.success() {
                return Err(Error::Tool(
                    "depmod".into(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        let dep = std::fs::read_to_string(dir.join("modules.dep"))
            .map_err(|e| Error::io(dir.join("modules.dep"), e))?;
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
                "vmw_vsock_virtio_transport".into(),
                "loop".into(),
            ])
            .unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtiofs"));
        assert!(pos("fuse") < pos("virtiofs"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
        assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
        assert_eq!(
            names.len(),
            7,
            "no duplicates, built-in loop skipped: {names:?}"
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
}
