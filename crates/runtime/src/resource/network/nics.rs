//! The pod network as a resource of the sandbox: the netns joined, the
//! endpoints made in it and the VM's NICs on them (cold-plugged at boot,
//! hot-plugged through the driver's [`NetworkHotplug`] when links appear
//! later), configured in the guest by the agent.

use std::path::Path;

use capsa_agent_client::AgentClient;
use capsa_config::Config;
use capsa_hypervisor::{GuestAddress, NetDevice, NetworkHotplug};

use super::{guest, setup, teardown, teardown_taps, Endpoint, Model, NetworkError, PodNetwork};
use crate::{vm, Error};

/// The network of one sandbox.
#[derive(Debug, Clone)]
pub struct NetworkResource {
    /// The pod network joined (its netns has capsa's taps and filters).
    pub pod: PodNetwork,
    /// How that netns reaches the VM.
    model: Model,
    /// Whether NICs use vhost-net (where the host has it).
    vhost: bool,
}

impl NetworkResource {
    pub fn new(config: &Config, pod: PodNetwork) -> Self {
        Self {
            pod,
            model: vm::network_model(config),
            vhost: !config.hypervisor.vm.disable_vhost_net,
        }
    }

    /// The host side, before the VM boots: the endpoints in the pod's
    /// netns and the VM's NICs on them. On an error nothing of it is left.
    pub async fn host(&self, id: &str) -> Result<(Vec<Endpoint>, Vec<NetDevice>), Error> {
        let Some(netns) = &self.pod.netns else {
            return Ok((Vec::new(), Vec::new()));
        };
        let endpoints = setup(netns, self.model).await?;
        let nics = endpoints
            .iter()
            .enumerate()
            .map(|(n, e)| vm::nic_device(n, e, self.vhost))
            .collect::<Result<Vec<_>, _>>();
        match nics {
            Ok(nics) => {
                for e in &endpoints {
                    tracing::info!(sandbox = %id, link = %e.name, mac = %e.mac, tap = %e.tap, "pod network endpoint");
                }
                Ok((endpoints, nics))
            }
            Err(e) => {
                log_teardown(id, netns, teardown(netns).await);
                Err(e)
            }
        }
    }

    /// Has the agent configure the NICs of the endpoints found at start
    /// (cold-plugged) and their routes.
    pub async fn configure_guest(
        &self,
        hotplug: Option<&mut dyn NetworkHotplug>,
        agent: &AgentClient,
        endpoints: &[Endpoint],
        id: &str,
    ) -> Result<(), Error> {
        if endpoints.is_empty() {
            return Ok(());
        }
        let pci = nic_addresses(hotplug.as_deref(), 0, endpoints.len());
        let done = guest::configure(agent, endpoints, &pci, endpoints).await?;
        for i in &done {
            tracing::info!(sandbox = %id, name = %i.name, mac = %i.hwAddr, "guest interface configured");
        }
        Ok(())
    }

    /// Looks again at the pod's netns and gives the VM a NIC (hot-plugged)
    /// for each link that appeared since: the agent configures it and the
    /// routes. `endpoints` (the record's) gets each endpoint attached.
    /// Returns the new interfaces' names.
    pub async fn rescan(
        &self,
        hotplug: Result<&mut dyn NetworkHotplug, capsa_hypervisor::Error>,
        agent: &AgentClient,
        endpoints: &mut Vec<Endpoint>,
        id: &str,
    ) -> Result<Vec<String>, Error> {
        let Some(netns) = self.pod.netns.clone() else {
            return Ok(Vec::new());
        };
        let new = setup(&netns, self.model).await?;
        let first = endpoints.len();
        let mut hotplug = hotplug;
        for (n, endpoint) in new.iter().enumerate() {
            let attached = match vm::nic_device(n + first, endpoint, self.vhost) {
                Ok(nic) => attach_nic(&mut hotplug, &nic, endpoint).await,
                Err(e) => Err(e),
            };
            if let Err(e) = attached {
                // The taps without a NIC go: a later rescan makes them anew.
                let orphans = new[n..].iter().map(|e| e.tap.clone()).collect();
                log_teardown(id, &netns, teardown_taps(&netns, orphans).await);
                return Err(e);
            }
            endpoints.push(endpoint.clone());
        }
        let pci = nic_addresses(hotplug.as_deref().ok(), first, new.len());
        guest::configure(agent, &new, &pci, endpoints).await?;
        Ok(new.into_iter().map(|e| e.name).collect())
    }

    /// Takes the host side down (taps and filters; the netns is not
    /// capsa's to remove).
    pub async fn teardown(&mut self, id: &str) {
        if let Some(netns) = self.pod.netns.take() {
            log_teardown(id, &netns, teardown(&netns).await);
        }
    }

    /// [`NetworkResource::teardown`] where no runtime is (`Drop`).
    pub fn teardown_blocking(&mut self, id: &str) {
        if let Some(netns) = self.pod.netns.take() {
            log_teardown(id, &netns, super::teardown_blocking(&netns));
        }
    }
}

async fn attach_nic(
    hotplug: &mut Result<&mut dyn NetworkHotplug, capsa_hypervisor::Error>,
    nic: &NetDevice,
    endpoint: &Endpoint,
) -> Result<(), Error> {
    let what = || format!("{} of {}", endpoint.name, endpoint.netns.display());
    let hotplug = match hotplug {
        Ok(h) => h,
        Err(e) => {
            let source = std::mem::replace(
                e,
                capsa_hypervisor::Error::NotSupported {
                    hypervisor: String::new(),
                    capability: "network hot-plug",
                },
            );
            return Err(Error::Vm(source));
        }
    };
    let attached = hotplug.attach_nic(nic).await;
    attached.map(drop).map_err(|source| Error::Hotplug {
        what: what(),
        source,
    })
}

/// The PCI paths of the NICs `net<first>`..`net<first+count>`, where
/// the driver knows them.
fn nic_addresses(
    hotplug: Option<&dyn NetworkHotplug>,
    first: usize,
    count: usize,
) -> Vec<Option<GuestAddress>> {
    let attached = hotplug.map(|n| n.attached_nics()).unwrap_or_default();
    (first..first + count)
        .map(|n| {
            let id = format!("net{n}");
            attached
                .iter()
                .find(|a| a.device.id == id)
                .map(|a| a.address.clone())
        })
        .collect()
}

/// Logs the result of a network teardown.
pub fn log_teardown(id: &str, netns: &Path, result: Result<Vec<String>, NetworkError>) {
    match result {
        Ok(taps) => {
            tracing::debug!(sandbox = %id, netns = %netns.display(), ?taps, "pod network taken down")
        }
        Err(e) => tracing::warn!(
            sandbox = %id,
            netns = %netns.display(),
            error = %crate::error_chain(&e),
            "pod network not taken down"
        ),
    }
}
