//! The traffic side of a listener: the accept loop with its connection cap, TLS handshakes under a
//! deadline, and one hyper server per connection, running on a [`GuardedIo`] and watched for
//! graceful drain. HTTP/1.1 and HTTP/2 share a port: the protocol comes from ALPN, or from the
//! first bytes, and the connection gets a server for that protocol alone. An idle HTTP/1
//! connection drops its server until its next request (`park`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::connection::Connection;
use super::drain::{Drain, Watch};
use super::park;
use super::peer::PeerSocket;
use super::service::service;
use super::tls::Tls;
use super::watchdog::GuardedIo;
use crate::config::ListenerConfig;
use crate::http::{Downstream, ListenerInfo};
use crate::proxy::Proxy;
use crate::telemetry::{ClientTimeout, ConnReject, SizeLimit};

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
    connections: Arc<Semaphore>,
    tls_handshake_timeout: Duration,
}

/// The HTTP server for each protocol, as the listener's configuration sets them up.
struct Servers {
    /// HTTP/1 on plain TCP: half-closes allowed, so hyper does not read while a request is in
    /// progress; the request watches the socket itself (`peer::Hangup`).
    h1: http1::Builder,
    /// HTTP/1 over TLS: hyper reads while a request is in progress and fails the connection at
    /// an end of stream, which drops the request (see `peer`).
    h1_tls: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
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
            connections: Arc::new(Semaphore::new(config.max_connections)),
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
                    match Arc::clone(&self.connections).try_acquire_owned() {
                        Ok(permit) => self.spawn_connection(stream, peer, permit, &drain),
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
        permit: OwnedSemaphorePermit,
        drain: &Drain,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let downstream = Downstream::new(peer, self.tls.is_some(), Arc::clone(&self.info));
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
        let conn = Arc::new(Connection::new(Arc::clone(&self.proxy), downstream, socket));
        let servers = Arc::clone(&self.servers);
        let watch = drain.watch();
        tokio::spawn(async move {
            let _permit = permit;
            let info = Arc::clone(&conn.downstream.listener);
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
    conn: Arc<Connection>,
) -> Option<()> {
    let info = &conn.downstream.listener;
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
    conn: Arc<Connection>,
) -> Option<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let info = Arc::clone(&conn.downstream.listener);
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
        park::serve(h1, watch, io, service, conn).await?
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
    conn: Arc<Connection>,
) -> Pin<Box<dyn Future<Output = Option<hyper::Result<()>>> + Send + 'a>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = servers
        .h2
        .serve_connection(TokioIo::new(io), service(conn, true));
    Box::pin(watch.serve(conn, |c| c.graceful_shutdown()))
}

/// Errors that concern one connection only, not the listener: retry at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
