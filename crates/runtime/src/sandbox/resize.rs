//! The VM's size after its containers' limits (elastic sizing): it grows
//! before a container is created or its limits raised, and shrinks after
//! one goes or its limits were lowered.

use oci_spec::runtime::LinuxResources;

use super::Sandbox;
use crate::resource::cpu_mem::Limits;
use crate::Error;

impl Sandbox {
    /// Counts container `cid` with `limits` and brings the VM to the
    /// pod's new size (a no-op with static sizing). Before a container is
    /// created, so its cgroup limits find the CPUs and memory there.
    pub async fn size_for(&mut self, cid: &str, limits: Limits) -> Result<(), Error> {
        if !self.resources.cpu_mem.set(cid, limits) {
            return Ok(());
        }
        self.resize().await
    }

    /// Stops counting container `cid` and gives back its share (best
    /// effort: a VM that cannot shrink keeps its size, which is logged).
    pub(crate) async fn unsize(&mut self, cid: &str) {
        if !self.resources.cpu_mem.remove(cid) {
            return;
        }
        if let Err(e) = self.resize().await {
            tracing::warn!(sandbox = %self.id(), container = cid, error = %e, "VM not shrunk after the container went");
        }
    }

    /// Changes the limits of running container `cid` (`UpdateContainer`):
    /// the VM grows before the container's cgroup is changed, and shrinks
    /// after, so the guest never has less than its containers' limits.
    pub async fn update_container(
        &mut self,
        cid: &str,
        resources: &LinuxResources,
    ) -> Result<(), Error> {
        if !self.record().containers.iter().any(|c| c.id == cid) {
            return Err(Error::BadSpec {
                what: format!("update of container {cid:?}"),
                reason: format!("sandbox {:?} has no such container", self.id()),
            });
        }
        let old = self.resources.cpu_mem.limits(cid);
        let new = old.updated(resources);
        let grows = new.milli_cpus > old.milli_cpus || new.memory_bytes > old.memory_bytes;
        if grows {
            self.size_for(cid, new).await?;
        }
        let grpc = capsa_protocols::convert::resources_to_grpc(resources);
        self.agent().update_container(cid, grpc).await?;
        if !grows {
            self.size_for(cid, new).await?;
        }
        Ok(())
    }

    /// Brings the VM to the pod's size (see [`crate::resource::cpu_mem::CpuMem::resize`]); the
    /// record shows the size reached.
    async fn resize(&mut self) -> Result<(), Error> {
        let agent = self.agent().clone();
        let resized = self
            .resources
            .cpu_mem
            .resize(self.vm.resources(), &agent, &self.id)
            .await?;
        if let Some(now) = resized {
            self.update_record(|r| r.resources = Some(now));
        }
        Ok(())
    }
}
