//! The guest kernel: capsa's own build, a Debian package fetched and
//! unpacked, or files on disk.

use fs_err as fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::manifest::KernelInput;
use crate::{apt, kbuild, Error};

/// A kernel ready to use: its image and, if modular, its module tree.
#[derive(Debug)]
pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    /// `.../lib/modules/<version>`, `None` for a kernel without modules.
    pub modules_dir: Option<PathBuf>,
    /// The configuration of a kernel capsa built.
    pub config: Option<PathBuf>,
    pub input: KernelInput,
}

/// capsa's x86_64 guest kernel of the fragments and patches under
/// `kernel_dir`, from the build cache `cache` (built first if needed).
pub fn from_build(
    kernel_dir: &Path,
    cache: &Path,
    progress: &dyn Fn(&str),
) -> Result<Kernel, Error> {
    let recipe = kbuild::Recipe::load(kernel_dir, kbuild::Arch::X86_64)?;
    let built = kbuild::build(&recipe, cache, progress)?;
    Ok(Kernel {
        version: built.release,
        image: built.image,
        modules_dir: None,
        config: Some(built.config),
        input: KernelInput::Build {
            arch: built.arch,
            source: format!("{} {}", kbuild::SOURCE_PACKAGE, kbuild::SOURCE_VERSION),
            id: built.id,
        },
    })
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
        config: None,
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
            let version = fs::canonicalize(dir)?
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
        config: None,
        input: KernelInput::Path {
            kernel: kernel.into(),
            modules_dir: modules_dir.map(Path::to_path_buf),
        },
    })
}

/// What a kernel file is, as `capsa check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// capsa's own build: its release names the build's id (the first 12
    /// hex digits of the id of its inputs).
    Capsa { release: String, id: String },
    /// Any other kernel, with its release when it could be read.
    Foreign { release: Option<String> },
}

/// Identifies the kernel in `path`: its release from a bzImage's boot
/// header, or from the banner (`Linux version ...`) of an uncompressed
/// kernel.
pub fn identify(path: &Path) -> Result<Identity, Error> {
    let data = fs::read(path)?;
    let release = bzimage_version(&data).or_else(|| banner_release(&data));
    Ok(match release {
        Some(release) => match capsa_build_id(&release) {
            Some(id) => Identity::Capsa {
                id: id.to_string(),
                release,
            },
            None => Identity::Foreign {
                release: Some(release),
            },
        },
        None => Identity::Foreign { release: None },
    })
}

/// `6.12.118-capsa-0123456789ab` → `0123456789ab`.
fn capsa_build_id(release: &str) -> Option<&str> {
    let (_, id) = release.rsplit_once("-capsa-")?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The release in the first `Linux version <digit>...` of `data`.
fn banner_release(data: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut rest = data;
    while let Some(at) = rest.windows(BANNER.len()).position(|w| w == BANNER) {
        let after = &rest[at + BANNER.len()..];
        if after.first().is_some_and(u8::is_ascii_digit) {
            let end = after
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == 0)?;
            return std::str::from_utf8(&after[..end]).ok().map(String::from);
        }
        rest = after;
    }
    None
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
    fn identifies_capsa_builds_and_foreign_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let elf = dir.path().join("vmlinux");
        let mut data = b"\x7fELF....Linux version %s\0".to_vec();
        data.extend(b"Linux version 6.12.118-capsa-0123456789ab (root@host) (gcc) #1 SMP\n\0");
        std::fs::write(&elf, &data).unwrap();
        assert_eq!(
            identify(&elf).unwrap(),
            Identity::Capsa {
                release: "6.12.118-capsa-0123456789ab".into(),
                id: "0123456789ab".into()
            }
        );
        let bz = dir.path().join("vmlinuz");
        std::fs::write(&bz, fake_bzimage("6.1.0-56-cloud-amd64")).unwrap();
        assert_eq!(
            identify(&bz).unwrap(),
            Identity::Foreign {
                release: Some("6.1.0-56-cloud-amd64".into())
            }
        );
        std::fs::write(&bz, b"junk").unwrap();
        assert_eq!(identify(&bz).unwrap(), Identity::Foreign { release: None });
        assert_eq!(capsa_build_id("6.12.1-capsa-xyz"), None);
        assert!(identify(&dir.path().join("gone")).is_err());
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
