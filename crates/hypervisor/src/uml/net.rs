//! NICs on User-Mode Linux: UML's vector driver (`CONFIG_UML_NET_VECTOR`)
//! on the pod's tap, cold-plugged at boot.
//!
//! The kernel's jail has a network namespace of its own, empty, and no
//! `/dev/net/tun`: it cannot open a tap, nor reach the pod's netns. capsa
//! opens each tap ([`crate::tap`], in the pod's netns, without
//! `IFF_VNET_HDR`: the vector driver's `fd` transport reads and writes
//! bare frames) and the kernel inherits it at a fixed descriptor number
//! ([`NIC_FD_BASE`] + n), named on its command line:
//! `vecN:transport=fd,fd=M,vec=0,mac=..,mtu=..`. `vec=0` makes the driver
//! use `readv`/`writev` (a tap is not a socket: no `recvmmsg`). An open
//! tap needs no capability nor ownership to be read and written, so the
//! jail stays without capabilities, and the tap's owner is not changed.
//!
//! The guest sees `vecN` (no PCI path: the agent finds it by its MAC, as
//! it finds a cold-plugged NIC on QEMU). The link may go down and up:
//! capsa's kernel patch `0010-vector-fd-transport-keeps-inherited-fd`
//! makes the driver work on a copy of the inherited descriptor (upstream
//! closes the descriptor itself when the link goes down).
//!
//! Hot-plug: the management console can add a vector device
//! (`config vecN=...`), but it cannot carry a descriptor, and a transport
//! that opens the tap by name (`transport=tap`) would need the kernel in
//! the pod's netns with `/dev/net/tun`. NIC hot-plug answers
//! `NotSupported`; a pod's network is known before its VM boots (CNI
//! runs first), which is what cold-plug serves.

use std::os::fd::{OwnedFd, RawFd};

use crate::tap::{self, Framing};
use crate::{Error, NetDevice};

/// The kernel's descriptor of its first NIC's tap, out of the way of the
/// descriptors the kernel opens itself (it keeps the inherited ones open,
/// whatever the guest does with its links).
pub const NIC_FD_BASE: RawFd = 200;
/// The vector driver's MTU range (outside it, it silently uses 1500).
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65534;

/// Cold-plugged NICs: the kernel's `vecN=` arguments and the taps it
/// inherits, as `(fd, number in the kernel)`.
#[derive(Debug, Default)]
pub struct ColdNics {
    pub args: Vec<String>,
    pub fds: Vec<(OwnedFd, RawFd)>,
}

fn error(device: &NetDevice, reason: impl std::fmt::Display) -> Error {
    Error::Hotplug {
        device: device.id.clone(),
        reason: reason.to_string(),
    }
}

/// Checks `nics` (distinct ids; MTUs the vector driver takes) before
/// anything is opened.
pub fn check(nics: &[NetDevice]) -> Result<(), Error> {
    for (n, device) in nics.iter().enumerate() {
        if nics[..n].iter().any(|d| d.id == device.id) {
            return Err(error(device, "two NICs with this id"));
        }
        if device.mtu != 0 && device.mtu > *MTU_RANGE.end() {
            return Err(error(
                device,
                format!(
                    "MTU {} is above the {} User-Mode Linux's vector driver takes",
                    device.mtu,
                    MTU_RANGE.end()
                ),
            ));
        }
    }
    Ok(())
}

/// The kernel argument of NIC `n`, on descriptor `fd`.
pub fn arg(n: usize, device: &NetDevice, fd: RawFd) -> String {
    let mut s = format!("vec{n}:transport=fd,fd={fd},vec=0,mac={}", device.mac);
    // Below the range the driver keeps 1500 and the agent sets the MTU;
    // above 1500 the link's MTU must be given here (the driver's maximum).
    if MTU_RANGE.contains(&device.mtu) {
        s += &format!(",mtu={}", device.mtu);
    }
    s
}

/// Opens the taps of `nics` (checked) for the kernel.
pub fn cold_plug(nics: &[NetDevice]) -> Result<ColdNics, Error> {
    check(nics)?;
    let mut cold = ColdNics::default();
    for (n, device) in nics.iter().enumerate() {
        let fd = NIC_FD_BASE + n as RawFd;
        let tap = tap::open(device, Framing::Plain).map_err(|why| error(device, why))?;
        cold.args.push(arg(n, device, fd));
        cold.fds.push((tap, fd));
    }
    Ok(cold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(id: &str, mtu: u32) -> NetDevice {
        NetDevice {
            id: id.into(),
            tap: "tap0_kata".into(),
            netns: None,
            mac: "0a:58:0a:c8:00:05".parse().unwrap(),
            mtu,
            vhost: true,
        }
    }

    #[test]
    fn a_nic_is_a_vector_device_on_an_inherited_fd() {
        assert_eq!(
            arg(0, &nic("net0", 1450), 200),
            "vec0:transport=fd,fd=200,vec=0,mac=0a:58:0a:c8:00:05,mtu=1450"
        );
        // The driver's default, the agent sets the MTU.
        assert_eq!(
            arg(1, &nic("net1", 0), 201),
            "vec1:transport=fd,fd=201,vec=0,mac=0a:58:0a:c8:00:05"
        );
        assert!(!arg(0, &nic("net0", 500), 200).contains("mtu="));
        assert!(arg(0, &nic("net0", 9000), 200).ends_with(",mtu=9000"));
    }

    #[test]
    fn duplicate_ids_and_mtus_beyond_the_driver_are_refused() {
        check(&[nic("net0", 1500), nic("net1", 9000)]).unwrap();
        let err = check(&[nic("net0", 0), nic("net0", 0)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("net0") && err.contains("two NICs"), "{err}");
        let err = check(&[nic("net0", 65535)]).unwrap_err().to_string();
        assert!(err.contains("MTU 65535"), "{err}");
    }

    #[test]
    fn a_missing_tap_is_named() {
        let mut device = nic("net0", 0);
        device.tap = "capsa-no-such0".into();
        let err = cold_plug(&[device]).unwrap_err().to_string();
        assert!(
            err.contains("net0") && err.contains("capsa-no-such0") && err.contains("no such"),
            "{err}"
        );
    }
}
