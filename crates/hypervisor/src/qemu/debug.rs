//! The QEMU side of [`crate::debug`]: QMP on the VM's second monitor
//! ([`super::QMP_DEBUG_SOCKET`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{qmp, resize, QMP_DEBUG_SOCKET};
use crate::debug::{Drive, Inventory};
use crate::Error;

/// The debug monitor of the VM of `run_dir`, if it has one.
pub fn monitor(run_dir: &Path) -> Option<PathBuf> {
    let sock = run_dir.join(QMP_DEBUG_SOCKET);
    sock.exists().then_some(sock)
}

pub async fn inventory(monitor: &Path) -> Result<Inventory, Error> {
    let blocks = qmp::execute(monitor, "query-block", None).await?;
    let nodes = qmp::execute(monitor, "query-named-block-nodes", None).await?;
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    Ok(Inventory {
        drives: list(&blocks)
            .iter()
            .filter_map(|b| {
                let qdev = b.get("qdev")?.as_str()?;
                Some(Drive {
                    id: capsa_id(qdev),
                    file: b
                        .get("inserted")
                        .and_then(|i| i.get("file")?.as_str())
                        .map(PathBuf::from),
                })
            })
            .collect(),
        block_backends: list(&nodes)
            .iter()
            .filter_map(|n| Some(n.get("node-name")?.as_str()?.to_string()))
            .collect(),
    })
}

/// capsa's id of the drive whose qdev id or QOM path is `qdev`
/// (`/machine/peripheral/blk-ID/virtio-backend`, `blk-ID`).
fn capsa_id(qdev: &str) -> Option<String> {
    qdev.split('/')
        .find_map(|part| part.strip_prefix(super::block::QDEV_PREFIX))
        .map(String::from)
}

pub async fn add_vcpu(monitor: &Path) -> Result<(), Error> {
    let slots = qmp::execute(monitor, "query-hotpluggable-cpus", None).await?;
    let (driver, mut props) = resize::free_cpu_slot(&slots).ok_or_else(|| Error::Hotplug {
        device: "vcpu-debug".into(),
        reason: "no free vCPU slot".into(),
    })?;
    props.insert("driver".into(), driver.into());
    props.insert("id".into(), "vcpu-debug".into());
    qmp::execute(monitor, "device_add", Some(props.into())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_ids_from_qdev_paths() {
        assert_eq!(
            capsa_id("/machine/peripheral/blk-c2-rootfs/virtio-backend").as_deref(),
            Some("c2-rootfs")
        );
        assert_eq!(capsa_id("blk-x").as_deref(), Some("x"));
        assert_eq!(capsa_id("image0"), None);
    }
}
