//! Kernel uevents, as wake-ups while the agent waits for a device.
//!
//! A small listener on nix's netlink socket (`NETLINK_KOBJECT_UEVENT`,
//! group 1) rather than a crate: the agent never decodes the events. Each
//! one only means "sysfs changed, look again", so a lost or truncated
//! event (a full socket buffer) costs nothing but a look.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::DeviceError;

/// The multicast group of the kernel's uevents.
const KERNEL_GROUP: u32 = 1;

/// A socket subscribed to the kernel's uevents.
pub struct Listener(OwnedFd);

impl Listener {
    pub fn open() -> Result<Self, DeviceError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(DeviceError::Uevents)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, KERNEL_GROUP),
        )
        .map_err(DeviceError::Uevents)?;
        Ok(Self(fd))
    }

    /// Returns when events came (all of them are read) or after `within`.
    pub fn wait(&mut self, within: Duration) -> Result<(), DeviceError> {
        let timeout = PollTimeout::try_from(within).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(DeviceError::Uevents(e)),
        }
        let mut buf = [0u8; 8192];
        loop {
            match recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                &mut buf,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(_) | Err(nix::errno::Errno::ENOBUFS) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(DeviceError::Uevents(e)),
            }
        }
    }
}

/// Calls `find` until it finds something or `timeout` passes, calling
/// `wake` (which returns at the latest after the time it is given) in
/// between. `None` when the time ran out.
pub fn wait_for<T>(
    timeout: Duration,
    mut wake: impl FnMut(Duration) -> Result<(), DeviceError>,
    mut find: impl FnMut() -> Result<Option<T>, DeviceError>,
) -> Result<Option<T>, DeviceError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = find()? {
            return Ok(Some(found));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        wake(left)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_again_after_each_wake_up() {
        let mut looks = 0;
        let mut wakes = 0;
        let found = wait_for(
            Duration::from_secs(60),
            |_| {
                wakes += 1;
                Ok(())
            },
            || {
                looks += 1;
                Ok((looks == 3).then_some("vdb"))
            },
        );
        assert_eq!(found.unwrap(), Some("vdb"));
        assert_eq!((looks, wakes), (3, 2));
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let started = Instant::now();
        let found = wait_for::<()>(
            Duration::from_millis(50),
            |left| {
                assert!(left <= Duration::from_millis(50));
                std::thread::sleep(left);
                Ok(())
            },
            || Ok(None),
        );
        assert_eq!(found.unwrap(), None);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    /// Whoever may subscribe to uevents (root, or an unprivileged user
    /// where the kernel allows it) gets a socket that times out quietly.
    #[test]
    fn an_idle_listener_times_out() {
        let mut listener = Listener::open()
            .expect("a uevent socket: needs root, or a kernel that lets this user subscribe");
        listener.wait(Duration::from_millis(10)).unwrap();
    }
}
