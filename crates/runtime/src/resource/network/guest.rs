//! The guest's side of the pod network: the endpoints found on the host
//! become the agent's `Interface`s and `Route`s, which the agent applies
//! to the guest NICs (found by MAC) the VM got for them.

use std::net::IpAddr;

use capsa_agent_client::AgentClient;
use capsa_hypervisor::GuestAddress;
use capsa_protocols::types;

use super::{Endpoint, IpNet};

/// The neighbour state Kata's runtime copies (and sends).
const NUD_PERMANENT: i32 = 0x80;

/// The interface the agent gives the guest NIC of `endpoint`: the veth's
/// name, MAC, MTU and addresses. `pci` is the NIC's PCI path, which tells
/// the agent to wait for a hot-plugged NIC to appear.
pub fn interface(endpoint: &Endpoint, pci: Option<&GuestAddress>) -> types::Interface {
    types::Interface {
        device: endpoint.name.clone(),
        name: endpoint.name.clone(),
        IPAddresses: endpoint.addresses.iter().map(ip_address).collect(),
        mtu: endpoint.mtu.into(),
        hwAddr: endpoint.mac.clone(),
        devicePath: pci.map(|p| p.to_string()).unwrap_or_default(),
        type_: "veth".into(),
        ..Default::default()
    }
}

/// The routes of the endpoints, through the guest links of the same names.
pub fn routes(endpoints: &[Endpoint]) -> Vec<types::Route> {
    endpoints
        .iter()
        .flat_map(|e| {
            e.routes.iter().map(|r| types::Route {
                dest: r
                    .dest
                    .as_ref()
                    .map(|d| format!("{}/{}", d.addr, d.prefix_len))
                    .unwrap_or_default(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: e.name.clone(),
                source: r.source.map(|s| s.to_string()).unwrap_or_default(),
                scope: r.scope.into(),
                family: family(
                    r.dest
                        .as_ref()
                        .map(|d| d.addr)
                        .or(r.gateway)
                        .or(r.source)
                        .or(e.addresses.first().map(|a| a.addr)),
                )
                .into(),
                ..Default::default()
            })
        })
        .collect()
}

/// Has the agent configure the guest NICs of `endpoints` (`pci[i]` is the
/// PCI path of `endpoints[i]`'s NIC, when known), then the routes of `all`
/// the endpoints (UpdateRoutes replaces the guest's routes). Returns the
/// interfaces as the guest has them.
pub async fn configure(
    agent: &AgentClient,
    endpoints: &[Endpoint],
    pci: &[Option<GuestAddress>],
    all: &[Endpoint],
) -> Result<Vec<types::Interface>, capsa_agent_client::Error> {
    let mut done = Vec::with_capacity(endpoints.len());
    for (i, endpoint) in endpoints.iter().enumerate() {
        let iface = interface(endpoint, pci.get(i).and_then(Option::as_ref));
        done.push(agent.update_interface(iface).await?);
    }
    let routes = routes(all);
    if !routes.is_empty() {
        agent.update_routes(routes).await?;
    }
    let neighbours = neighbours(endpoints);
    if !neighbours.is_empty() {
        agent.add_arp_neighbors(neighbours).await?;
    }
    Ok(done)
}

/// The permanent neighbours of the endpoints, on the guest links of the
/// same names.
pub fn neighbours(endpoints: &[Endpoint]) -> Vec<types::ARPNeighbor> {
    endpoints
        .iter()
        .flat_map(|e| {
            e.neighbours.iter().map(|n| types::ARPNeighbor {
                toIPAddress: Some(ip_address(&IpNet {
                    addr: n.ip,
                    prefix_len: if n.ip.is_ipv4() { 32 } else { 128 },
                }))
                .into(),
                device: e.name.clone(),
                lladdr: n.mac.clone(),
                state: NUD_PERMANENT,
                ..Default::default()
            })
        })
        .collect()
}

fn ip_address(a: &IpNet) -> types::IPAddress {
    types::IPAddress {
        family: family(Some(a.addr)).into(),
        address: a.addr.to_string(),
        mask: a.prefix_len.to_string(),
        ..Default::default()
    }
}

fn family(addr: Option<IpAddr>) -> types::IPFamily {
    match addr {
        Some(IpAddr::V6(_)) => types::IPFamily::v6,
        _ => types::IPFamily::v4,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Route;
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            name: "eth0".into(),
            mac: "0a:58:0a:c8:00:05".into(),
            mtu: 1450,
            addresses: vec![
                IpNet {
                    addr: "10.200.0.5".parse().unwrap(),
                    prefix_len: 24,
                },
                IpNet {
                    addr: "fd00::5".parse().unwrap(),
                    prefix_len: 64,
                },
            ],
            routes: vec![
                Route {
                    dest: None,
                    gateway: Some("10.200.0.1".parse().unwrap()),
                    source: None,
                    scope: 0,
                },
                Route {
                    dest: Some(IpNet {
                        addr: "fd01::".parse().unwrap(),
                        prefix_len: 64,
                    }),
                    gateway: None,
                    source: None,
                    scope: 253,
                },
            ],
            neighbours: vec![super::super::Neighbour {
                ip: "10.200.0.9".parse().unwrap(),
                mac: "0a:58:0a:c8:00:09".into(),
            }],
            tap: "tap0_capsa".into(),
            netns: "/var/run/netns/cni-1".into(),
        }
    }

    #[test]
    fn an_endpoint_is_the_veths_name_mac_mtu_and_addresses() {
        let pci = GuestAddress::Pci {
            slots: vec![0x04, 0x00],
        };
        let i = interface(&endpoint(), Some(&pci));
        assert_eq!((i.device.as_str(), i.name.as_str()), ("eth0", "eth0"));
        assert_eq!(i.hwAddr, "0a:58:0a:c8:00:05");
        assert_eq!(i.mtu, 1450);
        assert_eq!(i.devicePath, "04/00");
        let addrs: Vec<_> = i
            .IPAddresses
            .iter()
            .map(|a| (a.address.as_str(), a.mask.as_str(), a.family.enum_value()))
            .collect();
        assert_eq!(
            addrs,
            [
                ("10.200.0.5", "24", Ok(types::IPFamily::v4)),
                ("fd00::5", "64", Ok(types::IPFamily::v6))
            ]
        );
        assert_eq!(interface(&endpoint(), None).devicePath, "");
    }

    #[test]
    fn permanent_neighbours_are_sent_as_such() {
        let n = neighbours(&[endpoint()]);
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].device.as_str(), n[0].lladdr.as_str()),
            ("eth0", "0a:58:0a:c8:00:09")
        );
        assert_eq!(n[0].state, 0x80);
        let to = n[0].toIPAddress.as_ref().unwrap();
        assert_eq!(
            (to.address.as_str(), to.mask.as_str()),
            ("10.200.0.9", "32")
        );
    }

    #[test]
    fn routes_go_through_the_guest_link_of_the_same_name() {
        let r = routes(&[endpoint()]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (
                r[0].dest.as_str(),
                r[0].gateway.as_str(),
                r[0].device.as_str()
            ),
            ("", "10.200.0.1", "eth0")
        );
        assert_eq!(r[0].family.enum_value(), Ok(types::IPFamily::v4));
        assert_eq!((r[1].dest.as_str(), r[1].scope), ("fd01::/64", 253));
        assert_eq!(r[1].family.enum_value(), Ok(types::IPFamily::v6));
    }
}
