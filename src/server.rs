//! The running weir: [`Server`] binds every listener and the admin listener, serves until shutdown
//! and drains; [`Reloader`] applies a new configuration (SIGHUP) to the running server. This is
//! the top layer: it wires the others together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::http::ListenerInfo;
use crate::listener::{Drain, Edge, Tls, TlsError};
use crate::ops::admin::{Admin, Health};
use crate::ops::metrics;
use crate::proxy::Proxy;
use crate::sync::lock;
use crate::upstream::{RequestHook, Upstream, UpstreamTlsError, check_upstream_tls};

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {name:?}: {source}")]
    Tls {
        name: String,
        #[source]
        source: TlsError,
    },
    #[error("upstream {name:?}: {source}")]
    UpstreamTls {
        name: String,
        #[source]
        source: UpstreamTlsError,
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
    edges: Vec<Edge>,
    admin: Option<Admin>,
    live: Arc<Live>,
}

/// What a running weir shares with its reloader and its admin listener.
struct Live {
    /// The configuration in force: compared against on reload, read again at shutdown.
    config: Mutex<Config>,
    proxy: Arc<Proxy>,
    /// The TLS listeners' certificate stores, by listener name.
    tls: Vec<(String, Tls)>,
    health: Arc<Health>,
    reloads: Arc<metrics::ReloadCounters>,
}

impl Live {
    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        // Only ever replaced whole: a poisoned lock still holds a valid configuration.
        lock(&self.config)
    }
}

impl Server {
    /// Loads every TLS certificate, then binds every listener and the admin listener. Nothing is
    /// served until [`Server::run`].
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
        let health = Arc::new(Health::default());
        let reloads = Arc::new(metrics::ReloadCounters::default());
        let admin = match config.admin {
            Some(addr) => {
                let listener = bind(addr).map_err(|source| StartError::Bind {
                    name: "admin".into(),
                    addr,
                    source,
                })?;
                let registry = metrics::registry(
                    Arc::clone(&proxy),
                    edges.iter().map(Edge::info).collect(),
                    Arc::clone(&reloads),
                );
                Some(Admin::new(
                    listener,
                    registry,
                    Arc::clone(&health),
                    Arc::clone(&proxy),
                ))
            }
            None => None,
        };
        let live = Arc::new(Live {
            tls: edges
                .iter()
                .filter_map(|e| Some((e.name().to_string(), e.tls()?.clone())))
                .collect(),
            config: Mutex::new(config),
            proxy,
            health,
            reloads,
        });
        Ok(Server { edges, admin, live })
    }

    /// The address each listener is bound to, by listener name (resolves port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.edges
            .iter()
            .filter_map(|e| Some((e.name().to_string(), e.local_addr().ok()?)))
            .collect()
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.local_addr().ok()
    }

    /// The upstream named `name`, to read its pool's queue depth, in-flight count and counters.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.live
            .proxy
            .upstreams()
            .into_iter()
            .find(|u| u.name == name)
    }

    /// The request path shared by every listener: upstreams and the request-buffer budget.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::clone(&self.live.proxy)
    }

    /// The listener named `name`, to read its connection and timeout counters.
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerInfo>> {
        self.edges.iter().find(|e| e.name() == name).map(Edge::info)
    }

    /// A handle that applies a new configuration, or reloads TLS certificates (what SIGHUP does).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: Arc::clone(&self.live),
        }
    }

    /// Serves until `shutdown` resolves. Then `/readyz` answers 503 at once; after
    /// `shutdown_delay` (still serving, so that load balancers stop routing here first) weir stops
    /// accepting (new connections are refused), lets in-flight and queued requests finish for up
    /// to `drain_timeout` while idle keep-alive connections are closed, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let drain = Drain::new();
        let stop = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let listeners = self.describe_listeners();
        let admin_addr = self.admin_addr();
        let admin = self
            .admin
            .map(|a| tokio::spawn(a.serve(stop_admin.clone())));
        let mut accepting = JoinSet::new();
        for edge in self.edges {
            accepting.spawn(edge.serve(drain.clone(), stop.clone()));
        }
        self.live.health.set_ready(true);
        // Logged once ready: whoever waits for this line (a supervisor, a test) finds `/readyz`
        // answering 200. The line is written by a task of its own, possibly on another worker.
        {
            let config = self.live.config();
            tracing::info!(
                listeners = %listeners,
                admin = %admin_addr.map_or("off".to_string(), |a| a.to_string()),
                upstreams = %describe_upstreams(&config),
                drain_timeout = ?config.drain_timeout,
                "weir started"
            );
        }

        shutdown.await;
        self.live.health.set_ready(false);
        let (delay, drain_timeout) = {
            let config = self.live.config();
            (config.shutdown_delay, config.drain_timeout)
        };
        if !delay.is_zero() {
            tracing::info!(shutdown_delay = ?delay, "not ready; still serving for shutdown_delay before draining");
            tokio::time::sleep(delay).await;
        }
        stop.cancel();
        while accepting.join_next().await.is_some() {}
        tracing::info!(connections = drain.open(), "listeners closed; draining");
        if tokio::time::timeout(drain_timeout, drain.drain())
            .await
            .is_err()
        {
            tracing::warn!(drain_timeout = ?drain_timeout, "drain_timeout expired; closing the remaining connections");
            drain.abort();
        }
        stop_admin.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
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
/// Also loads every upstream's TLS settings (reporting the first problem), though it keeps only
/// the listeners'.
pub fn load_tls(config: &Config) -> Result<Vec<Option<Tls>>, StartError> {
    if let Err(problems) = check_upstream_tls(config) {
        if let Some((name, source)) = problems.into_iter().next() {
            return Err(StartError::UpstreamTls { name, source });
        }
    }
    config
        .listeners
        .iter()
        .map(|l| {
            l.tls
                .as_ref()
                .map(Tls::load)
                .transpose()
                .map_err(|source| StartError::Tls {
                    name: l.name.clone(),
                    source,
                })
        })
        .collect()
}

/// Applies configuration changes while weir runs (what SIGHUP does).
#[derive(Clone)]
pub struct Reloader {
    live: Arc<Live>,
}

/// Why a reload was refused; weir keeps running on the configuration it had.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Tls(Vec<StartError>),
}

impl Reloader {
    /// Reads `path` again and applies it: see [`Reloader::apply`].
    pub fn reload_file(&self, path: &std::path::Path) -> Result<Vec<String>, ReloadError> {
        let config = Config::load(path).inspect_err(|e| {
            self.live.reloads.count(false);
            for p in &e.problems {
                tracing::error!(config = %path.display(), problem = %p, "invalid configuration");
            }
        })?;
        self.apply(config)
    }

    /// Applies `new` to requests that arrive from now on: upstream limits, queues, timeouts,
    /// addresses, routes, the buffer cap, `drain_timeout` and `shutdown_delay`; and reloads every
    /// TLS listener's certificate. Nothing in flight is dropped or cancelled. Settings that need a
    /// restart (listeners and their limits, the admin listener, logging) keep their running
    /// values and are returned, one line each, and logged. A certificate that fails its checks
    /// refuses the whole reload.
    pub fn apply(&self, new: Config) -> Result<Vec<String>, ReloadError> {
        // Certificates first: the one step that can still fail.
        let mut tls_errors = self.reload_tls();
        if let Err(problems) = check_upstream_tls(&new) {
            tls_errors.extend(
                problems
                    .into_iter()
                    .map(|(name, source)| StartError::UpstreamTls { name, source }),
            );
        }
        if !tls_errors.is_empty() {
            self.live.reloads.count(false);
            return Err(ReloadError::Tls(tls_errors));
        }
        let mut current = self.live.config();
        let restart = needs_restart(&current, &new);
        for what in &restart {
            tracing::warn!(change = %what, "this change needs a restart; the running value stays");
        }
        self.live.proxy.reconfigure(&new);
        // The parts that need a restart keep their running values.
        let old = std::mem::replace(&mut *current, new);
        current.listeners = old.listeners;
        current.admin = old.admin;
        current.request_metrics = old.request_metrics;
        current.log = old.log;
        self.live.reloads.count(true);
        tracing::info!(upstreams = %describe_upstreams(&current), "configuration reloaded");
        Ok(restart)
    }

    /// Re-reads every TLS listener's certificate and key. A listener whose new pair is bad keeps
    /// its current one; every failure is logged and returned.
    pub fn reload_tls(&self) -> Vec<StartError> {
        let mut errors = Vec::new();
        for (name, tls) in &self.live.tls {
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

/// The differences between `old` and `new` that a reload cannot apply, as log lines.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let names = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| l.name.clone())
            .collect::<Vec<_>>()
    };
    if names(old) != names(new) {
        out.push(format!("listeners {:?} -> {:?}", names(old), names(new)));
    } else {
        for (o, n) in old.listeners.iter().zip(&new.listeners) {
            if o != n {
                out.push(format!(
                    "listener {:?} settings (address, TLS files or limits)",
                    o.name
                ));
            }
        }
    }
    if old.admin != new.admin {
        out.push(format!("admin.addr {:?} -> {:?}", old.admin, new.admin));
    }
    if old.request_metrics != new.request_metrics {
        out.push("admin.request_metrics".to_string());
    }
    if old.log != new.log {
        out.push("log".to_string());
    }
    out
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
                u.limit,
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
