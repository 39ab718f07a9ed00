//! Task events published to containerd.

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

use crate::process::Exit;

/// Publishes events of one namespace; failures are logged (containerd
/// also learns of exits from Wait and State).
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    async fn send(&self, topic: &str, event: Box<dyn MessageDyn>) {
        tracing::debug!(topic, "event");
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "event not published");
        }
    }

    pub async fn created(&self, id: &str, bundle: &str, io: TaskIO, pid: u32) {
        let ev = TaskCreate {
            container_id: id.into(),
            bundle: bundle.into(),
            io: Some(io).into(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn started(&self, id: &str, pid: u32) {
        let ev = TaskStart {
            container_id: id.into(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exited(&self, id: &str, exec_id: &str, pid: u32, exit: &Exit) {
        let ev = TaskExit {
            container_id: id.into(),
            id: if exec_id.is_empty() { id } else { exec_id }.into(),
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at.clone()).into(),
            ..Default::default()
        };
        self.send(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev)).await;
    }

    pub async fn deleted(&self, id: &str, pid: u32, exit: &Exit) {
        let ev = TaskDelete {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at.clone()).into(),
            ..Default::default()
        };
        self.send(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_added(&self, id: &str, exec_id: &str) {
        let ev = TaskExecAdded {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        let ev = TaskExecStarted {
            container_id: id.into(),
            exec_id: exec_id.into(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn paused(&self, id: &str) {
        let ev = TaskPaused {
            container_id: id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn resumed(&self, id: &str) {
        let ev = TaskResumed {
            container_id: id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn oom(&self, id: &str) {
        let ev = TaskOOM {
            container_id: id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev)).await;
    }
}
