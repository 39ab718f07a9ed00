//! The kernel source: Debian's `linux-source-6.12` package at a pinned
//! version, fetched with `apt-get download` (from bookworm-security),
//! checked against a pinned sha256, never installed; its tarball is
//! unpacked into each build's work directory.

use fs_err as fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::files::{run, sha256_file};
use crate::Error;

/// The package, its version and the sha256 of its `.deb` (from the
/// archive's `Packages` index, `apt-cache show`).
pub const PACKAGE: &str = "linux-source-6.12";
pub const VERSION: &str = "6.12.118-1~deb12u1";
pub const SHA256: &str = "896aff3b39299fa0dd36fef4f5db56ab189182e39abbbb1227dafdc7fcfe3fc3";
/// The source tarball inside the package.
const TARBALL: &str = "./usr/src/linux-source-6.12.tar.xz";

/// `<dir>/<package>_<version>_all.deb`, downloaded unless already there
/// with the pinned checksum.
pub fn fetch(dir: &Path) -> Result<PathBuf, Error> {
    fs::create_dir_all(dir)?;
    let file_name = format!("{PACKAGE}_{}_all.deb", VERSION.replace(':', "%3a"));
    let deb = dir.join(&file_name);
    if sha256_file(&deb).as_deref() == Some(SHA256) {
        return Ok(deb);
    }
    tracing::info!(
        package = PACKAGE,
        version = VERSION,
        "downloading the kernel source"
    );
    crate::apt::download(PACKAGE, VERSION, &file_name, Some(SHA256), dir).map_err(|e| match e {
        Error::Tool { stderr, .. } => Error::Source(format!(
            "apt-get download {PACKAGE}={VERSION}: {stderr} \
             (is bookworm-security in the apt sources, and `apt-get update` done?)"
        )),
        other => other,
    })
}

/// Unpacks the source tree of `deb` into `dest` (which must not exist):
/// the package's tarball streamed out of the `.deb`, never written whole.
pub fn unpack(deb: &Path, dest: &Path) -> Result<(), Error> {
    fs::create_dir_all(dest)?;
    run(
        "unpack the kernel source",
        Command::new("bash")
            .args([
                "-c",
                "set -euo pipefail; dpkg-deb --fsys-tarfile \"$1\" | tar -x -O \"$2\" \
                 | tar -x -J --strip-components=1 -C \"$3\"",
                "bash",
            ])
            .arg(deb)
            .arg(TARBALL)
            .arg(dest),
    )?;
    Ok(())
}
