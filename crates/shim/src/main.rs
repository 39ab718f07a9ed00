//! `containerd-shim-capsa-v2`: containerd's runtime `io.containerd.capsa.v2`.
//!
//! One shim process per pod: the first task of a pod (its sandbox, or a
//! container without pod annotations) starts the VM; the pod's other
//! containers are created in the same VM by the same shim. The shim v2
//! plumbing (start/delete actions, ttRPC server, event publisher, log
//! FIFO) comes from the `containerd-shim` crate.

mod error;
mod events;
mod options;
mod pod;
mod process;
mod service;
mod shim;
mod stats;
mod stdio;
mod timeline;

/// The runtime's name for containerd.
pub const RUNTIME_ID: &str = "io.containerd.capsa.v2";

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<shim::CapsaShim>(RUNTIME_ID, None).await;
}
