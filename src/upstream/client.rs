//! weir's client to one backend: keep-alive connections it opens itself, pooled per upstream.
//!
//! HTTP/1.1 connections wait in an idle pool ([`http1::IdlePool`]). A request takes one out and
//! drives it from its own task ([`http1`]); the response body puts it back when it has been read
//! to the end, and a response cut off or abandoned drops the connection instead, since its stream
//! is no longer in a known state. h2c upstreams share one multiplexed connection, driven by a task of its own as
//! hyper requires. The request path takes one short per-upstream lock to pop or push a
//! connection, and does no hashing, no key comparison and no task spawn per request.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, request};
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpStream, UnixStream};

use super::http1::{self, BackendConn, IdlePool};
use super::stream::BackendStream;
use super::tls::Handshake;
use crate::config::{Protocol, UpstreamAddr, UpstreamTls};
use crate::error::BoxError;
use crate::http::{RequestBody, SetFields};
use crate::sync::lock;

/// Why a request never got a response head from the backend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: UpstreamAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout {
        addr: UpstreamAddr,
        timeout: Duration,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: UpstreamAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: UpstreamAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("exchange with the backend failed: {0}")]
    Exchange(#[source] hyper::Error),
    #[error("exchange with the backend failed: {0}")]
    H1(#[source] http1::Error),
}

impl ClientError {
    /// The backend could not be reached at all (as opposed to failing mid-exchange).
    pub fn is_connect(&self) -> bool {
        !matches!(self, ClientError::Exchange(_) | ClientError::H1(_))
    }
}

/// A backend's response body, over either protocol.
pub enum BackendBody {
    H1(http1::Body),
    H2(hyper::body::Incoming),
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            BackendBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            BackendBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::H1(b) => b.is_end_stream(),
            BackendBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::H1(b) => b.size_hint(),
            BackendBody::H2(b) => b.size_hint(),
        }
    }
}

impl BackendBody {
    /// The backend's connection after a 101, and the bytes it sent after the head; `None` over
    /// HTTP/2, or when the request was not sent whole.
    pub(crate) fn into_upgraded(self) -> Option<(BackendStream, Bytes)> {
        match self {
            BackendBody::H1(b) => b.into_upgraded(),
            BackendBody::H2(_) => None,
        }
    }

    /// The next frame, for a caller that holds the client the body came from: an HTTP/1.1
    /// connection whose exchange ends goes back to its pool without a reference taken to it.
    pub fn poll_frame_from(
        &mut self,
        cx: &mut Context<'_>,
        client: &Client,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            BackendBody::H1(b) => b
                .poll_frame_home(cx, &client.state.idle)
                .map_err(Into::into),
            BackendBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }
}

/// How the client connects and how long it keeps idle connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub addr: UpstreamAddr,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// TLS to the backend, when it speaks HTTPS.
    pub tls: Option<UpstreamTls>,
}

/// The pooled client of one upstream. Cloning shares the pool.
#[derive(Clone)]
pub struct Client {
    state: Arc<ClientState>,
}

/// What the clones of one [`Client`] share.
struct ClientState {
    settings: ClientSettings,
    /// HTTP/1.1: idle connections, which return to it by themselves (they hold it weakly).
    idle: Arc<IdlePool<Box<BackendConn>>>,
    /// h2c: the shared connection, once open.
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Serializes opening the h2c connection, so a burst opens one, not one per request.
    h2_connecting: tokio::sync::Mutex<()>,
    /// TLS: the loaded client settings, or why they could not be loaded (checked at start and
    /// on reload, so this is only a file changed in between).
    tls: Option<Result<Handshake, String>>,
    /// When a failed TLS handshake was last logged at warn level, in seconds since `UNIX_EPOCH`.
    tls_warned: AtomicU64,
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(settings: ClientSettings) -> Client {
        let tls = settings.tls.as_ref().map(|tls| {
            Handshake::load(tls, &settings.addr, settings.protocol).map_err(|e| e.to_string())
        });
        Client {
            state: Arc::new(ClientState {
                idle: Arc::new(IdlePool::new(settings.max_idle, settings.idle_timeout)),
                settings,
                h2: Mutex::new(None),
                h2_connecting: tokio::sync::Mutex::new(()),
                tls,
                tls_warned: AtomicU64::new(0),
            }),
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.state.settings
    }

    /// Sends the request `parts` and `body` describe, and waits for the response head. The
    /// request URI must already be in the form the protocol wants (origin-form for HTTP/1.1).
    /// The head is borrowed, not moved: it is a few hundred bytes that HTTP/1.1 only reads, and
    /// whose header map it then fills with the response's fields (h2c, which needs the head
    /// whole, takes it and leaves an empty one).
    ///
    /// `upgrade`: the request asks the backend to switch protocols (HTTP/1.1 only), so a 101
    /// answers it, whose body gives the connection up ([`BackendBody::into_upgraded`]).
    pub async fn send(
        &self,
        parts: &mut request::Parts,
        body: RequestBody,
        set: SetFields<'_>,
        upgrade: bool,
    ) -> Result<Response<BackendBody>, ClientError> {
        match self.state.settings.protocol {
            Protocol::Http1 => self.send_h1(parts, body, (set, upgrade)).await,
            Protocol::H2c => {
                let parts = std::mem::replace(parts, Request::new(()).into_parts().0);
                // Boxed, like connecting below: a rarer path that would otherwise enlarge every
                // request's future.
                Box::pin(self.send_h2(Request::from_parts(parts, body), set)).await
            }
        }
    }

    async fn send_h2(
        &self,
        mut req: Request<RequestBody>,
        set: SetFields<'_>,
    ) -> Result<Response<BackendBody>, ClientError> {
        if let Some(name) = set.copy_of_host {
            if let Some(host) = req.headers().get(http::header::HOST).cloned() {
                req.headers_mut().insert(name, host);
            }
        }
        for (name, value) in set.fields {
            req.headers_mut().insert(*name, value.clone().into_owned());
        }
        let mut tx = self.h2_sender().await?;
        let response = tx.send_request(req).await.map_err(ClientError::Exchange)?;
        Ok(response.map(BackendBody::H2))
    }

    async fn send_h1(
        &self,
        parts: &mut request::Parts,
        mut body: RequestBody,
        set: (SetFields<'_>, bool),
    ) -> Result<Response<BackendBody>, ClientError> {
        loop {
            let (conn, pooled) = match self.state.idle.take() {
                Some(conn) => (conn, true),
                None => (Box::pin(self.connect_h1()).await?, false),
            };
            match http1::send(conn, parts, set, body, pooled).await {
                Ok(response) => return Ok(response.map(BackendBody::H1)),
                // A pooled connection the backend closed under us (its idle timeout, typically),
                // with the request unsent or unanswered: try the next one, or a new one.
                Err(http1::SendError::Retry { error, body: back }) => {
                    tracing::debug!(%error, "pooled backend connection failed; retrying");
                    body = back;
                }
                Err(http1::SendError::Failed(e)) => return Err(ClientError::H1(e)),
            }
        }
    }

    async fn connect_h1(&self) -> Result<Box<BackendConn>, ClientError> {
        let stream = self.state.connect().await?;
        self.state.idle.start_reaper();
        Ok(BackendConn::new(stream, Arc::downgrade(&self.state.idle)))
    }

    /// The shared h2c connection, opened if there is none or it closed.
    async fn h2_sender(&self) -> Result<http2::SendRequest<RequestBody>, ClientError> {
        if let Some(tx) = self.state.live_h2() {
            return Ok(tx);
        }
        let _one = self.state.h2_connecting.lock().await;
        if let Some(tx) = self.state.live_h2() {
            return Ok(tx);
        }
        let stream = self.state.connect().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.state.handshake_error(source))?;
        drive(conn);
        *lock(&self.state.h2) = Some(tx.clone());
        Ok(tx)
    }

    /// Idle HTTP/1.1 connections in the pool that are still open.
    pub fn idle_connections(&self) -> usize {
        self.state.idle.open()
    }
}

/// Runs an h2c backend connection on a task of its own until it ends.
fn drive<C>(conn: C)
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend connection ended with an error");
        }
    });
}

impl ClientState {
    fn live_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        lock(&self.h2)
            .as_ref()
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    async fn connect(&self) -> Result<BackendStream, ClientError> {
        let tcp = match &self.settings.addr {
            UpstreamAddr::Tcp(authority) => authority,
            UpstreamAddr::Unix(path) => {
                let stream = self.within_timeout(UnixStream::connect(path)).await?;
                return Ok(BackendStream::Unix(stream));
            }
        };
        let stream = self
            .within_timeout(async {
                let host = tcp.host().trim_start_matches('[').trim_end_matches(']');
                let port = tcp.port_u16().unwrap_or(80);
                let mut last = None;
                for a in tokio::net::lookup_host((host, port)).await? {
                    match TcpStream::connect(a).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
                }))
            })
            .await?;
        // Small requests and answers go out at once; dead peers are found by the kernel.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay on a backend connection failed");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "TCP keepalive on a backend connection failed");
        }
        match &self.tls {
            None => Ok(BackendStream::Tcp(stream)),
            Some(tls) => self.tls_handshake(tls, stream).await,
        }
    }

    /// The TLS handshake on a new backend connection, under `connect_timeout`. A failure (an
    /// expired certificate, a wrong name, an unknown CA) is logged at warn level at most every
    /// ten seconds per upstream, and at debug level otherwise.
    async fn tls_handshake(
        &self,
        tls: &Result<Handshake, String>,
        stream: TcpStream,
    ) -> Result<BackendStream, ClientError> {
        let addr = &self.settings.addr;
        let handshake = match tls {
            Ok(h) => h,
            Err(reason) => {
                let source = std::io::Error::other(format!("TLS settings unusable: {reason}"));
                return Err(ClientError::Tls {
                    addr: addr.clone(),
                    source,
                });
            }
        };
        let connect = handshake
            .connector
            .connect(handshake.server_name.clone(), stream);
        let timeout = self.settings.connect_timeout;
        let result = match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS handshake within {timeout:?}"),
            )),
        };
        result
            .map(|s| BackendStream::Tls(Box::new(s)))
            .map_err(|source| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let last = self.tls_warned.load(Ordering::Relaxed);
                if now >= last + 10 && self.tls_warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    tracing::warn!(upstream = %addr, error = %source, "TLS handshake with the backend failed");
                } else {
                    tracing::debug!(upstream = %addr, error = %source, "TLS handshake with the backend failed");
                }
                ClientError::Tls {
                    addr: addr.clone(),
                    source,
                }
            })
    }

    /// `connect` under `connect_timeout`, its failure named with the backend's address.
    async fn within_timeout<S>(
        &self,
        connect: impl std::future::Future<Output = std::io::Result<S>>,
    ) -> Result<S, ClientError> {
        let (addr, timeout) = (&self.settings.addr, self.settings.connect_timeout);
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr: addr.clone(),
                timeout,
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })
    }

    fn handshake_error(&self, source: hyper::Error) -> ClientError {
        ClientError::Handshake {
            addr: self.settings.addr.clone(),
            source,
        }
    }
}
