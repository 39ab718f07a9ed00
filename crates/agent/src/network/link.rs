//! Interfaces: list them, and configure one found by hardware address.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use capsa_protocols::types::Interface;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::convert::{format_mac, ip_address, parse_mac, to_ip_address};
use super::{netlink, NetworkError};

/// All links.
pub async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list links"))
}

pub fn name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => Some(format_mac(b)),
        _ => None,
    })
}

/// How long UpdateInterface waits for a hot-plugged NIC's link (TCG under
/// load is slow to probe a device).
pub const HOTPLUG_WAIT: Duration = Duration::from_secs(10);
/// How often the links are listed while waiting.
const POLL: Duration = Duration::from_millis(100);

/// The link whose hardware address is `mac` (lower case), waited for at
/// most `wait`.
async fn find_by_mac(
    handle: &Handle,
    mac_addr: &str,
    wait: Duration,
) -> Result<LinkMessage, NetworkError> {
    let start = Instant::now();
    loop {
        if let Some(link) = links(handle)
            .await?
            .into_iter()
            .find(|l| mac(l).as_deref() == Some(mac_addr))
        {
            return Ok(link);
        }
        if start.elapsed() >= wait {
            return Err(NetworkError::NoLinkWithMac(mac_addr.to_string(), wait));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The index of the link named `name`.
pub async fn index_by_name(handle: &Handle, wanted: &str) -> Result<u32, NetworkError> {
    links(handle)
        .await?
        .iter()
        .find(|l| name(l) == Some(wanted))
        .map(|l| l.header.index)
        .ok_or_else(|| NetworkError::NoLinkNamed(wanted.to_string()))
}

/// The addresses on link `index`, with their prefix lengths.
async fn addresses(handle: &Handle, index: u32) -> Result<Vec<AddressMessage>, NetworkError> {
    handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("list the addresses of link {index}")))
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address on point-to-point links;
    // IFA_ADDRESS otherwise.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// `link` in the API's form, with its addresses.
pub fn to_interface(link: &LinkMessage, addrs: &[AddressMessage]) -> Interface {
    let name = name(link).unwrap_or_default().to_string();
    let mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    });
    Interface {
        device: name.clone(),
        name,
        IPAddresses: addrs
            .iter()
            .filter_map(|a| address_of(a).map(|ip| to_ip_address(ip, a.header.prefix_len)))
            .collect(),
        mtu: mtu.unwrap_or_default().into(),
        hwAddr: mac(link).unwrap_or_default(),
        type_: kind.unwrap_or_default(),
        raw_flags: link.header.flags.bits(),
        ..Default::default()
    }
}

/// Every interface, loopback included (as Kata's agent answers).
pub async fn list(handle: &Handle) -> Result<Vec<Interface>, NetworkError> {
    let mut out = Vec::new();
    for link in links(handle).await? {
        let addrs = addresses(handle, link.header.index).await?;
        out.push(to_interface(&link, &addrs));
    }
    Ok(out)
}

/// Brings the link named `name` up (loopback at sandbox creation).
pub async fn up(handle: &Handle, name: &str) -> Result<(), NetworkError> {
    let index = index_by_name(handle, name).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("bring {name} up")))
}

/// Configures the link whose hardware address is `iface.hwAddr`: name, MTU,
/// addresses (they replace the link's), then up. Returns the interface as
/// it now is.
pub async fn update(handle: &Handle, iface: &Interface) -> Result<Interface, NetworkError> {
    let wanted = parse_mac(&iface.hwAddr)?;
    let wanted_addrs = iface
        .IPAddresses
        .iter()
        .map(ip_address)
        .collect::<Result<Vec<_>, _>>()?;
    // A NIC hot-plugged for this request (it names its PCI path) may not
    // be a link yet.
    let wait = if iface.devicePath.is_empty() {
        Duration::ZERO
    } else {
        HOTPLUG_WAIT
    };
    let link = find_by_mac(handle, &format_mac(&wanted), wait).await?;
    let index = link.header.index;
    let old_name = name(&link).unwrap_or_default().to_string();
    tracing::info!(link = %old_name, mac = %iface.hwAddr, name = %iface.name, mtu = iface.mtu, "updating interface");

    // A link is renamed while down.
    let mut set = LinkUnspec::new_with_index(index).down();
    if !iface.name.is_empty() && iface.name != old_name {
        set = set.name(iface.name.clone());
    }
    if iface.mtu > 0 {
        set = set.mtu(iface.mtu as u32);
    }
    handle
        .link()
        .set(set.build())
        .execute()
        .await
        .map_err(netlink(format!("set name/MTU of link {old_name}")))?;

    for old in addresses(handle, index).await? {
        let keep =
            address_of(&old).is_some_and(|ip| wanted_addrs.contains(&(ip, old.header.prefix_len)));
        if !keep {
            handle
                .address()
                .del(old)
                .execute()
                .await
                .map_err(netlink(format!("remove an address of link {old_name}")))?;
        }
    }
    for (ip, len) in &wanted_addrs {
        handle
            .address()
            .add(index, *ip, *len)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("add {ip}/{len} to link {old_name}")))?;
    }

    let mut up = LinkUnspec::new_with_index(index).up();
    if iface.raw_flags & LinkFlags::Noarp.bits() != 0 {
        up = up.arp(false);
    }
    handle
        .link()
        .set(up.build())
        .execute()
        .await
        .map_err(netlink(format!("bring link {old_name} up")))?;

    let link = links(handle)
        .await?
        .into_iter()
        .find(|l| l.header.index == index)
        .ok_or_else(|| NetworkError::NoLinkWithMac(format_mac(&wanted), Duration::ZERO))?;
    Ok(to_interface(&link, &addresses(handle, index).await?))
}
