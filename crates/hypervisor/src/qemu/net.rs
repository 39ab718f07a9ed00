//! NICs on QEMU ([`NetworkHotplug`] for [`QemuVm`], and the cold-plugged
//! ones of [`crate::VmConfig::nics`]).
//!
//! QEMU never opens a tap itself nor runs in the pod's netns: capsa opens
//! the tap ([`crate::tap`], with `IFF_VNET_HDR`) and gives QEMU the open
//! file: inherited at boot (`-netdev tap,fd=N`), sent
//! over the QMP socket for hot-plug (`getfd` with SCM_RIGHTS, then
//! `netdev_add` naming it). A tap's fd keeps working whatever namespace
//! the process holding it is in. vhost-net is used only when asked and
//! `/dev/vhost-net` exists (its fd is passed the same way); otherwise
//! virtio-net runs in QEMU.
//!
//! Each NIC is a `virtio-net-pci` in slot 0 of a PCIe root port of its own
//! (shared with the drives), so its PCI path is known when it is placed.
//! detach: `device_del`, wait for `DEVICE_DELETED`, `netdev_del`.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{json, Value};

use super::block::{hotplug_error, validate_id};
use super::cmdline;
use super::QemuVm;
use crate::{AttachedNic, Error, GuestAddress, NetDevice, NetworkHotplug};

const VHOST_NET: &str = "/dev/vhost-net";

/// A NIC attached by this driver, with its QEMU names.
pub(super) struct Nic {
    pub nic: AttachedNic,
    /// The `-device` id (`net-<id>`).
    pub qdev: String,
    /// The `-netdev` id (`tap-<id>`).
    pub netdev: String,
}

/// The files QEMU needs for one NIC's backend.
pub(super) struct TapFds {
    pub tap: OwnedFd,
    pub vhost: Option<OwnedFd>,
}

pub fn qdev_id(id: &str) -> String {
    format!("net-{id}")
}

pub fn netdev_id(id: &str) -> String {
    format!("tap-{id}")
}

/// Opens the tap of `device` (in its netns) and `/dev/vhost-net` if
/// `vhost` and the host has it.
pub(super) fn open(device: &NetDevice) -> Result<TapFds, Error> {
    validate_id(&device.id)?;
    let tap = crate::tap::open(device, crate::tap::Framing::VnetHeader)
        .map_err(|why| hotplug_error(&device.id, why))?;
    let vhost = if device.vhost && Path::new(VHOST_NET).exists() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(VHOST_NET)
            .map_err(|e| hotplug_error(&device.id, format!("{VHOST_NET}: {e}")))?;
        Some(OwnedFd::from(file))
    } else {
        if device.vhost {
            tracing::debug!(device = %device.id, "no {VHOST_NET}: userspace virtio-net");
        }
        None
    };
    Ok(TapFds { tap, vhost })
}

/// `virtio-net-pci` properties of `device` on root port `port`.
pub(super) fn device_args(device: &NetDevice, port: u32) -> Value {
    let mut args = json!({
        "driver": "virtio-net-pci",
        "id": qdev_id(&device.id),
        "netdev": netdev_id(&device.id),
        "mac": device.mac.to_string(),
        "bus": cmdline::root_port_id(port),
        "addr": "0",
    });
    if device.mtu != 0 {
        args["host_mtu"] = device.mtu.into();
    }
    args
}

/// The same as a `-device` value.
pub(super) fn device_arg(device: &NetDevice, port: u32) -> String {
    let mut s = format!(
        "virtio-net-pci,id={},netdev={},mac={},bus={},addr=0",
        qdev_id(&device.id),
        netdev_id(&device.id),
        device.mac,
        cmdline::root_port_id(port)
    );
    if device.mtu != 0 {
        s += &format!(",host_mtu={}", device.mtu);
    }
    s
}

/// `-netdev` value for a tap inherited as `fd` (and `vhostfd`).
pub(super) fn netdev_arg(device: &NetDevice, fd: RawFd, vhost: Option<RawFd>) -> String {
    let mut s = format!("tap,id={},fd={fd}", netdev_id(&device.id));
    if let Some(v) = vhost {
        s += &format!(",vhost=on,vhostfd={v}");
    }
    s
}

/// Checks the MTU: virtio-net takes 68 to 65535.
pub(super) fn check(device: &NetDevice) -> Result<(), Error> {
    validate_id(&device.id)?;
    if device.mtu != 0 && !(68..=65535).contains(&device.mtu) {
        return Err(hotplug_error(
            &device.id,
            format!("MTU {} out of 68..=65535", device.mtu),
        ));
    }
    Ok(())
}

impl QemuVm {
    /// The first root port no drive nor NIC uses.
    pub(super) fn free_root_port(&self, device: &str) -> Result<u32, Error> {
        let ports = self.settings().pcie_root_port.min(cmdline::MAX_ROOT_PORTS);
        let used: Vec<&GuestAddress> = self
            .drives
            .iter()
            .map(|d| &d.block.address)
            .chain(self.nics.iter().map(|n| &n.nic.address))
            .collect();
        (0..ports)
            .find(|&i| {
                let slot = cmdline::root_port_slot(i);
                !used.iter().any(
                    |a| matches!(a, GuestAddress::Pci { slots } if slots.first() == Some(&slot)),
                )
            })
            .ok_or_else(|| {
                hotplug_error(
                    device,
                    format!("no free PCIe root port (all {ports} in use; raise pcie_root_port)"),
                )
            })
    }

    /// Places the cold-plugged NICs on the first root ports and opens
    /// their taps: the `-netdev`/`-device` arguments, and the files QEMU
    /// must inherit (kept open until it is started).
    pub(super) fn cold_nics(&mut self) -> Result<(Vec<String>, Vec<OwnedFd>), Error> {
        let mut args = Vec::new();
        let mut fds = Vec::new();
        for device in self.cfg.nics.clone() {
            check(&device)?;
            if self.nics.iter().any(|n| n.nic.device.id == device.id) {
                return Err(hotplug_error(&device.id, "two NICs with this id"));
            }
            let port = self.free_root_port(&device.id)?;
            let opened = open(&device)?;
            args.push("-netdev".to_string());
            args.push(netdev_arg(
                &device,
                opened.tap.as_raw_fd(),
                opened.vhost.as_ref().map(AsRawFd::as_raw_fd),
            ));
            args.push("-device".to_string());
            args.push(device_arg(&device, port));
            fds.push(opened.tap);
            fds.extend(opened.vhost);
            self.nics.push(Nic {
                qdev: qdev_id(&device.id),
                netdev: netdev_id(&device.id),
                nic: AttachedNic {
                    device,
                    address: GuestAddress::Pci {
                        slots: vec![cmdline::root_port_slot(port), 0],
                    },
                },
            });
        }
        Ok((args, fds))
    }

    /// Gives QEMU `fd` under `name` (`getfd`, the fd in the same message).
    async fn send_fd(&self, id: &str, name: &str, fd: &OwnedFd) -> Result<(), Error> {
        let limit = self.cfg.hotplug_timeout;
        self.session(id)?
            .execute_with_fd(
                "getfd",
                Some(json!({ "fdname": name })),
                fd.as_raw_fd(),
                limit,
            )
            .await
            .map(drop)
            .map_err(|e| hotplug_error(id, e))
    }

    /// Undoes a failed attach: the device if it may have been added, the
    /// netdev, the fds QEMU may still hold under `fd_names`.
    async fn roll_back_nic(&self, id: &str, device_added: bool, fd_names: &[String]) {
        let limit = self.cfg.hotplug_timeout;
        if device_added {
            if let Err(e) = self.remove_device(id, &qdev_id(id), limit).await {
                tracing::warn!(device = %id, error = %e, "roll back: device not removed");
                return;
            }
        }
        let Ok(qmp) = self.session(id) else { return };
        // Each may not exist (the step that failed did not make it).
        let _ = qmp
            .execute("netdev_del", Some(json!({ "id": netdev_id(id) })), limit)
            .await;
        for name in fd_names {
            let _ = qmp
                .execute("closefd", Some(json!({ "fdname": name })), limit)
                .await;
        }
    }
}

#[async_trait::async_trait]
impl NetworkHotplug for QemuVm {
    async fn attach_nic(&mut self, device: &NetDevice) -> Result<GuestAddress, Error> {
        check(device)?;
        if self.nics.iter().any(|n| n.nic.device.id == device.id) {
            return Err(hotplug_error(&device.id, "a NIC with this id is attached"));
        }
        self.session(&device.id)?;
        let port = self.free_root_port(&device.id)?;
        let opened = open(device)?;
        let limit = self.cfg.hotplug_timeout;
        let tap_name = format!("fd-{}", netdev_id(&device.id));
        let vhost_name = format!("vfd-{}", netdev_id(&device.id));
        let mut names = vec![tap_name.clone()];
        let mut netdev = json!({ "type": "tap", "id": netdev_id(&device.id), "fd": tap_name });
        let sent = async {
            self.send_fd(&device.id, &tap_name, &opened.tap).await?;
            if let Some(v) = &opened.vhost {
                names.push(vhost_name.clone());
                self.send_fd(&device.id, &vhost_name, v).await?;
                netdev["vhost"] = true.into();
                netdev["vhostfd"] = vhost_name.clone().into();
            }
            Ok::<_, Error>(())
        }
        .await;
        // QEMU holds its own copies now (or failed to take them).
        drop(opened);
        let qmp = self.session(&device.id)?;
        let step = match sent {
            Err(e) => Err((e, false)),
            Ok(()) => match qmp.execute("netdev_add", Some(netdev), limit).await {
                Err(e) => Err((hotplug_error(&device.id, e), false)),
                Ok(_) => qmp
                    .execute("device_add", Some(device_args(device, port)), limit)
                    .await
                    .map_err(|e| {
                        // A timed-out device_add may still have added it.
                        let maybe = e.to_string().contains("no answer");
                        (hotplug_error(&device.id, e), maybe)
                    }),
            },
        };
        if let Err((e, maybe_added)) = step {
            self.roll_back_nic(&device.id, maybe_added, &names).await;
            return Err(e);
        }
        let address = GuestAddress::Pci {
            slots: vec![cmdline::root_port_slot(port), 0],
        };
        tracing::info!(vm = %self.cfg.id, device = %device.id, tap = %device.tap, mac = %device.mac, %address, "NIC attached");
        self.nics.push(Nic {
            nic: AttachedNic {
                device: device.clone(),
                address: address.clone(),
            },
            qdev: qdev_id(&device.id),
            netdev: netdev_id(&device.id),
        });
        Ok(address)
    }

    fn attached_nics(&self) -> Vec<AttachedNic> {
        self.nics.iter().map(|n| n.nic.clone()).collect()
    }

    async fn detach_nic(&mut self, id: &str) -> Result<(), Error> {
        let nic = (self.nics.iter().find(|n| n.nic.device.id == id))
            .ok_or_else(|| hotplug_error(id, "no NIC with this id is attached"))?;
        let netdev = json!({ "id": nic.netdev });
        self.detach_device(id, "NIC", &nic.qdev, "netdev_del", netdev)
            .await?;
        self.nics.retain(|n| n.nic.device.id != id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{qemu::qemu_mut, MacAddr};

    fn nic(mtu: u32) -> NetDevice {
        NetDevice {
            id: "eth0".into(),
            tap: "tap0".into(),
            netns: None,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu,
            vhost: false,
        }
    }

    #[test]
    fn boot_arguments() {
        assert_eq!(
            device_arg(&nic(1400), 3),
            "virtio-net-pci,id=net-eth0,netdev=tap-eth0,mac=02:00:00:00:00:01,bus=rp3,addr=0,host_mtu=1400"
        );
        assert_eq!(netdev_arg(&nic(0), 9, None), "tap,id=tap-eth0,fd=9");
        assert_eq!(
            netdev_arg(&nic(0), 9, Some(10)),
            "tap,id=tap-eth0,fd=9,vhost=on,vhostfd=10"
        );
        let args = device_args(&nic(0), 1);
        assert_eq!(args["bus"], "rp1");
        assert!(args.get("host_mtu").is_none());
    }

    /// Drives and NICs take root ports from one pool.
    #[test]
    fn drives_and_nics_share_the_root_ports() {
        let mut cfg = cmdline::tests::cfg();
        let q = qemu_mut(&mut cfg);
        q.pcie_root_port = 2;
        let mut vm = QemuVm::new(cfg);
        let at = |port| GuestAddress::Pci {
            slots: vec![cmdline::root_port_slot(port), 0],
        };
        vm.nics.push(Nic {
            nic: AttachedNic {
                device: nic(0),
                address: at(0),
            },
            qdev: qdev_id("eth0"),
            netdev: netdev_id("eth0"),
        });
        assert_eq!(vm.free_root_port("x").unwrap(), 1);
        vm.drives.push(super::super::block::Drive {
            block: crate::AttachedBlock {
                device: crate::BlockDevice {
                    id: "d".into(),
                    path: "/d".into(),
                    read_only: false,
                    driver: crate::BlockDriver::VirtioBlk,
                },
                address: at(1),
            },
            qdev: "blk-d".into(),
            node: "node1".into(),
        });
        let err = vm.free_root_port("x").unwrap_err().to_string();
        assert!(
            err.contains("hot-plug of x") && err.contains("all 2 in use"),
            "{err}"
        );
    }

    #[test]
    fn bad_mtus_and_taps_are_named() {
        let err = check(&nic(20)).unwrap_err().to_string();
        assert!(err.contains("eth0") && err.contains("MTU 20"), "{err}");
        let mut d = nic(0);
        d.tap = "capsa-no-such-tap".into();
        d.netns = Some("/nonexistent/netns".into());
        let err = open(&d).err().expect("must fail").to_string();
        assert!(
            err.contains("capsa-no-such-tap") && err.contains("/nonexistent/netns"),
            "{err}"
        );
    }
}
