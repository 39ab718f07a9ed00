//! A sandbox: one VM, its helpers, its agent, and its containers. One
//! file per operation (as youki's): [`start`](start.rs) boots it,
//! [`container`](container.rs) puts containers in it and takes them out,
//! [`resize`](resize.rs) sizes the VM after their limits,
//! [`network`](network.rs) gives it NICs for new links, and
//! [`teardown`](teardown.rs) takes it down. What it holds on the host
//! is one [`Resources`] value.

mod container;
mod network;
mod resize;
mod start;
mod teardown;

use std::path::{Path, PathBuf};

use capsa_agent_client::AgentClient;
use capsa_config::Config;
use capsa_hypervisor::{BlockDevice, GuestAddress, Vm};

use crate::health::{self, Death};
use crate::record::SandboxRecord;
use crate::resource::{share, Resources};
use crate::state::StateDir;
use crate::{console, Error};

/// A running sandbox. Take it down with [`Sandbox::destroy`]; every error
/// path of [`Sandbox::start`] has already taken it down.
pub struct Sandbox {
    id: String,
    dir: StateDir,
    vm: Box<dyn Vm>,
    agent: Option<AgentClient>,
    record: SandboxRecord,
    /// Taken down by `destroy` or `stop`: nothing left for `Drop`.
    finished: bool,
    /// Keeps the guest console log bounded while the VM runs.
    console: Option<console::Keeper>,
    /// Declared dead (hung or stopped): teardown kills it without asking.
    dead: Option<Death>,
    /// What it holds on the host: share, drives, network, CPUs and
    /// memory, cgroup.
    resources: Resources,
    /// The pod's metrics socket while the VM runs.
    metrics: Option<crate::metrics::PodServer>,
}

impl Sandbox {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// What `state.json` says.
    pub fn record(&self) -> &SandboxRecord {
        &self.record
    }

    /// Changes the record and writes it out (failures are logged: the
    /// record informs other commands, the sandbox works without it).
    pub fn update_record(&mut self, change: impl FnOnce(&mut SandboxRecord)) {
        change(&mut self.record);
        self.save_record();
    }

    fn save_record(&self) {
        if let Err(e) = self.record.save(self.dir.path()) {
            tracing::warn!(sandbox = %self.id, error = %e, "state record not written");
        }
    }

    /// The connected agent.
    pub fn agent(&self) -> &AgentClient {
        self.agent.as_ref().expect("agent connected by start")
    }

    /// The hostname given to the guest and its containers.
    pub fn hostname(&self) -> String {
        // Sandbox ids are checked: ASCII, so any byte count is a boundary.
        let short = &self.id[..self.id.len().min(8)];
        format!("capsa-{short}")
    }

    /// Bind-mounts `rootfs` at `<shared>/<container-id>/rootfs`; returns the
    /// path the guest sees it at.
    pub fn share_rootfs(&mut self, container_id: &str, rootfs: &Path) -> Result<String, Error> {
        let (share, guest_root) = self.container_share(container_id);
        share::attach_rootfs_dir(&share, rootfs)?;
        self.resources.share.note_rootfs(container_id, rootfs);
        Ok(guest_root)
    }

    /// The host directory shared with the guest for container
    /// `container_id` (`<shared>/<container-id>`), and the guest's path of
    /// its `rootfs` subdirectory. The caller mounts what it needs below it.
    pub fn container_share(&self, container_id: &str) -> (PathBuf, String) {
        self.resources.share.container(container_id)
    }

    /// Hot-plugs a drive into the running VM; returns where the guest
    /// finds it (the `source` of a `blk`/`scsi` storage).
    pub async fn attach_block(&mut self, device: &BlockDevice) -> Result<GuestAddress, Error> {
        let address = self
            .vm
            .block()
            .map_err(Error::Vm)?
            .attach_block(device)
            .await;
        address.map_err(Error::Vm)
    }

    /// Unplugs the drive `id` (once the guest has released it).
    pub async fn detach_block(&mut self, id: &str) -> Result<(), Error> {
        let detached = self.vm.block().map_err(Error::Vm)?.detach_block(id).await;
        detached.map_err(Error::Vm)
    }

    /// The hypervisor's pid while it runs.
    pub fn hypervisor_pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    /// A watch of this sandbox's VM (see [`health::Watch`]).
    pub fn watch(&self, config: &Config) -> Option<health::Watch> {
        let pid = self.vm.pid()?;
        Some(health::Watch::new(pid, self.agent().clone(), config))
    }

    /// Marks the VM dead (hung, stopped or gone): teardown then kills it
    /// at once, asking its agent nothing.
    pub fn declare_dead(&mut self, why: Death) {
        tracing::error!(sandbox = %self.id, pid = ?self.vm.pid(), "the VM is dead: {why}");
        self.dead = Some(why);
    }
}
