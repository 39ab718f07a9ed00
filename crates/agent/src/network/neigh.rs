//! ARP (and NDP) neighbours: permanent entries the runtime copies from the
//! pod's network namespace.

use capsa_protocols::types::ARPNeighbor;
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::Handle;

use super::convert::{ip_address, parse_mac};
use super::{link, netlink, NetworkError};

/// NUD_PERMANENT.
const PERMANENT: u16 = 0x80;

/// The state of a requested neighbour: as given, permanent when unset.
pub fn state(n: &ARPNeighbor) -> NeighbourState {
    match n.state {
        0 => NeighbourState::from(PERMANENT),
        s => NeighbourState::from(s as u16),
    }
}

/// Adds (or replaces) each neighbour.
pub async fn add(handle: &Handle, neighbours: &[ARPNeighbor]) -> Result<(), NetworkError> {
    for n in neighbours {
        let to = n
            .toIPAddress
            .as_ref()
            .ok_or(NetworkError::NoNeighbourAddress)?;
        let (ip, _) = ip_address(to)?;
        let mut req = handle
            .neighbours()
            .add(link::index_by_name(handle, &n.device).await?, ip)
            .state(state(n))
            .flags(NeighbourFlags::from_bits_retain(n.flags as u8));
        if !n.lladdr.is_empty() {
            req = req.link_layer_address(&parse_mac(&n.lladdr)?);
        }
        tracing::info!(%ip, lladdr = %n.lladdr, device = %n.device, "adding neighbour");
        req.replace().execute().await.map_err(netlink(format!(
            "add neighbour {ip} lladdr {:?} dev {:?}",
            n.lladdr, n.device
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_permanent_unless_told_otherwise() {
        let mut n = ARPNeighbor::default();
        assert_eq!(state(&n), NeighbourState::Permanent);
        n.state = 0x02;
        assert_eq!(state(&n), NeighbourState::Reachable);
    }
}
