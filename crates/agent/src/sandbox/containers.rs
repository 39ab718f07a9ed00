//! Containers and their processes: create, start, signal, wait, remove.

use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

/// How long an exited exec process stays readable for its output.
const EXEC_DRAIN_WAIT: Duration = Duration::from_secs(30);

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::lifecycle::{mount_all, unmount_all};
use super::{cgroup, oom, pidns, Container, ContainerState, Sandbox, SandboxError};
use crate::container::hooks::AgentHooks;
use crate::container::{self, spec};
use crate::device::spec::DeviceRequest;
use crate::passfd;
use crate::process::Process;
use crate::storage::{Mounted, StorageSpec};
use crate::validate;

/// What CreateContainer asks for.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    pub container_id: String,
    /// The init process's exec id; the container id when empty.
    pub exec_id: String,
    pub spec: Spec,
    pub storages: Vec<StorageSpec>,
    /// Storages shared with other containers (`Storage.shared`).
    pub shared_storages: Vec<StorageSpec>,
    /// Join the sandbox's PID namespace (CreateContainer's `sandbox_pidns`).
    pub sandbox_pidns: bool,
    /// Host ports of passfd streams for the init's stdio.
    pub io: passfd::Ports,
    /// Hot-plugged devices for the spec's `linux.devices`.
    pub devices: Vec<DeviceRequest>,
}

impl Sandbox {
    /// Creates a container; its init process waits for StartContainer.
    pub async fn create_container(&self, req: ContainerRequest) -> Result<(), SandboxError> {
        let id = req.container_id.clone();
        validate::container_id(&id)?;
        if !req.exec_id.is_empty() {
            validate::exec_id(&req.exec_id)?;
        }
        spec::check(&req.spec)?;
        // Claimed first, as Kata's agent: on any error below they close.
        let streams = passfd::claim(req.io).await?;
        self.reserve(&id, true).await?;
        let result = self.create_reserved(req).await;
        let mut state = self.state.lock().await;
        state.busy.remove(&id);
        let container = result?;
        passfd::attach(&container.init, streams);
        let holder_alive = state
            .pidns_holder
            .as_ref()
            .is_some_and(|h| state.containers.contains_key(h));
        if !holder_alive {
            state.pidns_holder = Some(id.clone());
        }
        state.containers.insert(id, Arc::new(container));
        Ok(())
    }

    /// Marks `id` busy; `new` says whether it must not exist yet or must.
    async fn reserve(&self, id: &str, new: bool) -> Result<(), SandboxError> {
        let mut state = self.state.lock().await;
        if state.busy.contains(id) {
            return Err(SandboxError::ContainerBusy(id.to_string()));
        }
        match (state.containers.contains_key(id), new) {
            (true, true) => return Err(SandboxError::ContainerExists(id.to_string())),
            (false, false) => return Err(SandboxError::NoContainer(id.to_string())),
            _ => {}
        }
        state.busy.insert(id.to_string());
        Ok(())
    }

    async fn create_reserved(&self, req: ContainerRequest) -> Result<Container, SandboxError> {
        let id = req.container_id;
        let exec_id = if req.exec_id.is_empty() {
            id.clone()
        } else {
            req.exec_id
        };
        // Devices first: nothing to undo when one does not come.
        let mut spec = req.spec;
        let device_notes = super::devices::apply(&mut spec, req.devices).await?;
        let storages = req.storages;
        let storages = tokio::task::spawn_blocking(move || mount_all(&storages)).await??;
        let (shared, shared_roots) = match self.acquire_shared(&req.shared_storages).await {
            Ok(s) => s,
            Err(e) => {
                unmount_all(&storages);
                return Err(e);
            }
        };
        let undo = |storages: Vec<Mounted>, shared: Vec<String>| async move {
            unmount_all(&storages);
            self.release_shared(&shared).await;
        };

        let omitted = pidns::omits_pid_namespace(&spec);
        // Bind mounts may take their source from the storages: the
        // sandbox's and this container's.
        let mut bind_roots: Vec<_> = {
            let state = self.state.lock().await;
            // The sandbox's DNS file replaces the spec's resolv.conf.
            if let Some(file) = &state.dns_file {
                if crate::network::dns::use_sandbox_dns(&mut spec, file) {
                    bind_roots_dns(file)
                } else {
                    Vec::new()
                }
            } else {
                Vec::new()
            }
            .into_iter()
            .chain(state.storages.iter().map(|m| m.mount_point.clone()))
            .collect()
        };
        bind_roots.extend(storages.iter().map(|m| m.mount_point.clone()));
        bind_roots.extend(shared_roots);
        let notes = spec::adapt(&mut spec, &id, &bind_roots).and_then(|mut notes| {
            notes.extend(spec::apply_network_sysctls(&mut spec)?);
            Ok(notes)
        });
        let notes = match notes {
            Ok(notes) => notes,
            Err(e) => {
                undo(storages, shared).await;
                return Err(e.into());
            }
        };
        let hooks = AgentHooks::take(&mut spec, &id, container::bundle_dir(&id));
        for note in device_notes.into_iter().chain(notes) {
            tracing::info!(container = %id, "spec adapted: {note}");
        }
        if let Some(pid) = self.shared_pidns(&id, req.sandbox_pidns, omitted).await {
            pidns::join(&mut spec, pid);
            tracing::info!(container = %id, pid, "joining the sandbox's PID namespace");
        }
        let mut cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_else(|| spec::cgroup_path(None, &id));
        // Deleting a container kills what is left in its cgroup and removes
        // it: containers of one pod whose specs name the same cgroup (as
        // `ctr oci spec`'s `/<namespace>` does for all) would kill each other.
        // A later one gets a cgroup of its own.
        let sharing = {
            let dir = cgroup::dir(&cgroup_path);
            let state = self.state.lock().await;
            let other = state.containers.values().find(|c| c.cgroup == dir);
            other.map(|c| c.id.clone())
        };
        if let Some(other) = sharing {
            let own = spec::cgroup_path(None, &id);
            tracing::info!(
                container = %id,
                %other,
                "spec adapted: cgroups path {} is container {other}'s: set to {}",
                cgroup_path.display(),
                own.display()
            );
            if let Some(linux) = spec.linux_mut() {
                linux.set_cgroups_path(Some(own.clone()));
            }
            cgroup_path = own;
        }

        let reaper = self.reaper.clone();
        let cid = id.clone();
        let created =
            tokio::task::spawn_blocking(move || container::create(&cid, &spec, &reaper)).await?;
        let mut created = match created {
            Ok(created) => created,
            Err(e) => {
                undo(storages, shared).await;
                return Err(SandboxError::Container(id, Box::new(e)));
            }
        };
        tracing::info!(container = %id, pid = created.pid, "container created");
        if let Err(e) = hooks.created(created.pid, &self.reaper).await {
            // OCI: a failed createRuntime hook stops and deletes the container.
            let _ = kill(Pid::from_raw(created.pid), Signal::SIGKILL);
            let deleted = tokio::task::spawn_blocking(move || {
                let deleted = container::delete(&mut created.handle);
                (created, deleted)
            })
            .await;
            if let Ok((created, Err(d))) = &deleted {
                let error = crate::error::chain(d);
                tracing::warn!(container = %id, pid = created.pid, %error, "cannot delete after a failed hook");
            }
            undo(storages, shared).await;
            return Err(SandboxError::Hook(id, e));
        }
        let cgroup = cgroup::dir(&cgroup_path);
        Ok(Container {
            _oom: oom::watch(&id, cgroup.clone(), self.oom.sender()),
            cgroup,
            execs: StdMutex::default(),
            init: Arc::new(Process {
                exec_id,
                pid: created.pid,
                exit: created.exit,
                stdio: created.stdio,
            }),
            id,
            handle: StdMutex::new(created.handle),
            namespaces: created.namespaces,
            state: StdMutex::new(ContainerState::Created),
            storages,
            shared: StdMutex::new(shared),
            hooks,
        })
    }

    /// Starts the container's init process (it execs the workload).
    pub async fn start_container(&self, id: &str) -> Result<(), SandboxError> {
        let container = self.container(id).await?;
        {
            let mut state = container
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *state != ContainerState::Created {
                return Err(SandboxError::AlreadyStarted(id.to_string()));
            }
            if container.init.status().is_some() {
                return Err(SandboxError::Exited {
                    container_id: id.to_string(),
                    exec_id: container.init.exec_id.clone(),
                });
            }
            *state = ContainerState::Running;
        }
        let c = container.clone();
        tokio::task::spawn_blocking(move || {
            let mut handle = c.handle.lock().unwrap_or_else(PoisonError::into_inner);
            container::start(&mut handle)
        })
        .await?
        .map_err(|e| SandboxError::Container(id.to_string(), Box::new(e)))?;
        tracing::info!(container = %id, "container started");
        container
            .hooks
            .started(container.init.pid, &self.reaper)
            .await;
        Ok(())
    }

    /// Kills the container (if still running), waits at most `timeout` for
    /// its init to exit (no limit when zero), then removes it.
    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        let container = self.container(id).await?;
        self.reserve(id, false).await?;
        let result = self.teardown(&container, timeout).await;
        let mut state = self.state.lock().await;
        state.busy.remove(id);
        if result.is_ok() {
            state.containers.remove(id);
            if state.pidns_holder.as_deref() == Some(id) {
                state.pidns_holder = None;
            }
            tracing::info!(container = %id, "container removed");
        }
        result
    }

    /// Kills, waits, deletes and unmounts.
    pub(super) async fn teardown(
        &self,
        container: &Arc<Container>,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        let id = container.id.clone();
        let init = &container.init;
        if init.status().is_none() {
            // The init is PID 1 of the container's pid namespace: the
            // kernel kills every other process of the container with it.
            match kill(Pid::from_raw(init.pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(SandboxError::Kill(init.pid, e)),
            }
        }
        let status = if timeout.is_zero() {
            init.exit.wait().await
        } else {
            tokio::time::timeout(timeout, init.exit.wait())
                .await
                .map_err(|_| SandboxError::StopTimeout(id.clone(), timeout))?
        };
        tracing::debug!(container = %id, status, "init exited");
        let c = container.clone();
        tokio::task::spawn_blocking(move || {
            let mut handle = c.handle.lock().unwrap_or_else(PoisonError::into_inner);
            let deleted = container::delete(&mut handle);
            unmount_all(&c.storages);
            deleted
        })
        .await?
        .map_err(|e| SandboxError::Container(id, Box::new(e)))?;
        let shared = std::mem::take(
            &mut *container
                .shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.release_shared(&shared).await;
        container.hooks.stopped(&self.reaper).await;
        Ok(())
    }

    /// Sends signal `signal` to a process. Like Kata, SIGTERM becomes
    /// SIGKILL for a container's init that does not catch SIGTERM (as PID 1
    /// of its namespace it would ignore it). As in Kata's API, an empty
    /// exec id means every process of the container (the converted signal
    /// goes to all of them); the container id names the init alone.
    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<(), SandboxError> {
        let process = self.process(container_id, exec_id).await?;
        let container = self.container(container_id).await?;
        let mut sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or(SandboxError::Signal(signal))?;
        let running = process.status().is_none();
        let is_init = Arc::ptr_eq(&process, &container.init);
        if running && is_init && sig == Signal::SIGTERM && !process.catches(Signal::SIGTERM) {
            tracing::info!(
                container = container_id,
                "SIGTERM not caught by init: SIGKILL instead"
            );
            sig = Signal::SIGKILL;
        }
        if exec_id.is_empty() {
            return signal_all(container, sig).await;
        }
        let exited = || SandboxError::Exited {
            container_id: container_id.to_string(),
            exec_id: process.exec_id.clone(),
        };
        if !running {
            return Err(exited());
        }
        tracing::info!(container = container_id, pid = process.pid, signal = %sig, "signal");
        match kill(Pid::from_raw(process.pid), sig) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(exited()),
            Err(e) => Err(SandboxError::Kill(process.pid, e)),
        }
    }

    /// Waits for a process to exit; its exit code, or 128+N if killed by
    /// signal N.
    pub async fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<i32, SandboxError> {
        let process: Arc<Process> = self.process(container_id, exec_id).await?;
        let status = process.exit.wait().await;
        // As Kata's agent: an exec process is forgotten once waited for,
        // but only once its output has been read to the end (bounded): a
        // host whose next ReadStdout comes after this answer would
        // otherwise find no process and lose the rest of the output.
        let container = self.container(container_id).await?;
        if !Arc::ptr_eq(&process, &container.init) {
            tokio::spawn(async move {
                if !process.stdio.wait_drained(EXEC_DRAIN_WAIT).await {
                    tracing::debug!(exec = %process.exec_id, "exec output not read to the end; forgotten anyway");
                }
                let mut execs = container
                    .execs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let same = execs
                    .get(&process.exec_id)
                    .is_some_and(|p| p.as_ref().is_some_and(|p| Arc::ptr_eq(p, &process)));
                if same {
                    execs.remove(&process.exec_id);
                }
            });
        }
        Ok(status)
    }
}

/// Signals every process of container `c` (SignalProcess with an empty
/// exec id: `ctr task kill --all`), the init first. The cgroup is frozen
/// meanwhile, so that none forks past the signal, unless the container is
/// paused already; `cgroup.freeze` is written directly, leaving
/// libcontainer's record of the container's status alone. The container's
/// handle is held throughout: a PauseContainer or ResumeContainer waits.
async fn signal_all(c: Arc<Container>, sig: Signal) -> Result<(), SandboxError> {
    let id = c.id.clone();
    let signalled = tokio::task::spawn_blocking(move || {
        let _handle = c.handle.lock().unwrap_or_else(PoisonError::into_inner);
        let frozen = c.state() == ContainerState::Running && cgroup::freeze(&c.cgroup);
        let result = cgroup::pids(&c.cgroup)
            .map_err(|e| SandboxError::Cgroup(c.id.clone(), e))
            .and_then(|mut pids| {
                pids.sort_by_key(|&p| p != c.init.pid);
                for &pid in &pids {
                    match kill(Pid::from_raw(pid), sig) {
                        Ok(()) | Err(Errno::ESRCH) => {}
                        Err(e) => return Err(SandboxError::Kill(pid, e)),
                    }
                }
                Ok(pids.len())
            });
        if frozen {
            if let Err(e) = cgroup::write(&c.cgroup, "cgroup.freeze", "0") {
                tracing::error!(container = %c.id, error = %e, "cannot thaw after signalling every process");
            }
        }
        result
    })
    .await??;
    tracing::info!(container = %id, signal = %sig, processes = signalled, "signalled every process");
    Ok(())
}

/// The directory of the sandbox's DNS file, where bind mounts may take it.
fn bind_roots_dns(file: &std::path::Path) -> Vec<std::path::PathBuf> {
    file.parent().map(|d| d.to_path_buf()).into_iter().collect()
}
