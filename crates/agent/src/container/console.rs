//! The console socket of a container with a terminal.
//!
//! libcontainer creates the pty inside the container and sends its master
//! over a Unix socket (runc's `--console-socket` protocol: one message whose
//! ancillary data carries the fd). The agent listens before the container is
//! built; libcontainer connects during the build, so the message is waiting
//! in the socket when the build returns.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("the container did not connect to the console socket in {0:?}")]
    Timeout(Duration),
    #[error("cannot accept on the console socket")]
    Accept(#[source] std::io::Error),
    #[error("cannot receive the pty master")]
    Receive(#[source] nix::Error),
    #[error("the console socket message carried no file descriptor")]
    NoFd,
    #[error("cannot set the terminal size")]
    WinSize(#[source] nix::Error),
}

/// Sets the size of the terminal whose master is `master`.
pub fn set_size(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), ConsoleError> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize`, which lives across the call.
    unsafe { tiocswinsz(master.as_raw_fd(), &size) }
        .map(drop)
        .map_err(ConsoleError::WinSize)
}

/// A listening console socket; the file is removed on drop.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> Result<Self, ConsoleError> {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).map_err(|e| ConsoleError::Bind(path.to_path_buf(), e))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master, waiting at most `timeout`.
    pub fn receive(&self, timeout: Duration) -> Result<OwnedFd, ConsoleError> {
        self.listener
            .set_nonblocking(true)
            .map_err(ConsoleError::Accept)?;
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(ConsoleError::Timeout(timeout));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(ConsoleError::Accept(e)),
            }
        };
        stream
            .set_nonblocking(false)
            .map_err(ConsoleError::Accept)?;
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(100))))
            .map_err(ConsoleError::Accept)?;
        receive_fd(stream.as_raw_fd())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_fd(socket: RawFd) -> Result<OwnedFd, ConsoleError> {
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(ConsoleError::Receive)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(ConsoleError::Receive)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS installed these descriptors in this process
            // just now; nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    // Extra descriptors, if any, are closed when `fds` is dropped.
    fds.into_iter().next().ok_or(ConsoleError::NoFd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage, UnixAddr};
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_a_sent_pty_master() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(&dir.path().join("c.sock")).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let client = UnixStream::connect(socket.path()).unwrap();
        let fds = [pty.master.as_raw_fd()];
        sendmsg::<UnixAddr>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = socket.receive(Duration::from_secs(5)).unwrap();
        // The received fd is the same pty: what the slave writes, it reads.
        nix::unistd::write(pty.slave.as_fd(), b"x").unwrap();
        let mut buf = [0u8; 4];
        let n = nix::unistd::read(master.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"x");
        let path = socket.path().to_path_buf();
        drop(socket);
        assert!(!path.exists());

        set_size(&master, 24, 80).unwrap();
        let mut size = nix::pty::Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into `size`.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_row, size.ws_col), (24, 80));
    }

    #[test]
    fn times_out_without_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(&dir.path().join("c.sock")).unwrap();
        let err = socket.receive(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, ConsoleError::Timeout(_)), "{err}");
    }
}
