//! weir: a reverse-proxy sidecar that protects a backend from overload.
//!
//! Each request is routed to an upstream, admitted through that upstream's bounded pool (a fixed
//! number of slots, a bounded FIFO queue, an immediate 503 when the queue is full), and forwarded
//! over a pooled keep-alive client under a deadline. The slot is owned by the request's future and
//! then by its response body, so it is released on every path by `Drop`.
//!
//! # Layout
//! - [`config`]: TOML -> validated, typed [`Config`](config::Config).
//! - [`admission`]: the per-upstream [`Pool`](admission::Pool) and its RAII
//!   [`Permit`](admission::Permit).
//! - [`forward`]: an [`Upstream`](forward::Upstream): pooled client, request rewrite, deadline.
//! - [`body`]: the response body that holds the slot while the backend streams.
//! - [`proxy`]: routing, and turning every outcome (panics included) into an answer.
//! - [`error`]: request-path errors, their counters, and the single error -> status table.
//! - [`edge`]: accept loop, connection cap, TLS handshake, per-connection hyper server.
//! - [`watchdog`]: slow-client deadlines (head, idle, write) enforced on the connection's bytes.
//! - [`tls`]: PEM files -> rustls config, with certificate reload.
//! - [`stats`]: per-listener limits and counters.
//! - [`shutdown`]: SIGTERM/SIGINT handling.
#![forbid(unsafe_code)]

pub mod admission;
pub mod body;
pub mod buffer;
pub mod config;
pub mod edge;
pub mod error;
pub mod forward;
pub mod proxy;
pub mod shutdown;
pub mod stats;
pub mod tls;
pub mod watchdog;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::edge::Edge;
use crate::forward::{RequestHook, Upstream};
use crate::proxy::Proxy;

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {name:?}: {source}")]
    Tls {
        name: String,
        #[source]
        source: tls::TlsError,
    },
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Optional extension points, for embedding weir and for tests.
#[derive(Default, Clone)]
pub struct Options {
    /// Runs after admission, before forwarding (see [`RequestHook`]).
    pub request_hook: Option<RequestHook>,
}

/// A bound, not yet running weir.
pub struct Server {
    config: Config,
    edges: Vec<Edge>,
    proxy: Arc<Proxy>,
}

impl Server {
    /// Loads every TLS certificate, then binds every listener. Nothing is served until
    /// [`Server::run`].
    pub async fn bind(config: Config, options: Options) -> Result<Server, StartError> {
        let proxy = Arc::new(Proxy::new(&config, options.request_hook));
        let tls = load_tls(&config)?;
        let mut edges = Vec::with_capacity(config.listeners.len());
        for (l, tls) in config.listeners.iter().zip(tls) {
            let listener = bind(l.addr).map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.addr,
                source,
            })?;
            edges.push(Edge::new(l, tls, listener, Arc::clone(&proxy)));
        }
        Ok(Server {
            config,
            edges,
            proxy,
        })
    }

    /// The address each listener is bound to, by listener name (resolves port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.edges
            .iter()
            .filter_map(|e| Some((e.name().to_string(), e.local_addr().ok()?)))
            .collect()
    }

    /// The upstream named `name`, to read its pool's queue depth, in-flight count and counters.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.proxy
            .upstreams()
            .iter()
            .find(|u| u.name == name)
            .cloned()
    }

    /// The request path shared by every listener: upstreams and the request-buffer budget.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::clone(&self.proxy)
    }

    /// The listener named `name`, to read its connection and timeout counters.
    pub fn listener(&self, name: &str) -> Option<Arc<stats::ListenerInfo>> {
        self.edges.iter().find(|e| e.name() == name).map(Edge::info)
    }

    /// A handle that reloads the TLS certificates of every TLS listener (what SIGHUP does).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            tls: self
                .edges
                .iter()
                .filter_map(|e| Some((e.name().to_string(), e.tls()?.clone())))
                .collect(),
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting (new connections are refused), lets
    /// in-flight and queued requests finish for up to `drain_timeout` while idle keep-alive
    /// connections are closed, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = Arc::new(GracefulShutdown::new());
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        tracing::info!(
            listeners = %self.describe_listeners(),
            upstreams = %describe_upstreams(&self.config),
            drain_timeout = ?self.config.drain_timeout,
            "weir started"
        );
        let mut accepting = JoinSet::new();
        for edge in self.edges {
            accepting.spawn(edge.serve(Arc::clone(&graceful), stop.clone(), abort.clone()));
        }

        shutdown.await;
        stop.cancel();
        while accepting.join_next().await.is_some() {}
        let graceful = Arc::into_inner(graceful).unwrap_or_default();
        let open = graceful.count();
        tracing::info!(connections = open, "listeners closed; draining");
        let drain = self.config.drain_timeout;
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(drain_timeout = ?drain, "drain_timeout expired; closing the remaining connections");
            abort.cancel();
        }
    }

    fn describe_listeners(&self) -> String {
        let mut out = Vec::new();
        for (name, addr) in self.local_addrs() {
            out.push(format!("{name}={addr}"));
        }
        out.join(", ")
    }
}

/// Pending connections the kernel may queue before weir accepts them. tokio's default (1024)
/// overflows under a burst of new connections, and the kernel then drops SYNs that clients only
/// retry a second or more later; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted weir can bind while connections of the previous one sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Loads the TLS files of every listener, so that a bad file stops startup before any port is bound.
pub fn load_tls(config: &Config) -> Result<Vec<Option<tls::Tls>>, StartError> {
    config
        .listeners
        .iter()
        .map(|l| {
            l.tls
                .as_ref()
                .map(tls::Tls::load)
                .transpose()
                .map_err(|source| StartError::Tls {
                    name: l.name.clone(),
                    source,
                })
        })
        .collect()
}

/// Reloads TLS certificates while weir runs.
#[derive(Clone, Default)]
pub struct Reloader {
    tls: Vec<(String, tls::Tls)>,
}

impl Reloader {
    /// Re-reads every TLS listener's certificate and key. A listener whose new pair is bad keeps
    /// its current one; every failure is logged and returned.
    pub fn reload_tls(&self) -> Vec<StartError> {
        let mut errors = Vec::new();
        for (name, tls) in &self.tls {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(listener = %name, cert = %tls.files().cert.display(), "TLS certificate reloaded")
                }
                Err(source) => {
                    tracing::error!(listener = %name, error = %source, "TLS reload refused; the current certificate stays in service");
                    errors.push(StartError::Tls {
                        name: name.clone(),
                        source,
                    });
                }
            }
        }
        errors
    }
}

fn describe_upstreams(config: &Config) -> String {
    config
        .upstreams
        .iter()
        .map(|u| {
            format!(
                "{}={} ({:?}, max_concurrency={}, max_queue={}, queue_timeout={:?}, request_timeout={:?})",
                u.name,
                u.addr,
                u.protocol,
                u.max_concurrency,
                u.max_queue,
                u.queue_timeout,
                u.request_timeout
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds and serves `config` until `shutdown` resolves, then drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    Server::bind(config, Options::default())
        .await?
        .run(shutdown)
        .await;
    Ok(())
}
