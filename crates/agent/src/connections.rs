//! The server's connections, tracked until their peer closes them.
//!
//! DestroySandbox is answered, then the VM powers off. Writing the reply
//! into the socket is not enough: over virtio-vsock it still has to leave
//! the guest kernel and cross the host's vsock backend, and a power-off
//! meanwhile loses it (the client sees the connection close unanswered).
//! The guest cannot see when the host has read the bytes (Linux 6.1 has no
//! `SIOCOUTQ` for vsock), but a client closes its connection once it has
//! its reply, or once it reads the end of the stream after it. So after
//! DestroySandbox the agent:
//!
//! 1. stops the ttRPC server, which returns once every handler's reply is
//!    written and flushed ([`Tracker::keep_on_drop`] keeps the sockets
//!    ttrpc then drops open);
//! 2. shuts each kept socket's sending side, so the end of the stream
//!    travels behind the reply, and reads until the peer closes;
//! 3. powers off once every connection is closed by its peer, or after a
//!    bound ([`Tracker::all_closed`]).
//!
//! The earlier order (wait for the peers, then stop the server) left a
//! client that keeps its connection open, as Kata's runtime does, waiting
//! for an end of stream that came only with the power-off: the agent then
//! powered off on a timer, with nothing telling it the reply had left.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

/// What a tracked connection wraps.
trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for S {}

/// Counts the open connections. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracker {
    shared: Arc<Shared>,
}

struct Shared {
    open: watch::Sender<usize>,
    /// Set once the server stops: a connection dropped by the server is
    /// then kept until its peer closes it.
    keep: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            open: watch::channel(0).0,
            keep: AtomicBool::new(false),
        }
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps a new connection; it counts as open until its peer closes it
    /// (a read sees end of file or fails), or it is dropped before
    /// [`Tracker::keep_on_drop`].
    pub fn track<S>(&self, inner: S) -> Tracked
    where
        S: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
    {
        self.shared.open.send_modify(|n| *n += 1);
        Tracked {
            inner: Some(Box::new(inner)),
            open: Some(Open(self.shared.clone())),
        }
    }

    /// From now on a connection the server drops while its peer still
    /// holds it is not closed: its sending side is shut (after everything
    /// written before) and it is read until the peer closes it. Needs a
    /// tokio runtime where connections are dropped.
    pub fn keep_on_drop(&self) {
        self.shared.keep.store(true, Ordering::SeqCst);
    }

    /// The number of open connections.
    pub fn open(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Returns once no connection is open.
    pub async fn all_closed(&self) {
        let mut rx = self.shared.open.subscribe();
        // The sender lives in `self`: the channel cannot close.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One open connection in the count; leaves it when dropped.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A connection whose end is seen by its [`Tracker`].
pub struct Tracked {
    inner: Option<Box<dyn Stream>>,
    open: Option<Open>,
}

impl Tracked {
    fn inner(&mut self) -> Pin<&mut (dyn Stream + 'static)> {
        // `inner` is taken only in `drop`.
        Pin::new(self.inner.as_deref_mut().expect("a live connection"))
    }
}

/// Shuts the sending side of `stream` and reads it until its peer closes
/// it (or it fails); then `open` leaves the count.
async fn linger(mut stream: Box<dyn Stream>, open: Open) {
    if let Err(e) = stream.shutdown().await {
        tracing::debug!(error = %e, "cannot shut the sending side of a connection");
    }
    let mut sink = [0u8; 512];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
    drop(open);
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let (Some(stream), Some(open)) = (self.inner.take(), self.open.take()) else {
            return;
        };
        if !open.0.keep.load(Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(linger(stream, open));
            }
            Err(_) => tracing::debug!("no runtime to keep a connection open in"),
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let polled = self.inner().poll_read(cx, buf);
        let closed = match &polled {
            Poll::Ready(Ok(())) => room && buf.filled().len() == before,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if closed {
            self.open = None;
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.inner().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_counts_until_its_peer_closes_it() {
        let tracker = Tracker::new();
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut ours = tracker.track(ours);
        assert_eq!(tracker.open(), 1);

        peer.write_all(b"request").await.unwrap();
        let mut buf = [0u8; 7];
        ours.read_exact(&mut buf).await.unwrap();
        ours.write_all(b"reply").await.unwrap();
        assert_eq!(tracker.open(), 1, "a live connection stays open");

        let reader = tokio::spawn(async move {
            let mut rest = Vec::new();
            ours.read_to_end(&mut rest).await.unwrap();
            ours
        });
        let mut reply = [0u8; 5];
        peer.read_exact(&mut reply).await.unwrap();
        drop(peer);
        tokio::time::timeout(Duration::from_secs(5), tracker.all_closed())
            .await
            .expect("the peer's close is seen");
        // The connection itself is still alive: only its peer went.
        let ours = reader.await.unwrap();
        assert_eq!(tracker.open(), 0);
        drop(ours);
        assert_eq!(tracker.open(), 0, "counted once");
    }

    #[tokio::test]
    async fn a_dropped_connection_is_closed() {
        let tracker = Tracker::new();
        let (a, _b) = tokio::io::duplex(8);
        let (c, _d) = tokio::io::duplex(8);
        let a = tracker.track(a);
        let c = tracker.track(c);
        assert_eq!(tracker.open(), 2);
        drop(a);
        assert_eq!(tracker.open(), 1);
        drop(c);
        tokio::time::timeout(Duration::from_secs(1), tracker.all_closed())
            .await
            .expect("no connection left");
    }
}
