//! Prometheus metrics of a sandbox, as Kata's shim serves them.
//!
//! The sandbox's owner (the shim, or the `capsa` process owning a `capsa
//! run` sandbox) serves `<state dir>/metrics.sock` ([`server`]): its own
//! families (`capsa_shim_*`, [`owner`]), its VMM's and virtiofsd's
//! (`capsa_hypervisor_*`, `capsa_virtiofsd_*`, [`host`]), and the guest's
//! and agent's (`capsa_guest_*`, `capsa_agent_*`) from the agent's
//! GetMetrics, checked by [`text`] before they are passed on. `capsa
//! monitor` finds the sockets and scrapes them ([`scrape`]).
//!
//! `prometheus-client` (the Prometheus project's Rust client) encodes the
//! host's families; the text format is parsed by capsa's own [`text`]
//! module, since no maintained crate parses it with the limits untrusted
//! input needs.

pub mod host;
pub mod owner;
pub mod scrape;
pub mod server;
pub mod steps;
pub mod text;

pub use owner::{health_check_failed, observe_rpc};
pub use scrape::{scrape, targets, CriPod, Target};
pub use server::PodServer;
pub use steps::StepLayer;
