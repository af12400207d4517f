//! The traffic side of a listener: the accept loop with its connection cap, TLS handshakes under a
//! deadline, and one hyper server per connection, running on a [`GuardedIo`] and watched for
//! graceful drain. HTTP/1.1 and HTTP/2 share a port: the protocol comes from ALPN, or from the
//! first bytes, and the connection gets a server for that protocol alone. An idle HTTP/1
//! connection drops its server until its next request ([`crate::park`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{BodyError, ResponseBody};
use crate::config::ListenerConfig;
use crate::drain::{Drain, Watch};
use crate::forward::ClientInfo;
use crate::peer::{Hangup, PeerSocket};
use crate::proxy::Proxy;
use crate::record::Record;
use crate::stats::{ClientTimeout, ConnReject, ListenerInfo, SizeLimit};
use crate::tls::Tls;
use crate::watchdog::GuardedIo;

/// Longest pause after a failing `accept` (EMFILE, ENFILE, ENOBUFS): long enough that a full file
/// table does not spin a core, short enough that service resumes soon after descriptors free up.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// One bound listener and what its connections are served with.
pub struct Edge {
    listener: TcpListener,
    info: Arc<ListenerInfo>,
    tls: Option<Tls>,
    proxy: Arc<Proxy>,
    servers: Arc<Servers>,
    /// One permit per allowed open connection (`max_connections`).
    slots: Arc<Semaphore>,
    tls_handshake_timeout: Duration,
}

/// The HTTP server for each protocol, as the listener's configuration sets them up.
struct Servers {
    /// HTTP/1 on plain TCP: half-closes allowed, so hyper does not read while a request is in
    /// progress; the request watches the socket itself ([`Hangup`]).
    h1: http1::Builder,
    /// HTTP/1 over TLS: hyper reads while a request is in progress and fails the connection at
    /// an end of stream, which drops the request (see [`crate::peer`]).
    h1_tls: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// Per-connection state shared by the connection's requests and its [`GuardedIo`].
pub struct Conn {
    pub proxy: Arc<Proxy>,
    pub client: ClientInfo,
    /// Requests whose response has not finished: non-zero means the connection is not idle.
    /// Changed by [`InProgress`]: with atomic read-modify-writes on HTTP/2, whose requests end on
    /// tasks of their own; with a load and a store on HTTP/1, whose requests start, run and end
    /// one at a time on the connection's task.
    in_progress: AtomicUsize,
    /// HTTP/1: set while the connection task waits to be woken when idle. Waking an
    /// `AtomicWaker` costs two atomic operations even when nothing is registered, and an HTTP/1
    /// connection task seldom is (see [`GuardedIo`]'s check-in).
    wants_idle: AtomicBool,
    /// When the last request finished, in nanoseconds from `opened`: where the idle deadline
    /// counts from, however late [`GuardedIo`] notices.
    finished: AtomicU64,
    opened: Instant,
    /// The connection task, when it asked to be woken as its last request finishes
    /// ([`Conn::wake_when_idle`]).
    idle_waker: AtomicWaker,
    /// Plain TCP: the client's socket, which HTTP/1 requests watch for the client hanging up.
    socket: Option<Arc<TcpStream>>,
    /// HTTP/1: set by [`GuardedIo`] when the connection has been idle for
    /// [`crate::park::PARK_AFTER`]; the server parks when it sees it.
    park: AtomicBool,
}

impl Conn {
    /// `socket`: the client's plain TCP socket ([`PeerSocket::share`]); `None` over TLS.
    pub fn new(proxy: Arc<Proxy>, client: ClientInfo, socket: Option<Arc<TcpStream>>) -> Conn {
        Conn {
            proxy,
            client,
            in_progress: AtomicUsize::new(0),
            wants_idle: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            opened: Instant::now(),
            idle_waker: AtomicWaker::new(),
            socket,
            park: AtomicBool::new(false),
        }
    }

    /// Asks the connection's HTTP/1 server to park (see [`crate::park`]).
    pub fn ask_park(&self) {
        self.park.store(true, Ordering::Relaxed);
    }

    /// Whether the server was asked to park since the last call. On the connection's task, as
    /// [`Conn::ask_park`]: a load, and a store only when asked.
    pub fn take_park(&self) -> bool {
        let asked = self.park.load(Ordering::Relaxed);
        if asked {
            self.park.store(false, Ordering::Relaxed);
        }
        asked
    }

    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }

    /// Asks to be woken when the connection becomes idle. Once: the wake-up takes the waker.
    pub fn wake_when_idle(&self, waker: &std::task::Waker) {
        self.wants_idle.store(true, Ordering::Relaxed);
        self.idle_waker.register(waker);
    }

    /// When the last request finished (the connection's opening if none has).
    pub fn finished_at(&self) -> Instant {
        self.opened + Duration::from_nanos(self.finished.load(Ordering::Acquire))
    }
}

/// A request in progress on its connection, from the moment hyper hands it over until its response
/// body is finished or dropped.
pub struct InProgress {
    conn: Arc<Conn>,
    /// HTTP/2: the request may end on another thread than the connection's task, while others
    /// start. HTTP/1: hyper calls the service, polls its future and drops its body on the
    /// connection's task, one request at a time, so nothing changes the count concurrently.
    shared: bool,
    hangup: Hangup,
}

impl InProgress {
    fn new(conn: Arc<Conn>, shared: bool) -> InProgress {
        let count = &conn.in_progress;
        if shared {
            count.fetch_add(1, Ordering::AcqRel);
        } else {
            count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        InProgress {
            conn,
            shared,
            hangup: Hangup::default(),
        }
    }

    /// A request that starts and ends at once, as an HTTP/1 server's would: for tests of what
    /// follows a request.
    #[cfg(test)]
    pub(crate) fn start_and_end(conn: &Arc<Conn>) {
        drop(InProgress::new(Arc::clone(conn), false));
    }

    /// Whether the client has hung up: watched on plain HTTP/1 connections only, where hyper
    /// does not (see [`crate::peer`]). Otherwise the server notices, and drops the request.
    fn poll_gone(&self, cx: &mut Context<'_>) -> bool {
        match &self.conn.socket {
            Some(socket) if !self.shared => self.hangup.poll_gone(socket, cx),
            _ => false,
        }
    }
}

pin_project! {
    /// A request's future, or `None` once its client has hung up. The hang-up is watched only
    /// while the request waits: most answers are ready at the first poll, or at the first after
    /// the backend's.
    struct UntilHangup<'a, F> {
        #[pin]
        inner: F,
        request: &'a InProgress,
    }
}

impl<F: Future> Future for UntilHangup<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(done) => Poll::Ready(Some(done)),
            Poll::Pending if this.request.poll_gone(cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The error that ends an HTTP/1 connection whose client hung up while a request was in
/// progress: hyper closes the connection, and the request's [`Record`] counts `client_gone`.
#[derive(Debug, thiserror::Error)]
#[error("the client hung up while its request was in progress")]
pub struct ClientGone;

impl Drop for InProgress {
    fn drop(&mut self) {
        let conn = &self.conn;
        // Stored before the count, which publishes it. (HTTP/2 streams that finish at once on
        // two threads may leave the earlier time: off by microseconds.)
        let nanos = u64::try_from(conn.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        conn.finished.store(nanos, Ordering::Relaxed);
        let count = &conn.in_progress;
        if self.shared {
            if count.fetch_sub(1, Ordering::AcqRel) == 1 {
                conn.idle_waker.wake();
            }
        } else {
            let left = count.load(Ordering::Relaxed).saturating_sub(1);
            count.store(left, Ordering::Relaxed);
            // On the connection's task too: the flag cannot be set between this load and the wake.
            if left == 0 && conn.wants_idle.load(Ordering::Relaxed) {
                conn.wants_idle.store(false, Ordering::Relaxed);
                conn.idle_waker.wake();
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted as in progress until it is done, and
    /// feeds its request's [`Record`] the bytes sent and whether the answer was whole.
    pub struct Tracked {
        #[pin]
        body: ResponseBody,
        record: Record,
        _request: InProgress,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        if polled.is_pending() && this._request.poll_gone(cx) {
            return Poll::Ready(Some(Err(BodyError::ClientGone)));
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.sent(data.len());
                }
                // hyper stops polling once the body says it is at its end.
                if this.body.is_end_stream() {
                    this.record.complete();
                }
            }
            Poll::Ready(None) => this.record.complete(),
            _ => {}
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Edge {
    pub fn new(
        config: &ListenerConfig,
        tls: Option<Tls>,
        listener: TcpListener,
        proxy: Arc<Proxy>,
    ) -> Edge {
        let mut h1_tls = http1::Builder::new();
        h1_tls
            .timer(TokioTimer::new())
            .keep_alive(true)
            // GuardedIo enforces header_timeout and idle_timeout (see watchdog.rs).
            .header_read_timeout(None)
            .max_buf_size(config.max_header_bytes.max(8 * 1024));
        let mut h1 = h1_tls.clone();
        h1.half_close(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(config.max_header_bytes as u32)
            .keep_alive_interval(Some(config.http2_keepalive_interval))
            .keep_alive_timeout(config.http2_keepalive_interval)
            // Rapid reset (CVE-2023-44487): at most this many streams reset by the client before
            // hyper has accepted them; more is a GOAWAY.
            .max_pending_accept_reset_streams(Some(20));
        Edge {
            listener,
            info: Arc::new(ListenerInfo::new(config)),
            tls,
            proxy,
            servers: Arc::new(Servers { h1, h1_tls, h2 }),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            tls_handshake_timeout: config.tls_handshake_timeout,
        }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn info(&self) -> Arc<ListenerInfo> {
        Arc::clone(&self.info)
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop` is cancelled, then drops the listener so that new
    /// connections are refused. Connections already accepted are registered with `drain`, which
    /// asks them to finish and close, and aborts them when the drain deadline passes.
    pub async fn serve(self, drain: Drain, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    match Arc::clone(&self.slots).try_acquire_owned() {
                        Ok(slot) => self.spawn_connection(stream, peer, slot, &drain),
                        Err(_) => {
                            // Closed at once: the client sees the connection end, not a hang.
                            self.info.counters.reject(ConnReject::Limit);
                            drop(stream);
                        }
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(listener = %self.info.name, error = %e, "accept: connection failed");
                }
                Err(e) => {
                    tracing::warn!(listener = %self.info.name, error = %e, backoff = ?backoff, "accept failed; backing off");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn spawn_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        drain: &Drain,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let client = ClientInfo::new(peer, self.tls.is_some(), Arc::clone(&self.info));
        let (transport, socket) = match &self.tls {
            None => {
                let socket = PeerSocket::new(stream);
                let shared = socket.share();
                (Transport::Plain(socket), Some(shared))
            }
            Some(t) => {
                let handshake = (t.acceptor.clone(), self.tls_handshake_timeout);
                (Transport::Tls(stream, handshake), None)
            }
        };
        let conn = Arc::new(Conn::new(Arc::clone(&self.proxy), client, socket));
        let servers = Arc::clone(&self.servers);
        let watch = drain.watch();
        tokio::spawn(async move {
            let _slot = slot;
            let info = Arc::clone(&conn.client.listener);
            let _open = info.counters.open();
            // The TLS path is boxed: a plain connection's task holds no room for its state.
            let served = match transport {
                Transport::Plain(socket) => serve(&servers, &watch, socket, None, conn).await,
                Transport::Tls(stream, (acceptor, timeout)) => {
                    let tls = serve_tls(&servers, &watch, (stream, peer), acceptor, timeout, conn);
                    Box::pin(tls).await
                }
            };
            if served.is_none() {
                tracing::debug!(listener = %info.name, peer = %peer, "connection aborted: drain_timeout expired");
            }
        });
    }
}

/// An accepted connection's byte stream, as its listener serves it.
enum Transport {
    Plain(PeerSocket),
    /// Before the handshake, with the acceptor and the handshake's deadline.
    Tls(TcpStream, (tokio_rustls::TlsAcceptor, Duration)),
}

/// Serves HTTPS on one connection: the handshake under its deadline, then HTTP. `None` when the
/// drain aborted it.
async fn serve_tls(
    servers: &Servers,
    watch: &Watch,
    (stream, peer): (TcpStream, SocketAddr),
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    conn: Arc<Conn>,
) -> Option<()> {
    let info = &conn.client.listener;
    // Boxed: the handshake's state is not kept for the connection's life.
    let handshake = tokio::time::timeout(timeout, Box::pin(acceptor.accept(stream)));
    match watch.unless_aborted(handshake).await? {
        Ok(Ok(stream)) => {
            // ALPN decides; a client that offered none may still speak HTTP/2 (prior knowledge).
            let h2 = stream.get_ref().1.alpn_protocol().map(|alpn| alpn == b"h2");
            serve(servers, watch, stream, h2, conn).await
        }
        Ok(Err(e)) => {
            info.counters.reject(ConnReject::TlsHandshake);
            tracing::debug!(listener = %info.name, peer = %peer, error = %e, "TLS handshake failed");
            Some(())
        }
        Err(_) => {
            info.counters.timeout(ClientTimeout::TlsHandshake);
            tracing::debug!(listener = %info.name, peer = %peer, "TLS handshake timed out");
            Some(())
        }
    }
}

/// Serves HTTP on one connection until it ends; `None` when the drain aborted it. `h2` is known
/// from ALPN, or found out here from the first bytes.
async fn serve<S>(
    servers: &Servers,
    watch: &Watch,
    stream: S,
    h2: Option<bool>,
    conn: Arc<Conn>,
) -> Option<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let info = Arc::clone(&conn.client.listener);
    let io = GuardedIo::new(stream, Arc::clone(&conn), h2);
    let (io, h2) = match h2 {
        Some(h2) => (io, h2),
        // Nothing has been asked yet: a drain closes the connection at once.
        None => match watch.while_serving(io.sniff()).await {
            Some(Ok(Some(sniffed))) => sniffed,
            Some(Ok(None)) | None => return Some(()),
            Some(Err(e)) => {
                tracing::debug!(listener = %info.name, error = %e, "connection ended before a request");
                return Some(());
            }
        },
    };
    let ended = if h2 {
        serve_h2(servers, watch, io, conn).await?
    } else {
        // Whether requests watch for the client hanging up, or hyper does.
        let h1 = if conn.socket.is_some() {
            &servers.h1
        } else {
            &servers.h1_tls
        };
        let service = service(Arc::clone(&conn), false);
        crate::park::serve(h1, watch, io, service, conn).await?
    };
    if let Err(e) = ended {
        if e.is_parse_too_large() {
            // hyper has answered 431 already.
            info.counters.limit(SizeLimit::HeaderBytes);
        }
        tracing::debug!(listener = %info.name, error = %e, "connection ended with an error");
    }
    Some(())
}

/// The HTTP/2 server on `io`, as [`Watch::serve`] runs it, boxed on its own: an HTTP/1
/// connection does not hold room for its state, nor the caller's.
fn serve_h2<'a, S>(
    servers: &'a Servers,
    watch: &'a Watch,
    io: GuardedIo<S>,
    conn: Arc<Conn>,
) -> Pin<Box<dyn Future<Output = Option<hyper::Result<()>>> + Send + 'a>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = servers
        .h2
        .serve_connection(TokioIo::new(io), service(conn, true));
    Box::pin(watch.serve(conn, |c| c.graceful_shutdown()))
}

/// The service that answers the connection's requests: [`Conn::proxy`].
fn service(
    conn: Arc<Conn>,
    h2: bool,
) -> impl HttpService<Incoming, ResBody = Tracked, Error = ClientGone, Future: Send + Unpin + 'static>
+ Send
+ Unpin
+ 'static {
    service_fn(move |req| {
        let request = InProgress::new(Arc::clone(&conn), h2);
        respond(req, request)
    })
}

/// A request's future, on the connection's server, whatever its transport.
///
/// Boxed per request: hyper keeps the slot for a connection's request future for the
/// connection's whole life, so an idle keep-alive connection would hold kilobytes. The box is
/// allocated before the future is made, so that the future can be made in it; whether it is, or
/// is made on the stack and copied (about 3 KB), is the optimiser's choice. (Checked in a
/// debugger: this version copies; the version before the hang-up watch did not. The copy costs
/// about 1% of a request's user-space cycles.)
fn respond(
    req: Request<Incoming>,
    request: InProgress,
) -> Pin<Box<impl Future<Output = Result<Response<Tracked>, ClientGone>> + Send>> {
    let boxed = Box::new_uninit();
    Box::into_pin(Box::write(boxed, async move {
        // Pinned in a statement of its own (see `Proxy::handle`).
        let handled = {
            let conn = &*request.conn;
            let handled = std::pin::pin!(UntilHangup {
                inner: conn.proxy.handle(req, &conn.client),
                request: &request,
            });
            handled.await
        };
        // Dropped unanswered, its record counts `client_gone`.
        let (response, mut record) = handled.ok_or(ClientGone)?;
        if response.body().is_end_stream() {
            // hyper will not poll a body that is already at its end (HEAD, 204, empty).
            record.complete();
        }
        Ok(response.map(|body| Tracked {
            body,
            record,
            _request: request,
        }))
    }))
}

/// Errors that concern one connection only, not the listener: retry at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
