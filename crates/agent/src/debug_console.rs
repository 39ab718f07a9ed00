//! The debug console: a shell of the VM's root environment (the agent's
//! own mount namespace, outside every container) on a vsock port.
//!
//! Enabled by `agent.debug_console_vport=<port>` on the kernel command line
//! (Kata's parameter; capsa's runtime passes 1026); without it nothing
//! listens. [`ADDRESS_ENV`] overrides the address (`unix:///path` to try it
//! on a host). Each connection gets `/bin/sh` on a new pty, as a session
//! leader with the pty as controlling terminal; bytes are copied both ways
//! until either side closes. The client closing hangs the terminal up
//! (SIGHUP to the shell); the shell exiting ends the connection. The
//! shell's exit status is collected by the agent's reaper.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr, VsockAddr,
};

/// Kernel command line parameter naming the console's vsock port.
pub const CMDLINE_PARAM: &str = "agent.debug_console_vport";
/// Overrides the listen address (`vsock://-1:1026`, `unix:///path`).
pub const ADDRESS_ENV: &str = "CAPSA_DEBUG_CONSOLE_ADDR";
/// The shell and its environment.
pub const SHELL: &str = "/bin/sh";
const PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";
const DEFAULT_TERM: &str = "vt100";
/// How long binding is retried (the vsock transport may still load).
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("invalid debug console address {0:?} (vsock://<cid>:<port> or unix://<path>)")]
    Address(String),
    #[error("cannot listen on {0}")]
    Listen(String, #[source] nix::Error),
    #[error("cannot open a pty")]
    Pty(#[source] nix::Error),
    #[error("cannot start {SHELL}")]
    Spawn(#[source] std::io::Error),
}

/// Where the console listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Vsock { cid: u32, port: u32 },
    Unix(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Vsock { cid, port } => write!(f, "vsock://{}:{port}", *cid as i32),
            Address::Unix(p) => write!(f, "unix://{p}"),
        }
    }
}

/// The console port of a kernel command line, if any. A malformed value
/// is logged and ignored (no console).
pub fn port_from_cmdline(cmdline: &str) -> Option<u32> {
    vsock_port_param(cmdline, CMDLINE_PARAM)
}

/// The vsock port kernel parameter `param` gives (`param=<port>`, the last
/// one wins, as for kernel parameters); a malformed or zero value is
/// logged and ignored.
pub fn vsock_port_param(cmdline: &str, param: &str) -> Option<u32> {
    let value = cmdline
        .split_whitespace()
        .rev()
        .find_map(|p| p.strip_prefix(param)?.strip_prefix('='))?;
    match value.parse::<u32>() {
        Ok(port) if port > 0 => Some(port),
        _ => {
            tracing::warn!(%value, "invalid {param}: ignored");
            None
        }
    }
}

/// Parses `vsock://<cid>:<port>` (cid -1: any) or `unix://<path>`.
pub fn parse_address(text: &str) -> Result<Address, ConsoleError> {
    let bad = || ConsoleError::Address(text.to_string());
    if let Some(path) = text.strip_prefix("unix://") {
        return if path.is_empty() {
            Err(bad())
        } else {
            Ok(Address::Unix(path.to_string()))
        };
    }
    let rest = text.strip_prefix("vsock://").ok_or_else(bad)?;
    let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
    let cid = match cid.parse::<i64>().map_err(|_| bad())? {
        -1 => libc::VMADDR_CID_ANY,
        c => u32::try_from(c).map_err(|_| bad())?,
    };
    let port = port.parse().map_err(|_| bad())?;
    Ok(Address::Vsock { cid, port })
}

/// The address to listen on: [`ADDRESS_ENV`], else the kernel parameter.
pub fn configured_address() -> Option<Address> {
    if let Ok(text) = std::env::var(ADDRESS_ENV) {
        return match parse_address(&text) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        };
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let port = port_from_cmdline(&cmdline)?;
    Some(Address::Vsock {
        cid: libc::VMADDR_CID_ANY,
        port,
    })
}

/// Binds and listens on `address`.
pub fn listen_on(address: &Address) -> Result<OwnedFd, ConsoleError> {
    let err = |e| ConsoleError::Listen(address.to_string(), e);
    let flags = SockFlag::SOCK_CLOEXEC;
    let fd = match address {
        Address::Vsock { cid, port } => {
            let fd = socket(AddressFamily::Vsock, SockType::Stream, flags, None).map_err(err)?;
            bind(fd.as_raw_fd(), &VsockAddr::new(*cid, *port)).map_err(err)?;
            fd
        }
        Address::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None).map_err(err)?;
            bind(fd.as_raw_fd(), &UnixAddr::new(path.as_str()).map_err(err)?).map_err(err)?;
            fd
        }
    };
    listen(&fd, Backlog::new(8).map_err(err)?).map_err(err)?;
    Ok(fd)
}

/// [`listen_on`], retried for a while: the vsock transport may still be
/// loading. Blocking.
pub fn listen_retrying(address: &Address) -> Result<OwnedFd, ConsoleError> {
    let deadline = Instant::now() + BIND_TIMEOUT;
    loop {
        match listen_on(address) {
            Ok(fd) => return Ok(fd),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("{}, retrying", crate::error::chain(&e));
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts the console if configured: a thread that accepts connections,
/// and one per connection. Returns whether it listens.
pub fn start() -> bool {
    let Some(address) = configured_address() else {
        return false;
    };
    let listener = match listen_retrying(&address) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("debug console: {}", crate::error::chain(&e));
            return false;
        }
    };
    tracing::warn!(%address, "debug console enabled: a root shell of the VM listens");
    let spawned = std::thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || accept_loop(listener));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the debug console thread");
        return false;
    }
    true
}

/// Accepts one connection on `listener` (close-on-exec). `None` after an
/// interruption or a failure (logged, then a short pause so that a lasting
/// one does not spin); `what` names the listener in the log.
pub fn accept_one(listener: &OwnedFd, what: &str) -> Option<OwnedFd> {
    match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        Ok(fd) => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(nix::errno::Errno::EINTR) => None,
        Err(e) => {
            tracing::error!(error = %e, "{what}: accept failed");
            std::thread::sleep(Duration::from_millis(100));
            None
        }
    }
}

fn accept_loop(listener: OwnedFd) {
    loop {
        let Some(conn) = accept_one(&listener, "debug console") else {
            continue;
        };
        tracing::info!("debug console: connection");
        let spawned = std::thread::Builder::new()
            .name("debug-console-session".into())
            .spawn(move || {
                if let Err(e) = session(conn) {
                    tracing::warn!("debug console: {}", crate::error::chain(&e));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "debug console: cannot start a session thread");
        }
    }
}

/// A new pty: its master and its slave, both close-on-exec.
fn open_pty() -> Result<(OwnedFd, OwnedFd), ConsoleError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(ConsoleError::Pty)?;
    grantpt(&master).map_err(ConsoleError::Pty)?;
    unlockpt(&master).map_err(ConsoleError::Pty)?;
    let name = ptsname_r(&master).map_err(ConsoleError::Pty)?;
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let slave = nix::fcntl::open(name.as_str(), flags, nix::sys::stat::Mode::empty())
        .map_err(ConsoleError::Pty)?;
    // SAFETY: `into_raw_fd` gives up the master's descriptor, and `open`
    // just returned the slave's: each is owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    // SAFETY: as above.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

/// Starts the shell on `slave`, as a session leader with it as
/// controlling terminal.
fn spawn_shell(slave: OwnedFd) -> Result<u32, ConsoleError> {
    let term = std::env::var("TERM").unwrap_or_else(|_| DEFAULT_TERM.to_string());
    let io = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(ConsoleError::Spawn);
    let mut cmd = Command::new(SHELL);
    cmd.env_clear()
        .env("PATH", PATH)
        .env("HOME", "/")
        .env("TERM", term)
        .env("SHELL", SHELL)
        .current_dir("/")
        .stdin(io(&slave)?)
        .stdout(io(&slave)?)
        .stderr(io(&slave)?);
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (setsid, ioctl) and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(ConsoleError::Spawn)?;
    // The reaper collects its status; the session ends on the pty's hangup.
    Ok(child.id())
}

/// Serves one connection: a shell on a new pty, bytes copied both ways.
fn session(conn: OwnedFd) -> Result<(), ConsoleError> {
    let (master, slave) = open_pty()?;
    let pid = spawn_shell(slave)?;
    tracing::info!(pid, "debug console: shell started");
    copy_both_ways(File::from(conn), File::from(master));
    tracing::info!(pid, "debug console: session ended");
    Ok(())
}

/// Copies `conn` → `pty` and `pty` → `conn` until either side ends. The
/// pty master is closed on return (the shell, if still there, gets SIGHUP).
fn copy_both_ways(mut conn: File, mut pty: File) {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
            PollFd::new(pty.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let ready = |f: &PollFd| {
            f.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let (from_conn, from_pty) = (ready(&fds[0]), ready(&fds[1]));
        if from_pty {
            // EIO once every slave descriptor is closed: the shell is gone.
            match pty.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        if from_conn {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if pty.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
