//! Persistent tap devices. The kernel does not create tun/tap devices over
//! rtnetlink ("not supported" from `tun_validate`), and the tun crates on
//! crates.io open a queue for the caller's lifetime rather than make a
//! persistent device to hand on, so this is the two ioctls by hand.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Flags of capsa's taps: the hypervisor must open them with the same ones.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

fn ifreq(name: &str, flags: libc::c_int) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is empty or too long"),
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

/// Opens the tap `name` in the calling thread's netns: the fd is one queue
/// of it. The caller checks that it exists (this would make it).
pub(super) fn open(name: &str) -> io::Result<OwnedFd> {
    attach(name, TAP_FLAGS)
}

fn attach(name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let mut req = ifreq(name, flags)?;
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: TUNSETIFF reads and writes an ifreq; `req` is one, alive for
    // the call, and `tun` is an open /dev/net/tun.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun.into())
}

/// Makes the persistent tap `name` in the calling thread's netns: it stays
/// when the fd closes, until it is deleted over netlink. An existing
/// device of that name is an error (`IFF_TUN_EXCL`), never adopted.
pub(super) fn create_persistent(name: &str) -> io::Result<()> {
    let fd = attach(name, TAP_FLAGS | libc::IFF_TUN_EXCL)?;
    // SAFETY: TUNSETPERSIST takes an int by value; `fd` is an attached tap.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
