//! Drives: host block devices and image files hot-plugged into the VM.
//! Prepared here (inspected, a host disk refused), attached and detached
//! through the driver's [`BlockHotplug`](capsa_hypervisor::BlockHotplug)
//! capability by the sandbox, found by the agent from the guest address
//! in a `blk`/`scsi` storage or device.

use fs_err as fs;
use std::path::{Path, PathBuf};

use capsa_hypervisor::{BlockDevice, BlockDriver, BlockHotplug, GuestAddress};
use capsa_protocols::{agent, DRIVER_BLK, DRIVER_MMIO_BLK, DRIVER_SCSI};
use tracing::Instrument;

use super::manager::ContainerAttach;
use super::{BlockPolicy, BlockSource};
use crate::record::DeviceRecord;
use crate::Error;

/// The drives of one VM: how they are used, and their names.
#[derive(Debug)]
pub struct Drives {
    policy: BlockPolicy,
    /// Drives attached so far (names the next one).
    count: u32,
}

impl Drives {
    pub fn new(policy: BlockPolicy) -> Self {
        Self { policy, count: 0 }
    }

    pub fn policy(&self) -> BlockPolicy {
        self.policy
    }

    /// A new drive id, unique in this VM.
    fn next_id(&mut self) -> String {
        self.count += 1;
        format!("drive{}", self.count)
    }

    /// [`prepare`]s `source` as the next drive of this VM.
    pub fn prepare(
        &mut self,
        what: &str,
        source: &Path,
        read_only: bool,
    ) -> Result<BlockDevice, Error> {
        let id = self.next_id();
        prepare(what, source, read_only, id, self.policy.driver)
    }
}

/// Hot-plugs `device` for the container of `ctx` (`role` says what for)
/// and records it.
pub async fn attach(
    ctx: &mut ContainerAttach<'_>,
    role: &str,
    device: &BlockDevice,
) -> Result<GuestAddress, Error> {
    let hotplug_error = |source| Error::Hotplug {
        what: role.into(),
        source,
    };
    let hotplug = ctx.block.get("block hot-plug").map_err(hotplug_error)?;
    let address = hotplug
        .attach_block(device)
        .instrument(crate::step!("drive hot-plug"))
        .await
        .map_err(hotplug_error)?;
    let cid = ctx.cid;
    tracing::info!(container = cid, drive = %device.id, source = %device.path.display(), %address, role, "drive hot-plugged");
    ctx.records.push(DeviceRecord {
        id: device.id.clone(),
        container: cid.into(),
        role: role.into(),
        source: device.path.clone(),
        driver: device.driver.to_string(),
        guest_address: address.to_string(),
        read_only: device.read_only,
    });
    Ok(address)
}

/// Unplugs container `cid`'s drives among `records` (once the guest let
/// go of them), removing each unplugged one; failures are logged and the
/// first returned.
pub async fn detach_container(
    hotplug: Result<&mut dyn BlockHotplug, capsa_hypervisor::Error>,
    records: &mut Vec<DeviceRecord>,
    cid: &str,
) -> Option<Error> {
    let ids: Vec<String> = records
        .iter()
        .filter(|d| d.container == cid)
        .map(|d| d.id.clone())
        .collect();
    if ids.is_empty() {
        return None;
    }
    let hotplug = match hotplug {
        Ok(h) => h,
        Err(e) => return Some(Error::Vm(e)),
    };
    let mut first = None;
    for id in ids {
        match hotplug.detach_block(&id).await {
            Ok(()) => {
                tracing::info!(container = cid, drive = %id, "drive unplugged");
                records.retain(|d| d.id != id);
            }
            Err(e) => {
                let e = Error::Vm(e);
                tracing::warn!(container = cid, drive = %id, error = %crate::error_chain(&e), "drive not unplugged");
                first.get_or_insert(e);
            }
        }
    }
    first
}

/// Inspects `path` for `what` (named in errors) and makes it a drive,
/// refusing a host disk or a device in use on the host.
pub fn prepare(
    what: &str,
    path: &Path,
    read_only: bool,
    id: String,
    driver: BlockDriver,
) -> Result<BlockDevice, Error> {
    let source = inspect(what, path)?.ok_or_else(|| Error::NotBlock {
        what: what.into(),
        path: path.into(),
    })?;
    source.check_hotplug().map_err(|refusal| Error::Refused {
        what: what.into(),
        refusal,
    })?;
    Ok(BlockDevice {
        id,
        path: source.path().to_path_buf(),
        read_only,
        driver,
    })
}

/// Refuses, before a VM boots for it, a drive for `what` that is not
/// one or would hand the guest a disk the host uses.
pub fn check_drive(what: &str, source: &Path) -> Result<(), Error> {
    let found = inspect(what, source)?.ok_or_else(|| Error::NotBlock {
        what: what.into(),
        path: source.into(),
    })?;
    found.check_hotplug().map_err(|refusal| Error::Refused {
        what: what.into(),
        refusal,
    })
}

/// [`BlockSource::inspect`], its error naming `what`.
pub fn inspect(what: &str, path: &Path) -> Result<Option<BlockSource>, Error> {
    BlockSource::inspect(path).map_err(|source| Error::BlockSource {
        what: what.into(),
        source,
    })
}

/// The agent's driver (and device type) for a drive of `driver` found
/// at `address`: a drive the guest finds by its name whatever the
/// configured driver (a VM whose disks are not on a bus).
pub fn agent_driver(driver: BlockDriver, address: &GuestAddress) -> &'static str {
    match (address, driver) {
        (GuestAddress::Node { .. }, _) => DRIVER_MMIO_BLK,
        (_, BlockDriver::VirtioBlk) => DRIVER_BLK,
        (_, BlockDriver::VirtioScsi) => DRIVER_SCSI,
    }
}

/// The storage that has the agent mount the drive at `address` on
/// `mount_point`.
pub fn storage(
    driver: BlockDriver,
    address: &GuestAddress,
    fstype: &str,
    options: Vec<String>,
    mount_point: String,
) -> agent::Storage {
    agent::Storage {
        driver: agent_driver(driver, address).into(),
        source: address.to_string(),
        fstype: fstype.into(),
        options,
        mount_point,
        ..Default::default()
    }
}

/// The device message that has the agent give the drive at `address` to
/// the container at `container_path` (the spec's `linux.devices` entry).
pub fn device(driver: BlockDriver, address: &GuestAddress, container_path: &str) -> agent::Device {
    agent::Device {
        id: address.to_string(),
        type_: agent_driver(driver, address).into(),
        container_path: container_path.into(),
        ..Default::default()
    }
}

/// The host's node of block device `major:minor` (`/dev/<DEVNAME>` from
/// sysfs, as Kata finds it).
pub fn host_device_path(major: i64, minor: i64) -> Result<PathBuf, Error> {
    let uevent = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/uevent"));
    let text = fs::read_to_string(&uevent)?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| Error::BadSpec {
            what: format!("block device {major}:{minor}"),
            reason: format!("{} has no DEVNAME", uevent.display()),
        })?;
    Ok(Path::new("/dev").join(name))
}

/// Mount options for the guest's mount of a drive: `loop` is the host's
/// business (the guest gets the image as a disk), and `bind`/`rbind` were
/// the host's way to a device given as a bind mount (CRI's volumes): the
/// guest mounts the disk's filesystem, not a bind of its node.
pub fn guest_options(options: &[String]) -> Vec<String> {
    options
        .iter()
        .filter(|o| !matches!(o.as_str(), "loop" | "bind" | "rbind"))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storages_and_devices_use_katas_names() {
        let pci = GuestAddress::Pci { slots: vec![2, 0] };
        let s = storage(
            BlockDriver::VirtioBlk,
            &pci,
            "ext4",
            vec!["ro".into()],
            "/run/kata-containers/c/rootfs".into(),
        );
        assert_eq!((s.driver.as_str(), s.source.as_str()), ("blk", "02/00"));
        let scsi = GuestAddress::Scsi { id: 1, lun: 0 };
        let d = device(BlockDriver::VirtioScsi, &scsi, "/dev/xvdb");
        assert_eq!((d.type_.as_str(), d.id.as_str()), ("scsi", "1:0"));
        assert_eq!(d.container_path, "/dev/xvdb");
        let node = GuestAddress::Node {
            name: "ubda".into(),
        };
        let s = storage(BlockDriver::VirtioBlk, &node, "ext4", vec![], "/m".into());
        assert_eq!(
            (s.driver.as_str(), s.source.as_str()),
            ("mmioblk", "/dev/ubda")
        );
        assert_eq!(
            guest_options(&["loop".into(), "ro".into()]),
            vec!["ro".to_string()]
        );
        let cri_volume = ["rbind".into(), "rprivate".into(), "ro".into()];
        assert_eq!(guest_options(&cri_volume), ["rprivate", "ro"]);
    }
}
