//! Block device hot-plug on QEMU ([`BlockHotplug`] for [`QemuVm`]).
//!
//! attach: `blockdev-add` (a `raw` node over `file` or `host_device`, read
//! only when asked) then `device_add` (`virtio-blk-pci` in slot 0 of a free
//! PCIe root port, or `scsi-hd` with a free SCSI id on the controller
//! `scsi0`). detach: `device_del`, wait for the guest to release the device
//! (`DEVICE_DELETED`), then `blockdev-del`. Every QMP command and wait is
//! bounded by the VM's hot-plug timeout; a failed attach removes what it
//! added.

use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::cmdline::{self, SCSI_CONTROLLER};
use super::session::QmpSession;
use super::QemuVm;
use crate::{AttachedBlock, BlockDevice, BlockDriver, BlockHotplug, Error, GuestAddress};

/// The longest device id ([`BlockDevice::id`]).
const MAX_ID: usize = 32;
/// SCSI ids on the controller (virtio-scsi's targets; one LUN each).
const SCSI_IDS: u16 = 256;

/// A drive attached by this driver, with its QEMU names.
pub(super) struct Drive {
    pub block: AttachedBlock,
    /// The `-device` id (`blk-<id>`).
    pub qdev: String,
    /// The block node (`drive-<id>` would not fit QEMU's 31-byte node
    /// names, so a counter: `node<n>`).
    pub node: String,
}

pub(super) fn hotplug_error(device: &str, reason: impl std::fmt::Display) -> Error {
    Error::Hotplug {
        device: device.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks `id` is usable in QEMU ids: `[A-Za-z0-9_-]`, 1 to 32 bytes.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(hotplug_error(
            id,
            format!("invalid device id (1 to {MAX_ID} bytes of [A-Za-z0-9_-])"),
        ))
    }
}

/// What QEMU's id of a drive's device starts with.
pub const QDEV_PREFIX: &str = "blk-";

/// QEMU's id of the device for drive `id` (QEMU ids start with a letter).
pub fn qdev_id(id: &str) -> String {
    format!("{QDEV_PREFIX}{id}")
}

/// The `blockdev-add` arguments: a raw node named `node` over the host
/// block device or regular file `device.path`.
fn blockdev_args(device: &BlockDevice, node: &str) -> Result<Value, Error> {
    let meta = std::fs::metadata(&device.path)
        .map_err(|e| hotplug_error(&device.id, format!("{}: {e}", device.path.display())))?;
    let protocol = if meta.file_type().is_block_device() {
        "host_device"
    } else if meta.is_file() {
        "file"
    } else {
        return Err(hotplug_error(
            &device.id,
            format!(
                "{} is neither a block device nor a regular file",
                device.path.display()
            ),
        ));
    };
    let filename = device.path.to_str().ok_or_else(|| {
        hotplug_error(
            &device.id,
            format!("{} is not UTF-8", device.path.display()),
        )
    })?;
    Ok(json!({
        "driver": "raw",
        "node-name": node,
        "read-only": device.read_only,
        "file": {
            "driver": protocol,
            "filename": filename,
            "read-only": device.read_only,
        },
    }))
}

impl QemuVm {
    pub(super) fn session(&self, device: &str) -> Result<&QmpSession, Error> {
        self.qmp
            .as_ref()
            .ok_or_else(|| hotplug_error(device, "the VM is not running"))
    }

    /// Where the next drive goes, and the `device_add` arguments for it.
    fn place(&self, device: &BlockDevice, node: &str) -> Result<(GuestAddress, Value), Error> {
        let qdev = qdev_id(&device.id);
        let used: Vec<&GuestAddress> = self.drives.iter().map(|d| &d.block.address).collect();
        match device.driver {
            BlockDriver::VirtioBlk => {
                let port = self.free_root_port(&device.id)?;
                let address = GuestAddress::Pci {
                    slots: vec![cmdline::root_port_slot(port), 0],
                };
                let args = json!({
                    "driver": "virtio-blk-pci",
                    "id": qdev,
                    "drive": node,
                    "bus": cmdline::root_port_id(port),
                    "addr": "0",
                });
                Ok((address, args))
            }
            BlockDriver::VirtioScsi => {
                if self.cfg.block_driver != BlockDriver::VirtioScsi {
                    return Err(hotplug_error(
                        &device.id,
                        "no virtio-scsi controller in this VM (its block_device_driver is virtio-blk)",
                    ));
                }
                let free = (0..SCSI_IDS).find(|&id| {
                    !used
                        .iter()
                        .any(|a| matches!(a, GuestAddress::Scsi { id: used, .. } if *used == id))
                });
                let Some(scsi_id) = free else {
                    return Err(hotplug_error(&device.id, "no free SCSI id"));
                };
                let args = json!({
                    "driver": "scsi-hd",
                    "id": qdev,
                    "drive": node,
                    "bus": format!("{SCSI_CONTROLLER}.0"),
                    "channel": 0,
                    "scsi-id": scsi_id,
                    "lun": 0,
                });
                Ok((
                    GuestAddress::Scsi {
                        id: scsi_id,
                        lun: 0,
                    },
                    args,
                ))
            }
        }
    }

    /// Removes device `qdev` and waits up to `limit` for QEMU to report it
    /// gone (the guest has released it). `Ok(false)`: QEMU has no such device.
    pub(super) async fn remove_device(
        &self,
        id: &str,
        qdev: &str,
        limit: Duration,
    ) -> Result<bool, Error> {
        let qmp = self.session(id)?;
        let deadline = Instant::now() + limit;
        // Subscribed before the command, so its event cannot be missed.
        let mut events = qmp.subscribe();
        if let Err(e) = qmp
            .execute("device_del", Some(json!({ "id": qdev })), limit)
            .await
        {
            if e.to_string().contains("not found") {
                return Ok(false);
            }
            return Err(hotplug_error(id, e));
        }
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.name == "DEVICE_DELETED" && ev.data["device"] == qdev => {
                        return Ok(())
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(device = %id, missed = n, "QMP events missed while waiting for DEVICE_DELETED")
                    }
                    Err(RecvError::Closed) => return Err("the QMP session closed"),
                }
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(why)) => Err(hotplug_error(
                id,
                format!("waiting for DEVICE_DELETED of {qdev}: {why}"),
            )),
            Err(_) => Err(hotplug_error(
                id,
                format!(
                    "the guest did not release {qdev} within {limit:?} (no DEVICE_DELETED); its backend stays"
                ),
            )),
        }
    }

    /// Undoes a failed attach: the device if it may have been added, then
    /// the node. Failures are logged: the attach error is what the caller
    /// needs.
    /// Detaches the device `qdev` of the `kind` (`drive`, `NIC`) `id`
    /// ([`Self::remove_device`]: the guest releases it, bounded by the
    /// hot-plug timeout), then deletes its backend with QMP `command`
    /// (`blockdev-del` of a drive's node, `netdev_del` of a NIC's netdev).
    pub(super) async fn detach_device(
        &self,
        id: &str,
        kind: &str,
        qdev: &str,
        command: &str,
        backend: Value,
    ) -> Result<(), Error> {
        let limit = self.cfg.hotplug_timeout;
        if !self.remove_device(id, qdev, limit).await? {
            tracing::warn!(device = %id, qdev, "QEMU had no such device: removing the backend");
        }
        self.session(id)?
            .execute(command, Some(backend), limit)
            .await
            .map_err(|e| hotplug_error(id, e))?;
        tracing::info!(vm = %self.cfg.id, device = %id, "{kind} detached");
        Ok(())
    }

    async fn roll_back(&self, id: &str, qdev: &str, node: &str, device_added: bool) {
        let limit = self.cfg.hotplug_timeout;
        if device_added {
            if let Err(e) = self.remove_device(id, qdev, limit).await {
                tracing::warn!(device = %id, error = %e, "roll back: device not removed");
                return;
            }
        }
        let Ok(qmp) = self.session(id) else { return };
        if let Err(e) = qmp
            .execute("blockdev-del", Some(json!({ "node-name": node })), limit)
            .await
        {
            // After a blockdev-add that failed there is no node.
            tracing::debug!(device = %id, node, error = %e, "roll back: blockdev-del");
        }
    }
}

#[async_trait::async_trait]
impl BlockHotplug for QemuVm {
    async fn attach_block(&mut self, device: &BlockDevice) -> Result<GuestAddress, Error> {
        validate_id(&device.id)?;
        if self.drives.iter().any(|d| d.block.device.id == device.id) {
            return Err(hotplug_error(
                &device.id,
                "a drive with this id is attached",
            ));
        }
        self.session(&device.id)?;
        self.next_node += 1;
        let node = format!("node{}", self.next_node);
        let qdev = qdev_id(&device.id);
        let blockdev = blockdev_args(device, &node)?;
        let (address, device_args) = self.place(device, &node)?;
        let limit = self.cfg.hotplug_timeout;
        let qmp = self.session(&device.id)?;
        if let Err(e) = qmp.execute("blockdev-add", Some(blockdev), limit).await {
            self.roll_back(&device.id, &qdev, &node, false).await;
            return Err(hotplug_error(&device.id, e));
        }
        if let Err(e) = qmp.execute("device_add", Some(device_args), limit).await {
            // A timed-out device_add may still have added the device.
            let maybe_added = e.to_string().contains("no answer");
            self.roll_back(&device.id, &qdev, &node, maybe_added).await;
            return Err(hotplug_error(&device.id, e));
        }
        tracing::info!(vm = %self.cfg.id, device = %device.id, path = %device.path.display(), %address, read_only = device.read_only, "drive attached");
        self.drives.push(Drive {
            block: AttachedBlock {
                device: device.clone(),
                address: address.clone(),
            },
            qdev,
            node,
        });
        Ok(address)
    }

    async fn detach_block(&mut self, id: &str) -> Result<(), Error> {
        let Some(drive) = self.drives.iter().find(|d| d.block.device.id == id) else {
            return Err(hotplug_error(id, "no drive with this id is attached"));
        };
        let node = json!({ "node-name": drive.node });
        self.detach_device(id, "drive", &drive.qdev, "blockdev-del", node)
            .await?;
        self.drives.retain(|d| d.block.device.id != id);
        Ok(())
    }

    fn attached_blocks(&self) -> Vec<AttachedBlock> {
        self.drives.iter().map(|d| d.block.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::qemu_mut;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// A QEMU whose guest never releases a device: every command succeeds,
    /// and `device_del` brings only the `DEVICE_DELETED` of another device.
    /// The commands it got are recorded in `seen`.
    async fn stubborn_guest(listener: UnixListener, seen: Arc<Mutex<Vec<String>>>) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"QMP\": {}}\n").await.unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let name = cmd["execute"].as_str().unwrap().to_string();
            if name == "device_del" {
                let ev = json!({"event": "DEVICE_DELETED", "data": {"device": "blk-other"}});
                w.write_all(format!("{ev}\n").as_bytes()).await.unwrap();
            }
            seen.lock().unwrap().push(name);
            let reply = json!({"return": {}, "id": cmd["id"]});
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
    }

    /// Detach waits for the guest, bounded: without `DEVICE_DELETED` of its
    /// own device it fails naming the drive and the wait, and the backend
    /// (the block node) stays.
    #[tokio::test]
    async fn detach_without_device_deleted_times_out_and_keeps_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let peer = tokio::spawn(stubborn_guest(
            UnixListener::bind(&path).unwrap(),
            seen.clone(),
        ));
        let mut cfg = super::super::cmdline::tests::cfg();
        cfg.hotplug_timeout = Duration::from_millis(500);
        let mut vm = QemuVm::new(cfg);
        vm.qmp = Some(
            QmpSession::open(&path, Duration::from_secs(5))
                .await
                .unwrap(),
        );
        let img = dir.path().join("disk.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let dev = BlockDevice {
            id: "data".into(),
            path: img,
            read_only: false,
            driver: BlockDriver::VirtioBlk,
        };
        let err = vm.attach_block(&dev).await.unwrap_err().to_string();
        assert!(err.contains("no free PCIe root port"), "{err}");
        let q = qemu_mut(&mut vm.cfg);
        q.pcie_root_port = 1;
        let address = vm.attach_block(&dev).await.unwrap();
        assert_eq!(address.to_string(), "04/00");

        let err = vm.detach_block("data").await.unwrap_err().to_string();
        assert!(
            err.contains("hot-plug of data")
                && err.contains("DEVICE_DELETED")
                && err.contains("500ms"),
            "{err}"
        );
        assert_eq!(vm.attached_blocks().len(), 1, "the drive must stay listed");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "qmp_capabilities",
                "blockdev-add",
                "device_add",
                "device_del"
            ],
            "no blockdev-del after a failed detach"
        );
        vm.qmp = None;
        peer.await.unwrap();
    }

    #[test]
    fn ids_are_checked_and_named() {
        for good in ["a", "rootfs-0_x", &"x".repeat(32)] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a,b", "a.b", "ü", &"x".repeat(33)] {
            let err = validate_id(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("hot-plug of {bad}:")), "{err}");
        }
    }

    #[test]
    fn blockdev_for_files_and_block_devices() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let mut dev = BlockDevice {
            id: "d".into(),
            path: img.clone(),
            read_only: true,
            driver: BlockDriver::VirtioBlk,
        };
        let args = blockdev_args(&dev, "node1").unwrap();
        assert_eq!(args["file"]["driver"], "file");
        assert_eq!(args["read-only"], true);
        assert_eq!(args["file"]["filename"], img.to_str().unwrap());
        dev.path = dir.path().into();
        let err = blockdev_args(&dev, "node1").unwrap_err().to_string();
        assert!(err.contains("neither a block device"), "{err}");
        dev.path = dir.path().join("missing");
        let err = blockdev_args(&dev, "node1").unwrap_err().to_string();
        assert!(
            err.contains("missing") && err.contains("hot-plug of d"),
            "{err}"
        );
    }
}
