//! containerd's Task API over a pod.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::api::{CheckpointTaskRequest, Empty};
use containerd_shim::protos::events::task::TaskIO;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use oci_spec::runtime::Spec;
use tokio::sync::Mutex;
use tracing::Instrument;

use capsa_runtime::request::{self, Role, SandboxRequest};
use capsa_runtime::resource::cgroup::CGROUP_RECORD_FILE;

use crate::error::Error;
use crate::events::Events;
use crate::pod::{Pod, Task as PodTask};
use crate::process::{Exit, Proc};
use crate::stdio::StdioPaths;

/// Exit status of a process whose start failed.
const START_FAILED_STATUS: u32 = 255;

/// The task service of one shim (one pod).
pub struct Service {
    pub namespace: String,
    pub events: Arc<Events>,
    pub exit: Arc<ExitSignal>,
    pod: Mutex<Option<Arc<Pod>>>,
    /// The socket file the shim serves on, removed by `Shutdown`.
    socket: Option<PathBuf>,
}

impl Service {
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> Self {
        Self {
            namespace: namespace.into(),
            events: Arc::new(events),
            exit,
            pod: Mutex::new(None),
            socket: None,
        }
    }

    /// The shim serves on `address` (`unix:///run/containerd/s/<hash>`):
    /// `Shutdown` removes its file. The `containerd-shim` crate removes it
    /// only after the server stopped, at the path in the bundle's
    /// `address` file, and containerd deletes the bundle as soon as the
    /// shim's connection closes: that race left one socket file per pod
    /// in `/run/containerd/s` (found by `make soak`). containerd's own
    /// runc shim removes it in `Shutdown` too.
    pub fn with_socket(mut self, address: &str) -> Self {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        self.socket = (!path.is_empty()).then(|| PathBuf::from(path));
        self
    }

    async fn pod(&self, id: &str) -> Result<Arc<Pod>, Error> {
        self.pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| Error::NoTask(id.into()))
    }

    async fn task(&self, id: &str) -> Result<(Arc<Pod>, Arc<PodTask>), Error> {
        let pod = self.pod(id).await?;
        let task = pod.task(id)?;
        Ok((pod, task))
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, Error> {
        let bundle = Path::new(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).map_err(|source| Error::Spec {
            bundle: req.bundle.clone(),
            source,
        })?;
        let rootfs = crate::pod::rootfs(&req.bundle, &req.rootfs, &spec);
        capsa_runtime::resource::volume::check_sources(&rootfs, &spec)?;
        let role = request::annotations(&spec).role;
        let pod_id = role.pod_id(&req.id).to_string();
        tracing::info!(container = %req.id, pod = %pod_id, ?role, "create");
        let pod = {
            let mut slot = self.pod.lock().await;
            match (&*slot, &role) {
                (Some(pod), _) if pod.id == pod_id => pod.clone(),
                (Some(pod), _) => {
                    return Err(Error::OtherPod {
                        pod: pod_id,
                        served: pod.id.clone(),
                    })
                }
                (None, Role::Container { .. }) => {
                    return Err(Error::OtherPod {
                        pod: pod_id,
                        served: String::new(),
                    })
                }
                (None, _) => {
                    let explicit = crate::options::config_path(req.options.as_ref());
                    let (config, source) = capsa_runtime::load_config(explicit.as_deref())?;
                    tracing::info!(%source, "configuration");
                    // The pod's io.katacontainers.config.* annotations.
                    let config = apply_pod_annotations(&config, &spec)?;
                    capsa_runtime::resource::volume::check_shared_fs(&rootfs, &spec, &config)?;
                    let mut request = SandboxRequest::parse(&config, &pod_id, &spec)?;
                    if let Some(cgroup) = request.cgroup.as_mut() {
                        cgroup.record = Some(bundle.join(CGROUP_RECORD_FILE));
                    }
                    // Where the pod's state will be, recorded before
                    // anything is made: a shim killed at any point of the
                    // boot leaves state that `delete` finds.
                    write_marker(bundle, &config.runtime.state_dir.join(&pod_id));
                    let started = Pod::start(
                        &pod_id,
                        &self.namespace,
                        &config,
                        &request,
                        self.events.clone(),
                    )
                    .await;
                    let pod = match started {
                        Ok(pod) => pod,
                        Err(e) => {
                            // A failed start removed what it made; the
                            // directory may be another pod's (an id in use
                            // in another namespace): `delete` must not
                            // touch it.
                            let _ = std::fs::remove_file(bundle.join(crate::shim::POD_STATE_FILE));
                            return Err(e);
                        }
                    };
                    capsa_runtime::metrics::CriPod::record(
                        &pod.state_dir,
                        spec.annotations().as_ref(),
                    ); // metrics hook
                    *slot = Some(pod.clone());
                    pod
                }
            }
        };
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        // For the `delete` action, should this shim die.
        write_marker(bundle, &pod.state_dir);
        let init = Arc::new(Proc::new("", stdio, None));
        let created = pod
            .create_task(&req.id, &req.bundle, &rootfs, spec, init)
            .instrument(pod.span.clone())
            .await;
        if let Err(e) = created {
            if pod
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                pod.destroy().await;
                *self.pod.lock().await = None;
            }
            return Err(e);
        }
        let io = TaskIO {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
            ..Default::default()
        };
        self.events
            .created(&req.id, &req.bundle, io, pod.pid())
            .await;
        Ok(CreateTaskResponse {
            pid: pod.pid(),
            ..Default::default()
        })
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse, Error> {
        let (pod, task) = self.task(&req.id).await?;
        let proc = task.process(&req.exec_id)?;
        if proc.status() != Status::CREATED {
            return Err(Error::Running(req.exec_id));
        }
        if let Err(e) = pod.start_process(&task, &proc).await {
            // Nothing will wait for this process: its exit is now, so
            // that Wait, Kill and Delete (containerd's cleanup) end.
            pod.report_exit(&task, &proc, Exit::now(START_FAILED_STATUS))
                .await;
            return Err(e);
        }
        Ok(StartResponse {
            pid: pod.pid(),
            ..Default::default()
        })
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse, Error> {
        let (pod, task) = self.task(&req.id).await?;
        let proc = task.process(&req.exec_id)?;
        let exit = match (proc.status(), proc.exit()) {
            (_, Some(exit)) => exit,
            // Created but never started: nothing runs, nothing to wait for.
            (Status::CREATED, None) => {
                pod.report_exit(&task, &proc, Exit::now(0)).await;
                proc.exit().unwrap_or_else(|| Exit::now(0))
            }
            _ => return Err(Error::Running(req.id)),
        };
        if !req.exec_id.is_empty() {
            task.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
        } else {
            let last = pod.remove_task(&req.id).await?;
            self.events.deleted(&req.id, pod.pid(), &exit).await;
            // The pod's VM goes with its sandbox container or its last task.
            if last || req.id == pod.id {
                pod.destroy().await;
            }
        }
        Ok(DeleteResponse {
            pid: pod.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<(), Error> {
        let (_pod, task) = self.task(&req.id).await?;
        let spec = req.spec.as_ref().ok_or_else(|| Error::Invalid {
            what: "exec request",
            reason: "no process spec".into(),
        })?;
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&spec.value).map_err(|e| Error::Invalid {
                what: "exec process spec",
                reason: e.to_string(),
            })?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = task.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(Error::ExecExists {
                    id: req.id,
                    exec_id: req.exec_id,
                });
            }
            let proc = Arc::new(Proc::new(&req.exec_id, stdio, Some(process)));
            execs.insert(req.exec_id.clone(), proc);
        }
        self.events.exec_added(&req.id, &req.exec_id).await;
        Ok(())
    }

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse, Error> {
        let (pod, task) = self.task(&req.id).await?;
        let proc = task.process(&req.exec_id)?;
        let exit = proc.exit();
        Ok(StateResponse {
            id: req.id,
            bundle: task.bundle.clone(),
            pid: pod.pid(),
            status: proc.status().into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: KillRequest) -> Result<(), Error> {
        let (pod, task) = self.task(&req.id).await?;
        let proc = task.process(&req.exec_id)?;
        if proc.exit().is_some() {
            return Err(Error::Finished(req.id));
        }
        // The agent's API, as Kata's: an empty exec id signals every
        // process of the container (`all`, as Kata's runtime sends it
        // whatever the exec id), the container id its init alone.
        let exec_id = if req.all {
            String::new()
        } else if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        tracing::info!(container = %req.id, exec = %exec_id, signal = req.signal, all = req.all, "kill");
        // A VM that is stopped or gone is not asked anything: it is killed
        // and every exit reported, which is what a kill asks for.
        if pod.kill_if_hung().await {
            return Ok(());
        }
        let signalled = pod
            .agent()
            .signal_process(&req.id, &exec_id, req.signal)
            .await;
        // No answer at all (rather than a refusal): the same, once a
        // health check confirms it.
        if signalled.as_ref().is_err_and(|e| e.code().is_none()) && pod.kill_if_dead().await {
            return Ok(());
        }
        if proc.status() == Status::CREATED {
            // Never started: no task waits for it, so its end is reported
            // here (an exec not started yet has no guest process at all).
            pod.report_exit(&task, &proc, Exit::now(128 + req.signal))
                .await;
            return Ok(());
        }
        signalled?;
        Ok(())
    }

    async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse, Error> {
        let (_pod, task) = self.task(&req.id).await?;
        let proc = task.process(&req.exec_id)?;
        let exit = proc.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse, Error> {
        let (pod, _task) = self.task(&req.id).await?;
        let list = pod.agent().list_processes(&req.id, "json").await?;
        let pids: Vec<u32> = serde_json::from_slice(&list).unwrap_or_default();
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<(), Error> {
        let (pod, task) = self.task(id).await?;
        if pause {
            pod.agent().pause(id).await?;
        } else {
            pod.agent().resume(id).await?;
        }
        if pause {
            task.init.set_status(Status::PAUSED);
            self.events.paused(id).await;
        } else {
            task.init.set_status(Status::RUNNING);
            self.events.resumed(id).await;
        }
        Ok(())
    }

    async fn do_resize(&self, req: ResizePtyRequest) -> Result<(), Error> {
        let (pod, task) = self.task(&req.id).await?;
        task.process(&req.exec_id)?;
        let exec_id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id
        };
        pod.agent()
            .tty_win_resize(&req.id, &exec_id, req.height, req.width)
            .await?;
        Ok(())
    }

    async fn do_update(&self, req: UpdateTaskRequest) -> Result<(), Error> {
        let (pod, _task) = self.task(&req.id).await?;
        let any = req.resources.as_ref().ok_or_else(|| Error::Invalid {
            what: "update",
            reason: "no resources".into(),
        })?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::Invalid {
                what: "resources",
                reason: e.to_string(),
            })?;
        pod.update_task(&req.id, &resources).await
    }

    async fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse, Error> {
        let (pod, _task) = self.task(&req.id).await?;
        let reply = pod.agent().stats_container(&req.id).await?;
        Ok(StatsResponse {
            stats: Some(crate::stats::to_metrics(
                &reply,
                crate::stats::Format::of_host(),
            )?)
            .into(),
            ..Default::default()
        })
    }
}

/// Records in `bundle` the pod state directory its task lives in, for
/// the `delete` action after the shim died.
fn write_marker(bundle: &Path, state_dir: &Path) {
    let marker = bundle.join(crate::shim::POD_STATE_FILE);
    if let Err(e) = std::fs::write(&marker, state_dir.display().to_string()) {
        tracing::warn!(path = %marker.display(), error = %e, "pod state marker not written");
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        Ok(self.do_create(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        Ok(self.do_start(req).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.do_delete(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(self.do_pids(req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.do_pause(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.do_pause(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(Error::Unsupported("checkpointing a task").into())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.do_kill(req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.do_exec(req).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.do_resize(req).await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let (_pod, task) = self.task(&req.id).await?;
        let proc = task.process(&req.exec_id)?;
        if req.stdin {
            proc.close_stdin.notify_one();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.do_update(req).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(self.do_wait(req).await?)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(self.do_stats(req).await?)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = match self.pod(&req.id).await {
            Ok(pod) => pod.pid(),
            Err(_) => 0,
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.do_state(req).await?)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let pod = self.pod.lock().await.clone();
        if let Some(pod) = pod {
            if !pod
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return Ok(Empty::new());
            }
            pod.destroy().await;
        }
        tracing::info!("shutdown: no task left");
        if let Some(socket) = &self.socket {
            // Connections already made stay open: this reply still goes out.
            if let Err(e) = std::fs::remove_file(socket) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(socket = %socket.display(), error = %e, "shim socket not removed");
                }
            }
        }
        self.exit.signal();
        Ok(Empty::new())
    }
}

/// annotations (issue 25): `config` adjusted by the spec's
/// `io.katacontainers.config.*` annotations; an annotation that is not
/// enabled, not supported or bad fails the create before anything starts.
fn apply_pod_annotations(
    config: &capsa_config::Config,
    spec: &Spec,
) -> Result<capsa_config::Config, Error> {
    let none = std::collections::HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&none);
    let applied =
        capsa_config::apply_annotations(config, annotations).map_err(capsa_config::Error::from)?;
    Ok(applied.config)
}
