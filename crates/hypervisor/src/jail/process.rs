//! The handle of a jailed program: signalled through a pidfd (never a
//! recycled pid), waited for without blocking the runtime, killed and
//! reaped when dropped.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A running jailed program, PID 1 of its own PID namespace: when it ends,
/// the kernel kills everything it forked.
#[derive(Debug)]
pub struct JailedProcess {
    name: String,
    pid: Pid,
    pidfd: OwnedFd,
    status: Option<ExitStatus>,
}

impl JailedProcess {
    /// Takes charge of our child `pid` (not reaped yet, so not recycled).
    /// If no pidfd can be had, the child is killed and reaped.
    pub(super) fn adopt(name: &str, pid: Pid) -> io::Result<Self> {
        // SAFETY: pidfd_open(2) with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(err);
        }
        Ok(Self {
            name: name.into(),
            pid,
            // SAFETY: pidfd_open returned a new descriptor we now own.
            pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            status: None,
        })
    }

    /// The program's pid on the host.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `signal`. As PID 1 of its namespace the program gets only the
    /// signals it handles, and SIGKILL.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal as i32,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match rc {
            0 => Ok(()),
            _ => match io::Error::last_os_error() {
                // Exited, not reaped yet: nothing to signal.
                e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                e => Err(e),
            },
        }
    }

    pub fn kill(&self) -> io::Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// The exit status, if the program has exited (reaps it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG))? {
                WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
                WaitStatus::Signaled(_, sig, core) => Some(ExitStatus::from_raw(
                    sig as i32 | if core { 0x80 } else { 0 },
                )),
                _ => None,
            };
        }
        Ok(self.status)
    }

    /// Waits for the program to exit (the pidfd becomes readable then).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // SAFETY: the AsyncFd owns this new descriptor (a duplicate of the
        // pidfd) for its whole life; nothing else closes or replaces it.
        let fd = unsafe {
            AsyncFd::register_with_interest(self.pidfd.try_clone()?, Interest::READABLE)
        }?;
        loop {
            let mut ready = fd.readable().await?;
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl Drop for JailedProcess {
    /// Kills the program if it still runs, and reaps it off the runtime's
    /// threads (PID 1's exit waits for its namespace to empty).
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.kill();
        let (pid, name) = (self.pid, self.name.clone());
        let reaper = std::thread::Builder::new()
            .name("jail-reaper".into())
            .spawn(move || {
                if let Err(e) = waitpid(pid, None) {
                    tracing::warn!(name, pid = pid.as_raw(), error = %e, "reap jailed process");
                }
            });
        if let Err(e) = reaper {
            tracing::warn!(name = %self.name, error = %e, "no thread to reap the jailed process");
        }
    }
}
