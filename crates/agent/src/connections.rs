//! The server's connections, tracked until their peer closes them.
//!
//! DestroySandbox is answered, then the VM powers off. Writing the reply
//! into the socket is not enough: over virtio-vsock it still has to leave
//! the guest kernel and cross the host's vsock backend, and a power-off
//! meanwhile loses it (the client sees the connection close unanswered).
//! The guest cannot see when the host has read the bytes (Linux 6.1 has no
//! `SIOCOUTQ` for vsock), but a client closes its connection only after it
//! has its reply: so the agent powers off once every connection is closed
//! by its peer, or after a bound ([`Tracker::all_closed`]).
//!
//! ttrpc 0.10's `Server::shutdown` does not help here: it waits until the
//! reply is handed to the socket, not until it is delivered.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Counts the open connections. Cheap to clone.
#[derive(Clone)]
pub struct Tracker {
    open: Arc<watch::Sender<usize>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            open: Arc::new(watch::channel(0).0),
        }
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps a new connection; it counts as open until its peer closes it
    /// (a read sees end of file or fails) or it is dropped.
    pub fn track<S>(&self, inner: S) -> Tracked<S> {
        self.open.send_modify(|n| *n += 1);
        Tracked {
            inner,
            open: Some(Open(self.open.clone())),
        }
    }

    /// The number of open connections.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Returns once no connection is open.
    pub async fn all_closed(&self) {
        let mut rx = self.open.subscribe();
        // The sender lives in `self`: the channel cannot close.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One open connection in the count; leaves it when dropped.
struct Open(Arc<watch::Sender<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A connection whose end is seen by its [`Tracker`].
pub struct Tracked<S> {
    inner: S,
    open: Option<Open>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
