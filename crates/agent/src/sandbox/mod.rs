//! The sandbox: what the agent holds for the host (storages, containers and
//! their processes) and the operations of the agent API, independent of
//! the wire format.

mod containers;
mod error;
mod io;
mod lifecycle;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};

use libcontainer::container::Container as Handle;
use tokio::sync::{watch, Mutex};

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
}

/// One container of the sandbox.
pub struct Container {
    pub id: String,
    pub init: Arc<Process>,
    handle: StdMutex<Handle>,
    state: StdMutex<ContainerState>,
    storages: Vec<Mounted>,
}

#[derive(Default)]
struct State {
    created: bool,
    storages: Vec<Mounted>,
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
    shutdown: watch::Sender<bool>,
}

impl Sandbox {
    pub fn new(reaper: Reaper, init: bool) -> Self {
        Self {
            reaper,
            init,
            state: Mutex::default(),
            shutdown: watch::channel(false).0,
        }
    }

    /// Resolves when DestroySandbox asked the agent to stop.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
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
        Err(SandboxError::NoProcess {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        })
    }
}
