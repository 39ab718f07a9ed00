//! The guest kernel: a Debian package fetched and unpacked, or files on disk.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::manifest::KernelInput;
use crate::{apt, Error};

/// A kernel ready to use: its image and, if modular, its module tree.
#[derive(Debug)]
pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    /// `.../lib/modules/<version>`, `None` for a kernel without modules.
    pub modules_dir: Option<PathBuf>,
    pub input: KernelInput,
}

/// Resolves `name` to its image package, fetches it into `cache` (once) and
/// unpacks it there (once).
pub fn from_package(name: &str, cache: &Path) -> Result<Kernel, Error> {
    let package = apt::resolve_kernel(name)?;
    let (root, _lock) = apt::unpacked(&package, cache)?;

    let no_kernel = || Error::NoKernelInPackage {
        package: package.name.clone(),
    };
    let modules = root.join("lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&modules)
        .map_err(|_| no_kernel())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|v| root.join("boot").join(format!("vmlinuz-{v}")).is_file())
        .collect();
    versions.sort();
    let version = versions.pop().ok_or_else(no_kernel)?;
    Ok(Kernel {
        image: root.join("boot").join(format!("vmlinuz-{version}")),
        modules_dir: Some(modules.join(&version)),
        version,
        input: KernelInput::Package {
            requested: name.into(),
            name: package.name,
            version: package.version,
        },
    })
}

/// A kernel on disk; `modules_dir` is its `lib/modules/<version>` tree. The
/// version is the tree's name, or read from the image's boot header.
pub fn from_path(kernel: &Path, modules_dir: Option<&Path>) -> Result<Kernel, Error> {
    if !kernel.is_file() {
        return Err(Error::MissingKernel(kernel.into()));
    }
    let image_version = image_version(kernel);
    let version = match modules_dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Error::MissingModulesDir(dir.into()));
            }
            let version = dir
                .canonicalize()
                .map_err(|e| Error::io(dir, e))?
                .file_name()
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            match image_version {
                Some(iv) if iv != version => {
                    return Err(Error::VersionMismatch {
                        image: kernel.into(),
                        image_version: iv,
                        modules_version: version,
                    })
                }
                _ => version,
            }
        }
        None => image_version.unwrap_or_else(|| "unknown".into()),
    };
    Ok(Kernel {
        version,
        image: kernel.into(),
        modules_dir: modules_dir.map(Path::to_path_buf),
        input: KernelInput::Path {
            kernel: kernel.into(),
            modules_dir: modules_dir.map(Path::to_path_buf),
        },
    })
}

/// The release of an x86 bzImage (`6.1.0-56-cloud-amd64`), from the
/// `kernel_version` pointer of its boot protocol header.
fn image_version(path: &Path) -> Option<String> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    bzimage_version(&head)
}

fn bzimage_version(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes(head.get(0x20e..0x210)?.try_into().ok()?) as usize;
    if ptr == 0 {
        return None;
    }
    let text = head.get(ptr + 0x200..)?;
    let end = text.iter().position(|&b| b == 0)?;
    let release = std::str::from_utf8(&text[..end])
        .ok()?
        .split_whitespace()
        .next()?;
    Some(release.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(release: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let text = format!("{release} (builder@example) #1 SMP\0");
        img[0x500..0x500 + text.len()].copy_from_slice(text.as_bytes());
        img
    }

    #[test]
    fn reads_the_release_from_the_boot_header() {
        assert_eq!(
            bzimage_version(&fake_bzimage("6.1.0-56-cloud-amd64")).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(bzimage_version(&[0u8; 0x1000]), None);
        assert_eq!(bzimage_version(b"short"), None);
    }

    #[test]
    fn path_kernel_checks_its_modules_match() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vmlinuz");
        std::fs::write(&image, fake_bzimage("6.1.0-1-test")).unwrap();
        let good = dir.path().join("lib/modules/6.1.0-1-test");
        let bad = dir.path().join("lib/modules/6.1.0-2-test");
        std::fs::create_dir_all(&good).unwrap();
        std::fs::create_dir_all(&bad).unwrap();

        let k = from_path(&image, Some(&good)).unwrap();
        assert_eq!(k.version, "6.1.0-1-test");
        assert_eq!(from_path(&image, None).unwrap().version, "6.1.0-1-test");
        let err = from_path(&image, Some(&bad)).unwrap_err().to_string();
        assert!(
            err.contains("6.1.0-1-test") && err.contains("6.1.0-2-test"),
            "{err}"
        );
        let err = from_path(&dir.path().join("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = from_path(&image, Some(&dir.path().join("gone")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone"), "{err}");
    }
}
