//! The guest's network, as the agent API configures it (Kata's semantics):
//! interfaces found by hardware address ([`link`]), the routes the runtime
//! copies from the pod's network namespace ([`route`]), permanent ARP
//! neighbours ([`neigh`]) and the sandbox's DNS ([`dns`]). Netlink through
//! the `rtnetlink` crate; one connection per request.

pub mod convert;
pub mod dns;
pub mod link;
pub mod neigh;
pub mod route;

use std::net::IpAddr;

use rtnetlink::Handle;

/// What went wrong, naming the input.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid hardware address {0:?} (expected six hex bytes, e.g. 02:42:ac:11:00:02)")]
    HwAddr(String),
    #[error("invalid IP address {0:?}")]
    Address(String),
    #[error("invalid mask {0:?} for address {1}")]
    Mask(String, IpAddr),
    #[error("invalid route destination {0:?}")]
    Destination(String),
    #[error("invalid gateway {0:?}")]
    Gateway(String),
    #[error("invalid route source {0:?}")]
    Source(String),
    #[error("the request has no interface")]
    NoInterface,
    #[error("the neighbour has no IP address")]
    NoNeighbourAddress,
    #[error("no link with hardware address {0} (waited {1:?})")]
    NoLinkWithMac(String, std::time::Duration),
    #[error("no link named {0:?}")]
    NoLinkNamed(String),
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetworkError {
    /// Whether the request is at fault (not the guest).
    pub fn is_invalid(&self) -> bool {
        !matches!(
            self,
            Self::NoLinkWithMac(..)
                | Self::NoLinkNamed(_)
                | Self::Connect(_)
                | Self::Netlink { .. }
                | Self::Write { .. }
        )
    }

    /// Whether the request names a link the guest does not have.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NoLinkWithMac(..) | Self::NoLinkNamed(_))
    }
}

/// `source` as a netlink error while doing `what`.
pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// A netlink handle whose connection runs in its own task (ended when the
/// handle is dropped).
pub async fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}
