//! A pod: one VM (a capsa sandbox) and the tasks created in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_protocols::convert;
use capsa_runtime::health::{Death, VmState, Watch};
use capsa_runtime::resource::{HostMount, Rootfs};
use capsa_runtime::{GuestProcess, Sandbox, SandboxRequest};
use containerd_shim::protos::api::Mount as RootfsMount;
use containerd_shim::protos::types::task::Status;
use oci_spec::runtime::Spec;
use tokio::sync::Mutex;
use tracing::{Instrument, Span};

use crate::error::Error;
use crate::events::Events;
use crate::process::{Exit, Proc};
use crate::stdio;
use crate::timeline::PodTimeline;

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
    /// The pod's root step of the timeline (`Span::none()` without one):
    /// the parent of its containers' steps.
    pub span: Span,
    /// Written once the pod is down (`runtime.timeline_dir`).
    timeline: StdMutex<Option<PodTimeline>>,
}

impl Pod {
    /// Boots the pod's VM.
    pub async fn start(
        id: &str,
        namespace: &str,
        config: &capsa_config::Config,
        request: &SandboxRequest,
        events: Arc<Events>,
    ) -> Result<Arc<Self>, Error> {
        let (size, net) = (&request.size, &request.network);
        tracing::info!(pod = id, vcpus = ?size.vcpus, memory_mib = ?size.memory_mib, netns = ?net.netns, "VM size and network");
        let timeline = PodTimeline::start(config, id);
        let span = timeline
            .as_ref()
            .map_or_else(Span::none, |t| t.span().clone());
        let started = Sandbox::start_request(config, id, request)
            .instrument(span.clone())
            .await;
        let mut sandbox = match started {
            Ok(sandbox) => sandbox,
            Err(e) => {
                drop(span);
                if let Some(timeline) = timeline {
                    timeline.finish();
                }
                return Err(e.into());
            }
        };
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
            span,
            timeline: StdMutex::new(timeline),
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

    /// Creates the container of task `id` in the VM: its rootfs and
    /// mounts are attached (shared or hot-plugged) by the runtime's
    /// resource layer, which points the spec at the guest's paths.
    pub async fn create_task(
        &self,
        id: &str,
        bundle: &str,
        rootfs: &Rootfs,
        spec: Spec,
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
        if id != self.id {
            // A container joins: links that appeared in the pod's netns
            // since the VM started (another CNI attachment) get a NIC.
            match sandbox.rescan_network().await {
                Ok(new) if !new.is_empty() => {
                    tracing::info!(pod = %self.id, links = ?new, "NICs hot-plugged for new links")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pod = %self.id, error = %capsa_runtime::error_chain(&e), "rescan of the pod's network")
                }
            }
        }
        // On error, what was attached is detached again.
        sandbox.create_container_from(id, rootfs, spec).await?;
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

    /// Changes the limits of task `id`'s container; the VM grows first
    /// or shrinks after, with elastic sizing.
    pub async fn update_task(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), Error> {
        let mut guard = self.sandbox.lock().await;
        let sandbox = guard.as_mut().ok_or_else(|| Error::NoPod(id.into()))?;
        sandbox.update_container(id, resources).await?;
        Ok(())
    }

    /// Starts a process (init or exec) and watches it until it exits.
    pub async fn start_process(
        self: &Arc<Self>,
        task: &Arc<Task>,
        proc: &Arc<Proc>,
    ) -> Result<(), Error> {
        let (stdio, interactive) = stdio::open(&task.id, &self.namespace, proc).await?;
        let workload = if proc.exec_id.is_empty() {
            let step = tracing::info_span!(target: "capsa::timeline", parent: &self.span, "container start");
            self.agent
                .start_container(&task.id)
                .instrument(step)
                .await?;
            tracing::info_span!(target: "capsa::timeline", parent: &self.span, "workload")
        } else {
            Span::none()
        };
        if !proc.exec_id.is_empty() {
            let process = proc.spec.as_ref().ok_or_else(|| Error::Invalid {
                what: "exec",
                reason: "no process spec".into(),
            })?;
            let process = convert::process_to_grpc(process);
            self.agent
                .exec_process(&task.id, &proc.exec_id, process)
                .await?;
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
        }.instrument(workload));
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
            let destroyed = sandbox.destroy().instrument(self.span.clone()).await;
            if let Err(e) = destroyed {
                tracing::error!(pod = %self.id, error = %e, "pod teardown");
            }
        }
        let timeline = self
            .timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(timeline) = timeline {
            timeline.finish();
        }
        // The pod is down: the shim exits soon, its spans go now.
        let _ = tokio::task::spawn_blocking(capsa_runtime::otel::flush).await;
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
    loop {
        match pod.agent.get_oom_event().await {
            Ok(container_id) => {
                tracing::warn!(container = %container_id, "out of memory");
                pod.events.oom(&container_id).await;
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

/// The rootfs containerd gives: its snapshot's mounts, or (none) the
/// bundle's own rootfs directory.
pub fn rootfs(bundle: &str, mounts: &[RootfsMount], spec: &Spec) -> Rootfs {
    if mounts.is_empty() {
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        return Rootfs::Dir(Path::new(bundle).join(root));
    }
    Rootfs::Mounts(
        mounts
            .iter()
            .map(|m| HostMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect(),
    )
}
