//! Standard streams of container processes: pipes, or the master side of
//! the container's pty, read and written without blocking the runtime.
//!
//! End of file is what the kernel says: a pipe read returns 0 once every
//! write end is closed (the agent closes its copies of the child ends right
//! after the container is created), a pty master read fails with `EIO` once
//! the last slave is closed; both become an empty read here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{Mutex, Notify};

/// Largest read served at once, whatever the client asks for.
pub const MAX_READ: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot create a pipe")]
    Pipe(#[source] Errno),
    #[error("cannot set up non-blocking i/o")]
    NonBlocking(#[source] io::Error),
    #[error("cannot duplicate the pty master")]
    Dup(#[source] io::Error),
    #[error("the process has no {0}")]
    NoStream(&'static str),
    #[error("stdin is closed")]
    StdinClosed,
    #[error("cannot read {stream}")]
    Read {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write stdin")]
    Write(#[source] io::Error),
}

/// The ends of the stdio pipes given to the container process.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A readable stream (pipe read end or pty master).
pub struct OutputStream {
    fd: AsyncFd<OwnedFd>,
    tty: bool,
}

/// A writable stream (pipe write end or pty master).
pub struct InputStream {
    fd: AsyncFd<OwnedFd>,
}

/// The agent's side of a process's stdio.
pub struct Stdio {
    terminal: bool,
    /// A copy of the pty master, to set the terminal's size.
    console: Option<OwnedFd>,
    stdin: Mutex<Option<InputStream>>,
    stdout: Mutex<OutputStream>,
    stderr: Option<Mutex<OutputStream>>,
    /// Set once a reader got end of file (or an error) on stdout, stderr.
    ended: [AtomicBool; 2],
    ended_changed: Notify,
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), StdioError> {
    let to_io = |e: Errno| StdioError::NonBlocking(e.into());
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(to_io)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(to_io)?;
    Ok(())
}

/// Makes `fd` non-blocking and registers it with the runtime's reactor.
fn register(fd: OwnedFd, interest: Interest) -> Result<AsyncFd<OwnedFd>, StdioError> {
    set_nonblocking(&fd)?;
    // SAFETY: an `OwnedFd` stays open while owned and always returns the
    // same descriptor; the `AsyncFd` owns it until dropped.
    let registered = unsafe { AsyncFd::register_with_interest(fd, interest) };
    registered.map_err(|e| StdioError::NonBlocking(e.into()))
}

impl OutputStream {
    pub(crate) fn new(fd: OwnedFd, tty: bool) -> Result<Self, StdioError> {
        let fd = register(fd, Interest::READABLE)?;
        Ok(Self { fd, tty })
    }

    /// Reads at most `len` bytes, waiting for some; empty at end of file.
    pub async fn read(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len.clamp(1, MAX_READ)];
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(io::Error::from));
            match res {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) && self.tty => {
                    return Ok(Vec::new())
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl InputStream {
    pub(crate) fn new(fd: OwnedFd) -> Result<Self, StdioError> {
        let fd = register(fd, Interest::WRITABLE)?;
        Ok(Self { fd })
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

impl Stdio {
    /// Three pipes: the agent keeps the parent ends, the process gets the
    /// others. Every end is close-on-exec (libcontainer dups the child ends
    /// onto 0, 1 and 2, which clears the flag there).
    pub fn pipes() -> Result<(Stdio, ChildStdio), StdioError> {
        let (stdin_r, stdin_w) = cloexec_pipe()?;
        let (stdout_r, stdout_w) = cloexec_pipe()?;
        let (stderr_r, stderr_w) = cloexec_pipe()?;
        let stdio = Stdio {
            terminal: false,
            console: None,
            stdin: Mutex::new(Some(InputStream::new(stdin_w)?)),
            stdout: Mutex::new(OutputStream::new(stdout_r, false)?),
            stderr: Some(Mutex::new(OutputStream::new(stderr_r, false)?)),
            ended: Default::default(),
            ended_changed: Notify::new(),
        };
        let child = ChildStdio {
            stdin: stdin_r,
            stdout: stdout_w,
            stderr: stderr_w,
        };
        Ok((stdio, child))
    }

    /// A pty: stdin and stdout are its master; there is no separate stderr.
    pub fn terminal(master: OwnedFd) -> Result<Stdio, StdioError> {
        let writer = master
            .as_fd()
            .try_clone_to_owned()
            .map_err(StdioError::Dup)?;
        let console = master
            .as_fd()
            .try_clone_to_owned()
            .map_err(StdioError::Dup)?;
        Ok(Stdio {
            terminal: true,
            console: Some(console),
            stdin: Mutex::new(Some(InputStream::new(writer)?)),
            stdout: Mutex::new(OutputStream::new(master, true)?),
            stderr: None,
            // A terminal has no stderr of its own.
            ended: [AtomicBool::new(false), AtomicBool::new(true)],
            ended_changed: Notify::new(),
        })
    }

    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// The pty master, for a process with a terminal.
    pub fn console(&self) -> Option<&OwnedFd> {
        self.console.as_ref()
    }

    /// Reads stdout (the terminal with a pty); empty at end of file.
    pub async fn read_stdout(&self, len: usize) -> Result<Vec<u8>, StdioError> {
        let stream = self.stdout.lock().await;
        let read = stream.read(len).await.map_err(|source| StdioError::Read {
            stream: "stdout",
            source,
        });
        self.note_end(0, &read);
        read
    }

    /// Records that a reader reached the end of stream `i`.
    fn note_end(&self, i: usize, read: &Result<Vec<u8>, StdioError>) {
        if read.as_ref().map_or(true, Vec::is_empty) {
            self.ended[i].store(true, Ordering::SeqCst);
            self.ended_changed.notify_waiters();
        }
    }

    /// Waits until readers have taken stdout and stderr to end of file, at
    /// most `limit`; whether they have.
    pub async fn wait_drained(&self, limit: std::time::Duration) -> bool {
        let drained = || self.ended.iter().all(|e| e.load(Ordering::SeqCst));
        let wait = async {
            loop {
                let changed = self.ended_changed.notified();
                if drained() {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Reads stderr; empty at end of file.
    pub async fn read_stderr(&self, len: usize) -> Result<Vec<u8>, StdioError> {
        let stream = self.stderr.as_ref().ok_or(StdioError::NoStream("stderr"))?;
        let stream = stream.lock().await;
        let read = stream.read(len).await.map_err(|source| StdioError::Read {
            stream: "stderr",
            source,
        });
        self.note_end(1, &read);
        read
    }

    /// Writes all of `data` to stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), StdioError> {
        let stdin = self.stdin.lock().await;
        let stream = stdin.as_ref().ok_or(StdioError::StdinClosed)?;
        stream.write_all(data).await.map_err(StdioError::Write)
    }

    /// Closes stdin: the process reads end of file once the pipe is drained.
    /// With a pty, only the agent's writer is dropped (the terminal stays
    /// open for output). Closing twice is not an error.
    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipes_carry_data_and_report_eof() {
        let (stdio, child) = Stdio::pipes().unwrap();
        assert!(!stdio.is_terminal());
        let mut out = std::fs::File::from(child.stdout);
        std::io::Write::write_all(&mut out, b"hello").unwrap();
        drop(out);
        assert_eq!(stdio.read_stdout(3).await.unwrap(), b"hel");
        assert_eq!(stdio.read_stdout(100).await.unwrap(), b"lo");
        assert!(stdio.read_stdout(100).await.unwrap().is_empty(), "EOF");
        assert!(
            stdio.read_stdout(100).await.unwrap().is_empty(),
            "EOF again"
        );

        stdio.write_stdin(b"in").await.unwrap();
        let mut buf = [0u8; 8];
        let mut input = std::fs::File::from(child.stdin);
        let n = std::io::Read::read(&mut input, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"in");
        stdio.close_stdin().await;
        assert_eq!(std::io::Read::read(&mut input, &mut buf).unwrap(), 0);
        assert!(matches!(
            stdio.write_stdin(b"x").await,
            Err(StdioError::StdinClosed)
        ));
        stdio.close_stdin().await;

        drop(child.stderr);
        assert!(stdio.read_stderr(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reads_wait_for_data() {
        let (stdio, child) = Stdio::pipes().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut err = std::fs::File::from(child.stderr);
            std::io::Write::write_all(&mut err, b"late").unwrap();
        });
        assert_eq!(stdio.read_stderr(10).await.unwrap(), b"late");
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn pty_master_reads_eio_as_eof() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let stdio = Stdio::terminal(pty.master).unwrap();
        assert!(stdio.is_terminal());
        assert!(matches!(
            stdio.read_stderr(10).await,
            Err(StdioError::NoStream("stderr"))
        ));
        let mut slave = std::fs::File::from(pty.slave);
        std::io::Write::write_all(&mut slave, b"tty").unwrap();
        drop(slave);
        let mut got = Vec::new();
        loop {
            let data = stdio.read_stdout(64).await.unwrap();
            if data.is_empty() {
                break;
            }
            got.extend(data);
        }
        assert_eq!(got, b"tty");
    }
}
