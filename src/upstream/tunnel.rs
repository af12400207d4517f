//! Upgraded connections: after a backend answers an HTTP/1.1 `Upgrade` (WebSocket, mostly) with
//! `101 Switching Protocols`, the client's connection and the backend's carry bytes both ways
//! until either side closes, nothing moves for `tunnel_idle_timeout`, or the drain ends.
//!
//! A tunnel is not request work: it holds no admission slot (its handshake was admitted like any
//! request, and the slot is freed with the 101). It holds a place among the upstream's
//! `max_upgraded` instead ([`TunnelPermit`]), reserved before the handshake is forwarded, so a
//! handshake beyond the cap is answered 503 `upgrade_limit` without reaching the backend.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::stream::BackendStream;
use crate::admission::Pool;
use crate::telemetry::{Direction, TunnelCounters};

/// Room for the bytes in flight each way: a WebSocket frame of a chat or a dashboard fits whole,
/// and a large one moves in few reads.
const BUF: usize = 16 * 1024;

/// A place among an upstream's `max_upgraded` tunnels, given back when dropped: when the
/// handshake is answered without a 101, or when the tunnel ends.
#[derive(Debug)]
pub struct TunnelPermit {
    pool: Arc<Pool>,
}

impl TunnelPermit {
    /// A place if fewer than `max` tunnels (and handshakes) are open to the upstream.
    pub(super) fn reserve(pool: &Arc<Pool>, max: usize) -> Option<TunnelPermit> {
        let open = &pool.counters().tunnels.open;
        let mut n = open.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match open.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(TunnelPermit {
                        pool: Arc::clone(pool),
                    });
                }
                Err(now) => n = now,
            }
        }
    }

    fn counters(&self) -> &TunnelCounters {
        &self.pool.counters().tunnels
    }
}

impl Drop for TunnelPermit {
    fn drop(&mut self) {
        self.counters().open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backend's side of an upgraded connection, waiting for the client's: made when the 101
/// arrives, run by the client connection's task once hyper has written the 101
/// ([`Upgraded::run`]). Dropped unrun, it closes the backend connection and gives its place
/// back.
pub struct Upgraded {
    backend: BackendStream,
    /// What the backend sent after its 101, before the tunnel started.
    ahead: Bytes,
    permit: TunnelPermit,
    idle_timeout: Duration,
}

impl Upgraded {
    pub(super) fn new(
        backend: BackendStream,
        ahead: Bytes,
        permit: TunnelPermit,
        idle_timeout: Duration,
    ) -> Upgraded {
        Upgraded {
            backend,
            ahead,
            permit,
            idle_timeout,
        }
    }

    /// Carries bytes between `client` and the backend until both have closed their side, one
    /// fails, or neither sends anything for `tunnel_idle_timeout`. `client_ahead` is what the
    /// client sent after its request head, before the 101 (the server had read it); it goes to
    /// the backend first. A side that closes is shut down on the other (a half-close is kept).
    pub async fn run<C>(self, client: C, client_ahead: Bytes) -> io::Result<()>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let Upgraded {
            backend,
            ahead,
            permit,
            idle_timeout,
        } = self;
        let counters = permit.counters();
        counters.count_opened();
        let start = Instant::now();
        // Nanoseconds from `start` to the last byte read from either side.
        let last = AtomicU64::new(0);
        let (to_backend, to_client) = (Direction::ToBackend, Direction::ToClient);
        let mut client = Side::new(client, client_ahead, to_backend, counters, (&last, start));
        let mut backend = Side::new(backend, ahead, to_client, counters, (&last, start));
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, BUF, BUF);
        let idle = async {
            loop {
                let at = start + Duration::from_nanos(last.load(Ordering::Relaxed)) + idle_timeout;
                if Instant::now() >= at {
                    return;
                }
                tokio::time::sleep_until(at).await;
            }
        };
        tokio::select! {
            copied = copy => copied.map(|_| ()),
            () = idle => {
                counters.count_idle_close();
                tracing::debug!(?idle_timeout, "tunnel idle: closed");
                Ok(())
            }
        }
    }
}

/// One end of a tunnel: what was read ahead of it first, then its stream; every read counted
/// and noted as activity.
struct Side<'a, S> {
    io: S,
    ahead: Bytes,
    /// Where the bytes read from this side go.
    way: Direction,
    counters: &'a TunnelCounters,
    last: &'a AtomicU64,
    start: Instant,
}

impl<'a, S> Side<'a, S> {
    fn new(
        io: S,
        ahead: Bytes,
        way: Direction,
        counters: &'a TunnelCounters,
        (last, start): (&'a AtomicU64, Instant),
    ) -> Side<'a, S> {
        Side {
            io,
            ahead,
            way,
            counters,
            last,
            start,
        }
    }

    fn read(&self, n: usize) {
        if n > 0 {
            self.counters.carried(self.way, n);
            let since = self.start.elapsed().as_nanos();
            self.last
                .fetch_max(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Side<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            this.read(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.read(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Side<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
