//! What a running VM holds, read (or changed behind its owner's back)
//! from another process, in driver-neutral terms: for tools and tests.
//! The VM is named by its run directory ([`crate::VmConfig::run_dir`]);
//! the driver that runs it answers through its own debug channel (QEMU:
//! its second QMP monitor). The owner's own view is the capabilities'
//! (`attached_blocks`, `attached_nics`, `current`).

use std::path::{Path, PathBuf};

use crate::Error;

/// The drives and block backends of a running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The drives the hypervisor has.
    pub drives: Vec<Drive>,
    /// The block backends the hypervisor holds, by name (QEMU: its block
    /// nodes): a detached drive leaves none of its own behind.
    pub block_backends: Vec<String>,
}

/// A drive as the hypervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// The id capsa attached it with ([`crate::BlockDevice::id`]); `None`
    /// for a drive of the driver's own (a root image's disk).
    pub id: Option<String>,
    /// The host file or block device open as its medium, if any.
    pub file: Option<PathBuf>,
}

/// The drives and block backends of the VM whose run directory is
/// `run_dir`.
pub async fn inventory(run_dir: &Path) -> Result<Inventory, Error> {
    match driver_of(run_dir)? {
        Which::Qemu(monitor) => crate::qemu::debug::inventory(&monitor).await,
    }
}

/// Hot-plugs one vCPU into the VM of `run_dir` behind its owner's back
/// (the owner's accounting does not see it), as the owner's resize would:
/// the guest gets it offline until onlined.
pub async fn add_vcpu(run_dir: &Path) -> Result<(), Error> {
    match driver_of(run_dir)? {
        Which::Qemu(monitor) => crate::qemu::debug::add_vcpu(&monitor).await,
    }
}

enum Which {
    Qemu(PathBuf),
}

fn driver_of(run_dir: &Path) -> Result<Which, Error> {
    if let Some(monitor) = crate::qemu::debug::monitor(run_dir) {
        return Ok(Which::Qemu(monitor));
    }
    Err(Error::NotSupported {
        hypervisor: format!("the VM of {}", run_dir.display()),
        capability: "a debug channel",
    })
}
