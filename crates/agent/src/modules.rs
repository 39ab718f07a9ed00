//! Kernel modules, loaded with `finit_module` (no modprobe in the guest).
//!
//! At boot the agent loads the modules listed in [`MODULES_LOAD`]: one path
//! per line, relative to `/lib/modules/<release>/`, already in dependency
//! order, plain `.ko` files. `CreateSandbox` may ask for more by name; they
//! are searched under the same directory and their dependencies must
//! already be loaded.

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// The list of modules loaded at boot.
pub const MODULES_LOAD: &str = "/etc/capsa/modules.load";

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read the kernel release")]
    Release(#[source] std::io::Error),
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("cannot load {0}")]
    Load(PathBuf, #[source] Errno),
    #[error("module name {0:?} is invalid")]
    Name(String),
    #[error("parameters of module {0} contain a NUL byte")]
    Params(String),
    #[error("module {name} not found under {dir}")]
    NotFound { name: String, dir: PathBuf },
}

/// Whether a module was loaded now or was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Now,
    Already,
}

/// `/lib/modules/<release>`.
pub fn modules_dir() -> Result<PathBuf, ModuleError> {
    let release =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(ModuleError::Release)?;
    Ok(Path::new("/lib/modules").join(release.trim()))
}

/// The module paths of a `modules.load` file: blank lines and `#` comments
/// are skipped.
pub fn parse_list(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Loads one `.ko` file with `params` (space separated `key=value`).
pub fn load_file(path: &Path, params: &str) -> Result<Loaded, ModuleError> {
    let file = File::open(path).map_err(|e| ModuleError::Open(path.to_path_buf(), e))?;
    let params =
        CString::new(params).map_err(|_| ModuleError::Params(path.display().to_string()))?;
    match finit_module(&file, &params, ModuleInitFlags::empty()) {
        Ok(()) => Ok(Loaded::Now),
        Err(Errno::EEXIST) => Ok(Loaded::Already),
        Err(e) => Err(ModuleError::Load(path.to_path_buf(), e)),
    }
}

/// Loads every module of [`MODULES_LOAD`], in order. A module that fails is
/// logged and skipped: the ones after it may still be needed.
pub fn load_boot_modules() -> Result<(), ModuleError> {
    let text = match std::fs::read_to_string(MODULES_LOAD) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("no {MODULES_LOAD}: no module to load");
            return Ok(());
        }
        Err(e) => return Err(ModuleError::Open(MODULES_LOAD.into(), e)),
    };
    let dir = modules_dir()?;
    for rel in parse_list(&text) {
        let path = dir.join(rel);
        match load_file(&path, "") {
            Ok(loaded) => tracing::debug!(module = rel, ?loaded, "kernel module"),
            Err(e) => {
                tracing::error!(module = rel, error = %crate::error::chain(&e), "kernel module")
            }
        }
    }
    Ok(())
}

/// Loads module `name` (as `modprobe` names it) with `params`.
pub fn load_by_name(name: &str, params: &[String]) -> Result<Loaded, ModuleError> {
    check_name(name)?;
    let dir = modules_dir()?;
    let path = find_module(&dir, name).ok_or_else(|| ModuleError::NotFound {
        name: name.to_string(),
        dir: dir.clone(),
    })?;
    load_file(&path, &params.join(" "))
}

/// Checks a module name from the host: not empty, no `/`, NUL or `..`.
pub fn check_name(name: &str) -> Result<(), ModuleError> {
    if name.is_empty() || name.contains(['/', '\0']) || name.contains("..") {
        return Err(ModuleError::Name(name.to_string()));
    }
    Ok(())
}

/// Finds `<name>.ko` under `dir`; `-` and `_` are the same in module names.
pub fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let wanted = normalize(name);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if let Some(stem) = entry
                .file_name()
                .to_str()
                .and_then(|f| f.strip_suffix(".ko"))
            {
                if normalize(stem) == wanted {
                    return Some(path);
                }
            }
        }
    }
    None
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_skips_blanks_and_comments() {
        let text = "# boot modules\nkernel/virtio_ring.ko\n\n  kernel/fs/fuse/fuse.ko  \n#x\n";
        assert_eq!(
            parse_list(text),
            vec!["kernel/virtio_ring.ko", "kernel/fs/fuse/fuse.ko"]
        );
    }

    #[test]
    fn finds_modules_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("kernel/net/vmw_vsock");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("vmw_vsock_virtio_transport.ko"), b"").unwrap();
        std::fs::write(sub.join("vsock.ko.xz"), b"").unwrap();
        assert_eq!(
            find_module(dir.path(), "vmw-vsock-virtio-transport"),
            Some(sub.join("vmw_vsock_virtio_transport.ko"))
        );
        assert_eq!(find_module(dir.path(), "vsock"), None);
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "../x", "a/b", "a\0"] {
            assert!(
                matches!(load_by_name(name, &[]), Err(ModuleError::Name(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn missing_file_is_an_open_error() {
        let err = load_file(Path::new("/nonexistent/x.ko"), "").unwrap_err();
        assert!(matches!(err, ModuleError::Open(..)), "{err}");
    }
}
