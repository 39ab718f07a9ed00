//! Containers in a sandbox: created with their resources attached
//! (rootfs, mounts, devices, a share of the VM's size), removed with them
//! detached.

use std::path::Path;

use capsa_protocols::agent;
use oci_spec::runtime::Spec;
use tracing::Instrument;

use super::Sandbox;
use crate::record::ContainerRecord;
use crate::resource::cpu_mem::Limits;
use crate::resource::{block, Rootfs};
use crate::spec::{self, ProcessSpec};
use crate::Error;

impl Sandbox {
    /// Creates a container running `process` on the directory `rootfs`
    /// (shared at `<shared>/<container-id>/rootfs`). The container's first
    /// process has the container's id as exec id.
    pub async fn create_container(
        &mut self,
        container_id: &str,
        rootfs: &Path,
        process: &ProcessSpec,
    ) -> Result<(), Error> {
        let oci = spec::build(process, "", &self.hostname())?;
        let rootfs = Rootfs::Dir(rootfs.to_path_buf());
        self.create_container_from(container_id, &rootfs, oci).await
    }

    /// Creates container `cid` from `spec`, whose mounts and devices name
    /// host paths, with `rootfs` as its root: attaches each resource,
    /// points the spec at the guest's paths, and creates the container.
    /// On error, what was attached for it is detached again.
    pub async fn create_container_from(
        &mut self,
        cid: &str,
        rootfs: &Rootfs,
        spec: Spec,
    ) -> Result<(), Error> {
        let step = crate::step!("container create");
        let trace = crate::otel::trace_id(&step);
        let created = self
            .create_container_steps(cid, rootfs, spec)
            .instrument(step)
            .await;
        // With tracing on: the agent's spans of this creation (a trace of
        // its own), exported with the host's.
        crate::otel::export_agent_spans(self.agent(), trace).await;
        created
    }

    async fn create_container_steps(
        &mut self,
        cid: &str,
        rootfs: &Rootfs,
        mut spec: Spec,
    ) -> Result<(), Error> {
        crate::resource::volume::needs_no_share(rootfs, &spec, self.resources.block.policy())?;
        let limits = Limits::of(spec.linux().as_ref().and_then(|l| l.resources().as_ref()));
        let sized = self
            .size_for(cid, limits)
            .instrument(crate::step!("resize"))
            .await;
        if let Err(e) = sized {
            self.unsize(cid).await;
            return Err(e);
        }
        let made = self
            .resources
            .attach_container(
                self.vm.block(),
                &mut self.record.devices,
                cid,
                rootfs,
                &mut spec,
            )
            .instrument(crate::step!("attach resources"))
            .await;
        self.save_record();
        let created = match made {
            Ok(attached) => {
                let (storages, devices) = (attached.storages, attached.devices);
                self.create_container_request(cid, &spec, storages, devices)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            self.detach_container(cid).await;
            self.unsize(cid).await;
            return Err(e);
        }
        Ok(())
    }

    /// Creates container `container_id` from a complete OCI spec (its root
    /// shared with [`Sandbox::share_rootfs`]). The spec's hooks are not sent:
    /// they name host binaries, which the guest does not have (as Kata's
    /// runtimes, which clear them too; the agent runs the hooks it is sent
    /// as guest hooks).
    pub async fn create_container_spec(
        &mut self,
        container_id: &str,
        oci: &oci_spec::runtime::Spec,
    ) -> Result<(), Error> {
        self.create_container_request(container_id, oci, vec![], vec![])
            .await
    }

    /// Creates the container with the storages and devices attached for
    /// it, and records it.
    pub(crate) async fn create_container_request(
        &mut self,
        container_id: &str,
        oci: &oci_spec::runtime::Spec,
        storages: Vec<agent::Storage>,
        devices: Vec<agent::Device>,
    ) -> Result<(), Error> {
        let mut grpc = capsa_protocols::convert::spec_to_grpc(oci);
        if grpc.Hooks.take().is_some() {
            tracing::info!(
                container = container_id,
                "the spec's hooks are host hooks: not sent to the guest"
            );
        }
        let req = agent::CreateContainerRequest {
            container_id: container_id.into(),
            exec_id: container_id.into(),
            OCI: Some(grpc).into(),
            storages,
            devices,
            ..Default::default()
        };
        self.agent()
            .create_container(req)
            .instrument(crate::step!("CreateContainer"))
            .await?;
        let rootfs = self
            .resources
            .share
            .rootfs(container_id)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let command = oci
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        self.update_record(|r| {
            r.containers.push(ContainerRecord {
                id: container_id.into(),
                rootfs,
                command,
                log: None,
                exit_code: None,
            })
        });
        Ok(())
    }

    /// Removes container `container_id` from the guest (which unmounts
    /// its storages), then detaches what was attached for it: its drives
    /// are unplugged, its share unmounted and removed.
    pub async fn remove_container(&mut self, container_id: &str) -> Result<(), Error> {
        let removed = self.agent().remove_container(container_id).await;
        let detached = self.detach_container(container_id).await;
        self.unsize(container_id).await;
        self.resources.share.forget(container_id);
        self.update_record(|r| r.containers.retain(|c| c.id != container_id));
        removed?;
        detached.map_or(Ok(()), Err)
    }

    /// Detaches what was attached for container `cid` (its drives, once
    /// the guest let go of them, and its share); failures are logged and
    /// the first returned.
    pub(crate) async fn detach_container(&mut self, cid: &str) -> Option<Error> {
        let unplugged =
            block::detach_container(self.vm.block(), &mut self.record.devices, cid).await;
        self.save_record();
        let mut first = unplugged;
        if let Err(e) = self.resources.share.detach_container(cid) {
            first.get_or_insert(e);
        }
        first
    }
}
