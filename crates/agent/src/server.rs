//! The ttRPC server: binds (vsock port 1024 by default), serves the agent
//! API, and stops after DestroySandbox, once its reply is delivered (see
//! [`crate::connections`]).
//!
//! Message size: ttrpc-rust (0.10) refuses a frame whose payload is over
//! `ttrpc::proto::MESSAGE_LENGTH_MAX` (4 MiB): it reads and discards the
//! payload, answers that stream with INVALID_ARGUMENT ("message length N
//! exceed maximum message size of 4194304") and keeps the connection and
//! every other one serving. Methods bound their own fields further
//! (WriteStdin 1 MiB, ReseedRandomDev 64 KiB, CopyFile file size 256 MiB).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use capsa_protocols::AGENT_VSOCK_PORT;
use futures::StreamExt;
use tokio::time::{sleep, timeout, Instant};
use ttrpc::asynchronous::transport::Listener;
use ttrpc::asynchronous::Server;

use crate::connections::Tracker;
use crate::reaper::Reaper;
use crate::rpc;
use crate::sandbox::Sandbox;

/// Overrides the listen address (e.g. `unix:///tmp/agent.sock` to run the
/// agent on a host for tests).
pub const ADDRESS_ENV: &str = "CAPSA_AGENT_ADDR";
/// How long binding is retried (the vsock transport may still be coming up).
const BIND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the DestroySandbox reply gets to reach the host: the server
/// stops once every client closed its connection, or after this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// `vsock://-1:1024`: any CID, the agent port.
pub fn default_address() -> String {
    format!("vsock://-1:{AGENT_VSOCK_PORT}")
}

/// Starts the reaper and serves until DestroySandbox. An error is fatal.
pub async fn run(is_init: bool) -> anyhow::Result<()> {
    let reaper = Reaper::new();
    reaper.spawn().context("cannot start the reaper")?;
    let sandbox = Arc::new(Sandbox::new(reaper, is_init));
    // Nothing listens unless the kernel command line (or the environment)
    // asks for the debug console; binding may be retried for a while.
    tokio::task::spawn_blocking(crate::debug_console::start);
    // Likewise for the passfd I/O listener (`agent.passfd_listener_port`).
    tokio::task::spawn_blocking(crate::passfd::start);
    let address = std::env::var(ADDRESS_ENV).unwrap_or_else(|_| default_address());
    serve(sandbox, &address).await
}

/// Tells the host, on the console, that the agent listens (see
/// `capsa_protocols::AGENT_READY_LINE`). Only as PID 1: on a host the console
/// is not ours.
fn announce_ready() {
    if std::process::id() == 1 {
        crate::power::console_line(capsa_protocols::AGENT_READY_LINE);
    }
}

/// Serves `sandbox` on `address` until DestroySandbox.
pub async fn serve(sandbox: Arc<Sandbox>, address: &str) -> anyhow::Result<()> {
    let tracker = Tracker::new();
    let mut server = bind(address, &tracker).await?;
    for (name, service) in rpc::services(sandbox.clone()) {
        server = server.register_service(HashMap::from([(name, service)]));
    }
    server
        .start()
        .await
        .context("cannot start the ttRPC server")?;
    tracing::info!(%address, "serving the agent API");
    announce_ready();

    sandbox.shutdown_requested().await;
    // The reply to DestroySandbox is written after this point; a client
    // closes its connection once it has read it.
    if timeout(REPLY_TIMEOUT, tracker.all_closed()).await.is_err() {
        tracing::debug!(
            open = tracker.open(),
            "clients still connected {REPLY_TIMEOUT:?} after DestroySandbox: stopping anyway"
        );
    }
    if timeout(SHUTDOWN_TIMEOUT, server.shutdown()).await.is_err() {
        tracing::warn!("the ttRPC server did not stop in {SHUTDOWN_TIMEOUT:?}");
    }
    Ok(())
}

/// A server on `address` whose connections `tracker` counts.
async fn bind(address: &str, tracker: &Tracker) -> anyhow::Result<Server> {
    if let Some(path) = address.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    let deadline = Instant::now() + BIND_TIMEOUT;
    loop {
        match Listener::bind(address) {
            Ok(listener) => {
                let tracker = tracker.clone();
                let tracked = listener.map(move |conn| conn.map(|c| tracker.track(c)));
                return Ok(Server::new().add_listener(Listener::new(tracked)));
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%address, error = %e, "bind failed, retrying");
                sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot listen on {address}"));
            }
        }
    }
}
