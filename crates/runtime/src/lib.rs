//! capsa's sandbox runtime.
//!
//! Turns a configuration into a running sandbox (a VM with its helpers and an
//! agent), puts containers in it and takes everything down again, leaving
//! nothing behind.

pub mod attach;
pub mod console;
pub mod control;
mod error;
pub mod health;
pub mod io;
pub mod metrics;
pub mod otel;
pub mod policy;
pub mod record;
pub mod request;
pub mod resource;
pub mod run;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod timeline;
pub mod vm;

pub use attach::{Found, Liveness};
/// The configuration, its shared keys and the driver's checked.
pub use capsa_hypervisor::{load_config, parse_config};
pub use error::{chain as error_chain, Error};
pub use io::{GuestProcess, Stdio};
pub use request::SandboxRequest;
pub use resource::network::PodNetwork;
pub use run::{run, run_detached, RunNetwork, RunSpec};
pub use sandbox::Sandbox;
pub use spec::{ProcessSpec, Volume};
pub use timeline::Timeline;
pub use vm::VmSize;
