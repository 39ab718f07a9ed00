//! Host side of the pod's network: the links that CNI put in the pod's
//! network namespace become endpoints the VM's NICs stand on.
//!
//! With the `tcfilter` model (Kata's default), each veth with addresses
//! gets a tap `tap<N>_capsa` in the same netns with the veth's MTU, and an
//! `ingress` qdisc on both with a match-all `u32` filter whose action is
//! `mirred egress redirect` to the other: what arrives on the veth leaves
//! through the tap (to the VM), and back. The veth keeps its addresses;
//! the guest NIC gets the veth's MAC, addresses and routes (through the
//! agent). Teardown removes the taps and the veths' ingress qdiscs that
//! redirect to them, found in the netns itself so that it also works after
//! a crash, and nothing else.
//!
//! Netlink goes through `rtnetlink`, whose tc requests cover the ingress
//! qdisc and the `u32` + `mirred` redirect. The tap itself is made with the
//! `/dev/net/tun` ioctls (`tap.rs`): the kernel refuses to create tun/tap
//! devices over rtnetlink.

pub mod attachment;
pub mod cni;
pub mod guest;
mod netns;
mod nics;
mod tap;
mod tcfilter;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use nics::{log_teardown, NetworkResource};

/// The network a sandbox joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's network namespace (CNI set it up): its links become the
    /// VM's NICs. `None`: the VM has loopback only.
    pub netns: Option<PathBuf>,
    /// `resolv.conf` lines for the guest (CreateSandbox's `dns`).
    pub dns: Vec<String>,
}

/// How the pod's netns reaches the VM (`runtime.internetworking_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// A tap per veth, traffic mirrored by tc filters.
    TcFilter,
    /// A macvtap on each veth: not supported yet.
    MacVtap,
    /// No NIC in the VM.
    None,
}

impl FromStr for Model {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcfilter" => Ok(Model::TcFilter),
            "macvtap" => Ok(Model::MacVtap),
            "none" => Ok(Model::None),
            other => Err(NetworkError::UnknownModel(other.into())),
        }
    }
}

/// An address on a link, with its prefix length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A route that leaves through an endpoint's link, as the agent's
/// `UpdateRoutes` wants it. `dest` is `None` for a default route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    /// `rtm_scope` (0 universe, 253 link, 254 host).
    pub scope: u8,
}

/// A permanent neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    pub ip: IpAddr,
    /// `aa:bb:cc:dd:ee:ff`; empty if the entry has none.
    pub mac: String,
}

/// A link of the pod's netns that the VM gets a NIC for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The veth's name in the netns (`eth0`).
    pub name: String,
    /// The veth's MAC, `aa:bb:cc:dd:ee:ff`: the guest NIC gets it.
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<Route>,
    /// The permanent neighbours on the link (Kata copies only those).
    #[serde(default)]
    pub neighbours: Vec<Neighbour>,
    /// The tap made for it in the same netns (`tap0_capsa`).
    pub tap: String,
    /// The network namespace, as given (`/var/run/netns/cni-…`).
    pub netns: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("internetworking_model {0:?} is not one of tcfilter, macvtap, none")]
    UnknownModel(String),
    #[error("internetworking_model macvtap is not supported yet (use tcfilter)")]
    MacVtapNotSupported,
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("netlink in {netns}: {what}: {source}")]
    Netlink {
        netns: PathBuf,
        what: String,
        source: rtnetlink::Error,
    },
    #[error("tap {name} in {netns}: {source}")]
    Tap {
        netns: PathBuf,
        name: String,
        source: std::io::Error,
    },
    #[error("link {link} in {netns} already has an ingress qdisc that capsa did not make; refusing to replace it")]
    IngressTaken { netns: PathBuf, link: String },
    #[error("the netlink thread for {0} ended without an answer")]
    ThreadLost(PathBuf),
    #[error(transparent)]
    Cni(#[from] cni::CniError),
    #[error("network record {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("-p needs a network whose plugins map ports (capability portMappings); {0} has none")]
    NoPortMapping(String),
}

/// Finds the links of `netns` that the VM gets a NIC for and, for
/// `tcfilter`, makes their taps and filters. `none` gives no endpoint.
/// Links already mirrored to a tap of capsa's (an earlier call: a rescan
/// for a link that appeared later) are left alone: the endpoints returned
/// are the new ones. On an error, what this call made is removed again.
pub async fn setup(netns: &Path, model: Model) -> Result<Vec<Endpoint>, NetworkError> {
    match model {
        Model::None => Ok(Vec::new()),
        Model::MacVtap => Err(NetworkError::MacVtapNotSupported),
        Model::TcFilter => {
            let path = netns.to_path_buf();
            netns::run_in(netns, move |handle| tcfilter::setup(handle, path)).await
        }
    }
}

/// Removes the taps named `tap<N>_capsa` in `netns` and the ingress
/// qdiscs (with their filters) of the links that redirect to them. Safe to
/// call again, and after a crash: it looks at the netns, not at a record.
/// Returns the taps removed.
pub async fn teardown(netns: &Path) -> Result<Vec<String>, NetworkError> {
    let path = netns.to_path_buf();
    netns::run_in(netns, move |handle| tcfilter::teardown(handle, path, None)).await
}

/// Like [`teardown`] for the taps named in `taps` only (the endpoints of a
/// rescan whose NICs could not be attached).
pub async fn teardown_taps(netns: &Path, taps: Vec<String>) -> Result<Vec<String>, NetworkError> {
    let path = netns.to_path_buf();
    netns::run_in(netns, move |handle| {
        tcfilter::teardown(handle, path, Some(taps))
    })
    .await
}

/// [`teardown`] for code that cannot await (a `Drop`, the stale-state
/// collection): runs on a thread of its own and waits for it.
pub fn teardown_blocking(netns: &Path) -> Result<Vec<String>, NetworkError> {
    let path = netns.to_path_buf();
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetworkError::Netns {
                    path: path.clone(),
                    source,
                })?
                .block_on(teardown(&path))
        })
        .join()
        .unwrap_or_else(|_| Err(NetworkError::ThreadLost(path.clone())))
    })
}

/// Opens one queue of the endpoint's tap (`IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR`), from inside its netns: a fd to hand to the hypervisor,
/// which then needs no access to the netns.
pub async fn open_tap(endpoint: &Endpoint) -> Result<OwnedFd, NetworkError> {
    let name = endpoint.tap.clone();
    let netns = endpoint.netns.clone();
    netns::run_in(&endpoint.netns, move |handle| async move {
        let tap_err = |source| NetworkError::Tap {
            netns: netns.clone(),
            name: name.clone(),
            source,
        };
        let ctx = tcfilter::Ctx {
            handle,
            netns: netns.clone(),
        };
        if ctx.index_of(&name).await? == 0 {
            return Err(tap_err(std::io::ErrorKind::NotFound.into()));
        }
        tap::open(&name).map_err(tap_err)
    })
    .await
}

/// The name of the `n`th tap capsa makes in a netns.
pub fn tap_name(n: usize) -> String {
    format!("tap{n}_capsa")
}

/// Whether `name` is one of capsa's taps.
pub fn is_tap_name(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|rest| rest.strip_suffix("_capsa"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_have_kata_names() {
        assert_eq!("tcfilter".parse::<Model>().unwrap(), Model::TcFilter);
        assert_eq!("none".parse::<Model>().unwrap(), Model::None);
        assert_eq!("macvtap".parse::<Model>().unwrap(), Model::MacVtap);
        let err = "bridged".parse::<Model>().unwrap_err().to_string();
        assert!(err.contains("bridged"), "{err}");
    }

    #[test]
    fn tap_names_round_trip() {
        assert_eq!(tap_name(0), "tap0_capsa");
        assert!(is_tap_name(&tap_name(12)));
        assert!(!is_tap_name("tap_capsa"));
        assert!(!is_tap_name("tap0_kata"));
        assert!(!is_tap_name("eth0"));
        assert!(tap_name(999).len() < libc::IFNAMSIZ);
    }

    #[test]
    fn macs_are_lowercase_colon_separated() {
        assert_eq!(
            format_mac(&[0x02, 0xAB, 0, 1, 2, 0xff]),
            "02:ab:00:01:02:ff"
        );
    }
}
