//! Storages shared by containers (`Storage.shared`), as Kata's agent keeps
//! them: one mount per mount point, counted. The first container that
//! names a shared storage mounts it; later ones reuse that mount (they see
//! what the others wrote); it is unmounted when the last of them is
//! removed. A container naming a shared mount point with another driver or
//! source than the one mounted is refused.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Sandbox, SandboxError};
use crate::storage::{self, Mounted, StorageSpec};

/// A shared storage and how many containers use it.
struct Entry {
    spec: StorageSpec,
    mounted: Mounted,
    users: usize,
}

/// The shared storages of the sandbox, by mount point.
#[derive(Default)]
pub(super) struct SharedStorages(HashMap<String, Entry>);

impl Sandbox {
    /// Mounts (or reuses) each of `specs` for one more container; returns
    /// the mount points, to give back with [`Sandbox::release_shared`]. On
    /// error none is kept.
    pub(super) async fn acquire_shared(
        &self,
        specs: &[StorageSpec],
    ) -> Result<(Vec<String>, Vec<PathBuf>), SandboxError> {
        let mut shared = self.shared.lock().await;
        let mut taken: Vec<String> = Vec::new();
        let mut result = Ok(());
        for (index, spec) in specs.iter().enumerate() {
            if let Some(entry) = shared.0.get_mut(&spec.mount_point) {
                if entry.spec.driver != spec.driver || entry.spec.source != spec.source {
                    result = Err(SandboxError::SharedMismatch {
                        mount_point: spec.mount_point.clone(),
                        driver: entry.spec.driver.clone(),
                        source_name: entry.spec.source.clone(),
                    });
                    break;
                }
                entry.users += 1;
                taken.push(spec.mount_point.clone());
                continue;
            }
            let s = spec.clone();
            match tokio::task::spawn_blocking(move || storage::add(&s)).await {
                Ok(Ok(mounted)) => {
                    tracing::info!(mount_point = %spec.mount_point, "shared storage mounted");
                    shared.0.insert(
                        spec.mount_point.clone(),
                        Entry {
                            spec: spec.clone(),
                            mounted,
                            users: 1,
                        },
                    );
                    taken.push(spec.mount_point.clone());
                }
                Ok(Err(source)) => {
                    result = Err(SandboxError::Storage {
                        index,
                        driver: spec.driver.clone(),
                        source,
                    });
                    break;
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        if let Err(e) = result {
            release(&mut shared, &taken).await;
            return Err(e);
        }
        let roots = taken
            .iter()
            .filter_map(|p| shared.0.get(p))
            .map(|e| e.mounted.mount_point.clone())
            .collect();
        Ok((taken, roots))
    }

    /// One container less uses each of `mount_points`; the last one
    /// unmounts.
    pub(super) async fn release_shared(&self, mount_points: &[String]) {
        if mount_points.is_empty() {
            return;
        }
        let mut shared = self.shared.lock().await;
        release(&mut shared, mount_points).await;
    }
}

async fn release(shared: &mut SharedStorages, mount_points: &[String]) {
    for point in mount_points.iter().rev() {
        let Some(entry) = shared.0.get_mut(point) else {
            continue;
        };
        entry.users -= 1;
        if entry.users > 0 {
            tracing::debug!(mount_point = %point, users = entry.users, "shared storage kept");
            continue;
        }
        if let Some(entry) = shared.0.remove(point) {
            let mounted = entry.mounted;
            let _ = tokio::task::spawn_blocking(move || storage::remove(&mounted)).await;
            tracing::info!(mount_point = %point, "shared storage unmounted: its last container is gone");
        }
    }
}
