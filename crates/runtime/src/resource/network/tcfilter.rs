//! The `tcfilter` model over netlink: taps, ingress qdiscs and mirred
//! redirects, made and removed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterMatchAllOption,
    TcFilterU32Option, TcHandle, TcMessage, TcMirrorActionType, TcOption,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};

use super::{
    format_mac, is_tap_name, tap, tap_name, Endpoint, IpNet, Neighbour, NetworkError, Route,
};

/// `ETH_P_ALL`: the filters match every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The filters' priority, as `tc` would pick for the first one.
const FILTER_PRIORITY: u16 = 49152;

struct Link {
    index: u32,
    name: String,
    mac: Vec<u8>,
    mtu: u32,
    kind: Option<InfoKind>,
    loopback: bool,
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        kind: None,
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = a.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

pub(super) struct Ctx {
    pub(super) handle: Handle,
    pub(super) netns: PathBuf,
}

impl Ctx {
    fn err(&self, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
        let netns = self.netns.clone();
        let what = what.into();
        move |source| NetworkError::Netlink {
            netns,
            what,
            source,
        }
    }

    async fn links(&self) -> Result<Vec<Link>, NetworkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.err("list links"))?;
        Ok(msgs.iter().map(link_of).collect())
    }

    async fn addresses(&self, link: &Link) -> Result<Vec<IpNet>, NetworkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(self.err(format!("list addresses of {}", link.name)))?;
        let mut out = Vec::new();
        for msg in msgs.iter().filter(|m| m.header.index == link.index) {
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => address = Some(*a),
                    _ => {}
                }
            }
            let Some(addr) = local.or(address) else {
                continue;
            };
            // The guest kernel makes its own link-local address.
            if matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
                continue;
            }
            out.push(IpNet {
                addr,
                prefix_len: msg.header.prefix_len,
            });
        }
        Ok(out)
    }

    /// The main table's routes through `link`, without the kernel's own
    /// (`proto kernel`: the guest kernel makes them from the addresses).
    async fn routes(&self, link: &Link) -> Result<Vec<Route>, NetworkError> {
        let mut msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.err("list IPv4 routes"))?;
        let v6: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.err("list IPv6 routes"))?;
        msgs.extend(v6);
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.table == RouteHeader::RT_TABLE_MAIN
                    && m.header.protocol != RouteProtocol::Kernel
                    && m.attributes
                        .iter()
                        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == link.index))
            })
            .map(route_of)
            .collect())
    }

    /// The permanent neighbours on `link` (those Kata's runtime copies).
    async fn neighbours(&self, link: &Link) -> Result<Vec<Neighbour>, NetworkError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.err("list neighbours"))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.ifindex == link.index && m.header.state == NeighbourState::Permanent
            })
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = String::new();
                for attr in &m.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            ip = Some(IpAddr::V4(*a))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            ip = Some(IpAddr::V6(*a))
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => mac = format_mac(l),
                        _ => {}
                    }
                }
                Some(Neighbour { ip: ip?, mac })
            })
            .collect())
    }

    /// The index of the link `name`, 0 when there is none.
    pub(super) async fn index_of(&self, name: &str) -> Result<u32, NetworkError> {
        // A dump rather than a get by name: the latter answers ENODEV for
        // a missing link, which is an answer here, not an error.
        let links = self.links().await?;
        Ok(links.iter().find(|l| l.name == name).map_or(0, |l| l.index))
    }

    async fn has_ingress(&self, index: u32) -> Result<bool, NetworkError> {
        let qdiscs: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .index(index as i32)
            .execute()
            .try_collect()
            .await
            .map_err(self.err("list qdiscs"))?;
        Ok(qdiscs
            .iter()
            .any(|q| q.header.index == index as i32 && q.header.parent == TcHandle::INGRESS))
    }

    /// `tc qdisc add dev FROM ingress` and `tc filter add dev FROM parent
    /// ffff: protocol all u32 match u8 0 0 action mirred egress redirect
    /// dev TO`.
    async fn mirror(&self, from: &Link, to: u32, to_name: &str) -> Result<(), NetworkError> {
        self.handle
            .qdisc()
            .add(from.index as i32)
            .ingress()
            .execute()
            .await
            .map_err(self.err(format!("add ingress qdisc to {}", from.name)))?;
        self.handle
            .traffic_filter(from.index as i32)
            .add()
            .ingress()
            .priority(FILTER_PRIORITY)
            // In network byte order, as `tc` sends it.
            .protocol(ETH_P_ALL.to_be())
            .redirect(to)
            .map_err(self.err(format!("build redirect {} -> {to_name}", from.name)))?
            .execute()
            .await
            .map_err(self.err(format!("add redirect filter {} -> {to_name}", from.name)))
    }

    /// The ifindexes that `index`'s ingress filters redirect to.
    async fn redirect_targets(&self, index: u32) -> Result<Vec<u32>, NetworkError> {
        let filters: Vec<TcMessage> = self
            .handle
            .traffic_filter(index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(self.err("list ingress filters"))?;
        Ok(filters.iter().flat_map(redirects_of).collect())
    }

    async fn del_ingress(&self, link: &Link) -> Result<(), NetworkError> {
        let mut req = self.handle.qdisc().del(link.index as i32);
        req.message_mut().header.parent = TcHandle::INGRESS;
        req.message_mut().header.handle = TcHandle::from(0xffff_0000);
        req.execute()
            .await
            .map_err(self.err(format!("delete ingress qdisc of {}", link.name)))
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_of(msg: &RouteMessage) -> Route {
    let mut route = Route {
        dest: None,
        gateway: None,
        source: None,
        scope: msg.header.scope.into(),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => {
                route.dest = ip_of(a).map(|addr| IpNet {
                    addr,
                    prefix_len: msg.header.destination_prefix_length,
                })
            }
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::PrefSource(a) => route.source = ip_of(a),
            _ => {}
        }
    }
    route
}

/// The targets of the `mirred egress redirect` actions of a filter (`u32`
/// or `matchall`).
fn redirects_of(filter: &TcMessage) -> Vec<u32> {
    let mut actions = Vec::new();
    for attr in &filter.attributes {
        if let TcAttribute::Options(opts) = attr {
            for opt in opts {
                match opt {
                    TcOption::U32(TcFilterU32Option::Action(a)) => actions.extend(a),
                    TcOption::MatchAll(TcFilterMatchAllOption::Action(a)) => actions.extend(a),
                    _ => {}
                }
            }
        }
    }
    let mut out = Vec::new();
    for action in actions {
        for attr in &action.attributes {
            if let TcActionAttribute::Options(opts) = attr {
                for opt in opts {
                    if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = opt {
                        if m.eaction == TcMirrorActionType::EgressRedir {
                            out.push(m.ifindex);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Whether the model gives the VM a NIC for a link of this kind.
fn mirrorable(kind: &Option<InfoKind>) -> bool {
    matches!(
        kind,
        Some(InfoKind::Veth) | Some(InfoKind::MacVlan) | Some(InfoKind::IpVlan)
    )
}

pub(super) async fn setup(handle: Handle, netns: PathBuf) -> Result<Vec<Endpoint>, NetworkError> {
    let ctx = Ctx { handle, netns };
    let mut made = Vec::new();
    match make(&ctx, &mut made).await {
        Ok(endpoints) => Ok(endpoints),
        Err(e) => {
            if let Err(undo) = remove(&ctx, Some(&made)).await {
                tracing::warn!(netns = %ctx.netns.display(), error = %undo, "undoing a failed network setup");
            }
            Err(e)
        }
    }
}

fn is_capsa_tap(link: &Link) -> bool {
    is_tap_name(&link.name) && link.kind == Some(InfoKind::Tun)
}

/// Makes the endpoints of the links not mirrored yet, naming each tap it
/// makes in `made` as soon as it exists (for the undo).
async fn make(ctx: &Ctx, made: &mut Vec<String>) -> Result<Vec<Endpoint>, NetworkError> {
    let links = ctx.links().await?;
    let taps: Vec<&Link> = links.iter().filter(|l| is_capsa_tap(l)).collect();
    let mut endpoints = Vec::new();
    for link in &links {
        if link.loopback || is_tap_name(&link.name) || !mirrorable(&link.kind) {
            continue;
        }
        let addresses = ctx.addresses(link).await?;
        if addresses.is_empty() {
            continue;
        }
        if ctx.has_ingress(link.index).await? {
            let targets = ctx.redirect_targets(link.index).await?;
            if targets
                .iter()
                .any(|t| taps.iter().any(|tap| tap.index == *t))
            {
                // Mirrored by an earlier set-up (a rescan): left as it is.
                continue;
            }
            return Err(NetworkError::IngressTaken {
                netns: ctx.netns.clone(),
                link: link.name.clone(),
            });
        }
        let routes = ctx.routes(link).await?;
        let neighbours = ctx.neighbours(link).await?;
        let tap_name = (0..)
            .map(tap_name)
            .find(|n| !made.contains(n) && !taps.iter().any(|t| &t.name == n))
            .expect("an unused tap name");
        tap::create_persistent(&tap_name).map_err(|source| NetworkError::Tap {
            netns: ctx.netns.clone(),
            name: tap_name.clone(),
            source,
        })?;
        made.push(tap_name.clone());
        let tap_index = ctx.index_of(&tap_name).await?;
        ctx.handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap_index)
                    .mtu(link.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(ctx.err(format!("set MTU {} and up on {tap_name}", link.mtu)))?;
        let tap_link = Link {
            index: tap_index,
            name: tap_name.clone(),
            mac: Vec::new(),
            mtu: link.mtu,
            kind: Some(InfoKind::Tun),
            loopback: false,
        };
        ctx.mirror(link, tap_index, &tap_name).await?;
        ctx.mirror(&tap_link, link.index, &link.name).await?;
        tracing::info!(netns = %ctx.netns.display(), link = %link.name, tap = %tap_name, "network endpoint ready");
        endpoints.push(Endpoint {
            name: link.name.clone(),
            mac: format_mac(&link.mac),
            mtu: link.mtu,
            addresses,
            routes,
            neighbours,
            tap: tap_name,
            netns: ctx.netns.clone(),
        });
    }
    Ok(endpoints)
}

pub(super) async fn teardown(
    handle: Handle,
    netns: PathBuf,
    only: Option<Vec<String>>,
) -> Result<Vec<String>, NetworkError> {
    remove(&Ctx { handle, netns }, only.as_deref()).await
}

/// Removes capsa's taps (all, or those named in `only`) and the ingress
/// qdiscs of the links that redirect to them.
async fn remove(ctx: &Ctx, only: Option<&[String]>) -> Result<Vec<String>, NetworkError> {
    let links = ctx.links().await?;
    let taps: Vec<&Link> = links
        .iter()
        .filter(|l| is_capsa_tap(l) && only.is_none_or(|names| names.contains(&l.name)))
        .collect();
    if taps.is_empty() {
        return Ok(Vec::new());
    }
    for link in links
        .iter()
        .filter(|l| !taps.iter().any(|t| t.index == l.index))
    {
        let targets = ctx.redirect_targets(link.index).await?;
        if targets
            .iter()
            .any(|t| taps.iter().any(|tap| tap.index == *t))
        {
            ctx.del_ingress(link).await?;
        }
    }
    let mut removed = Vec::new();
    for tap in taps {
        // The tap's own qdisc and filter go with it.
        ctx.handle
            .link()
            .del(tap.index)
            .execute()
            .await
            .map_err(ctx.err(format!("delete {}", tap.name)))?;
        removed.push(tap.name.clone());
    }
    tracing::info!(netns = %ctx.netns.display(), taps = ?removed, "network endpoints removed");
    Ok(removed)
}
