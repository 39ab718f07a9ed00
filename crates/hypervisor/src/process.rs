//! Child processes of a VM (QEMU and its vhost-user helpers): started with a
//! parent-death signal and a log file, waited for with bounds, ended by pid.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use seccompiler::BpfProgram;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::Error;

/// What a process of a VM is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmProcessRole {
    /// The hypervisor itself (the VMM).
    Hypervisor,
    /// The shared file system's daemon (virtiofsd).
    SharedFs,
    /// The vsock backend (vhost-device-vsock).
    Vsock,
}

/// A host process a VM owns: its pid, its role, and its start time, which
/// tells it from a later process that got the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmProcess {
    pub pid: u32,
    pub role: VmProcessRole,
    /// Clock ticks after boot when it started (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

impl VmProcess {
    /// `pid` with `role`, if it runs now.
    pub fn of(pid: u32, role: VmProcessRole) -> Option<Self> {
        Some(Self {
            pid,
            role,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still exists (a zombie counts): its pid
    /// is there with the same start time.
    pub fn is_running(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Longest wait for a child to be reaped after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A started child and the file its output goes to.
pub struct Helper {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Helper {
    /// Starts `program` with `args`, stdout and stderr to `log`. The child
    /// gets SIGKILL if capsa dies, so it never outlives its VM's owner.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Result<Self, Error> {
        Self::spawn_inner(name, program, args, log, Vec::new(), &[])
    }

    /// [`Helper::spawn`], the child inheriting `fds` under the same numbers
    /// (QEMU's `fd=N` options). The caller keeps them open until this
    /// returns; every other file of capsa stays close-on-exec.
    pub fn spawn_with_fds(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        fds: &[OwnedFd],
    ) -> Result<Self, Error> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        Self::spawn_inner(name, program, args, log, Vec::new(), &raw)
    }

    /// [`Helper::spawn`], with the seccomp `filters` installed in the child
    /// before it execs `program` (they stay for its whole life).
    pub fn spawn_filtered(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        filters: Vec<BpfProgram>,
    ) -> Result<Self, Error> {
        Self::spawn_inner(name, program, args, log, filters, &[])
    }

    fn spawn_inner(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        filters: Vec<BpfProgram>,
        inherit: &[RawFd],
    ) -> Result<Self, Error> {
        let inherit = inherit.to_vec();
        let out = std::fs::File::create(&log).map_err(|source| Error::LogFile {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| Error::LogFile {
            path: log.clone(),
            source,
        })?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C on capsa's terminal goes to
            // capsa, which stops the VM in order, not to QEMU directly.
            .process_group(0)
            .kill_on_drop(true);
        // The death signal follows the thread that forks, so the spawning
        // thread must live as long as the VM (a tokio worker does; a
        // `spawn_blocking` thread does not).
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls prctl(2), getppid(2), fcntl(2) and seccomp(2) (the
        // programs were built before the fork; installing one does not
        // allocate), which are async-signal-safe. The fds in `inherit` are
        // open in the parent, hence in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl: then no signal comes.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
                }
                // Only the child's copies lose FD_CLOEXEC: the parent's
                // stay close-on-exec for the other children it starts.
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for program in &filters {
                    seccompiler::apply_filter(program)
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::PermissionDenied))?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: program.into(),
            source,
        })?;
        tracing::debug!(name, pid = ?child.id(), program = %program.display(), ?args, "started");
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The end of the child's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits until `socket` exists; fails if the child exits first or the
    /// socket does not appear within `limit`.
    pub async fn wait_for_socket(&mut self, socket: &Path, limit: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(Error::HelperExited {
                    program: self.name.clone(),
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::HelperTimeout {
                    program: self.name.clone(),
                    socket: socket.into(),
                    seconds: limit.as_secs(),
                    log: self.log_tail(),
                });
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends the child: SIGTERM, up to `grace` to exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.terminate();
        if timeout(grace, self.child.wait()).await.is_err() {
            tracing::debug!(name = %self.name, "did not stop on SIGTERM");
            self.kill().await;
        }
    }

    /// Sends SIGTERM (if the child is not reaped yet).
    pub fn terminate(&self) {
        // `id()` is `None` once the child is reaped, so the pid signalled is
        // always our unreaped child, never a reused one.
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }

    /// SIGKILL, then reaps the child (bounded: a child stuck in the kernel
    /// is left to tokio, which reaps it when it finally dies).
    pub async fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        tracing::debug!(name = %self.name, pid = ?self.child.id(), "SIGKILL");
        let _ = self.child.start_kill();
        if timeout(KILL_WAIT, self.child.wait()).await.is_err() {
            tracing::warn!(name = %self.name, pid = ?self.child.id(), "not reaped after SIGKILL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_known_by_pid_and_start_time() {
        let me = VmProcess::of(std::process::id(), VmProcessRole::Hypervisor).unwrap();
        assert!(me.is_running());
        let other = VmProcess {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_running(), "a reused pid is another process");
        assert_eq!(VmProcess::of(u32::MAX, VmProcessRole::Vsock), None);
    }
}
