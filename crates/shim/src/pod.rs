//! A pod: one VM (a capsa sandbox) and the tasks created in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_protocols::{agent, convert};
use capsa_runtime::health::{Death, VmState, Watch};
use capsa_runtime::{GuestProcess, Sandbox};
use containerd_shim::protos::api::Mount as RootfsMount;
use containerd_shim::protos::types::task::Status;
use oci_spec::runtime::{Mount, MountBuilder, Spec};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::events::Events;
use crate::process::{Exit, Proc};
use crate::stdio;

/// Exit status of processes whose VM died under them (SIGKILL).
pub const VM_DIED_STATUS: u32 = 128 + 9;

/// A task: a container of the pod, its init and its exec processes.
pub struct Task {
    pub id: String,
    pub bundle: String,
    pub init: Arc<Proc>,
    pub execs: StdMutex<HashMap<String, Arc<Proc>>>,
}

impl Task {
    /// The process `exec_id` (the init when empty).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Proc>, Error> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NoProcess {
                id: self.id.clone(),
                exec_id: exec_id.into(),
            })
    }
}

pub struct Pod {
    pub id: String,
    pub namespace: String,
    sandbox: Mutex<Option<Sandbox>>,
    agent: AgentClient,
    pid: u32,
    /// The sandbox's state directory on the host.
    pub state_dir: PathBuf,
    pub tasks: StdMutex<HashMap<String, Arc<Task>>>,
    pub events: Arc<Events>,
}

impl Pod {
    /// Boots the pod's VM.
    pub async fn start(
        id: &str,
        namespace: &str,
        config: &capsa_config::Config,
        size: capsa_runtime::VmSize,
        events: Arc<Events>,
    ) -> Result<Arc<Self>, Error> {
        tracing::info!(pod = id, vcpus = ?size.vcpus, memory_mib = ?size.memory_mib, "VM size");
        let mut sandbox = Sandbox::start_named(config, id, size).await?;
        // `capsa exec`, `exec --vm` and `agent-ctl` work on running pods.
        sandbox.update_record(|r| r.status = capsa_runtime::record::SandboxStatus::Running);
        let console = sandbox.record().console_log.clone();
        let watch = sandbox.watch(config);
        let pod = Arc::new(Self {
            id: id.into(),
            namespace: namespace.into(),
            agent: sandbox.agent().clone(),
            pid: sandbox.hypervisor_pid().unwrap_or(0),
            state_dir: sandbox.dir().path().to_path_buf(),
            sandbox: Mutex::new(Some(sandbox)),
            tasks: StdMutex::default(),
            events,
        });
        if let Some(watch) = watch {
            tokio::spawn(watch_vm(pod.clone(), watch));
        }
        tokio::spawn(watch_oom(pod.clone()));
        tokio::spawn(forward_console(pod.clone(), console));
        tracing::info!(pod = id, pid = pod.pid, "pod VM started");
        Ok(pod)
    }

    /// The pid containerd sees for every process of the pod: the VM's.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    pub fn task(&self, id: &str) -> Result<Arc<Task>, Error> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NoTask(id.into()))
    }

    /// Creates the container of task `id` in the VM: mounts containerd's
    /// rootfs into the share, shares the bind mounts' sources, rewrites
    /// the spec's paths to the guest's and creates the container.
    pub async fn create_task(
        &self,
        id: &str,
        bundle: &str,
        rootfs: &[RootfsMount],
        mut spec: Spec,
        init: Arc<Proc>,
    ) -> Result<Arc<Task>, Error> {
        if self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
        {
            return Err(Error::TaskExists(id.into()));
        }
        let mut guard = self.sandbox.lock().await;
        let sandbox = guard.as_mut().ok_or_else(|| Error::NoPod(id.into()))?;
        let (share, guest_root) = sandbox.container_share(id);
        let shared = share_container(id, bundle, rootfs, &mut spec, &share, &guest_root).await;
        let created = match shared {
            Ok(()) => sandbox
                .create_container_spec(id, &spec)
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            // Undo the mounts of the share (RemoveContainer of a container
            // the agent does not know only fails).
            let _ = sandbox.remove_container(id).await;
            return Err(e);
        }
        let task = Arc::new(Task {
            id: id.into(),
            bundle: bundle.into(),
            init,
            execs: StdMutex::default(),
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.into(), task.clone());
        Ok(task)
    }

    /// Starts a process (init or exec) and watches it until it exits.
    pub async fn start_process(
        self: &Arc<Self>,
        task: &Arc<Task>,
        proc: &Arc<Proc>,
    ) -> Result<(), Error> {
        let (stdio, interactive) = stdio::open(&task.id, &self.namespace, proc).await?;
        if proc.exec_id.is_empty() {
            self.agent.start_container(&task.id).await?;
        } else {
            let process = proc.spec.as_ref().ok_or_else(|| Error::Invalid {
                what: "exec",
                reason: "no process spec".into(),
            })?;
            let req = agent::ExecProcessRequest {
                container_id: task.id.clone(),
                exec_id: proc.exec_id.clone(),
                process: Some(convert::process_to_grpc(process)).into(),
                ..Default::default()
            };
            self.agent
                .raw()
                .exec_process(capsa_agent_client::until(Duration::from_secs(60)), &req)
                .await
                .map_err(|error| capsa_agent_client::Error::Rpc {
                    method: "ExecProcess",
                    error,
                })?;
        }
        proc.set_status(Status::RUNNING);
        let guest = GuestProcess {
            agent: self.agent.clone(),
            container_id: task.id.clone(),
            exec_id: if proc.exec_id.is_empty() {
                task.id.clone()
            } else {
                proc.exec_id.clone()
            },
        };
        let pumps = guest.pump(stdio, interactive, proc.stdio.terminal).await?;
        // TaskStart before any TaskExit of this process.
        if proc.exec_id.is_empty() {
            self.events.started(&task.id, self.pid).await;
        } else {
            self.events
                .exec_started(&task.id, &proc.exec_id, self.pid)
                .await;
        }
        let (pod, task, proc) = (self.clone(), task.clone(), proc.clone());
        tokio::spawn(async move {
            let status = guest
                .agent
                .wait_process(&guest.container_id, &guest.exec_id)
                .await;
            // Output first: containerd expects it complete at the exit.
            pumps.finish().await;
            let status = match status {
                Ok(code) => u32::try_from(code).unwrap_or(255),
                Err(e) => {
                    tracing::warn!(container = %task.id, exec = %proc.exec_id, error = %e, "WaitProcess failed: reported killed");
                    VM_DIED_STATUS
                }
            };
            pod.report_exit(&task, &proc, Exit::now(status)).await;
        });
        Ok(())
    }

    /// Publishes an exit, then records it (waking Wait), once.
    pub async fn report_exit(&self, task: &Task, proc: &Proc, exit: Exit) {
        if !proc.claim_exit() {
            return;
        }
        tracing::info!(container = %task.id, exec = %proc.exec_id, status = exit.status, "exited");
        self.events
            .exited(&task.id, &proc.exec_id, self.pid, &exit)
            .await;
        proc.set_exit(exit);
    }

    /// Removes task `id` from the VM and the share; returns whether it was
    /// the last task of the pod.
    pub async fn remove_task(&self, id: &str) -> Result<bool, Error> {
        let mut guard = self.sandbox.lock().await;
        if let Some(sandbox) = guard.as_mut() {
            if let Err(e) = sandbox.remove_container(id).await {
                tracing::warn!(container = id, error = %e, "container removal");
            }
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.remove(id);
        Ok(tasks.is_empty())
    }

    /// Kills the VM and reports every exit if its hypervisor is stopped
    /// or gone (no agent call); returns whether it was killed.
    pub async fn kill_if_hung(&self) -> bool {
        let why = match capsa_runtime::health::vm_state(self.pid) {
            VmState::Running => return false,
            VmState::Stopped => Death::Stopped,
            VmState::Gone => Death::Exited,
        };
        self.kill_vm(why).await;
        true
    }

    /// Checks at once that the VM can be talked to; if not (stopped,
    /// gone, its agent not answering), kills it and reports every exit.
    /// Returns whether it was killed.
    pub async fn kill_if_dead(&self) -> bool {
        match capsa_runtime::health::probe(self.pid, &self.agent).await {
            Some(why) => {
                self.kill_vm(why).await;
                true
            }
            None => false,
        }
    }

    /// Kills the dead VM and removes the pod's state, then reports every
    /// process still running exited with [`VM_DIED_STATUS`] (as containerd
    /// expects of a task whose VM died: TaskExit, Wait returns).
    pub async fn kill_vm(&self, why: Death) {
        if let Some(mut sandbox) = self.sandbox.lock().await.take() {
            sandbox.declare_dead(why);
            if let Err(e) = sandbox.destroy().await {
                tracing::error!(pod = %self.id, error = %e, "pod teardown");
            }
        }
        let tasks: Vec<Arc<Task>> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for task in tasks {
            let execs: Vec<Arc<Proc>> = task
                .execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            for proc in execs.iter().chain(std::iter::once(&task.init)) {
                self.report_exit(&task, proc, Exit::now(VM_DIED_STATUS))
                    .await;
            }
        }
    }

    /// Takes the VM down and removes the pod's state.
    pub async fn destroy(&self) {
        if let Some(sandbox) = self.sandbox.lock().await.take() {
            tracing::info!(pod = %self.id, "destroying the pod VM");
            if let Err(e) = sandbox.destroy().await {
                tracing::error!(pod = %self.id, error = %e, "pod teardown");
            }
        }
    }
}

/// Watches the VM: once it is dead (gone, stopped, or its agent fails
/// its health checks), it is killed and every process still running is
/// reported exited with [`VM_DIED_STATUS`].
async fn watch_vm(pod: Arc<Pod>, watch: Watch) {
    let gone = async {
        // The pod is destroyed when its last task goes: nothing to watch.
        while pod.sandbox.lock().await.is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        why = watch.dead() => pod.kill_vm(why).await,
        () = gone => {}
    }
}

/// Forwards the guest's console (kernel and agent log lines) to the shim's
/// log, and so to containerd's, each line tagged with the pod's id, until
/// the VM is gone.
async fn forward_console(pod: Arc<Pod>, path: PathBuf) {
    let id = pod.id.clone();
    let followed = capsa_runtime::console::follow(
        &path,
        |text| tracing::info!(pod = %id, "guest: {text}"),
        || {
            let pod = pod.clone();
            async move { pod.sandbox.lock().await.is_some() }
        },
    )
    .await;
    if let Err(e) = followed {
        tracing::warn!(pod = %pod.id, path = %path.display(), error = %e, "guest console log not forwarded");
    }
}

/// Relays the agent's OOM events (GetOOMEvent blocks until one comes)
/// as TaskOOM events, until the VM is gone.
async fn watch_oom(pod: Arc<Pod>) {
    let req = agent::GetOOMEventRequest::default();
    loop {
        let event = pod
            .agent
            .raw()
            .get_oom_event(capsa_agent_client::until(Duration::ZERO), &req)
            .await;
        match event {
            Ok(event) => {
                tracing::warn!(container = %event.container_id, "out of memory");
                pod.events.oom(&event.container_id).await;
            }
            Err(e) => {
                if pod.sandbox.lock().await.is_some() {
                    tracing::debug!(pod = %pod.id, error = %e, "GetOOMEvent; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                return;
            }
        }
    }
}

/// Mounts the container's rootfs at `<share>/rootfs` and its bind mounts'
/// sources at `<share>/mounts/<n>`, and points the spec at the guest's
/// paths. Host mounts are made only on host paths containerd gave (the
/// guest controls nothing on the host side).
async fn share_container(
    id: &str,
    bundle: &str,
    rootfs: &[RootfsMount],
    spec: &mut Spec,
    share: &Path,
    guest_root: &str,
) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    let host_root = share.join("rootfs");
    std::fs::create_dir_all(&host_root).map_err(io(&host_root))?;
    if rootfs.is_empty() {
        // No snapshot mounts: the bundle's own rootfs directory.
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let source = Path::new(bundle).join(root);
        capsa_runtime::mount::bind(&source, &host_root, false, "/")?;
    } else {
        for m in rootfs {
            // Host side of the share: what the guest makes there is never
            // a device or a set-id program for the host.
            let mut m = m.clone();
            m.options
                .extend(["nosuid".to_string(), "nodev".to_string()]);
            containerd_shim::asynchronous::util::mount_rootfs(&m, &host_root)
                .await
                .map_err(|source| Error::Rootfs {
                    id: id.into(),
                    source,
                })?;
        }
    }
    if let Some(root) = spec.root_mut() {
        root.set_path(PathBuf::from(guest_root));
    }
    default_path(spec);
    let guest_share = Path::new(guest_root)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mounts = spec.mounts().clone().unwrap_or_default();
    let mut out = Vec::with_capacity(mounts.len());
    for (n, m) in mounts.into_iter().enumerate() {
        out.push(share_mount(m, n, share, &guest_share)?);
    }
    spec.set_mounts(Some(out));
    Ok(())
}

/// runc looks commands up in a default PATH when the spec has none
/// (`ctr run --rootfs` gives none); libcontainer does not: add it.
fn default_path(spec: &mut Spec) {
    const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    if let Some(process) = spec.process_mut() {
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.into());
            process.set_env(Some(env));
        }
    }
}

/// Whether `m` is a bind mount (a host path), not a mount the guest makes.
fn is_bind(m: &Mount) -> bool {
    let options = m.options().as_deref().unwrap_or_default();
    m.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Refuses, before a VM boots for it, a spec whose bind mounts would share
/// a host system path (each source is checked again, race-free, when it
/// is shared). containerd's binds (`/etc/hosts`, `resolv.conf`, the
/// sandbox's `/dev/shm`) and guest mounts (`proc`, `sysfs`, `tmpfs`, ...)
/// pass.
pub fn check_bind_sources(spec: &Spec) -> Result<(), Error> {
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    let binds = mounts
        .iter()
        .filter(|m| is_bind(m) && m.destination() != Path::new("/dev/shm"));
    for m in binds {
        if let Some(source) = m.source() {
            capsa_runtime::mount::open(source, &m.destination().display().to_string())?;
        }
    }
    Ok(())
}

/// A bind mount's host source is bind-mounted into the share (read-only
/// if the mount is) and the spec's source becomes the guest's path;
/// `/dev/shm` becomes a tmpfs of the guest; other mounts are kept.
fn share_mount(m: Mount, n: usize, share: &Path, guest_share: &Path) -> Result<Mount, Error> {
    let options = m.options().clone().unwrap_or_default();
    if !is_bind(&m) {
        return Ok(m);
    }
    if m.destination() == Path::new("/dev/shm") {
        return MountBuilder::default()
            .destination("/dev/shm")
            .typ("tmpfs")
            .source("shm")
            .options(vec![
                "nosuid".into(),
                "noexec".into(),
                "nodev".into(),
                "mode=1777".into(),
            ])
            .build()
            .map_err(|e| Error::Invalid {
                what: "mount",
                reason: e.to_string(),
            });
    }
    let Some(source) = m.source().clone() else {
        return Ok(m);
    };
    let readonly = options.iter().any(|o| o == "ro");
    let target = share.join("mounts").join(n.to_string());
    let destination = m.destination().display().to_string();
    capsa_runtime::mount::share(&source, &target, readonly, &destination)?;
    let mut shared = m;
    shared.set_source(Some(guest_share.join("mounts").join(n.to_string())));
    tracing::debug!(source = %source.display(), target = %target.display(), readonly, "shared a bind mount");
    Ok(shared)
}
