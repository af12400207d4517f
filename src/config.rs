//! Configuration: TOML text -> raw serde structs -> validated, typed [`Config`].
//!
//! Parsing is strict (`deny_unknown_fields` everywhere: a typo is an error, not a silently ignored
//! key). The TOML parser stops at the first syntax or type error, which is reported with its key
//! path and line/column; once the file has the right shape, every semantic problem (ranges,
//! duplicates, unknown route targets, unparsable addresses) is collected and reported together,
//! each naming its key path (`upstream[1].max_queue`) and the reason.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Authority;
use serde::Deserialize;

mod raw;
#[cfg(test)]
mod tests;
mod upstream;
mod validate;

use raw::{RawConfig, parse};
use validate::Validator;

/// Longest duration accepted for the queue, connect and drain timeouts: anything longer is
/// almost certainly a unit mistake ("100" meant as milliseconds is rejected by the parser anyway).
const MAX_SHORT_DURATION: Duration = Duration::from_secs(3600);
/// Longest `request_timeout`: long polls and slow reports can legitimately take hours, not days.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Upper bound on `max_concurrency`: a slot is a backend request in flight; more than this is a typo.
const MAX_CONCURRENCY: u64 = 100_000;
/// Upper bound on `max_connections` per listener: far beyond what one process's file table holds.
const MAX_CONNECTIONS: u64 = 10_000_000;
/// Upper bound on HTTP/2 `max_concurrent_streams`.
const MAX_STREAMS: u64 = 10_000;
/// Upper bound on `max_queue`: each queued request holds a connection and its head in memory.
const MAX_QUEUE: u64 = 1_000_000;

/// The validated configuration weir runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long in-flight and queued requests may take to finish after SIGTERM before weir exits.
    pub drain_timeout: Duration,
    /// After SIGTERM, how long weir keeps serving while `/readyz` answers 503, before it starts
    /// draining: the time endpoints take to stop routing to a pod that is going away.
    pub shutdown_delay: Duration,
    /// Memory all request-body buffers may hold together; beyond it, 503 `buffer_full`.
    pub max_buffered_bytes: u64,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None` when turned off.
    pub admin: Option<SocketAddr>,
    /// Count every request's status class, duration and queue wait (`[admin] request_metrics`).
    /// Off only to measure what they cost; the gauges and rejection counters stay.
    pub request_metrics: bool,
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in file order; the first match wins. Empty when a single upstream takes everything.
    pub routes: Vec<RouteConfig>,
    /// `[reject_status]`: the status weir answers a reason with, where it is not the default
    /// (a name of [`REJECT_REASONS`] and a 4xx or 5xx status).
    pub reject_status: Vec<(&'static str, http::StatusCode)>,
}

/// The reasons weir answers for itself whose status `[reject_status]` may change: the
/// `x-weir-reject` values (a unit test in `telemetry` holds the list to the reasons counted).
pub const REJECT_REASONS: [&str; 18] = [
    "queue_full",
    "queue_timeout",
    "deadline",
    "upstream_connect",
    "upstream_tls",
    "upstream_reset",
    "upstream_protocol",
    "no_route",
    "bad_request",
    "body_timeout",
    "body_too_large",
    "buffer_full",
    "upgrade_limit",
    "evicted",
    "deadline_unmeetable",
    "tenant_share",
    "codel",
    "internal",
];

/// Logging: level, format, and the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter such as `info` or `info,weir::access=off`; the `RUST_LOG`
    /// environment variable, when set, takes precedence.
    pub level: String,
    pub format: LogFormat,
    /// One line per request (target `weir::access`).
    pub access: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` text, for people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// One traffic listener and the limits that protect weir from its clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Used in logs (and metric labels later), so operators can tell listeners apart.
    pub name: String,
    pub addr: SocketAddr,
    /// Terminate TLS with these files; plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// Open client connections allowed at once; the next one is closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// A TLS handshake must complete within this.
    pub tls_handshake_timeout: Duration,
    /// A request head must arrive completely within this, from the connection's start or from the
    /// first byte of a keep-alive request.
    pub header_timeout: Duration,
    /// A request body that makes no progress for this long is abandoned (408).
    pub body_timeout: Duration,
    /// A client that accepts no response bytes for this long is disconnected.
    pub write_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; a ping unanswered for as long closes the connection.
    pub http2_keepalive_interval: Duration,
    /// Largest request head (HTTP/1) or header list (HTTP/2); larger heads get 431.
    pub max_header_bytes: usize,
    /// Largest request body; larger ones get 413 (announced) or are cut off (chunked).
    pub max_body_bytes: Option<u64>,
    /// Slowest average upload accepted, in bytes per second, once `body_rate_grace` has passed;
    /// a slower body gets 408. 0 turns the check off.
    pub min_body_rate: u64,
    /// How long an upload may run before `min_body_rate` applies.
    pub body_rate_grace: Duration,
}

/// Certificate files of a TLS listener. Relative paths are resolved against the directory of the
/// configuration file by [`Config::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, RSA (PKCS#1) or EC (SEC1) private key.
    pub key: PathBuf,
    /// PEM: CAs whose client certificates are accepted; set to require client certificates (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// How weir speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive (the default).
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: one connection multiplexes every request.
    H2c,
}

/// A request's priority class. Under contention a freed slot goes to the highest class waiting;
/// a full queue makes room for a higher class by shedding the latest waiter of the lowest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Shed first: batch jobs, prefetches, retries.
    Sheddable = 0,
    /// Everything not marked (the default).
    #[default]
    Normal = 1,
    /// Never shed while lower classes hold queue places: health checks, logins, payments.
    Critical = 2,
}

impl Priority {
    /// Lowest first: a class's index is its value.
    pub const ALL: [Priority; 3] = [Priority::Sheddable, Priority::Normal, Priority::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Sheddable => "sheddable",
            Priority::Normal => "normal",
            Priority::Critical => "critical",
        }
    }

    /// The class a header value names (exactly, ASCII case-insensitively), if any.
    pub fn from_bytes(value: &[u8]) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .find(|p| value.eq_ignore_ascii_case(p.as_str().as_bytes()))
    }
}

/// One backend and the pool that protects it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Where the backend listens: `host:port` (host names are resolved when connecting) or a
    /// Unix domain socket (`unix:/path`).
    pub addr: UpstreamAddr,
    pub protocol: Protocol,
    /// Requests forwarded to this backend at once: a fixed number, or found by weir (`"auto"`).
    pub limit: Limit,
    /// Requests allowed to wait for a slot; the one after is answered 503 at once.
    pub max_queue: usize,
    /// Longest wait for a slot before the request is answered 503.
    pub queue_timeout: Duration,
    /// Deadline for the whole exchange with the backend, from admission to the last body byte.
    pub request_timeout: Duration,
    /// Deadline for establishing a TCP connection to the backend.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections to the backend are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept open to the backend.
    pub pool_max_idle: usize,
    /// Value of the `Retry-After` header on 503s, in whole seconds.
    pub retry_after_secs: u64,
    /// Request bodies up to this size are read whole before the request joins the queue; 0 turns
    /// buffering off (bodies stream to the backend as they arrive).
    pub request_buffer: u64,
    /// What happens to a body larger than `request_buffer`.
    pub oversized_body: OversizedBody,
    /// TLS to the backend (`tls = true` or a table), when it speaks HTTPS.
    pub tls: Option<UpstreamTls>,
    /// Responses up to this size are read whole from the backend, as fast as it sends them, so
    /// its slot is freed while a slow client is still being served; 0 streams every response.
    pub response_buffer: u64,
    /// Upgraded connections (WebSocket tunnels) open to this backend at once; the next upgrade
    /// is answered 503 `upgrade_limit`. 0 refuses every upgrade.
    pub max_upgraded: usize,
    /// An upgraded connection with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// A request header naming the request's [`Priority`] class, honoured when its route sets
    /// none.
    pub priority_header: Option<http::HeaderName>,
    /// Slots sheddable requests leave free while requests of a higher class arrive (within the
    /// last second); 0, the default, lets lower classes use every slot (work-conserving).
    pub priority_reserve: usize,
    /// A request header carrying a plain HTTP client's deadline, in milliseconds (gRPC's
    /// `grpc-timeout` is always read); rewritten to what is left when forwarded.
    pub deadline_header: Option<http::HeaderName>,
    /// A request header naming the request's tenant: waiting requests are served round-robin
    /// across tenants, and one holding `tenant_max_share` of the limit while others wait is
    /// shed first.
    pub tenant_header: Option<http::HeaderName>,
    pub tenant_max_share: f64,
    /// CoDel: under a standing queue (not empty for `interval`), the queue timeout becomes
    /// `target`. `None`: off.
    pub codel: Option<(Duration, Duration)>,
}

/// Where a backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `host:port`; host names are resolved when connecting.
    Tcp(Authority),
    /// `unix:/path/to/sock`: a Unix domain socket, the usual way to an app in the same pod.
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// The authority requests to this backend name when the protocol needs one (HTTP/2's
    /// `:authority`): its `host:port`, or `localhost` for a Unix socket.
    pub fn authority(&self) -> Authority {
        match self {
            UpstreamAddr::Tcp(a) => a.clone(),
            UpstreamAddr::Unix(_) => Authority::from_static("localhost"),
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp(a) => write!(f, "{a}"),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// TLS to an upstream: its certificate is verified against `ca` (or Mozilla's roots, which come
/// with weir) for `server_name` (or the address's host); `cert` and `key` are weir's client
/// certificate, for mTLS. Relative paths are resolved against the configuration file's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How many requests an upstream takes on at once (`max_concurrency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A fixed number of slots.
    Fixed(usize),
    /// Found and followed by the adaptive controller (`max_concurrency = "auto"`).
    Auto(AutoLimit),
}

/// The bounds of an adaptive limit: it starts at `initial` and moves between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoLimit {
    /// `min_concurrency`: the floor, so that a backend that errs or stalls still gets probes.
    pub min: usize,
    /// `initial_concurrency`: where the limit starts.
    pub initial: usize,
    /// `max_concurrency_limit`: the ceiling.
    pub max: usize,
}

impl Limit {
    /// The limit a new pool starts with.
    pub fn initial(&self) -> usize {
        match *self {
            Limit::Fixed(n) => n,
            Limit::Auto(a) => a.initial,
        }
    }

    /// The most the limit can be.
    pub fn ceiling(&self) -> usize {
        match *self {
            Limit::Fixed(n) => n,
            Limit::Auto(a) => a.max,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Fixed(n) => write!(f, "{n}"),
            Limit::Auto(a) => write!(f, "auto ({}..{}, from {})", a.min, a.max, a.initial),
        }
    }
}

/// What weir does with a request body larger than `request_buffer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizedBody {
    /// Admit it and stream the rest to the backend as it arrives (the slot is held meanwhile).
    Stream,
    /// Answer 413.
    Reject,
}

/// A routing rule: every condition given must hold.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-cased host to match exactly (the request's port is ignored).
    pub host: Option<String>,
    /// Prefix the request path must start with (plain string prefix, as nginx's `location /x`).
    pub path_prefix: Option<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// The class of the requests this route takes (a header then cannot change it).
    pub priority: Option<Priority>,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `upstream[1].max_queue`; empty for a problem with the whole file.
    pub path: String,
    pub message: String,
    /// 1-based line and column, where the parser knows them.
    pub location: Option<(usize, usize)>,
}

/// Every problem found in a configuration, with the file it came from.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: Option<String>,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.location {
            write!(f, "line {line}, column {col}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<config>");
        let n = self.problems.len();
        write!(f, "{file}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            match p.location {
                Some((line, col)) => write!(f, "\n  {file}:{line}:{col}: ")?,
                None => write!(f, "\n  {file}: ")?,
            }
            if !p.path.is_empty() {
                write!(f, "{}: ", p.path)?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(file.clone()),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
                location: None,
            }],
        })?;
        let mut config = Config::from_toml_str(&text).map_err(|mut e| {
            e.file = Some(file);
            e
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for u in &mut config.upstreams {
            if let UpstreamAddr::Unix(p) = &mut u.addr {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            if let Some(tls) = &mut u.tls {
                for p in [&mut tls.ca, &mut tls.cert, &mut tls.key]
                    .into_iter()
                    .flatten()
                {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
            }
        }
        for tls in config.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
            for p in [&mut tls.cert, &mut tls.key]
                .into_iter()
                .chain(tls.client_ca.as_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates configuration text. Pure: touches no file, socket or environment.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse(text).map_err(|p| ConfigError {
            file: None,
            problems: vec![p],
        })?;
        let mut v = Validator::default();
        let config = v.config(raw);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: None,
                problems: v.problems,
            })
        }
    }

    /// What is valid but probably wrong, one line each: a Unix-socket upstream whose path
    /// exists and is not a socket. (A missing one is fine: the app may start later.) Reads the
    /// file system, unlike [`Config::from_toml_str`].
    pub fn warnings(&self) -> Vec<String> {
        use std::os::unix::fs::FileTypeExt;
        let mut out = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if let UpstreamAddr::Unix(p) = &u.addr {
                if let Ok(meta) = std::fs::metadata(p) {
                    if !meta.file_type().is_socket() {
                        out.push(format!(
                            "upstream[{i}].addr: {} exists and is not a socket",
                            p.display()
                        ));
                    }
                }
            }
        }
        out
    }

    /// Index of the upstream named `name`.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }
}

/// Defaults, documented in config.example.toml (a test keeps the two in step).
pub mod defaults {
    use std::time::Duration;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const SHUTDOWN_DELAY: Duration = Duration::ZERO;
    pub const ADMIN_ADDR: &str = "127.0.0.1:9901";
    pub const LOG_LEVEL: &str = "info";
    pub const MAX_CONCURRENCY: usize = 64;
    pub const MIN_CONCURRENCY: usize = 2;
    pub const INITIAL_CONCURRENCY: usize = 16;
    pub const MAX_CONCURRENCY_LIMIT: usize = 1000;
    pub const MAX_QUEUE: usize = 128;
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_CONCURRENT_STREAMS: u32 = 100;
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const REQUEST_BUFFER: u64 = 1 << 20;
    pub const RESPONSE_BUFFER: u64 = 1 << 20;
    pub const MAX_BUFFERED_BYTES: u64 = 256 << 20;
    pub const MIN_BODY_RATE: u64 = 1024;
    /// A tenth of `max_connections`: each tunnel holds a client connection and a backend one.
    pub const MAX_UPGRADED: usize = 1000;
    pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const TENANT_MAX_SHARE: f64 = 0.5;
    pub const CODEL_TARGET: Duration = Duration::from_millis(10);
    pub const CODEL_INTERVAL: Duration = Duration::from_millis(100);
    pub const BODY_RATE_GRACE: Duration = Duration::from_secs(10);
}
