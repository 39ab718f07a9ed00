//! The ttRPC server: binds (vsock port 1024 by default), serves the agent
//! API, and stops after DestroySandbox, once its reply is written and its
//! client closed the connection (see
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
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
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
/// How long the DestroySandbox reply gets to reach the host once it is
/// written: the agent stops once every client closed its connection
/// (a ttRPC client does when it reads the end of the stream that follows
/// the reply), or after this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server gets to finish its handlers and write their replies.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

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
    let listener = bind(address).await?;
    tracing::info!(%address, "serving the agent API");
    serve_on(sandbox, listener).await
}

/// Serves `sandbox` on the connections `incoming` yields until
/// DestroySandbox, then waits (bounded) until every client closed its
/// connection. [`serve`] on a bound address; tests on in-memory streams.
pub async fn serve_on<S>(
    sandbox: Arc<Sandbox>,
    incoming: impl Stream<Item = std::io::Result<S>> + Send + 'static,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
{
    let tracker = Tracker::new();
    let tracked = {
        let tracker = tracker.clone();
        incoming.map(move |conn| conn.map(|c| tracker.track(c)))
    };
    let mut server = Server::new().add_listener(Listener::new(tracked));
    for (name, service) in rpc::services(sandbox.clone()) {
        server = server.register_service(HashMap::from([(name, service)]));
    }
    server
        .start()
        .await
        .context("cannot start the ttRPC server")?;
    announce_ready();

    sandbox.shutdown_requested().await;
    // Stopping the server waits until every reply, DestroySandbox's too,
    // is written and flushed; the connections it drops stay open, their
    // sending side shut behind the reply, until each peer closes its own.
    tracker.keep_on_drop();
    if timeout(SHUTDOWN_TIMEOUT, server.shutdown()).await.is_err() {
        tracing::warn!("the ttRPC server did not stop in {SHUTDOWN_TIMEOUT:?}");
    }
    if timeout(REPLY_TIMEOUT, tracker.all_closed()).await.is_err() {
        tracing::warn!(
            open = tracker.open(),
            "clients still connected {REPLY_TIMEOUT:?} after DestroySandbox: stopping anyway"
        );
    }
    Ok(())
}

/// A listener on `address`.
async fn bind(address: &str) -> anyhow::Result<Listener> {
    if let Some(path) = address.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    let deadline = Instant::now() + BIND_TIMEOUT;
    loop {
        match Listener::bind(address) {
            Ok(listener) => return Ok(listener),
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
