//! `capsa run`: one container in a fresh sandbox. Attached, its stdio is
//! streamed to the caller, its exit status returned and everything taken
//! down afterwards. Detached, the sandbox's owner is a background process
//! that logs the output and keeps the record once the workload exited.

use fs_err as fs;
use std::future::Future;
use std::path::PathBuf;

use capsa_config::Config;
use tracing::Instrument;

use crate::control::Control;
use crate::io::{GuestProcess, Stdio};
use crate::record::SandboxStatus;
use crate::resource::network::attachment::{self, CniAttachment, CniRequest};
use crate::resource::network::cni::PortMapping;
use crate::resource::network::{NetworkError, PodNetwork};
use crate::resource::{volume, Rootfs};
use crate::spec::{self, ProcessSpec, Volume};
use crate::state::StateDir;
use crate::vm::VmSize;
use crate::{Error, Sandbox, SandboxRequest};

/// Exit status of a workload whose VM was declared dead and killed
/// (SIGKILL's).
pub const VM_KILLED_STATUS: i32 = 128 + libc::SIGKILL;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub config: Config,
    /// A directory (shared) or a filesystem image (hot-plugged).
    pub rootfs: Rootfs,
    pub process: ProcessSpec,
    /// Host paths given to the container (`-v`): directories and files
    /// are shared, block devices and image files hot-plugged.
    pub volumes: Vec<Volume>,
    /// Forward the caller's stdin to the workload (`-i`).
    pub interactive: bool,
    pub size: VmSize,
    pub network: RunNetwork,
}

/// The sandbox's network (`capsa run --network`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunNetwork {
    /// None: the VM has only loopback.
    #[default]
    None,
    /// An existing network namespace, joined as it is: capsa neither
    /// makes nor removes it, nor runs CNI in it.
    Join(PathBuf),
    /// A network namespace capsa makes and connects with the CNI plugins
    /// of `runtime.cni_conflist`, forwarding these host ports; released
    /// with the sandbox's state.
    Cni(Vec<PortMapping>),
}

/// The network a sandbox starts with, and what capsa made for it.
#[derive(Debug, Clone, Default)]
struct Network {
    pod: PodNetwork,
    attachment: Option<CniAttachment>,
}

/// The CNI request of a bridged run, its configuration list loaded (and
/// checked) before a VM boots.
fn cni_request(spec: &RunSpec) -> Result<Option<CniRequest>, Error> {
    match &spec.network {
        RunNetwork::Cni(ports) => Ok(Some(CniRequest::from_config(
            &spec.config.runtime,
            ports.clone(),
        )?)),
        RunNetwork::Join(path) if !path.exists() => Err(NetworkError::Netns {
            path: path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        }
        .into()),
        _ => Ok(None),
    }
}

/// Makes the sandbox's network in its state directory `dir` (for CNI: a
/// netns, connected). On an error nothing of it is left; `dir` is the
/// caller's to remove.
async fn make_network(
    spec: &RunSpec,
    request: Option<CniRequest>,
    dir: &StateDir,
) -> Result<Network, Error> {
    match (&spec.network, request) {
        (RunNetwork::Join(path), _) => Ok(Network {
            pod: PodNetwork {
                netns: Some(path.clone()),
                dns: Vec::new(),
            },
            attachment: None,
        }),
        (RunNetwork::Cni(_), Some(request)) => {
            let (path, id) = (dir.path().to_path_buf(), dir.id());
            let made =
                tokio::task::spawn_blocking(move || attachment::attach(&path, &id, &request))
                    .await
                    .map_err(|_| NetworkError::ThreadLost(dir.path().to_path_buf()))??;
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            Ok(Network {
                pod: PodNetwork {
                    netns: Some(made.netns.clone()),
                    dns: attachment::host_dns(&resolv),
                },
                attachment: Some(made),
            })
        }
        _ => Ok(Network::default()),
    }
}

/// [`make_network`]; on an error `dir` is removed too.
async fn network_in(
    spec: &RunSpec,
    request: Option<CniRequest>,
    dir: &StateDir,
) -> Result<Network, Error> {
    let made = make_network(spec, request, dir).await;
    if made.is_err() {
        if let Err(e) = dir.remove() {
            tracing::warn!(error = %e, "state directory not removed");
        }
    }
    made
}

/// What the sandbox is to be: the configuration and the container's
/// spec read by the one parser ([`SandboxRequest::parse`]: static sizing,
/// `sandbox_cgroup_only`), with the VM size given on the command line.
fn request(spec: &RunSpec, id: &str) -> Result<SandboxRequest, Error> {
    let mut request = SandboxRequest::parse(&spec.config, id, &host_spec(spec, "")?)?;
    if spec.size.vcpus.is_some() {
        request.size.vcpus = spec.size.vcpus;
    }
    if spec.size.memory_mib.is_some() {
        request.size.memory_mib = spec.size.memory_mib;
    }
    Ok(request)
}

/// Starts the sandbox in `dir` as `request` says, on `network`; on an
/// error, `dir` (and the network in it) is gone.
async fn start_on(
    spec: &RunSpec,
    dir: StateDir,
    mut request: SandboxRequest,
    network: Network,
) -> Result<Sandbox, Error> {
    request.network = network.pod;
    let mut sandbox = Sandbox::start_request_in(&spec.config, dir, &request).await?;
    if let Some(made) = network.attachment {
        sandbox.update_record(|r| r.cni = Some(made));
    }
    Ok(sandbox)
}

/// Runs the workload attached and returns its exit status (128+N when
/// killed by signal N). When `stop` resolves to a signal number, that
/// signal is sent to the workload, then SIGKILL after a grace period. If
/// `stop` resolves while the VM boots, the boot is abandoned and 128+N
/// returned.
pub async fn run(
    spec: RunSpec,
    name: Option<&str>,
    stdio: Stdio,
    stop: impl Future<Output = i32> + Send,
) -> Result<i32, Error> {
    check_sources(&spec)?;
    let cni = cni_request(&spec)?;
    tokio::pin!(stop);
    let id = name.map_or_else(crate::vm::new_id, String::from);
    let request = request(&spec, &id)?;
    let root = &spec.config.runtime.state_dir;
    for stale in StateDir::collect_stale(root) {
        tracing::info!(sandbox = %stale, "removed the state of a sandbox whose capsa died");
    }
    let dir = StateDir::create(root, &id)?;
    // Not interrupted by `stop`: a CNI ADD is short, and is either
    // finished or undone when this returns.
    let network = network_in(&spec, cni, &dir).await?;
    let started = start_on(&spec, dir, request, network);
    // Biased: a start that fails at once (a name in use) reports that,
    // rather than a pending stop.
    let mut sandbox = tokio::select! {
        biased;
        s = started => s?,
        signal = &mut stop => {
            // Dropping the start future dropped the sandbox being built
            // (before it exists, `EarlyStart` in sandbox.rs): its helpers
            // are killed, its taps, network and state directory removed.
            tracing::info!(sandbox = %id, signal, "stopped while the sandbox started");
            return Ok(128 + signal);
        }
    };
    let result = attached(&mut sandbox, &spec, stdio, stop).await;
    let destroyed = sandbox.destroy().await;
    let status = result?;
    destroyed?;
    Ok(status)
}

async fn attached(
    sandbox: &mut Sandbox,
    spec: &RunSpec,
    stdio: Stdio,
    stop: impl Future<Output = i32> + Send,
) -> Result<i32, Error> {
    let process = create_and_start(sandbox, spec).await?;
    let pumps = process
        .pump(stdio, spec.interactive, spec.process.terminal)
        .await?;
    let status = wait_watched(sandbox, spec, &process, pumps, stop)
        .instrument(crate::step!("workload"))
        .await;
    record_exit(sandbox, &process.container_id, &status);
    status
}

/// Waits for the workload (stopping it when `stop` resolves) while the
/// VM is watched: a dead one (stopped, hung, gone) is declared so, to be
/// killed by the teardown that follows, and the workload reported killed
/// ([`VM_KILLED_STATUS`]). The record says `stopping` afterwards.
async fn wait_watched(
    sandbox: &mut Sandbox,
    spec: &RunSpec,
    process: &GuestProcess,
    pumps: crate::io::Pumps,
    stop: impl Future<Output = i32> + Send,
) -> Result<i32, Error> {
    let watch = sandbox.watch(&spec.config);
    let death = async {
        match &watch {
            Some(watch) => watch.dead().await,
            None => std::future::pending().await,
        }
    };
    // `capsa update` asks here: only this process may resize the VM.
    let control = match Control::bind(sandbox.dir().path()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "no control socket: `capsa update` will not reach this sandbox");
            None
        }
    };
    let wait = process.wait_or_stop(stop);
    tokio::pin!(wait, death);
    let status = loop {
        tokio::select! {
            // The agent's connection ends with its VM: a wait that fails
            // because the VM died is that death, not an agent error.
            status = &mut wait => match (status, &watch) {
                (Err(e), Some(watch)) => match watch.gone_or_stopped().await {
                    Some(why) => break Err(why),
                    None => break Ok(Err(e)),
                },
                (status, _) => break Ok(status),
            },
            why = &mut death => break Err(why),
            conn = accept(control.as_ref()) => match conn {
                Ok(stream) => Control::serve(stream, sandbox).await,
                Err(e) => tracing::debug!(error = %e, "control connection"),
            },
        }
    };
    drop(control);
    sandbox.update_record(|r| r.status = SandboxStatus::Stopping);
    match status {
        Ok(status) => {
            pumps.finish().await;
            status
        }
        Err(why) => {
            sandbox.declare_dead(why);
            pumps.abort();
            Ok(VM_KILLED_STATUS)
        }
    }
}

/// The next control connection, or never without a control socket.
async fn accept(control: Option<&Control>) -> std::io::Result<tokio::net::UnixStream> {
    match control {
        Some(c) => c.accept().await,
        None => std::future::pending().await,
    }
}

/// Fails early, before a VM boots, on a rootfs or volume that will not be
/// given to the guest (a host system path, a disk the host uses). Each is
/// checked again when it is attached.
fn check_sources(spec: &RunSpec) -> Result<(), Error> {
    let host = host_spec(spec, "")?;
    volume::check_shared_fs(&spec.rootfs, &host, &spec.config)?;
    volume::check_sources(&spec.rootfs, &host)
}

/// The container's spec with host paths: the process, and the volumes.
fn host_spec(spec: &RunSpec, hostname: &str) -> Result<oci_spec::runtime::Spec, Error> {
    let mut oci = spec::build(&spec.process, "", hostname)?;
    for volume in &spec.volumes {
        volume::add_volume(&mut oci, volume)?;
    }
    Ok(oci)
}

async fn create_and_start(sandbox: &mut Sandbox, spec: &RunSpec) -> Result<GuestProcess, Error> {
    let cid = sandbox.id().to_string();
    let oci = host_spec(spec, &sandbox.hostname())?;
    sandbox
        .create_container_from(&cid, &spec.rootfs, oci)
        .await?;
    let agent = sandbox.agent().clone();
    agent
        .start_container(&cid)
        .instrument(crate::step!("container start"))
        .await?;
    sandbox.update_record(|r| r.status = SandboxStatus::Running);
    tracing::info!(container = %cid, "workload started");
    Ok(GuestProcess {
        agent,
        exec_id: cid.clone(),
        container_id: cid,
    })
}

fn record_exit(sandbox: &mut Sandbox, cid: &str, status: &Result<i32, Error>) {
    if let Ok(code) = status {
        tracing::info!(container = %cid, code, "workload exited");
        sandbox.update_record(|r| {
            if let Some(c) = r.containers.iter_mut().find(|c| c.id == cid) {
                c.exit_code = Some(*code);
            }
        });
    }
}

/// Runs the workload detached, in the state directory `dir` made by the
/// parent `capsa run -d`: `ready` is told once the workload started (or
/// why it could not), the output goes to `<dir>/<id>.log`, and once the
/// workload exited (or `stop` resolved and it was stopped) the VM is taken
/// down and the record kept. Returns the workload's exit status.
pub async fn run_detached(
    spec: RunSpec,
    dir: StateDir,
    ready: impl FnOnce(Result<&Sandbox, &Error>),
    stop: impl Future<Output = i32> + Send,
) -> Result<i32, Error> {
    let mut sandbox = match prepare_detached(&spec, dir).await {
        Ok(s) => s,
        Err(e) => {
            ready(Err(&e));
            return Err(e);
        }
    };
    let cid = sandbox.id().to_string();
    let log = sandbox.dir().path().join(format!("{cid}.log"));
    let opened = fs::File::create(&log);
    let process = match opened {
        Ok(file) => {
            let out = tokio::fs::File::from_std(file.try_clone()?.into_file());
            let err = tokio::fs::File::from_std(file.into_file());
            let stdio = Stdio {
                stdin: Box::new(tokio::io::empty()),
                stdout: Box::new(out),
                stderr: Box::new(err),
                resize: None,
            };
            start_detached(&mut sandbox, &spec, stdio, &log).await
        }
        Err(e) => Err(e.into()),
    };
    let (process, pumps) = match process {
        Ok(p) => p,
        Err(e) => {
            // Down first: once told, the parent may look for leftovers.
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!(error = %e, "teardown after a failed start");
            }
            ready(Err(&e));
            return Err(e);
        }
    };
    ready(Ok(&sandbox));
    let status = wait_watched(&mut sandbox, &spec, &process, pumps, stop)
        .instrument(crate::step!("workload"))
        .await;
    record_exit(&mut sandbox, &cid, &status);
    let stopped = sandbox.stop().await;
    let status = status?;
    stopped?;
    Ok(status)
}

async fn prepare_detached(spec: &RunSpec, dir: StateDir) -> Result<Sandbox, Error> {
    let checked =
        check_sources(spec).and_then(|()| Ok((cni_request(spec)?, request(spec, &dir.id())?)));
    let (cni, request) = match checked {
        Ok(r) => r,
        Err(e) => {
            let _ = dir.remove();
            return Err(e);
        }
    };
    let network = network_in(spec, cni, &dir).await?;
    start_on(spec, dir, request, network).await
}

async fn start_detached(
    sandbox: &mut Sandbox,
    spec: &RunSpec,
    stdio: Stdio,
    log: &std::path::Path,
) -> Result<(GuestProcess, crate::io::Pumps), Error> {
    let process = create_and_start(sandbox, spec).await?;
    let cid = process.container_id.clone();
    sandbox.update_record(|r| {
        if let Some(c) = r.containers.iter_mut().find(|c| c.id == cid) {
            c.log = Some(log.to_path_buf());
        }
    });
    let pumps = process.pump(stdio, false, spec.process.terminal).await?;
    Ok((process, pumps))
}
