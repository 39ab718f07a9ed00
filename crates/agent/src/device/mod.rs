//! Hot-plugged block devices: finding them in the guest and giving them to
//! containers.
//!
//! The host names a device by where it plugged it, in Kata's notations: a
//! PCI path for virtio-blk ([`pci`]), a SCSI address for a disk of the
//! virtio-scsi controller ([`scsi`]), or the disk's kernel name for a
//! disk on no bus the host addresses (Kata's `mmioblk`: `/dev/ubda`, a
//! User-Mode Linux disk). The agent subscribes to the kernel's
//! uevents first, then looks in sysfs, and again after every uevent
//! ([`uevent`]), so a device that appeared before the request is found as
//! well as one that comes later. The wait is bounded by the hotplug timeout
//! of the kernel command line ([`hotplug_timeout`]). The node is the
//! devtmpfs one (`/dev/vdb`, `/dev/sda`).

pub mod pci;
pub mod scsi;
pub mod spec;
pub mod uevent;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use capsa_protocols::{DRIVER_BLK, DRIVER_MMIO_BLK, DRIVER_SCSI};

pub use pci::PciPath;
pub use scsi::ScsiAddr;

/// The wait for a device when the kernel command line gives none (the
/// host's default `hotplug_timeout`).
pub const DEFAULT_HOTPLUG_TIMEOUT: Duration = Duration::from_secs(15);
/// The kernel parameter of the wait, in seconds (Kata's).
const CMDLINE_PARAM: &str = "agent.hotplug_timeout";
/// The device types (and block storage drivers) handled.
pub const HANDLERS: &[&str] = &[DRIVER_BLK, DRIVER_SCSI, DRIVER_MMIO_BLK];

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unsupported device type {0:?} (supported: blk, scsi, mmioblk)")]
    Type(String),
    #[error("invalid PCI path {0:?}")]
    PciPath(String),
    #[error("invalid SCSI address {0:?}")]
    ScsiAddr(String),
    #[error("invalid disk node {0:?} (expected /dev/<name>)")]
    Node(String),
    #[error("cannot read {0}")]
    Sysfs(PathBuf, #[source] std::io::Error),
    #[error("{0} lists more than one bus: {1:?}")]
    Buses(PathBuf, Vec<String>),
    #[error("cannot listen to kernel uevents")]
    Uevents(#[source] nix::Error),
    #[error("no block device at {source_name} after waiting {}s", .waited.as_secs_f32())]
    Timeout {
        source_name: Source,
        waited: Duration,
    },
    #[error("{0} has an invalid device number {1:?}")]
    DevNumber(PathBuf, String),
}

/// Where the host plugged a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Pci(PciPath),
    Scsi(ScsiAddr),
    /// A disk's kernel name (`ubda` for `/dev/ubda`).
    Node(String),
}

impl Source {
    /// `address` of a device of type (or storage driver) `kind`.
    pub fn parse(kind: &str, address: &str) -> Result<Self, DeviceError> {
        match kind {
            DRIVER_BLK => PciPath::parse(address).map(Self::Pci),
            DRIVER_SCSI => ScsiAddr::parse(address).map(Self::Scsi),
            DRIVER_MMIO_BLK => parse_node(address).map(Self::Node),
            other => Err(DeviceError::Type(other.to_string())),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(p) => write!(f, "PCI path {p}"),
            Self::Scsi(a) => write!(f, "SCSI address {a}"),
            Self::Node(n) => write!(f, "/dev/{n}"),
        }
    }
}

/// A block device found in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Its node, `/dev/<name>`.
    pub node: PathBuf,
    pub major: u32,
    pub minor: u32,
}

/// Where the agent looks: sysfs and the device nodes (a fake tree in
/// tests).
#[derive(Debug, Clone)]
pub struct System {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl System {
    /// The guest's `/sys` and `/dev`.
    pub fn guest() -> Self {
        Self {
            sys: "/sys".into(),
            dev: "/dev".into(),
        }
    }

    /// The block device at `source` if it is there with its node.
    pub fn find(&self, source: &Source) -> Result<Option<Block>, DeviceError> {
        let device = match source {
            Source::Pci(p) => p.device_dir(&self.sys)?,
            Source::Scsi(a) => a.device_dir(&self.sys)?,
            // The disk itself: `/sys/class/block/<name>`.
            Source::Node(_) => Some(self.sys.join("class/block")),
        };
        let Some(device) = device else {
            return Ok(None);
        };
        let block = match source {
            // virtio-blk: <pci device>/virtio<N>/block/<vdX>
            Source::Pci(_) => first_entry(&device, |n| n.starts_with("virtio"))?
                .map(|virtio| virtio.join("block")),
            Source::Scsi(_) => Some(device.join("block")),
            Source::Node(_) => Some(device),
        };
        let wanted = |n: &str| match source {
            Source::Node(name) => n == name,
            _ => true,
        };
        let Some(name) = block
            .map(|b| first_entry(&b, wanted))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        let node = self.dev.join(name.file_name().unwrap_or_default());
        // devtmpfs makes the node before the uevent that announces it:
        // until then, wait. So does the kernel with the directory's `dev`
        // attribute: a look while the disk is being added can find the
        // directory without it.
        let dev = name.join("dev");
        if !node.exists() || !dev.exists() {
            return Ok(None);
        }
        if !live(&node)? {
            return Ok(None);
        }
        let (major, minor) = dev_number(&dev)?;
        Ok(Some(Block { node, major, minor }))
    }

    /// Waits at most `timeout` for the block device at `source`.
    pub fn wait(&self, source: &Source, timeout: Duration) -> Result<Block, DeviceError> {
        match source {
            Source::Pci(_) => crate::modules::ensure(crate::modules::Class::Blk),
            Source::Scsi(_) => crate::modules::ensure(crate::modules::Class::Scsi),
            // The driver of such a disk is the kernel's own (UML's ubd).
            Source::Node(_) => {}
        }
        let mut listener = uevent::Listener::open()?;
        if let Source::Scsi(addr) = source {
            addr.scan(&self.sys);
        }
        let found = uevent::wait_for(timeout, |left| listener.wait(left), || self.find(source))?;
        let block = found.ok_or_else(|| DeviceError::Timeout {
            source_name: source.clone(),
            waited: timeout,
        })?;
        tracing::info!(%source, node = %block.node.display(), major = block.major, minor = block.minor, "block device found");
        Ok(block)
    }
}

/// Whether the disk at `node` can be opened. The kernel makes the node
/// and the `dev` attribute (`device_add`) before the disk is live
/// (`bdev_add`, then the partition scan): an open in between fails with
/// `ENXIO`, and so would a mount. The uevent announcing the disk comes
/// after that, so a waiter looks again then. Other errors are left to
/// whoever uses the device (they name it better).
fn live(node: &Path) -> Result<bool, DeviceError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(node)
    {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            tracing::debug!(node = %node.display(), "disk not live yet");
            Ok(false)
        }
        _ => Ok(true),
    }
}

/// The first entry (by name) of `dir` whose name `wanted`; `None` when
/// there is none or no `dir`.
fn first_entry(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Option<PathBuf>, DeviceError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DeviceError::Sysfs(dir.to_path_buf(), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DeviceError::Sysfs(dir.to_path_buf(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if wanted(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().next().map(|n| dir.join(n)))
}

/// The kernel name of disk node `address` (`/dev/<name>`): one path
/// component of letters and digits.
fn parse_node(address: &str) -> Result<String, DeviceError> {
    let name = address.strip_prefix("/dev/").unwrap_or_default();
    let valid =
        !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        return Err(DeviceError::Node(address.to_string()));
    }
    Ok(name.to_string())
}

/// `major:minor` of a sysfs `dev` file.
fn dev_number(file: &Path) -> Result<(u32, u32), DeviceError> {
    let text = std::fs::read_to_string(file).map_err(|e| DeviceError::Sysfs(file.into(), e))?;
    let bad = || DeviceError::DevNumber(file.into(), text.trim().to_string());
    let (major, minor) = text.trim().split_once(':').ok_or_else(bad)?;
    Ok((
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    ))
}

/// The wait for a device: `agent.hotplug_timeout=<seconds>` of the kernel
/// command line, else [`DEFAULT_HOTPLUG_TIMEOUT`]. Read once.
pub fn hotplug_timeout() -> Duration {
    static TIMEOUT: OnceLock<Duration> = OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        timeout_from_cmdline(&cmdline).unwrap_or(DEFAULT_HOTPLUG_TIMEOUT)
    })
}

/// The hotplug timeout of `cmdline` (the last one wins); a malformed or
/// zero value is logged and ignored.
pub fn timeout_from_cmdline(cmdline: &str) -> Option<Duration> {
    let value = cmdline
        .split_whitespace()
        .rev()
        .find_map(|p| p.strip_prefix(CMDLINE_PARAM)?.strip_prefix('='))?;
    match value.parse::<u64>() {
        Ok(secs) if secs > 0 => Some(Duration::from_secs(secs)),
        _ => {
            tracing::warn!(%value, "invalid {CMDLINE_PARAM}: ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/sys` and `/dev`.
    fn fake() -> (tempfile::TempDir, System) {
        let dir = tempfile::tempdir().unwrap();
        let system = System {
            sys: dir.path().join("sys"),
            dev: dir.path().join("dev"),
        };
        std::fs::create_dir_all(&system.dev).unwrap();
        (dir, system)
    }

    fn add_block(system: &System, dir: &Path, name: &str, dev: &str) {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("dev"), dev).unwrap();
        std::fs::write(system.dev.join(name), "").unwrap();
    }

    #[test]
    fn finds_a_virtio_blk_disk_behind_a_root_port() {
        let (_dir, system) = fake();
        let source = Source::parse("blk", "02/00").unwrap();
        assert_eq!(system.find(&source).unwrap(), None);
        let port = system.sys.join("devices/pci0000:00/0000:00:02.0");
        std::fs::create_dir_all(port.join("pci_bus/0000:01")).unwrap();
        let blocks = port.join("0000:01:00.0/virtio3/block");
        std::fs::create_dir_all(&blocks).unwrap();
        assert_eq!(system.find(&source).unwrap(), None, "no disk yet");
        std::fs::create_dir_all(blocks.join("vdb")).unwrap();
        std::fs::write(blocks.join("vdb/dev"), "254:16\n").unwrap();
        assert_eq!(system.find(&source).unwrap(), None, "no node yet");
        std::fs::write(system.dev.join("vdb"), "").unwrap();
        let found = system.find(&source).unwrap().unwrap();
        assert_eq!(
            found,
            Block {
                node: system.dev.join("vdb"),
                major: 254,
                minor: 16
            }
        );
    }

    /// Seen under load: the disk's directory (and its node) before the
    /// kernel has written its `dev` attribute. Not an error: not yet.
    #[test]
    fn a_disk_without_its_dev_attribute_yet_is_waited_for() {
        let (_dir, system) = fake();
        let source = Source::parse("blk", "04/00").unwrap();
        let port = system.sys.join("devices/pci0000:00/0000:00:04.0");
        std::fs::create_dir_all(port.join("pci_bus/0000:01")).unwrap();
        let disk = port.join("0000:01:00.0/virtio2/block/vda");
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::write(system.dev.join("vda"), "").unwrap();
        assert_eq!(system.find(&source).unwrap(), None);
        std::fs::write(disk.join("dev"), "254:0\n").unwrap();
        assert_eq!(system.find(&source).unwrap().unwrap().major, 254);
    }

    #[test]
    fn finds_a_scsi_disk() {
        let (_dir, system) = fake();
        let source = Source::parse("scsi", "0:1").unwrap();
        let disk = system.sys.join("bus/scsi/devices/0:0:0:1/block");
        add_block(&system, &disk, "sdb", "8:16");
        let found = system.find(&source).unwrap().unwrap();
        assert_eq!((found.major, found.minor), (8, 16));
        assert_eq!(found.node, system.dev.join("sdb"));
    }

    #[test]
    fn finds_a_disk_by_its_name() {
        let (_dir, system) = fake();
        let source = Source::parse("mmioblk", "/dev/ubdb").unwrap();
        assert_eq!(source.to_string(), "/dev/ubdb");
        let class = system.sys.join("class/block");
        assert_eq!(system.find(&source).unwrap(), None, "no sysfs yet");
        add_block(&system, &class, "ubda", "98:0");
        assert_eq!(system.find(&source).unwrap(), None, "another disk");
        add_block(&system, &class, "ubdb", "98:16");
        let found = system.find(&source).unwrap().unwrap();
        assert_eq!((found.major, found.minor), (98, 16));
        assert_eq!(found.node, system.dev.join("ubdb"));
        for bad in ["ubda", "/dev/", "/dev/../sda", "/dev/ubd/a", "/dev/a b"] {
            let err = Source::parse("mmioblk", bad).unwrap_err();
            assert!(matches!(err, DeviceError::Node(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bad_device_number_names_the_file() {
        let (_dir, system) = fake();
        let disk = system.sys.join("bus/scsi/devices/0:0:0:1/block");
        add_block(&system, &disk, "sdb", "8-16");
        let err = system.find(&Source::parse("scsi", "0:1").unwrap());
        let err = err.unwrap_err().to_string();
        assert!(err.contains("sdb/dev") && err.contains("\"8-16\""), "{err}");
    }

    #[test]
    fn unknown_kinds_and_timeouts_are_named() {
        let err = Source::parse("nvdimm", "0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported device type \"nvdimm\" (supported: blk, scsi, mmioblk)"
        );
        let err = DeviceError::Timeout {
            source_name: Source::parse("blk", "02/00").unwrap(),
            waited: Duration::from_secs(15),
        };
        assert_eq!(
            err.to_string(),
            "no block device at PCI path 02/00 after waiting 15s"
        );
    }

    #[test]
    fn the_timeout_comes_from_the_command_line() {
        let line = "console=ttyS0 agent.hotplug_timeout=30 quiet\n";
        assert_eq!(timeout_from_cmdline(line), Some(Duration::from_secs(30)));
        let two = "agent.hotplug_timeout=3 agent.hotplug_timeout=7";
        assert_eq!(timeout_from_cmdline(two), Some(Duration::from_secs(7)));
        assert_eq!(timeout_from_cmdline("agent.hotplug_timeout=0"), None);
        assert_eq!(timeout_from_cmdline("agent.hotplug_timeout=x"), None);
        assert_eq!(timeout_from_cmdline("xagent.hotplug_timeout=3"), None);
        assert_eq!(timeout_from_cmdline("console=ttyS0"), None);
    }
}
