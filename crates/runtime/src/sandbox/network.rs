//! The pod network of a running sandbox: links that appear in its netns
//! later (another CNI attachment) get a hot-plugged NIC.

use super::Sandbox;
use crate::Error;

impl Sandbox {
    /// Looks again at the pod's netns and gives the VM a NIC (hot-plugged)
    /// for each link that appeared since: the agent configures it and the
    /// routes. Returns the new interfaces' names.
    pub async fn rescan_network(&mut self) -> Result<Vec<String>, Error> {
        let agent = self.agent().clone();
        let mut endpoints = self.record.network.clone();
        let rescanned = self
            .resources
            .network
            .rescan(self.vm.network(), &agent, &mut endpoints, &self.id)
            .await;
        if endpoints.len() != self.record.network.len() {
            self.update_record(|r| r.network = endpoints);
        }
        rescanned
    }
}
