//! Opening a pod's tap for a driver: capsa opens it (`/dev/net/tun`,
//! `TUNSETIFF`) on a short-lived thread that entered the tap's netns, and
//! hands the open file to the VM's process, which never opens a tap
//! itself nor runs in the pod's netns. A tap's fd keeps working whatever
//! namespace (or user) the process holding it is in.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::NetDevice;

/// How a driver reads and writes the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Each frame after a `virtio_net_hdr` (`IFF_VNET_HDR`): offloads
    /// pass through (QEMU's virtio-net).
    VnetHeader,
    /// Bare Ethernet frames (UML's vector driver on an inherited fd).
    Plain,
}

/// Opens `device.tap` in `device.netns` (the host's if `None`) with
/// `framing`. The error says why, without the device (the caller adds it).
pub fn open(device: &NetDevice, framing: Framing) -> Result<OwnedFd, String> {
    let opened = match &device.netns {
        None => open_tap(&device.tap, framing),
        // setns(2) changes the calling thread only: a thread of its own
        // enters the netns, opens the tap and ends, so no task of the
        // runtime ever runs in the pod's namespace.
        Some(ns) => std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(ns)?;
                open_tap(&device.tap, framing)
            })
            .join()
            .unwrap_or_else(|_| Err("the thread opening the tap panicked".into()))
        }),
    };
    opened.map_err(|why| {
        let place = match &device.netns {
            Some(ns) => format!("in netns {}", ns.display()),
            None => "in the host's netns".into(),
        };
        format!("tap {} {place}: {why}", device.tap)
    })
}

fn enter_netns(ns: &Path) -> Result<(), String> {
    let file = std::fs::File::open(ns).map_err(|e| format!("open: {e}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns: {e}"))
}

/// `TUNSETIFF` on a new `/dev/net/tun` file: attaches it to the existing
/// tap `name` (hand-written: the tun crates create and configure links,
/// which is not wanted here; this is one ioctl). The tap's framing is
/// its last opener's: a tap serves one VM.
fn open_tap(name: &str, framing: Framing) -> Result<OwnedFd, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(format!("invalid interface name {name:?}"));
    }
    // TUNSETIFF would create a missing tap (gone with its last fd, so
    // leaking nothing, but a NIC on it would reach nothing): it must exist.
    let c_name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the call.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
        return Err(format!(
            "no such interface ({})",
            std::io::Error::last_os_error()
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if framing == Framing::VnetHeader {
        flags |= libc::IFF_VNET_HDR;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq (NUL-terminated name, flags) from
    // the pointer, which is valid for the call; the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::EPERM) => {
                format!("TUNSETIFF: {e} (does the tap exist, with these flags, in this netns?)")
            }
            _ => format!("TUNSETIFF: {e}"),
        });
    }
    Ok(OwnedFd::from(file))
}
