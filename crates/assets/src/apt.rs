//! Packages (the kernel, busybox) through Debian's tools: `apt-cache` to resolve a
//! metapackage to its image package, `apt-get download` to fetch it (never
//! install), `dpkg-deb -x` to unpack it.

use fs_err as fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::files::{run, sha256_file};
use crate::Error;

/// The candidate version of a package, as `apt-cache show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: Option<String>,
    /// `Depends`, alternatives included.
    pub depends: Vec<Dependency>,
}

/// One package of a `Depends` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    /// The version of an exact (`=`) relation.
    pub exact: Option<String>,
}

impl Package {
    /// The file name `apt-get download` gives the package.
    pub fn deb_file_name(&self) -> String {
        let version = self.version.replace(':', "%3a");
        format!("{}_{version}_{}.deb", self.name, self.arch)
    }
}

/// Parses the first stanza of `apt-cache show` output.
pub fn parse_show(text: &str) -> Option<Package> {
    let stanza = text.split("\n\n").next()?;
    let field = |key: &str| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let depends = field("Depends")
        .unwrap_or_default()
        .split([',', '|'])
        .filter_map(parse_dependency)
        .collect();
    Some(Package {
        name: field("Package")?,
        version: field("Version")?,
        arch: field("Architecture")?,
        sha256: field("SHA256"),
        depends,
    })
}

/// `linux-image-X (= 1.2-3)` → name and exact version; `kmod:any (>= 1)`
/// → name only.
fn parse_dependency(text: &str) -> Option<Dependency> {
    let (name, relation) = match text.split_once('(') {
        Some((name, relation)) => (name, Some(relation.trim_end().trim_end_matches(')'))),
        None => (text, None),
    };
    let name = name.trim().split(':').next()?;
    if name.is_empty() {
        return None;
    }
    let exact = relation
        .and_then(|r| r.trim().strip_prefix('='))
        .map(|v| v.trim().to_string());
    Some(Dependency {
        name: name.to_string(),
        exact,
    })
}

/// The candidate version of package `name`.
pub fn show(name: &str) -> Result<Package, Error> {
    let out = run(
        "apt-cache show",
        Command::new("apt-cache").args(["show", "--no-all-versions", name]),
    );
    let text = match out {
        Ok(text) => String::from_utf8_lossy(&text).into_owned(),
        Err(Error::Tool { stderr, .. })
            if stderr.contains("No packages found") || stderr.contains("Unable to locate") =>
        {
            return Err(Error::UnknownPackage(name.into()))
        }
        Err(e) => return Err(e),
    };
    parse_show(&text).ok_or_else(|| Error::UnknownPackage(name.into()))
}

/// Follows metapackages (`linux-image-cloud-amd64`) to the image package
/// they depend on (`linux-image-6.1.0-NN-cloud-amd64`); an image package is
/// returned as is. A metapackage pins its image's exact version, which
/// saves asking apt about the image (slow where apt keeps no binary cache)
/// until it must be downloaded.
pub fn resolve_kernel(name: &str) -> Result<Package, Error> {
    let mut package = show(name)?;
    for _ in 0..4 {
        let next = package
            .depends
            .iter()
            .find(|d| d.name.starts_with("linux-image-") && d.name != package.name)
            .cloned();
        package = match next {
            Some(Dependency {
                name,
                exact: Some(version),
            }) => Package {
                name,
                version,
                arch: package.arch,
                sha256: None,
                depends: Vec::new(),
            },
            Some(dep) => show(&dep.name)?,
            None => break,
        };
    }
    tracing::debug!(requested = name, package = %package.name, version = %package.version, "resolved kernel package");
    Ok(package)
}

/// The package fetched into `cache/<name>` and unpacked in its `root`
/// (each once). The directory stays locked while the returned lock lives.
pub fn unpacked(
    package: &Package,
    cache: &Path,
) -> Result<(PathBuf, nix::fcntl::Flock<std::fs::File>), Error> {
    let dir = cache.join(&package.name);
    fs::create_dir_all(&dir)?;
    let lock = crate::files::lock_dir(&dir)?;
    let deb = fetch(package, &dir)?;
    let root = dir.join("root");
    unpack(&deb, &root)?;
    Ok((root, lock))
}

/// The package's `.deb` in `dir`, downloaded unless already there. A
/// download is checked against the archive's sha256 before it is kept.
pub fn fetch(package: &Package, dir: &Path) -> Result<PathBuf, Error> {
    let deb = dir.join(package.deb_file_name());
    if deb.is_file() {
        return Ok(deb);
    }
    let described = show(&package.name)?;
    let sha256 = described
        .sha256
        .filter(|_| described.version == package.version);
    let package = Package {
        arch: described.arch,
        ..package.clone()
    };
    tracing::info!(package = %package.name, version = %package.version, "downloading a package");
    download(
        &package.name,
        &package.version,
        &package.deb_file_name(),
        sha256.as_deref(),
        dir,
    )
}

/// `apt-get download name=version` into a scratch directory in `dir`;
/// the `.deb` (`file_name`), checked against `sha256` when it is known,
/// is then moved to `dir/file_name`, so a failed download leaves nothing.
pub(crate) fn download(
    name: &str,
    version: &str,
    file_name: &str,
    sha256: Option<&str>,
    dir: &Path,
) -> Result<PathBuf, Error> {
    let tmp = tempfile::Builder::new()
        .prefix(".download")
        .tempdir_in(dir)?;
    run(
        "apt-get download",
        Command::new("apt-get")
            .args(["download", "-q"])
            .arg(format!("{name}={version}"))
            .current_dir(tmp.path()),
    )?;
    let got = tmp.path().join(file_name);
    if let Some(want) = sha256 {
        if sha256_file(&got).as_deref() != Some(want) {
            return Err(Error::Checksum(got));
        }
    }
    let deb = dir.join(file_name);
    fs::rename(&got, &deb)?;
    Ok(deb)
}

const STAMP: &str = ".capsa-unpacked-from";

/// Unpacks `deb` into `root` unless `root` already holds that very package.
pub fn unpack(deb: &Path, root: &Path) -> Result<(), Error> {
    let source = deb.file_name().unwrap_or_default().to_string_lossy();
    let stamp = std::fs::read_to_string(root.join(STAMP)).unwrap_or_default();
    if stamp == source {
        return Ok(());
    }
    let parent = root.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".unpack")
        .tempdir_in(parent)?;
    run(
        "dpkg-deb",
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(tmp.path()),
    )?;
    let stamp = tmp.path().join(STAMP);
    fs::write(&stamp, source.as_bytes())?;
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    Ok(fs::rename(tmp.path(), root)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Architecture: amd64
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description: Linux for x86-64 cloud (meta-package)

Package: linux-image-cloud-amd64
Version: 6.1.176-1
Architecture: amd64
Depends: linux-image-6.1.0-40-cloud-amd64 (= 6.1.176-1)
";

    const IMAGE: &str = "\
Package: linux-image-6.1.0-56-cloud-amd64
Version: 6.1.192-2
Architecture: amd64
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool:any
SHA256: e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee
";

    #[test]
    fn reads_the_first_stanza() {
        let meta = parse_show(META).unwrap();
        assert_eq!(meta.version, "6.1.192-2");
        assert_eq!(
            meta.depends,
            [Dependency {
                name: "linux-image-6.1.0-56-cloud-amd64".into(),
                exact: Some("6.1.192-2".into()),
            }]
        );
        assert_eq!(meta.sha256, None);
        let image = parse_show(IMAGE).unwrap();
        let names: Vec<&str> = image.depends.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kmod",
                "linux-base",
                "initramfs-tools",
                "linux-initramfs-tool"
            ]
        );
        assert!(image.depends.iter().all(|d| d.exact.is_none()));
        assert_eq!(
            image.deb_file_name(),
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
        );
        assert!(image.sha256.unwrap().starts_with("e7d02b94"));
        assert_eq!(parse_show("Package: x\n"), None);
    }

    #[test]
    fn epoch_is_escaped_like_apt_does() {
        let mut p = parse_show(IMAGE).unwrap();
        p.version = "1:2.3-4".into();
        assert_eq!(
            p.deb_file_name(),
            "linux-image-6.1.0-56-cloud-amd64_1%3a2.3-4_amd64.deb"
        );
    }
}
