//! `manifest.json`: what the assets were built from, and their hashes.

use fs_err as fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{sha256_file, write_atomic};
use crate::Error;

/// Version of the initrd and image layouts; bump it when the builder's output changes
/// for the same inputs, so existing assets get rebuilt.
pub const FORMAT: u32 = 6;

/// Where the kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelInput {
    /// A Debian package: the `requested` name resolved to image package
    /// `name` at `version`.
    Package {
        requested: String,
        name: String,
        version: String,
    },
    /// capsa's own build (`kernel/` of the repository) of Debian's
    /// kernel source `source` (package and version), `id` the build's
    /// cache key.
    Build {
        arch: crate::Arch,
        source: String,
        id: String,
    },
    /// Files given by path.
    Path {
        kernel: PathBuf,
        modules_dir: Option<PathBuf>,
    },
}

/// What a build depends on; a change in any field triggers a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub format: u32,
    pub kernel: KernelInput,
    pub kernel_sha256: String,
    pub agent_sha256: String,
    /// Requested module names (defaults first), before resolution.
    pub modules: Vec<String>,
    /// The shell of the VM's root environment (for the debug console),
    /// if the initrd has one.
    pub shell: Option<ShellInput>,
    /// Whether the root filesystem image (and its boot initrd) is built.
    #[serde(default)]
    pub image: bool,
}

/// The package the initrd's `/bin/busybox` comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellInput {
    pub package: String,
    pub version: String,
    /// Of the `busybox` binary.
    pub sha256: String,
}

/// Hashes of the files written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    /// Of the root filesystem image, when built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
}

/// The built assets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel_version: String,
    /// `<out_dir>/vmlinuz`.
    pub kernel: PathBuf,
    /// `<out_dir>/initrd.img`.
    pub initrd: PathBuf,
    /// Module files in the initrd, relative to `/lib/modules/<version>/`,
    /// in load order.
    pub modules: Vec<String>,
    /// `<out_dir>/kernel.config`: the kernel's configuration, for a kernel
    /// capsa built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_config: Option<PathBuf>,
    /// `<out_dir>/capsa.img`: the root filesystem image in Kata's DAX
    /// layout (`capsa assets build --image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// `<out_dir>/capsa.img.initrd`: what the guest kernel boots first to
    /// reach the image (it loads the NVDIMM and virtio-blk modules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_initrd: Option<PathBuf>,
    pub inputs: Inputs,
    pub outputs: Outputs,
}

pub const FILE: &str = "manifest.json";

/// Reads `<out_dir>/manifest.json`.
pub fn load_manifest(out_dir: &Path) -> Result<Manifest, Error> {
    let path = out_dir.join(FILE);
    let text = fs::read(&path)?;
    serde_json::from_slice(&text).map_err(|source| Error::Manifest { path, source })
}

pub(crate) fn save(out_dir: &Path, manifest: &Manifest) -> Result<(), Error> {
    let path = out_dir.join(FILE);
    let mut text = serde_json::to_vec_pretty(manifest).map_err(|source| Error::Manifest {
        path: path.clone(),
        source,
    })?;
    text.push(b'\n');
    write_atomic(&path, &text)
}

/// The existing manifest if it was built from `inputs`, and the files it
/// describes are intact: the kernel holds `kernel`, the initrd its hash.
pub(crate) fn current(out_dir: &Path, inputs: &Inputs, kernel: &[u8]) -> Option<Manifest> {
    let m = load_manifest(out_dir).ok()?;
    let intact = m.inputs == *inputs
        && std::fs::read(&m.kernel).is_ok_and(|k| k == kernel)
        && sha256_file(&m.initrd).as_ref() == Some(&m.outputs.initrd_sha256)
        && m.image.as_ref().and_then(|i| sha256_file(i)) == m.outputs.image_sha256
        && m.image_initrd.as_ref().is_none_or(|i| i.is_file())
        && m.kernel_config.as_ref().is_none_or(|c| c.is_file());
    intact.then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::sha256;

    fn inputs() -> Inputs {
        Inputs {
            format: FORMAT,
            kernel: KernelInput::Package {
                requested: "linux-image-cloud-amd64".into(),
                name: "linux-image-6.1.0-1-cloud-amd64".into(),
                version: "6.1.1-1".into(),
            },
            kernel_sha256: sha256(b"kernel"),
            agent_sha256: sha256(b"agent"),
            modules: vec!["virtio_pci".into()],
            shell: Some(ShellInput {
                package: "busybox-static".into(),
                version: "1:1.35.0-4+b3".into(),
                sha256: sha256(b"busybox"),
            }),
            image: false,
        }
    }

    fn saved(dir: &Path) -> Manifest {
        let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.img"));
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&initrd, b"initrd").unwrap();
        let m = Manifest {
            kernel_version: "6.1.0-1-cloud-amd64".into(),
            kernel,
            initrd,
            modules: vec!["kernel/drivers/virtio/virtio_pci.ko".into()],
            kernel_config: None,
            image: None,
            image_initrd: None,
            inputs: inputs(),
            outputs: Outputs {
                kernel_sha256: sha256(b"kernel"),
                initrd_sha256: sha256(b"initrd"),
                image_sha256: None,
            },
        };
        save(dir, &m).unwrap();
        m
    }

    #[test]
    fn round_trips_and_is_current_for_the_same_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let m = saved(dir.path());
        assert_eq!(load_manifest(dir.path()).unwrap(), m);
        assert_eq!(current(dir.path(), &inputs(), b"kernel"), Some(m));
    }

    #[test]
    fn any_changed_input_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        saved(dir.path());
        let changes: [fn(&mut Inputs); 7] = [
            |i| i.shell = None,
            |i| i.shell.as_mut().unwrap().version = "1:1.36.1-1".into(),
            |i| i.format += 1,
            |i| i.agent_sha256 = sha256(b"new agent"),
            |i| i.kernel_sha256 = sha256(b"new kernel"),
            |i| i.modules.push("overlay".into()),
            |i| {
                i.kernel = KernelInput::Path {
                    kernel: "/boot/vmlinuz".into(),
                    modules_dir: None,
                }
            },
        ];
        for (n, change) in changes.iter().enumerate() {
            let mut changed = inputs();
            change(&mut changed);
            assert_eq!(current(dir.path(), &changed, b"kernel"), None, "change {n}");
        }
    }

    #[test]
    fn damaged_or_missing_outputs_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let m = saved(dir.path());
        std::fs::write(&m.initrd, b"truncated").unwrap();
        assert_eq!(current(dir.path(), &inputs(), b"kernel"), None);
        std::fs::write(&m.initrd, b"initrd").unwrap();
        assert!(current(dir.path(), &inputs(), b"kernel").is_some());
        std::fs::write(&m.kernel, b"kernel, patched").unwrap();
        assert_eq!(current(dir.path(), &inputs(), b"kernel"), None);
        std::fs::remove_file(&m.kernel).unwrap();
        assert_eq!(current(dir.path(), &inputs(), b"kernel"), None);
    }

    #[test]
    fn unreadable_manifest_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{ not json").unwrap();
        let err = load_manifest(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");
        assert_eq!(current(dir.path(), &inputs(), b"kernel"), None);
    }
}
