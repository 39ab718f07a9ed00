//! The shell of the VM's root environment, for the debug console: the
//! static busybox of Debian's `busybox-static`, fetched and unpacked (never
//! installed) with the same machinery as the kernel package.

use fs_err as fs;
use std::path::Path;

use crate::manifest::ShellInput;
use crate::{apt, files, Error};

/// The Debian package the shell comes from.
pub const SHELL_PACKAGE: &str = "busybox-static";
/// Where the package may hold the binary (before and after the /usr merge).
const BUSYBOX_PATHS: [&str; 2] = ["bin/busybox", "usr/bin/busybox"];

/// A busybox binary and where it came from.
pub struct Shell {
    pub busybox: Vec<u8>,
    pub input: ShellInput,
}

/// Fetches `name` into `cache` (once), unpacks it there (once) and reads
/// its busybox.
pub fn from_package(name: &str, cache: &Path) -> Result<Shell, Error> {
    let package = apt::show(name)?;
    let (root, _lock) = apt::unpacked(&package, cache)?;
    let binary = BUSYBOX_PATHS
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NoBusyboxInPackage {
            package: package.name.clone(),
        })?;
    let busybox = fs::read(&binary)?;
    tracing::debug!(package = %package.name, version = %package.version, "shell for the initrd");
    Ok(Shell {
        input: ShellInput {
            package: package.name,
            version: package.version,
            sha256: files::sha256(&busybox),
        },
        busybox,
    })
}
