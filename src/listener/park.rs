//! Idle HTTP/1 connections give back their server's state ("parking").
//!
//! hyper keeps an HTTP/1 connection's state for the connection's whole life: an 8 KiB read
//! buffer, an 8 KiB write buffer, its dispatcher and the boxed connection future, about 19 KB
//! allocated, of which the pages the last request and answer touched stay resident. A sidecar
//! in front of a service with many keep-alive clients holds mostly idle connections, so that is
//! what it costs.
//!
//! When an HTTP/1 connection has been idle for [`PARK_AFTER`], with its last answer written,
//! [`GuardedIo`] asks the server to park ([`Connection::ask_park`]). The server is shut down
//! gracefully, which an idle hyper connection does at once, without closing the stream
//! (`poll_without_shutdown`); the stream, the service and any bytes hyper had read and not parsed
//! are taken back, and the rest is freed. The connection then waits with nothing but its stream
//! and its deadlines ([`GuardedIo::poll_wake`], under the idle deadline and the drain). The first
//! bytes of the next request are read ahead, and a new server is made for them; it reads them
//! first. A client sees no difference.
//!
//! A connection whose requests come closer together than [`PARK_AFTER`] never parks: the cost
//! of parking (a new server for the next request, about a microsecond) is paid only by
//! connections idle for longer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::connection::{ClientGone, Connection};
use super::drain::Watch;
use super::service::Tracked;
use super::watchdog::GuardedIo;
use crate::upstream::Upgraded;

/// Serves HTTP/1 on one connection until it ends, parking it whenever it is idle long enough.
/// `None` when the drain aborted it.
///
/// A function returning a block rather than an `async fn`, which would keep its arguments twice:
/// this future is the connection task's for the connection's whole life, parked included.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub fn serve<'a, S, Svc>(
    builder: &'a http1::Builder,
    watch: &'a Watch,
    mut io: GuardedIo<S>,
    mut service: Svc,
    conn: Arc<Connection>,
) -> impl Future<Output = Option<hyper::Result<()>>> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    Svc: HttpService<Incoming, ResBody = Tracked, Error = ClientGone> + Send + Unpin + 'static,
    Svc::Future: Send + Unpin,
{
    async move {
        loop {
            // Boxed on its own: a parked connection does not hold room for hyper's state. (Made
            // in one expression: a `let` binding of it would keep its room in this future.)
            let server = Box::pin(watch.serve(
                Server {
                    conn: Some(builder.serve_connection(TokioIo::new(io), service)),
                    state: Arc::clone(&conn),
                    closing: false,
                },
                Server::graceful_shutdown,
            ));
            match server.await? {
                Err(e) => return Some(Err(e)),
                Ok(Ended::Closed) => return Some(Ok(())),
                Ok(Ended::Parked(stream, svc)) => (io, service) = (stream, svc),
                Ok(Ended::Upgraded(stream, read, tunnel)) => {
                    // Closed when the drain is aborted, after the requests have had their time.
                    let (stream, read) = stream.into_tunnel(read);
                    if let Err(e) = watch.unless_aborted(tunnel.run(stream, read)).await? {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                    }
                    return Some(Ok(()));
                }
            }
            let _parked = conn.downstream.listener.counters.park();
            let woken = std::future::poll_fn(|cx| io.poll_wake(cx));
            match watch.while_serving(woken).await {
                Some(Ok(true)) => {}
                // The client closed the connection, it was idle for `idle_timeout`, or the
                // drain began: nothing was asked, so it closes.
                Some(Ok(false)) | None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "parked connection failed");
                    return Some(Ok(()));
                }
            }
        }
        // Closed as hyper closes an idle connection (over TLS, with a close_notify first).
        if let Err(e) = watch.unless_aborted(io.shutdown()).await? {
            tracing::debug!(error = %e, "shutting the connection down failed");
        }
        Some(Ok(()))
    }
}

/// How a [`Server`] ended.
enum Ended<S, Svc> {
    /// The connection is over, and hyper has closed it.
    Closed,
    /// Parked: the stream, which gives the next server first what this one had read and not
    /// parsed, and the service.
    Parked(GuardedIo<S>, Svc),
    /// The server wrote a 101: the stream, what the server had read and not parsed, and the
    /// backend's end of the tunnel.
    Upgraded(GuardedIo<S>, Bytes, Box<Upgraded>),
}

/// A hyper HTTP/1 connection that parks when its [`Connection`] asks, and gives back its stream when it
/// ends.
struct Server<S, Svc: HttpService<Incoming>> {
    conn: Option<http1::Connection<TokioIo<GuardedIo<S>>, Svc>>,
    state: Arc<Connection>,
    /// Shutting down gracefully (the drain, or parking): asked once.
    closing: bool,
}

impl<S, Svc> Server<S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Svc: HttpService<Incoming, ResBody = Tracked, Error = ClientGone> + Unpin,
    Svc::Future: Unpin,
{
    /// The end of a server that switched protocols: the stream and what it had read, for the
    /// tunnel.
    fn upgraded(&mut self, tunnel: Box<Upgraded>) -> Ended<S, Svc> {
        match self.conn.take() {
            Some(conn) => {
                let parts = conn.into_parts();
                Ended::Upgraded(parts.io.into_inner(), parts.read_buf, tunnel)
            }
            // Not reached: the server is taken only here and as it ends.
            None => Ended::Closed,
        }
    }

    /// Finish the request in progress, if any, and close: hyper's graceful shutdown.
    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        self.closing = true;
        if let Some(conn) = self.conn.as_mut() {
            Pin::new(conn).graceful_shutdown();
        }
    }
}

impl<S, Svc> Future for Server<S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Svc: HttpService<Incoming, ResBody = Tracked, Error = ClientGone> + Unpin,
    Svc::Future: Unpin,
{
    type Output = hyper::Result<Ended<S, Svc>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Polled after its end (it is not: `.await` consumes it), it waits forever.
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Pending;
        };
        if let Poll::Ready(done) = Pin::new(&mut *conn).poll(cx) {
            // After a 101, hyper ends without shutting the stream down.
            if let (Ok(()), Some(tunnel)) = (&done, this.state.take_upgraded()) {
                return Poll::Ready(Ok(this.upgraded(tunnel)));
            }
            this.conn = None;
            return Poll::Ready(done.map(|()| Ended::Closed));
        }
        // Asked while hyper waited for the next request, in this poll.
        if this.closing || !this.state.take_park() {
            return Poll::Pending;
        }
        this.closing = true;
        Pin::new(&mut *conn).graceful_shutdown();
        // An idle hyper connection closes at once when shut down: polled once more, without
        // shutting the stream down, it ends. If it does not (it was not idle after all), it
        // finishes what it is doing and closes, as on a drain.
        ready!(conn.poll_without_shutdown(cx))?;
        if let Some(tunnel) = this.state.take_upgraded() {
            return Poll::Ready(Ok(this.upgraded(tunnel)));
        }
        let Some(conn) = this.conn.take() else {
            return Poll::Pending;
        };
        let http1::Parts {
            io,
            read_buf,
            service,
            ..
        } = conn.into_parts();
        let mut io = io.into_inner();
        // Empty, it may still hold hyper's whole read buffer: dropped here.
        if !read_buf.is_empty() {
            io.unparsed(read_buf);
        }
        Poll::Ready(Ok(Ended::Parked(io, service)))
    }
}
