//! containerd's snapshots API (the `containerd-snapshots` crate's
//! [`containerd_snapshots::Snapshotter`]) over [`Snapshotter`]: type
//! conversions, errors to gRPC codes (which containerd maps back to its
//! `errdefs`: not found, already exists, failed precondition), blocking
//! work off the async threads.

// The trait's error type is tonic's `Status` (176 bytes), returned as is.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{Code, Status};
use containerd_snapshots::{Info, Kind as ApiKind, Usage};
use tokio_stream::Stream;

use crate::snapshotter::{Error, LabelUpdate, MountSpec, SnapshotInfo, Snapshotter};
use crate::store::Kind;

/// The gRPC face of a [`Snapshotter`].
#[derive(Clone)]
pub struct Service(Arc<Snapshotter>);

impl Service {
    pub fn new(s: Snapshotter) -> Self {
        Self(Arc::new(s))
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Snapshotter) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let s = self.0.clone();
        let result = tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| Status::internal(format!("{op}: {e}")))?;
        result.map_err(|e| status(op, e))
    }
}

/// The error as a gRPC status: its code, and the whole cause chain once.
pub fn status(op: &str, e: Error) -> Status {
    let code = match &e {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Precondition(_) => Code::FailedPrecondition,
        Error::InvalidArgument(_) | Error::Filter(_) => Code::InvalidArgument,
        Error::Store(_) | Error::Io(_) | Error::Copy { .. } | Error::Mkfs { .. } => Code::Internal,
    };
    let mut msg = format!("{op}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    if code == Code::Internal {
        tracing::warn!("{msg}");
    }
    Status::new(code, msg)
}

fn mounts(specs: Vec<MountSpec>) -> Vec<Mount> {
    specs
        .into_iter()
        .map(|m| Mount {
            r#type: m.fs_type,
            source: m.source.display().to_string(),
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn api_info(i: SnapshotInfo) -> Info {
    Info {
        kind: match i.kind {
            Kind::Active => ApiKind::Active,
            Kind::View => ApiKind::View,
            Kind::Committed => ApiKind::Committed,
        },
        name: i.key,
        parent: i.parent,
        labels: i.labels,
        created_at: i.created,
        updated_at: i.updated,
    }
}

/// containerd's field paths of an update: none or `labels` replace all
/// labels, `labels.KEY` one; other fields are immutable.
fn label_update(paths: Option<Vec<String>>) -> Result<LabelUpdate, Status> {
    let paths = paths.unwrap_or_default();
    if paths.is_empty() || paths.iter().any(|p| p == "labels") {
        return Ok(LabelUpdate::ReplaceAll);
    }
    paths
        .iter()
        .map(|p| {
            p.strip_prefix("labels.")
                .map(str::to_string)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "update: field {p:?} cannot be changed (only labels can)"
                    ))
                })
        })
        .collect::<Result<_, _>>()
        .map(LabelUpdate::Keys)
}

type InfoStream = std::pin::Pin<Box<dyn Stream<Item = Result<Info, Status>> + Send + 'static>>;

#[containerd_snapshots::tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        self.run("stat", move |s| s.stat(&key)).await.map(api_info)
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let what = label_update(fieldpaths)?;
        self.run("update", move |s| s.update(&info.name, info.labels, what))
            .await
            .map(api_info)
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let size = self.run("usage", move |s| s.usage(&key)).await?;
        Ok(Usage {
            inodes: 1,
            size: size as i64,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        self.run("mounts", move |s| s.mounts(&key))
            .await
            .map(mounts)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.run("prepare", move |s| s.prepare(&key, &parent, labels))
            .await
            .map(mounts)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.run("view", move |s| s.view(&key, &parent, labels))
            .await
            .map(mounts)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        self.run("commit", move |s| s.commit(&name, &key, labels))
            .await
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        self.run("remove", move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Status> {
        self.run("cleanup", |s| s.cleanup()).await.map(|_| ())
    }

    type InfoStream = InfoStream;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<InfoStream, Status> {
        let infos = self.run("walk", move |s| s.walk(&filters)).await?;
        Ok(Box::pin(tokio_stream::iter(
            infos.into_iter().map(|i| Ok(api_info(i))),
        )))
    }
}
