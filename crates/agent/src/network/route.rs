//! Routes: list the main table; replace the routes the agent manages.
//!
//! The agent manages every main-table route the kernel did not make itself
//! (`proto kernel`: the prefix routes of addresses) and no local/broadcast
//! routes: UpdateRoutes removes those and adds the given list, link routes
//! (no gateway) first so that gateways are reachable when their routes come.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capsa_protocols::types::Route;
use futures::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::convert::{format_dest, parse_dest, parse_optional_ip};
use super::{link, netlink, NetworkError};

/// The main routing table (RT_TABLE_MAIN).
const MAIN_TABLE: u8 = 254;

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The unicast routes of the main table, both families.
async fn main_routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetworkError> {
    let mut out = Vec::new();
    let dumps = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for dump in dumps {
        let routes: Vec<RouteMessage> = handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("list routes"))?;
        out.extend(
            routes
                .into_iter()
                .filter(|r| r.header.table == MAIN_TABLE && r.header.kind == RouteType::Unicast),
        );
    }
    Ok(out)
}

/// `r` in the API's form; `names` maps link indexes to names.
pub fn to_route(r: &RouteMessage, names: &dyn Fn(u32) -> String) -> Route {
    let mut out = Route {
        scope: u8::from(r.header.scope).into(),
        flags: r.header.flags.bits(),
        ..Default::default()
    };
    let mut dest = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                dest = ip(d).map(|ip| (ip, r.header.destination_prefix_length));
            }
            RouteAttribute::Gateway(g) => {
                out.gateway = ip(g).map(|i| i.to_string()).unwrap_or_default()
            }
            RouteAttribute::PrefSource(s) => {
                out.source = ip(s).map(|i| i.to_string()).unwrap_or_default()
            }
            RouteAttribute::Oif(i) => out.device = names(*i),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(mtu) = m {
                        out.mtu = *mtu;
                    }
                }
            }
            _ => {}
        }
    }
    out.dest = format_dest(dest);
    let v6 = r.header.address_family == AddressFamily::Inet6;
    out.family = if v6 {
        capsa_protocols::types::IPFamily::v6
    } else {
        capsa_protocols::types::IPFamily::v4
    }
    .into();
    out
}

/// The main table's routes in the API's form.
pub async fn list(handle: &Handle) -> Result<Vec<Route>, NetworkError> {
    let links = link::links(handle).await?;
    let names = |i: u32| {
        links
            .iter()
            .find(|l| l.header.index == i)
            .and_then(link::name)
            .unwrap_or_default()
            .to_string()
    };
    Ok(main_routes(handle)
        .await?
        .iter()
        .map(|r| to_route(r, &names))
        .collect())
}

/// A requested route as a netlink message; `index` is its device's.
pub fn to_message(r: &Route, index: Option<u32>) -> Result<RouteMessage, NetworkError> {
    let dest = parse_dest(&r.dest)?;
    let gateway = parse_optional_ip(&r.gateway, NetworkError::Gateway)?;
    let source = parse_optional_ip(&r.source, NetworkError::Source)?;
    let v6 = [dest.map(|d| d.0), gateway, source]
        .into_iter()
        .flatten()
        .next()
        .map(|ip| ip.is_ipv6())
        .unwrap_or(r.family.enum_value_or_default() == capsa_protocols::types::IPFamily::v6);
    // One family for all of the route's addresses (no RTA_VIA).
    if let Some(g) = gateway.filter(|g| g.is_ipv6() != v6) {
        return Err(NetworkError::Gateway(g.to_string()));
    }
    if let Some(s) = source.filter(|s| s.is_ipv6() != v6) {
        return Err(NetworkError::Source(s.to_string()));
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    b.get_mut().header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    if let Some((d, len)) = dest {
        b = b
            .destination_prefix(d, len)
            .map_err(|_| NetworkError::Destination(r.dest.clone()))?;
    }
    if let Some(g) = gateway {
        b = b
            .gateway(g)
            .map_err(|_| NetworkError::Gateway(r.gateway.clone()))?;
    }
    if let Some(s) = source {
        b = b
            .pref_source(s)
            .map_err(|_| NetworkError::Source(r.source.clone()))?;
    }
    if let Some(i) = index {
        b = b.output_interface(i);
    }
    let mut msg = b
        .scope(RouteScope::from(r.scope as u8))
        .protocol(RouteProtocol::Boot)
        .table_id(MAIN_TABLE.into())
        .build();
    if r.mtu > 0 {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(r.mtu)]));
    }
    Ok(msg)
}

/// Link routes (no gateway) before gateway routes.
pub fn ordered(routes: &[Route]) -> Vec<&Route> {
    let (link, via): (Vec<&Route>, Vec<&Route>) = routes.iter().partition(|r| r.gateway.is_empty());
    link.into_iter().chain(via).collect()
}

/// Replaces the managed routes with `routes`; returns the table as it now
/// is.
pub async fn update(handle: &Handle, routes: &[Route]) -> Result<Vec<Route>, NetworkError> {
    // Validate everything before changing anything.
    let mut wanted = Vec::new();
    for r in ordered(routes) {
        let index = if r.device.is_empty() {
            None
        } else {
            Some(link::index_by_name(handle, &r.device).await?)
        };
        wanted.push((to_message(r, index)?, r));
    }
    for old in main_routes(handle).await? {
        if old.header.protocol == RouteProtocol::Kernel {
            continue;
        }
        handle
            .route()
            .del(old)
            .execute()
            .await
            .map_err(netlink("remove a route"))?;
    }
    for (msg, r) in wanted {
        tracing::info!(dest = %r.dest, gateway = %r.gateway, device = %r.device, "adding route");
        handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!(
                "add route to {:?} via {:?} dev {:?}",
                r.dest, r.gateway, r.device
            )))?;
    }
    list(handle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dest: &str, gateway: &str, device: &str) -> Route {
        Route {
            dest: dest.into(),
            gateway: gateway.into(),
            device: device.into(),
            ..Default::default()
        }
    }

    #[test]
    fn link_routes_come_before_gateway_routes() {
        let routes = [
            route("", "10.0.0.1", "eth0"),
            route("10.0.0.0/24", "", "eth0"),
            route("10.9.0.0/16", "10.0.0.1", "eth0"),
        ];
        let order: Vec<_> = ordered(&routes).iter().map(|r| r.dest.as_str()).collect();
        assert_eq!(order, vec!["10.0.0.0/24", "", "10.9.0.0/16"]);
    }

    #[test]
    fn requests_become_messages_and_back() {
        let mut r = route("10.9.0.0/16", "10.0.0.1", "eth0");
        r.mtu = 1400;
        r.scope = 0;
        let msg = to_message(&r, Some(7)).unwrap();
        assert_eq!(msg.header.destination_prefix_length, 16);
        assert_eq!(msg.header.address_family, AddressFamily::Inet);
        assert_eq!(msg.header.table, MAIN_TABLE);
        let back = to_route(&msg, &|i| format!("if{i}"));
        assert_eq!(back.dest, "10.9.0.0/16");
        assert_eq!(back.gateway, "10.0.0.1");
        assert_eq!(back.device, "if7");
        assert_eq!(back.mtu, 1400);

        let default6 = to_message(&route("", "fd00::1", ""), None).unwrap();
        assert_eq!(default6.header.address_family, AddressFamily::Inet6);
        assert_eq!(default6.header.destination_prefix_length, 0);
        assert_eq!(to_route(&default6, &|_| String::new()).dest, "");
    }

    #[test]
    fn bad_routes_are_named() {
        let e = to_message(&route("10.0.0.0/24", "10.0.0", ""), None).unwrap_err();
        assert!(e.to_string().contains("\"10.0.0\""), "{e}");
        let e = to_message(&route("10.0.0.0/24", "fd00::1", ""), None).unwrap_err();
        assert!(e.to_string().contains("fd00::1"), "{e}");
    }
}
