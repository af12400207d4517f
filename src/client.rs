//! weir's client to one backend: keep-alive connections it opens itself, pooled per upstream.
//!
//! HTTP/1.1 connections wait in a small LIFO stack of idle ones (the most recently used first,
//! so a quiet period lets the oldest expire). A request takes one out, and its [`Lease`] puts it
//! back when the response body has been read to the end; a response cut off or abandoned drops
//! the connection instead, since its stream is no longer in a known state. h2c upstreams share one
//! multiplexed connection. Each connection is driven by its own task, as hyper requires; the
//! request path itself takes one short per-upstream lock to pop or push a connection, and does no
//! hashing, no key comparison and no extra task spawn per request.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::config::Protocol;
use crate::lock;

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
}

impl ClientError {
    /// The backend could not be reached at all (as opposed to failing mid-exchange).
    pub fn is_connect(&self) -> bool {
        !matches!(self, ClientError::Exchange(_))
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

struct Shared {
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
    tx: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// An HTTP/1.1 connection lent to one request. Dropped after [`Lease::reusable`], it goes back to
/// the pool (if the pool has room); dropped otherwise, it is closed.
#[derive(Debug, Default)]
pub struct Lease {
    inner: Option<(http1::SendRequest<RequestBody>, Weak<Shared>)>,
    reusable: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The response was read to its end: the connection can carry another request, and goes
    /// back to the pool when the lease is dropped.
    pub fn set_reusable(&mut self) {
        self.reusable = true;
    }

    /// The response was read to its end: the connection goes back to the pool now (before the
    /// caller frees the request's slot, so that the request it admits next finds it there).
    pub fn reuse(mut self) {
        self.set_reusable();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some((tx, pool)) = self.inner.take() else {
            return;
        };
        if !self.reusable || tx.is_closed() {
            return;
        }
        if let Some(shared) = pool.upgrade() {
            shared.put_back(tx);
        }
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

    /// Sends `req` and waits for the response head. The request URI must already be in the form
    /// the protocol wants (origin-form for HTTP/1.1).
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), ClientError> {
        match self.shared.settings.protocol {
            Protocol::Http1 => self.send_h1(req).await,
            // Boxed, like connecting below: a rarer path that would otherwise enlarge every
            // request's future.
            Protocol::H2c => Box::pin(self.send_h2(req)).await,
        }
    }

    async fn send_h2(
        &self,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), ClientError> {
        let mut tx = self.h2_sender().await?;
        let response = tx.send_request(req).await.map_err(ClientError::Exchange)?;
        Ok((response, Lease::default()))
    }

    async fn send_h1(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), ClientError> {
        loop {
            let (mut tx, pooled) = match self.shared.take_idle() {
                Some(tx) => (tx, true),
                None => (Box::pin(self.connect_h1()).await?, false),
            };
            // A pooled connection can have just finished its previous response; a broken one
            // reports it here.
            if let Err(e) = tx.ready().await {
                if pooled {
                    continue;
                }
                return Err(ClientError::Exchange(e));
            }
            match tx.try_send_request(req).await {
                Ok(response) => {
                    let lease = Lease {
                        inner: Some((tx, Arc::downgrade(&self.shared))),
                        reusable: false,
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection was closed under us (the backend's
                    // idle timeout, typically). Try the next one, or a new one.
                    Some(back) if pooled => req = back,
                    _ => return Err(ClientError::Exchange(e.into_error())),
                },
            }
        }
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, ClientError> {
        let stream = self.shared.connect().await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.shared.handshake_error(source))?;
        drive(conn);
        self.start_reaper();
        Ok(tx)
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

    /// Idle HTTP/1.1 connections in the pool that are still open.
    pub fn idle_connections(&self) -> usize {
        lock(&self.shared.idle)
            .iter()
            .filter(|c| !c.tx.is_closed())
            .count()
    }
}

/// Runs a backend connection (HTTP/1.1 or h2c) on a task of its own until it ends.
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
    fn take_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = lock(&self.idle);
        while let Some(c) = idle.pop() {
            if !c.tx.is_closed() {
                return Some(c.tx);
            }
        }
        None
    }

    fn put_back(&self, tx: http1::SendRequest<RequestBody>) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.settings.max_idle {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    fn close_expired(&self) {
        let now = Instant::now();
        let fresh = |c: &Idle| {
            now.saturating_duration_since(c.since) < self.settings.idle_timeout && !c.tx.is_closed()
        };
        // Dropped after the lock is released: each drop wakes its connection's task to close it.
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
