//! weir's client to one backend: keep-alive connections it opens itself, pooled per upstream.
//!
//! HTTP/1.1 connections wait in a small LIFO stack of idle ones (the most recently used first,
//! so a quiet period lets the oldest expire). A request takes one out and drives it from its own
//! task ([`crate::h1`]); the response body puts it back when it has been read to the end, and a
//! response cut off or abandoned drops the connection instead, since its stream is no longer in a
//! known state. h2c upstreams share one multiplexed connection, driven by a task of its own as
//! hyper requires. The request path takes one short per-upstream lock to pop or push a
//! connection, and does no hashing, no key comparison and no task spawn per request.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, request};
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::config::Protocol;
use crate::error::BoxError;
use crate::h1;
use crate::lock;

/// Header fields a request is sent with on top of its own, each replacing every field of that
/// name the request carries (weir's `X-Forwarded-*`). Written straight into the request head on
/// HTTP/1.1, where inserting them into the request's `HeaderMap` first would cost a hash and a
/// probe each, and often the map's growth: a sixth of weir's user-space instructions per request.
/// Values are borrowed: weir's own (the client's address, its scheme) live as long as the
/// connection, and a copy of each per request would take and drop a shared reference.
#[derive(Debug, Clone, Copy)]
pub struct SetFields<'a> {
    pub fields: &'a [(&'static HeaderName, Cow<'a, HeaderValue>)],
    /// A field of this name with the value of the request's first `Host` field
    /// (`X-Forwarded-Host`), taken from the head as it is written. `None` when the request has
    /// no Host field: its own fields of that name are then kept.
    pub copy_of_host: Option<&'static HeaderName>,
}

impl SetFields<'_> {
    /// Whether the request's own `name` fields are left out.
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        self.fields.iter().any(|(n, _)| *n == name) || self.copy_of_host == Some(name)
    }
}

/// Why a request never got a response head from the backend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: Authority,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: Authority, timeout: Duration },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: Authority,
        #[source]
        source: hyper::Error,
    },
    #[error("exchange with the backend failed: {0}")]
    Exchange(#[source] hyper::Error),
    #[error("exchange with the backend failed: {0}")]
    H1(#[source] h1::Error),
}

impl ClientError {
    /// The backend could not be reached at all (as opposed to failing mid-exchange).
    pub fn is_connect(&self) -> bool {
        !matches!(self, ClientError::Exchange(_) | ClientError::H1(_))
    }
}

/// A backend's response body, over either protocol.
pub enum BackendBody {
    H1(h1::Body),
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
    /// The next frame, for a caller that holds the client the body came from: an HTTP/1.1
    /// connection whose exchange ends goes back to its pool without a reference taken to it.
    pub fn poll_frame_from(
        &mut self,
        cx: &mut Context<'_>,
        client: &Client,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            BackendBody::H1(b) => b.poll_frame_home(cx, &client.shared).map_err(Into::into),
            BackendBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }
}

/// How the client connects and how long it keeps idle connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub addr: Authority,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// The pooled client of one upstream. Cloning shares the pool.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    settings: ClientSettings,
    /// HTTP/1.1: idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// h2c: the shared connection, once open.
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Serializes opening the h2c connection, so a burst opens one, not one per request.
    h2_connecting: tokio::sync::Mutex<()>,
    /// Whether the task that closes expired idle connections runs.
    reaper: std::sync::Once,
}

struct Idle {
    conn: Box<h1::Conn>,
    since: Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(settings: ClientSettings) -> Client {
        Client {
            shared: Arc::new(Shared {
                settings,
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(None),
                h2_connecting: tokio::sync::Mutex::new(()),
                reaper: std::sync::Once::new(),
            }),
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.shared.settings
    }

    /// Sends the request `parts` and `body` describe, and waits for the response head. The
    /// request URI must already be in the form the protocol wants (origin-form for HTTP/1.1).
    /// The head is borrowed, not moved: it is a few hundred bytes that HTTP/1.1 only reads, and
    /// whose header map it then fills with the response's fields (h2c, which needs the head
    /// whole, takes it and leaves an empty one).
    pub async fn send(
        &self,
        parts: &mut request::Parts,
        body: RequestBody,
        set: SetFields<'_>,
    ) -> Result<Response<BackendBody>, ClientError> {
        match self.shared.settings.protocol {
            Protocol::Http1 => self.send_h1(parts, body, set).await,
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
        set: SetFields<'_>,
    ) -> Result<Response<BackendBody>, ClientError> {
        loop {
            let (conn, pooled) = match self.shared.take_idle() {
                Some(conn) => (conn, true),
                None => (Box::pin(self.connect_h1()).await?, false),
            };
            match h1::send(conn, parts, set, body, pooled).await {
                Ok(response) => return Ok(response.map(BackendBody::H1)),
                // A pooled connection the backend closed under us (its idle timeout, typically),
                // with the request unsent or unanswered: try the next one, or a new one.
                Err(h1::SendError::Retry { error, body: back }) => {
                    tracing::debug!(%error, "pooled backend connection failed; retrying");
                    body = back;
                }
                Err(h1::SendError::Failed(e)) => return Err(ClientError::H1(e)),
            }
        }
    }

    async fn connect_h1(&self) -> Result<Box<h1::Conn>, ClientError> {
        let stream = self.shared.connect().await?;
        self.start_reaper();
        Ok(h1::Conn::new(stream, Arc::downgrade(&self.shared)))
    }

    /// The shared h2c connection, opened if there is none or it closed.
    async fn h2_sender(&self) -> Result<http2::SendRequest<RequestBody>, ClientError> {
        if let Some(tx) = self.shared.live_h2() {
            return Ok(tx);
        }
        let _one = self.shared.h2_connecting.lock().await;
        if let Some(tx) = self.shared.live_h2() {
            return Ok(tx);
        }
        let stream = self.shared.connect().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.shared.handshake_error(source))?;
        drive(conn);
        *lock(&self.shared.h2) = Some(tx.clone());
        Ok(tx)
    }

    /// Starts, once per client, the task that closes connections idle for `idle_timeout`. It
    /// holds the pool weakly and ends when the client is gone (after a reload that replaced it).
    fn start_reaper(&self) {
        self.shared.reaper.call_once(|| {
            let pool = Arc::downgrade(&self.shared);
            let period = (self.shared.settings.idle_timeout / 4).max(Duration::from_millis(50));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(shared) = pool.upgrade() else { return };
                    shared.close_expired();
                }
            });
        });
    }

    /// Idle HTTP/1.1 connections in the pool that are still open (those the backend closed are
    /// dropped from it on the way).
    pub fn idle_connections(&self) -> usize {
        let mut idle = lock(&self.shared.idle);
        idle.retain(|c| c.conn.is_open());
        idle.len()
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

impl Shared {
    fn take_idle(&self) -> Option<Box<h1::Conn>> {
        let mut idle = lock(&self.idle);
        while let Some(c) = idle.pop() {
            if c.conn.is_open() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Takes back a connection whose exchange ended cleanly, if the pool has room.
    pub(crate) fn put_back(&self, conn: Box<h1::Conn>) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.settings.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn close_expired(&self) {
        let now = Instant::now();
        let fresh = |c: &Idle| {
            now.saturating_duration_since(c.since) < self.settings.idle_timeout && c.conn.is_open()
        };
        // Closed after the lock is released.
        let expired: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(fresh);
            *idle = keep;
            expired
        };
        drop(expired);
    }

    fn live_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        lock(&self.h2)
            .as_ref()
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    async fn connect(&self) -> Result<TcpStream, ClientError> {
        let addr = &self.settings.addr;
        let timeout = self.settings.connect_timeout;
        let connect = async {
            let host = addr.host().trim_start_matches('[').trim_end_matches(']');
            let port = addr.port_u16().unwrap_or(80);
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
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr: addr.clone(),
                timeout,
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Small requests and answers go out at once; dead peers are found by the kernel.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay on a backend connection failed");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "TCP keepalive on a backend connection failed");
        }
        Ok(stream)
    }

    fn handshake_error(&self, source: hyper::Error) -> ClientError {
        ClientError::Handshake {
            addr: self.settings.addr.clone(),
            source,
        }
    }
}
