//! The resources of one sandbox, in one value the sandbox owns (as Kata
//! runtime-rs's `ResourceManager`): its share, its drives, its pod
//! network, its CPUs and memory, and its host cgroup. A resource is
//! handed the driver capability it uses (`BlockHotplug`,
//! `NetworkHotplug`, `ResourceHotplug`) and the agent client for each
//! operation; it never sees the sandbox.

use capsa_hypervisor::{BlockHotplug, Error as VmError};
use capsa_protocols::agent;
use oci_spec::runtime::Spec;

use super::block::Drives;
use super::cgroup::PodCgroup;
use super::cpu_mem::CpuMem;
use super::network::NetworkResource;
use super::share::Share;
use super::{rootfs, volume, Rootfs};
use crate::record::DeviceRecord;
use crate::Error;

/// Everything a sandbox holds on the host besides its VM.
pub struct Resources {
    /// Directories and files shared over virtio-fs.
    pub share: Share,
    /// Drives hot-plugged (rootfs, volumes, devices).
    pub block: Drives,
    /// The pod network joined and the VM's NICs on it.
    pub network: NetworkResource,
    /// The VM's vCPUs and memory, sized after its containers' limits.
    pub cpu_mem: CpuMem,
    /// The pod's host cgroup, joined before the VM's processes started
    /// (`sandbox_cgroup_only`); released once the VM is gone.
    pub cgroup: Option<PodCgroup>,
}

/// What the agent gets besides the spec to create a container.
#[derive(Default)]
pub struct Attached {
    pub storages: Vec<agent::Storage>,
    pub devices: Vec<agent::Device>,
}

/// A driver capability a resource may need: asked of the driver once,
/// its absence an error only when it is used.
pub struct Capability<'a, T: ?Sized>(Result<&'a mut T, Option<VmError>>);

impl<'a, T: ?Sized> Capability<'a, T> {
    pub fn new(found: Result<&'a mut T, VmError>) -> Self {
        Self(found.map_err(Some))
    }

    /// The capability, or why the driver has none (said once).
    pub fn get(&mut self, name: &'static str) -> Result<&mut T, VmError> {
        match &mut self.0 {
            Ok(c) => Ok(&mut **c),
            Err(e) => Err(e.take().unwrap_or(VmError::NotSupported {
                hypervisor: String::new(),
                capability: name,
            })),
        }
    }

    /// The capability, where the driver has it.
    pub fn ok(&mut self) -> Option<&mut T> {
        self.0.as_mut().ok().map(|c| &mut **c)
    }
}

/// One container's resources being attached: what the rootfs and
/// volume resources use and give.
pub struct ContainerAttach<'a> {
    pub cid: &'a str,
    pub share: &'a mut Share,
    pub drives: &'a mut Drives,
    pub block: Capability<'a, dyn BlockHotplug + 'a>,
    /// The drives attached, as the sandbox's record lists them (what
    /// detaching the container unplugs).
    pub records: &'a mut Vec<DeviceRecord>,
    pub attached: Attached,
}

impl Resources {
    /// Attaches container `cid`'s rootfs, mounts and devices (from
    /// `spec`, whose mounts and devices name host paths) and points the
    /// spec at the guest's paths. Drives attached are in `records` even
    /// when a later one fails.
    pub async fn attach_container<'a>(
        &'a mut self,
        block: Result<&'a mut (dyn BlockHotplug + 'a), VmError>,
        records: &'a mut Vec<DeviceRecord>,
        cid: &'a str,
        rootfs: &Rootfs,
        spec: &mut Spec,
    ) -> Result<Attached, Error> {
        let mut ctx = ContainerAttach {
            cid,
            share: &mut self.share,
            drives: &mut self.block,
            block: Capability::new(block),
            records,
            attached: Attached::default(),
        };
        let guest_root = rootfs::attach(&mut ctx, rootfs).await?;
        if let Some(root) = spec.root_mut() {
            root.set_path(guest_root.into());
        }
        default_path(spec);
        let mounts = spec.mounts().clone().unwrap_or_default();
        let mut out = Vec::with_capacity(mounts.len());
        for (n, m) in mounts.into_iter().enumerate() {
            out.push(volume::attach_mount(&mut ctx, n, m).await?);
        }
        spec.set_mounts(Some(out));
        volume::attach_devices(&mut ctx, spec).await?;
        ctx.share.idmap_container(cid)?;
        Ok(ctx.attached)
    }
}

/// runc looks commands up in a default PATH when the spec has none
/// (`ctr run --rootfs` gives none); libcontainer does not: add it.
fn default_path(spec: &mut Spec) {
    const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    if let Some(process) = spec.process_mut() {
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.into());
            process.set_env(Some(env));
        }
    }
}
