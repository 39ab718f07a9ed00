//! Containers, run by youki's libcontainer.
//!
//! Layout of a container `<id>`:
//! - `/run/capsa-agent/<id>/config.json`: the bundle (the adapted spec; the
//!   rootfs is the spec's `root.path`, in the virtio-fs share);
//! - `/run/capsa-agent/<id>/state/<id>/`: libcontainer's state;
//! - `/run/capsa-console/<n>.sock`: the console socket while a container
//!   with a terminal is created (short, as `sun_path` is 108 bytes).
//!
//! Every libcontainer call is blocking and some fork or `chdir` (process
//! wide): they run on blocking threads, one at a time ([`LOCK`]).

pub mod console;
mod exec;
mod executor;
pub mod hooks;
pub mod namespaces;
mod rootfs;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as Handle;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

use crate::reaper::{ExitWatch, Reaper, ReaperError};
use crate::stdio::{Stdio, StdioError};

use console::{ConsoleError, ConsoleSocket};
pub use exec::{exec, Spawned};
use executor::WorkloadExecutor;
use namespaces::{NamespaceError, Namespaces};

/// Bundles live in `<BUNDLE_ROOT>/<id>`.
pub const BUNDLE_ROOT: &str = "/run/capsa-agent";
/// Console sockets live here while containers are created.
pub const CONSOLE_DIR: &str = "/run/capsa-console";
/// How long the container's init gets to send its pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serializes libcontainer calls (they fork and change the working directory).
static LOCK: Mutex<()> = Mutex::new(());
static CONSOLE_SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A filesystem call failed; through `fs_err`, the error names the
    /// operation and the path.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot write the bundle's config.json")]
    SaveSpec(#[source] oci_spec::OciSpecError),
    #[error("cannot set up stdio")]
    Stdio(#[from] StdioError),
    #[error("cannot set up the console socket")]
    Console(#[from] ConsoleError),
    #[error("libcontainer failed to create the container")]
    Create(#[source] LibcontainerError),
    #[error("libcontainer failed to start the container")]
    Start(#[source] LibcontainerError),
    #[error("libcontainer failed to delete the container")]
    Delete(#[source] LibcontainerError),
    #[error("libcontainer returned a container without pid")]
    NoPid,
    #[error("cannot watch the container's init process")]
    Watch(#[source] ReaperError),
    #[error("cannot read the container's spec")]
    LoadSpec(#[source] oci_spec::OciSpecError),
    #[error("cannot write the exec process spec {0}")]
    SaveProcess(PathBuf, #[source] serde_json::Error),
    #[error("libcontainer failed to exec {0:?} in the container")]
    Exec(String, #[source] LibcontainerError),
    #[error("cannot watch exec process {0:?}")]
    WatchExec(String, #[source] ReaperError),
    #[error("libcontainer failed to pause the container")]
    Pause(#[source] LibcontainerError),
    #[error("libcontainer failed to resume the container")]
    Resume(#[source] LibcontainerError),
    #[error("cannot mount the rootfs {0} nodev")]
    Rootfs(PathBuf, #[source] nix::Error),
    #[error("cannot keep the container's namespaces")]
    Namespaces(#[source] NamespaceError),
    #[error("cannot copy the container's state for an exec")]
    State(#[source] libcontainer::container::state::StateError),
}

/// A container created by libcontainer, its init process not started yet.
pub struct Created {
    pub handle: Handle,
    pub pid: i32,
    pub exit: ExitWatch,
    pub stdio: Stdio,
    /// The init's namespaces, taken before the workload runs (for execs).
    pub namespaces: Namespaces,
}

/// The agent's side of the stdio while the container is built.
enum PendingIo {
    Pipes(Box<Stdio>),
    /// The pty master arrives on the socket during the build.
    Console(ConsoleSocket),
}

/// Gives the process being built a pty (through a console socket) or
/// three pipes; returns the agent's side, pending for a pty.
fn attach_stdio(
    builder: ContainerBuilder,
    terminal: bool,
) -> Result<(ContainerBuilder, PendingIo), ContainerError> {
    if terminal {
        fs_err::create_dir_all(CONSOLE_DIR)?;
        let n = CONSOLE_SEQ.fetch_add(1, Ordering::Relaxed);
        let console = ConsoleSocket::bind(&Path::new(CONSOLE_DIR).join(format!("{n}.sock")))?;
        let builder = builder.with_console_socket(Some(console.path()));
        Ok((builder, PendingIo::Console(console)))
    } else {
        let (stdio, child) = Stdio::pipes()?;
        let builder = builder
            .with_stdin(child.stdin)
            .with_stdout(child.stdout)
            .with_stderr(child.stderr);
        Ok((builder, PendingIo::Pipes(Box::new(stdio))))
    }
}

/// The bundle directory of container `id`.
pub fn bundle_dir(id: &str) -> PathBuf {
    Path::new(BUNDLE_ROOT).join(id)
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates container `id` from `spec` (already adapted): writes the bundle,
/// builds the container (its init waits for [`start`]) and watches its init.
/// Blocking. On error nothing is left behind.
pub fn create(id: &str, spec: &Spec, reaper: &Reaper) -> Result<Created, ContainerError> {
    let _guard = lock();
    let bundle = bundle_dir(id);
    if bundle.exists() {
        // The sandbox does not know `id`: whatever is there is stale.
        tracing::warn!(bundle = %bundle.display(), "removing a stale bundle");
        fs_err::remove_dir_all(&bundle)?;
    }
    let root = root_path(spec);
    rootfs::mount_rootfs(&root).map_err(|e| ContainerError::Rootfs(root.clone(), e))?;
    let result = create_locked(id, spec, reaper, &bundle);
    if result.is_err() {
        rootfs::unmount_rootfs(&root);
        let _ = std::fs::remove_dir_all(&bundle);
    }
    result
}

/// The rootfs of `spec` (checked absolute by `spec::check`).
fn root_path(spec: &Spec) -> PathBuf {
    spec.root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default()
}

fn create_locked(
    id: &str,
    spec: &Spec,
    reaper: &Reaper,
    bundle: &Path,
) -> Result<Created, ContainerError> {
    let state = bundle.join("state");
    fs_err::create_dir_all(&state)?;
    spec.save(bundle.join("config.json"))
        .map_err(ContainerError::SaveSpec)?;

    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(&state)
        .map_err(ContainerError::Create)?
        .with_executor(WorkloadExecutor);

    let (builder, io) = attach_stdio(builder, terminal)?;

    // The builder, and with it the agent's copies of the child ends of the
    // pipes, is consumed here: once the workload exits, reads see EOF.
    let handle = builder
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(ContainerError::Create)?;

    let pid = match handle.pid() {
        Some(pid) => pid.as_raw(),
        None => return Err(discard(handle, ContainerError::NoPid)),
    };
    // The init waits for `start`: these are the namespaces it was given.
    let namespaces = match Namespaces::capture(pid) {
        Ok(ns) => ns,
        Err(e) => return Err(discard(handle, ContainerError::Namespaces(e))),
    };
    let exit = match reaper.watch(pid) {
        Ok(exit) => exit,
        Err(e) => return Err(discard(handle, ContainerError::Watch(e))),
    };
    let stdio = match io {
        PendingIo::Pipes(stdio) => *stdio,
        PendingIo::Console(console) => match receive_terminal(&console, spec.process().as_ref()) {
            Ok(stdio) => stdio,
            Err(e) => {
                reaper.forget(pid);
                return Err(discard(handle, e));
            }
        },
    };
    Ok(Created {
        handle,
        pid,
        exit,
        stdio,
        namespaces,
    })
}

/// Receives the pty master and gives the terminal the spec's
/// `process.consoleSize` (libcontainer does not).
fn receive_terminal(
    console: &ConsoleSocket,
    process: Option<&oci_spec::runtime::Process>,
) -> Result<Stdio, ContainerError> {
    let master = console.receive(CONSOLE_TIMEOUT)?;
    let size = process.and_then(|p| p.console_size());
    if let Some(size) = size {
        let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
        console::set_size(&master, clamp(size.height()), clamp(size.width()))?;
    }
    Ok(Stdio::terminal(master)?)
}

/// Best effort removal of a container that failed half-way; returns `err`.
fn discard(mut handle: Handle, err: ContainerError) -> ContainerError {
    if let Err(e) = handle.delete(true) {
        let error = crate::error::chain(&e);
        tracing::warn!(id = handle.id(), %error, "cannot delete a failed container");
    }
    err
}

/// Starts the container's init process (it execs the workload). Blocking.
pub fn start(handle: &mut Handle) -> Result<(), ContainerError> {
    let _guard = lock();
    handle.start().map_err(ContainerError::Start)
}

/// Freezes every process of the container (cgroup v2 freezer; returns once
/// the cgroup reports `frozen 1`). Blocking.
pub fn pause(handle: &mut Handle) -> Result<(), ContainerError> {
    let _guard = lock();
    handle.pause().map_err(ContainerError::Pause)
}

/// Thaws the container. Blocking.
pub fn resume(handle: &mut Handle) -> Result<(), ContainerError> {
    let _guard = lock();
    handle.resume().map_err(ContainerError::Resume)
}

/// Deletes the container: kills what is left, removes its cgroup, its
/// state and its bundle. Blocking.
pub fn delete(handle: &mut Handle) -> Result<(), ContainerError> {
    let _guard = lock();
    handle.delete(true).map_err(ContainerError::Delete)?;
    let bundle = bundle_dir(handle.id());
    match Spec::load(bundle.join("config.json")) {
        Ok(spec) => rootfs::unmount_rootfs(&root_path(&spec)),
        Err(e) => tracing::warn!(id = handle.id(), error = %e, "rootfs left mounted"),
    }
    Ok(fs_err::remove_dir_all(&bundle)?)
}
