//! Kernel modules, loaded with `finit_module` (no modprobe in the guest).
//!
//! At boot the agent loads the modules listed in [`MODULES_LOAD`]: one path
//! per line, relative to `/lib/modules/<release>/`, already in dependency
//! order, plain `.ko` files. The drivers of devices a VM may not have
//! ([`Class`]: virtio-net, -blk, -scsi, -balloon, -mem) are loaded only if
//! their device is on the virtio bus at boot, else when a request needs
//! them ([`ensure`]: a hot-plugged disk or NIC); under TCG they cost about
//! 0.2 s of every boot otherwise. `CreateSandbox` may ask for more by
//! name; they are searched under the same directory and their
//! dependencies must already be loaded, the held-back drivers aside: a
//! module that fails on unknown symbols, at boot or by name, is tried
//! again once those are all loaded.
//!
//! capsa's own guest kernel has no module support (`CONFIG_MODULES=n`,
//! everything built in) and its initrd no module: the boot list is empty,
//! and a module asked for by name is found built in
//! (`/sys/module/<name>`) or refused with that reason.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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
    #[error("module {0} is not built into this kernel, which cannot load modules")]
    NoModuleSupport(String),
}

/// Whether the running kernel loads modules (`/proc/modules` exists only
/// with `CONFIG_MODULES`).
pub fn kernel_loads_modules() -> bool {
    Path::new("/proc/modules").exists()
}

/// Whether module `name` is built into the running kernel: it has a
/// directory in `sysfs` (built-in code with parameters or a version does).
pub fn is_builtin(sys_module: &Path, name: &str) -> bool {
    sys_module.join(normalize(name)).is_dir()
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

/// Devices whose drivers are loaded when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Net,
    Blk,
    Balloon,
    Scsi,
    Mem,
}

impl Class {
    const ALL: [Class; 5] = [
        Class::Net,
        Class::Blk,
        Class::Balloon,
        Class::Scsi,
        Class::Mem,
    ];

    /// The virtio device ID (virtio spec, "Device Types").
    fn virtio_id(self) -> u32 {
        match self {
            Class::Net => 1,
            Class::Blk => 2,
            Class::Balloon => 5,
            Class::Scsi => 8,
            Class::Mem => 24,
        }
    }

    /// The modules of the class (those that only it needs).
    fn modules(self) -> &'static [&'static str] {
        match self {
            Class::Net => &["failover", "net_failover", "virtio_net"],
            Class::Blk => &["virtio_blk"],
            Class::Balloon => &["virtio_balloon"],
            Class::Scsi => &["scsi_common", "scsi_mod", "virtio_scsi", "sd_mod"],
            Class::Mem => &["virtio_mem"],
        }
    }

    /// The class whose modules include the module of `rel` (a list path).
    fn of(rel: &str) -> Option<Class> {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let name = normalize(name.strip_suffix(".ko").unwrap_or(name));
        Class::ALL
            .into_iter()
            .find(|c| c.modules().contains(&name.as_str()))
    }
}

/// The boot list's modules held back, and the classes loaded since.
struct Deferred {
    dir: PathBuf,
    /// (class, list path), in list order.
    entries: Vec<(Class, String)>,
    loaded: HashSet<Class>,
}

static DEFERRED: OnceLock<Mutex<Deferred>> = OnceLock::new();

/// The list's entries split into those to load now and those of a class,
/// each in list order.
pub fn split_list<'a>(list: &[&'a str]) -> (Vec<&'a str>, Vec<(Class, &'a str)>) {
    let mut now = Vec::new();
    let mut deferred = Vec::new();
    for rel in list {
        match Class::of(rel) {
            Some(class) => deferred.push((class, *rel)),
            None => now.push(*rel),
        }
    }
    (now, deferred)
}

/// The classes of the virtio devices under `bus` (`/sys/bus/virtio/devices`:
/// each device's `device` file holds its ID, `0x0002`).
pub fn present_classes(bus: &Path) -> HashSet<Class> {
    let mut present = HashSet::new();
    let Ok(entries) = std::fs::read_dir(bus) else {
        return present;
    };
    for entry in entries.flatten() {
        let Ok(id) = std::fs::read_to_string(entry.path().join("device")) else {
            continue;
        };
        let id = id.trim();
        let Ok(id) = u32::from_str_radix(id.trim_start_matches("0x"), 16) else {
            continue;
        };
        if let Some(class) = Class::ALL.into_iter().find(|c| c.virtio_id() == id) {
            present.insert(class);
        }
    }
    present
}

fn load_logged(dir: &Path, rel: &str) {
    match load_file(&dir.join(rel), "") {
        Ok(loaded) => tracing::debug!(module = rel, ?loaded, "kernel module"),
        Err(e) => tracing::error!(module = rel, error = %crate::error::chain(&e), "kernel module"),
    }
}

/// Loads the modules of [`MODULES_LOAD`], in order, but those of a
/// [`Class`] only if its device is there (the virtio bus is up once
/// `virtio_pci` is loaded, and the cold-plugged devices are on it); the
/// others wait for [`ensure`]. A module that fails is logged and skipped:
/// the ones after it may still be needed.
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
    let list = parse_list(&text);
    let (now, deferred) = split_list(&list);
    // A module that fails may depend on a held-back driver (an extra
    // module of `capsa assets build --module`, such as `sg` on
    // `scsi_mod`): it is tried again once they are all loaded.
    let mut failed = Vec::new();
    for rel in now {
        match load_file(&dir.join(rel), "") {
            Ok(loaded) => tracing::debug!(module = rel, ?loaded, "kernel module"),
            Err(_) => failed.push(rel),
        }
    }
    let present = present_classes(Path::new("/sys/bus/virtio/devices"));
    let state = Deferred {
        dir,
        entries: deferred
            .into_iter()
            .map(|(c, rel)| (c, rel.to_string()))
            .collect(),
        loaded: HashSet::new(),
    };
    let state = DEFERRED.get_or_init(|| Mutex::new(state));
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    for class in Class::ALL.into_iter().filter(|c| present.contains(c)) {
        load_class(&mut state, class);
    }
    if !failed.is_empty() {
        load_all_classes(&mut state);
        for rel in failed {
            load_logged(&state.dir, rel);
        }
    }
    Ok(())
}

fn load_all_classes(state: &mut Deferred) {
    for class in Class::ALL {
        load_class(state, class);
    }
}

fn load_class(state: &mut Deferred, class: Class) {
    if !state.loaded.insert(class) {
        return;
    }
    for (_, rel) in state.entries.iter().filter(|(c, _)| *c == class) {
        load_logged(&state.dir, rel);
    }
}

/// Loads the held-back drivers of `class` if they are not yet (a device of
/// it is about to be used); nothing when the boot list was not read (not
/// PID 1) or had none of them.
pub fn ensure(class: Class) {
    if let Some(state) = DEFERRED.get() {
        load_class(&mut state.lock().unwrap_or_else(|e| e.into_inner()), class);
    }
}

/// Loads module `name` (as `modprobe` names it) with `params`.
pub fn load_by_name(name: &str, params: &[String]) -> Result<Loaded, ModuleError> {
    check_name(name)?;
    if !kernel_loads_modules() {
        return if is_builtin(Path::new("/sys/module"), name) {
            Ok(Loaded::Already)
        } else {
            Err(ModuleError::NoModuleSupport(name.to_string()))
        };
    }
    let dir = modules_dir()?;
    let path = find_module(&dir, name).ok_or_else(|| ModuleError::NotFound {
        name: name.to_string(),
        dir: dir.clone(),
    })?;
    let params = params.join(" ");
    let result = load_file(&path, &params);
    // Unknown symbols: it may need a held-back driver (`net_failover`
    // before `virtio_net`, `scsi_mod` before `sg`): load them, try again.
    match (result, DEFERRED.get()) {
        (Err(ModuleError::Load(_, Errno::ENOENT)), Some(state)) => {
            load_all_classes(&mut state.lock().unwrap_or_else(|e| e.into_inner()));
            load_file(&path, &params)
        }
        (result, _) => result,
    }
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
    fn device_drivers_are_held_back_by_class() {
        let list = [
            "kernel/drivers/virtio/virtio.ko",
            "kernel/fs/fuse/virtiofs.ko",
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/scsi/scsi_common.ko",
            "kernel/drivers/scsi/sd_mod.ko",
            "kernel/net/core/failover.ko",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/virtio/virtio_mem.ko",
            "kernel/drivers/virtio/virtio_balloon.ko",
        ];
        let (now, deferred) = split_list(&list);
        assert_eq!(
            now,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/fs/fuse/virtiofs.ko"
            ]
        );
        let classes: Vec<Class> = deferred.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            classes,
            [
                Class::Blk,
                Class::Scsi,
                Class::Scsi,
                Class::Net,
                Class::Net,
                Class::Mem,
                Class::Balloon
            ]
        );
    }

    #[test]
    fn present_devices_by_virtio_id() {
        let bus = tempfile::tempdir().unwrap();
        for (dev, id) in [
            ("virtio0", "0x0013\n"),
            ("virtio1", "0x0002\n"),
            ("virtio2", "0x0018\n"),
            ("virtio3", "junk"),
        ] {
            std::fs::create_dir(bus.path().join(dev)).unwrap();
            std::fs::write(bus.path().join(dev).join("device"), id).unwrap();
        }
        assert_eq!(
            present_classes(bus.path()),
            HashSet::from([Class::Blk, Class::Mem])
        );
        assert!(present_classes(&bus.path().join("none")).is_empty());
    }

    #[test]
    fn builtin_modules_are_found_in_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir(sys.path().join("virtio_blk")).unwrap();
        assert!(is_builtin(sys.path(), "virtio-blk"));
        assert!(is_builtin(sys.path(), "virtio_blk"));
        assert!(!is_builtin(sys.path(), "nbd"));
        let err = ModuleError::NoModuleSupport("nbd".into()).to_string();
        assert!(
            err.contains("nbd") && err.contains("cannot load modules"),
            "{err}"
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
