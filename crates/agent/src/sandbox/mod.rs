//! The sandbox: what the agent holds for the host (storages, containers and
//! their processes) and the operations of the agent API, independent of
//! the wire format.

mod cgroup;
mod containers;
mod devices;
mod error;
mod exec;
mod io;
mod lifecycle;
mod oom;
mod pidns;
mod ps;
mod resources;
mod shared;
mod stats;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use libcontainer::container::Container as Handle;
use tokio::sync::{watch, Mutex};

use crate::container::hooks::AgentHooks;
use crate::container::namespaces::Namespaces;
use crate::process::Process;
use crate::reaper::Reaper;
use crate::storage::Mounted;

pub use containers::ContainerRequest;
pub use error::{ErrorKind, SandboxError};
pub use lifecycle::SandboxRequest;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created; its init waits for StartContainer.
    Created,
    /// Started.
    Running,
    /// Started, then frozen by PauseContainer.
    Paused,
}

/// One container of the sandbox.
pub struct Container {
    pub id: String,
    pub init: Arc<Process>,
    /// Processes added by ExecProcess, by exec id; `None` while one starts.
    execs: StdMutex<HashMap<String, Option<Arc<Process>>>>,
    /// The container's cgroup directory (under `/sys/fs/cgroup`).
    cgroup: PathBuf,
    handle: StdMutex<Handle>,
    /// The namespaces the container was created with: execs join these.
    namespaces: Namespaces,
    state: StdMutex<ContainerState>,
    storages: Vec<Mounted>,
    /// Mount points of the shared storages it uses; taken when released.
    shared: StdMutex<Vec<String>>,
    /// The spec's hooks the agent runs itself.
    hooks: AgentHooks,
    /// Watches the cgroup for OOM kills while the container exists.
    _oom: oom::Watch,
}

impl Container {
    fn state(&self) -> ContainerState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct State {
    created: bool,
    /// CreateSandbox asked for one PID namespace shared by the containers.
    sandbox_pidns: bool,
    /// The container whose PID namespace is the sandbox's (the first one).
    pidns_holder: Option<String>,
    storages: Vec<Mounted>,
    /// The sandbox's resolv.conf, when CreateSandbox gave DNS lines.
    dns_file: Option<std::path::PathBuf>,
    containers: HashMap<String, Arc<Container>>,
    /// Ids of containers being created or removed.
    busy: HashSet<String>,
}

/// The agent's sandbox.
pub struct Sandbox {
    reaper: Reaper,
    /// Whether the agent is PID 1 (else it must not touch the system: no
    /// hostname, no modules).
    init: bool,
    state: Mutex<State>,
    /// Storages shared by containers (held while one is mounted).
    shared: Mutex<shared::SharedStorages>,
    shutdown: watch::Sender<bool>,
    oom: oom::Events,
}

impl Sandbox {
    pub fn new(reaper: Reaper, init: bool) -> Self {
        Self {
            reaper,
            init,
            state: Mutex::default(),
            shared: Mutex::default(),
            shutdown: watch::channel(false).0,
            oom: oom::Events::default(),
        }
    }

    /// Whether the agent is PID 1 (and may change the guest's network).
    pub fn is_init(&self) -> bool {
        self.init
    }

    /// Resolves when DestroySandbox asked the agent to stop.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// How many containers the sandbox holds (for GetMetrics).
    pub async fn container_count(&self) -> usize {
        self.state.lock().await.containers.len()
    }

    /// The container `id`.
    pub async fn container(&self, id: &str) -> Result<Arc<Container>, SandboxError> {
        crate::validate::container_id(id)?;
        let state = self.state.lock().await;
        state
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NoContainer(id.to_string()))
    }

    /// The process `exec_id` of container `container_id`. The init process
    /// answers to an empty exec id, to the container id and to the exec id
    /// given at creation.
    pub async fn process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<Arc<Process>, SandboxError> {
        let container = self.container(container_id).await?;
        if !exec_id.is_empty() {
            crate::validate::exec_id(exec_id)?;
        }
        if exec_id.is_empty() || exec_id == container.id || exec_id == container.init.exec_id {
            return Ok(container.init.clone());
        }
        let execs = container
            .execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        execs
            .get(exec_id)
            .cloned()
            .flatten()
            .ok_or_else(|| SandboxError::NoProcess {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
            })
    }
}
