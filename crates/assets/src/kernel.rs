//! The guest kernel: a Debian package fetched and unpacked, or files on disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// An unpacked kernel: its image and, if modular, its module tree root.
pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    /// Directory that holds `lib/modules/<version>`.
    pub root: Option<PathBuf>,
    /// What identifies the input (package and version, or file path).
    pub input: String,
}

fn run(tool: &str, cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .output()
        .map_err(|e| Error::Tool(tool.into(), e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(Error::Tool(
            tool.into(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `linux-image-cloud-amd64` → `linux-image-6.1.0-NN-cloud-amd64`: follows
/// the metapackage's dependency; a real image package is returned as is.
fn resolve_package(name: &str) -> Result<String, Error> {
    let depends = run(
        "apt-cache",
        Command::new("apt-cache").args(["depends", "--important", name]),
    )?;
    let target = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"));
    Ok(target.unwrap_or(name).to_string())
}

/// Fetches (once) and unpacks (once) the kernel package `name` in `cache`.
pub fn from_package(name: &str, cache: &Path) -> Result<Kernel, Error> {
    let package = resolve_package(name)?;
    let pkg_dir = cache.join(&package);
    std::fs::create_dir_all(&pkg_dir).map_err(|e| Error::io(&pkg_dir, e))?;
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(&pkg_dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
    };
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            tracing::info!(%package, "downloading the kernel package");
            run(
                "apt-get download",
                Command::new("apt-get")
                    .args(["download", "-q", &package])
                    .current_dir(&pkg_dir),
            )?;
            find_deb().ok_or_else(|| Error::Tool("apt-get download".into(), "no .deb".into()))?
        }
    };
    let root = pkg_dir.join("root");
    if !root.join("boot").is_dir() {
        let tmp = pkg_dir.join("root.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        run(
            "dpkg-deb",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
        )?;
        std::fs::rename(&tmp, &root).map_err(|e| Error::io(&root, e))?;
    }
    let modules = root.join("lib/modules");
    let version = std::fs::read_dir(&modules)
        .map_err(|e| Error::io(&modules, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| Error::io(&modules, std::io::ErrorKind::NotFound.into()))?;
    let image = root.join("boot").join(format!("vmlinuz-{version}"));
    if !image.is_file() {
        return Err(Error::MissingKernel(image));
    }
    let deb_name = deb.file_name().unwrap_or_default().to_string_lossy();
    Ok(Kernel {
        version,
        image,
        root: Some(root),
        input: format!("package {deb_name}"),
    })
}

/// A kernel on disk; `modules_dir` is `<root>/lib/modules/<version>`.
pub fn from_path(kernel: &Path, modules_dir: Option<&Path>) -> Result<Kernel, Error> {
    if !kernel.is_file() {
        return Err(Error::MissingKernel(kernel.into()));
    }
    let (version, root) = match modules_dir {
        None => (String::from("unknown"), None),
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Error::io(dir, std::io::ErrorKind::NotFound.into()));
            }
            let version = dir
                .file_name()
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            let root = dir.ancestors().nth(3).map(Path::to_path_buf);
            (version, root)
        }
    };
    Ok(Kernel {
        version,
        image: kernel.into(),
        root,
        input: format!("path {}", kernel.display()),
    })
}
