//! Configuration: TOML text -> raw serde structs -> validated, typed [`Config`].
//!
//! Parsing is strict (`deny_unknown_fields` everywhere: a typo is an error, not a silently ignored
//! key). The TOML parser stops at the first syntax or type error, which is reported with its key
//! path and line/column; once the file has the right shape, every semantic problem (ranges,
//! duplicates, unknown route targets, unparsable addresses) is collected and reported together,
//! each naming its key path (`upstream[1].max_queue`) and the reason.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Authority;
use serde::Deserialize;

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
}

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

/// One backend and the pool that protects it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port` of the backend; hostnames are resolved when connecting.
    pub addr: Authority,
    pub protocol: Protocol,
    /// Requests forwarded to this backend at once: the size of the worker pool.
    pub max_concurrency: usize,
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
    /// Responses up to this size are read whole from the backend, as fast as it sends them, so
    /// its slot is freed while a slow client is still being served; 0 streams every response.
    pub response_buffer: u64,
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

    /// Index of the upstream named `name`.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }
}

fn parse(text: &str) -> Result<RawConfig, Problem> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let location = inner.span().map(|span| line_col(text, span.start));
        Problem {
            path: if path == "." { String::new() } else { path },
            message: inner
                .message()
                .trim()
                .replace("expected i64", "expected an integer"),
            location,
        }
    })
}

/// Parses "1024", "64KiB", "1 MiB", "500kB", "2GB" (binary units for KiB/MiB/GiB, decimal for kB/MB/GB).
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

// ---- raw, as written in the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    drain_timeout: Option<String>,
    shutdown_delay: Option<String>,
    max_buffered_bytes: Option<RawSize>,
    admin: Option<RawAdmin>,
    log: Option<RawLog>,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    addr: String,
    tls: Option<RawTls>,
    max_connections: Option<i64>,
    max_concurrent_streams: Option<i64>,
    tls_handshake_timeout: Option<String>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    write_timeout: Option<String>,
    idle_timeout: Option<String>,
    http2_keepalive_interval: Option<String>,
    max_header_bytes: Option<RawSize>,
    max_body_bytes: Option<RawSize>,
    min_body_rate: Option<RawSize>,
    body_rate_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    addr: Option<String>,
    request_metrics: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
    access: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// A byte size: an integer, or a string with a unit ("64KiB", "1 MiB", "500kB").
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    addr: String,
    protocol: Option<Protocol>,
    max_concurrency: Option<i64>,
    max_queue: Option<i64>,
    queue_timeout: Option<String>,
    request_timeout: Option<String>,
    connect_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    pool_max_idle: Option<i64>,
    retry_after: Option<String>,
    request_buffer: Option<RawSize>,
    oversized_body: Option<OversizedBody>,
    response_buffer: Option<RawSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<String>,
    path_prefix: Option<String>,
    upstream: String,
}

// ---- validation ----

/// Defaults, documented in config.example.toml (a test keeps the two in step).
pub mod defaults {
    use std::time::Duration;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const SHUTDOWN_DELAY: Duration = Duration::ZERO;
    pub const ADMIN_ADDR: &str = "127.0.0.1:9901";
    pub const LOG_LEVEL: &str = "info";
    pub const MAX_CONCURRENCY: usize = 64;
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
    pub const BODY_RATE_GRACE: Duration = Duration::from_secs(10);
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
            location: None,
        });
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let drain_timeout = self.duration(
            "drain_timeout",
            raw.drain_timeout.as_deref(),
            defaults::DRAIN_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let shutdown_delay = self.duration_from(
            "shutdown_delay",
            raw.shutdown_delay.as_deref(),
            defaults::SHUTDOWN_DELAY,
            MAX_SHORT_DURATION,
            true,
        );
        let request_metrics = raw
            .admin
            .as_ref()
            .and_then(|a| a.request_metrics)
            .unwrap_or(true);
        let admin = self.admin(raw.admin);
        let log = self.log(raw.log);

        if raw.listener.is_empty() {
            self.problem("listener", "at least one [[listener]] is required");
        }
        if raw.upstream.is_empty() {
            self.problem("upstream", "at least one [[upstream]] is required");
        }

        let listeners: Vec<_> = raw
            .listener
            .into_iter()
            .enumerate()
            .map(|(i, l)| self.listener(i, l))
            .collect();
        self.unique_names("listener", listeners.iter().map(|l| l.name.as_str()));

        let upstreams: Vec<_> = raw
            .upstream
            .into_iter()
            .enumerate()
            .map(|(i, u)| self.upstream(i, u))
            .collect();
        self.unique_names("upstream", upstreams.iter().map(|u| u.name.as_str()));

        if upstreams.len() > 1 && raw.route.is_empty() {
            self.problem(
                "route",
                "with more than one [[upstream]], [[route]] entries must say which requests go where",
            );
        }
        let routes: Vec<_> = raw
            .route
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &upstreams))
            .collect();

        let max_buffered_bytes = self
            .size(
                "max_buffered_bytes".into(),
                raw.max_buffered_bytes,
                0,
                u64::MAX >> 1,
            )
            .unwrap_or(defaults::MAX_BUFFERED_BYTES);
        if let Some(a) = admin {
            if let Some(i) = listeners.iter().position(|l| l.addr == a && a.port() != 0) {
                self.problem(
                    "admin.addr",
                    format!("{a} is also the address of listener[{i}]: the admin listener needs its own port"),
                );
            }
        }
        Config {
            drain_timeout,
            shutdown_delay,
            max_buffered_bytes,
            admin,
            request_metrics,
            log,
            listeners,
            upstreams,
            routes,
        }
    }

    fn admin(&mut self, raw: Option<RawAdmin>) -> Option<SocketAddr> {
        let raw = raw.unwrap_or(RawAdmin {
            enabled: None,
            addr: None,
            request_metrics: None,
        });
        let text = raw.addr.as_deref().unwrap_or(defaults::ADMIN_ADDR);
        let addr = match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    "admin.addr",
                    format!("{text:?} is not an IP address and port, such as \"127.0.0.1:9901\""),
                );
                None
            }
        };
        if raw.enabled == Some(false) {
            None
        } else {
            addr
        }
    }

    fn log(&mut self, raw: Option<RawLog>) -> LogConfig {
        let raw = raw.unwrap_or(RawLog {
            level: None,
            format: None,
            access: None,
        });
        let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.problem(
                "log.level",
                format!(
                    "{level:?} is not a log filter such as \"info\" or \"warn,weir=debug\": {e}"
                ),
            );
        }
        LogConfig {
            level,
            format: raw.format.unwrap_or(LogFormat::Text),
            access: raw.access.unwrap_or(true),
        }
    }

    fn unique_names<'a>(&mut self, section: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen = HashSet::new();
        let dups: Vec<(usize, String)> = names
            .enumerate()
            .filter(|(_, n)| !seen.insert(*n))
            .map(|(i, n)| (i, n.to_string()))
            .collect();
        for (i, name) in dups {
            self.problem(
                format!("{section}[{i}].name"),
                format!("duplicate {section} name {name:?}"),
            );
        }
    }

    fn name(&mut self, path: String, name: String) -> String {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            self.problem(
                path,
                format!(
                    "{name:?} is not a valid name: use 1 or more of a-z, A-Z, 0-9, '-', '_', '.'"
                ),
            );
        }
        name
    }

    fn listener(&mut self, i: usize, raw: RawListener) -> ListenerConfig {
        let name = self.name(format!("listener[{i}].name"), raw.name);
        let addr = raw.addr.parse().unwrap_or_else(|_| {
            self.problem(
                format!("listener[{i}].addr"),
                format!(
                    "{:?} is not an IP address and port, such as \"0.0.0.0:8080\" or \"[::]:8080\"",
                    raw.addr
                ),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let at = |key: &str| format!("listener[{i}].{key}");
        let short = |v: &mut Self, key: &str, raw: Option<String>, default| {
            v.duration(&at(key), raw.as_deref(), default, MAX_SHORT_DURATION)
        };
        let tls_handshake_timeout = short(
            self,
            "tls_handshake_timeout",
            raw.tls_handshake_timeout,
            defaults::TLS_HANDSHAKE_TIMEOUT,
        );
        let header_timeout = short(
            self,
            "header_timeout",
            raw.header_timeout,
            defaults::HEADER_TIMEOUT,
        );
        let body_timeout = short(
            self,
            "body_timeout",
            raw.body_timeout,
            defaults::BODY_TIMEOUT,
        );
        let write_timeout = short(
            self,
            "write_timeout",
            raw.write_timeout,
            defaults::WRITE_TIMEOUT,
        );
        let idle_timeout = short(
            self,
            "idle_timeout",
            raw.idle_timeout,
            defaults::IDLE_TIMEOUT,
        );
        let http2_keepalive_interval = short(
            self,
            "http2_keepalive_interval",
            raw.http2_keepalive_interval,
            defaults::HTTP2_KEEPALIVE_INTERVAL,
        );
        let max_connections = self.count(
            at("max_connections"),
            raw.max_connections,
            defaults::MAX_CONNECTIONS,
            1,
            MAX_CONNECTIONS,
        );
        let max_concurrent_streams = self.count(
            at("max_concurrent_streams"),
            raw.max_concurrent_streams,
            defaults::MAX_CONCURRENT_STREAMS as usize,
            1,
            MAX_STREAMS,
        ) as u32;
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        let max_header_bytes = self
            .size(
                at("max_header_bytes"),
                raw.max_header_bytes,
                8 * 1024,
                1024 * 1024,
            )
            .map_or(defaults::MAX_HEADER_BYTES, |n| n as usize);
        let max_body_bytes = self.size(at("max_body_bytes"), raw.max_body_bytes, 1, u64::MAX >> 1);
        let min_body_rate = self
            .size(at("min_body_rate"), raw.min_body_rate, 0, 1 << 40)
            .unwrap_or(defaults::MIN_BODY_RATE);
        let body_rate_grace = short(
            self,
            "body_rate_grace",
            raw.body_rate_grace,
            defaults::BODY_RATE_GRACE,
        );
        let tls = raw.tls.map(|t| TlsFiles {
            cert: t.cert,
            key: t.key,
            client_ca: t.client_ca,
        });
        ListenerConfig {
            name,
            addr,
            tls,
            max_connections,
            max_concurrent_streams,
            tls_handshake_timeout,
            header_timeout,
            body_timeout,
            write_timeout,
            idle_timeout,
            http2_keepalive_interval,
            max_header_bytes,
            max_body_bytes,
            min_body_rate,
            body_rate_grace,
        }
    }

    /// A byte size within `min..=max`, or `None` when absent or invalid (invalid is reported).
    fn size(&mut self, path: String, raw: Option<RawSize>, min: u64, max: u64) -> Option<u64> {
        let text = match raw? {
            RawSize::Bytes(n) if n >= 0 => return self.size_in_range(path, n as u64, min, max),
            RawSize::Bytes(n) => n.to_string(),
            RawSize::Text(t) => t,
        };
        match parse_size(&text) {
            Some(n) => self.size_in_range(path, n, min, max),
            None => {
                self.problem(
                    path,
                    format!("{text:?} is not a size: write bytes as an integer, or a number and a unit such as \"64KiB\", \"1MiB\" or \"500kB\""),
                );
                None
            }
        }
    }

    fn size_in_range(&mut self, path: String, n: u64, min: u64, max: u64) -> Option<u64> {
        if n < min || n > max {
            self.problem(
                path,
                format!("{n} bytes is out of range: must be from {min} to {max}"),
            );
            return None;
        }
        Some(n)
    }

    fn upstream(&mut self, i: usize, raw: RawUpstream) -> UpstreamConfig {
        let at = |key: &str| format!("upstream[{i}].{key}");
        let name = self.name(at("name"), raw.name);
        let addr = self.authority(at("addr"), &raw.addr);
        let max_concurrency = self.count(
            at("max_concurrency"),
            raw.max_concurrency,
            defaults::MAX_CONCURRENCY,
            1,
            MAX_CONCURRENCY,
        );
        let max_queue = self.count(
            at("max_queue"),
            raw.max_queue,
            defaults::MAX_QUEUE,
            0,
            MAX_QUEUE,
        );
        let queue_timeout = self.duration(
            &at("queue_timeout"),
            raw.queue_timeout.as_deref(),
            defaults::QUEUE_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let request_timeout = self.duration(
            &at("request_timeout"),
            raw.request_timeout.as_deref(),
            defaults::REQUEST_TIMEOUT,
            MAX_REQUEST_TIMEOUT,
        );
        let connect_timeout = self.duration(
            &at("connect_timeout"),
            raw.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let pool_idle_timeout = self.duration(
            &at("pool_idle_timeout"),
            raw.pool_idle_timeout.as_deref(),
            defaults::POOL_IDLE_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let pool_max_idle = self.count(
            at("pool_max_idle"),
            raw.pool_max_idle,
            max_concurrency,
            0,
            MAX_CONCURRENCY,
        );
        let retry_after = self.duration(
            &at("retry_after"),
            raw.retry_after.as_deref(),
            defaults::RETRY_AFTER,
            MAX_SHORT_DURATION,
        );
        let request_buffer = self
            .size(at("request_buffer"), raw.request_buffer, 0, 1 << 30)
            .unwrap_or(defaults::REQUEST_BUFFER);
        let response_buffer = self
            .size(at("response_buffer"), raw.response_buffer, 0, 1 << 30)
            .unwrap_or(defaults::RESPONSE_BUFFER);
        UpstreamConfig {
            request_buffer,
            response_buffer,
            oversized_body: raw.oversized_body.unwrap_or(OversizedBody::Stream),
            name,
            addr,
            protocol: raw.protocol.unwrap_or(Protocol::Http1),
            max_concurrency,
            max_queue,
            queue_timeout,
            request_timeout,
            connect_timeout,
            pool_idle_timeout,
            pool_max_idle,
            // Retry-After is in whole seconds; round up so "500ms" does not become "0".
            retry_after_secs: retry_after.as_millis().div_ceil(1000) as u64,
        }
    }

    fn route(
        &mut self,
        i: usize,
        raw: RawRoute,
        upstreams: &[UpstreamConfig],
    ) -> Option<RouteConfig> {
        let host = raw.host.map(|h| {
            let valid = !h.is_empty() && !h.contains(['/', ' ', '\t', ':']);
            if !valid {
                self.problem(
                    format!("route[{i}].host"),
                    format!("{h:?} is not a host name (no scheme, port or path), such as \"api.example.com\""),
                );
            }
            h.to_ascii_lowercase()
        });
        if let Some(p) = &raw.path_prefix {
            if !p.starts_with('/') {
                self.problem(
                    format!("route[{i}].path_prefix"),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        let Some(upstream) = upstreams.iter().position(|u| u.name == raw.upstream) else {
            self.problem(
                format!("route[{i}].upstream"),
                format!("no [[upstream]] is named {:?}", raw.upstream),
            );
            return None;
        };
        Some(RouteConfig {
            host,
            path_prefix: raw.path_prefix,
            upstream,
        })
    }

    fn authority(&mut self, path: String, text: &str) -> Authority {
        let fallback = Authority::from_static("invalid:1");
        if text.contains("://") {
            self.problem(
                path,
                format!("{text:?}: write host:port without a scheme, such as \"127.0.0.1:3000\""),
            );
            return fallback;
        }
        match text.parse::<Authority>() {
            Ok(a)
                if a.port_u16().is_some_and(|p| p != 0)
                    && !a.host().is_empty()
                    && !text.contains('@') =>
            {
                a
            }
            _ => {
                self.problem(
                    path,
                    format!("{text:?} is not a host:port address, such as \"127.0.0.1:3000\" or \"app:8080\""),
                );
                fallback
            }
        }
    }

    fn count(
        &mut self,
        path: String,
        raw: Option<i64>,
        default: usize,
        min: u64,
        max: u64,
    ) -> usize {
        let Some(n) = raw else { return default };
        if n < min as i64 || n as u64 > max {
            self.problem(
                path,
                format!("{n} is out of range: must be from {min} to {max}"),
            );
            return default;
        }
        n as usize
    }

    fn duration(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        self.duration_from(path, raw, default, max, false)
    }

    /// A duration within `max`; zero is refused unless `zero_ok` (a setting where zero means none).
    fn duration_from(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: Duration,
        max: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(text) = raw else { return default };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(path, format!("{text:?}: must be longer than zero"));
                default
            }
            Ok(d) if d > max => {
                self.problem(
                    path,
                    format!(
                        "{text:?} is too long: at most {}",
                        humantime::format_duration(max)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(
                    path,
                    format!("{text:?} is not a duration ({e}); write a number and a unit, such as \"250ms\", \"5s\" or \"1m\""),
                );
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listener]]
name = "public"
addr = "127.0.0.1:8080"

[[upstream]]
name = "app"
addr = "127.0.0.1:3000"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match Config::from_toml_str(text) {
            Ok(_) => panic!("expected config errors for:\n{text}"),
            Err(e) => e.problems,
        }
    }

    fn has(problems: &[Problem], path: &str, needle: &str) -> bool {
        problems
            .iter()
            .any(|p| p.path == path && p.message.contains(needle))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.drain_timeout, defaults::DRAIN_TIMEOUT);
        let u = &c.upstreams[0];
        assert_eq!(u.max_concurrency, defaults::MAX_CONCURRENCY);
        assert_eq!(u.max_queue, defaults::MAX_QUEUE);
        assert_eq!(u.queue_timeout, defaults::QUEUE_TIMEOUT);
        assert_eq!(u.protocol, Protocol::Http1);
        assert_eq!(u.retry_after_secs, 1);
        assert!(c.routes.is_empty());
        assert_eq!(c.admin, Some(defaults::ADMIN_ADDR.parse().unwrap()));
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        assert!(c.request_metrics);
        assert_eq!(
            c.log,
            LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
                access: true
            }
        );
    }

    #[test]
    fn admin_and_log_sections() {
        let text = format!(
            "shutdown_delay = \"5s\"\n[admin]\nenabled = false\n[log]\nformat = \"json\"\naccess = false\n{MINIMAL}"
        );
        let c = Config::from_toml_str(&text).unwrap();
        assert_eq!(c.admin, None);
        assert_eq!(c.shutdown_delay, Duration::from_secs(5));
        assert_eq!((c.log.format, c.log.access), (LogFormat::Json, false));

        let text = format!(
            "[admin]\naddr = \"127.0.0.1:8080\"\n[log]\nlevel = \"info,weir=loud\"\n{MINIMAL}"
        );
        let p = problems(&text);
        assert!(
            has(&p, "admin.addr", "also the address of listener[0]"),
            "{p:?}"
        );
        assert!(has(&p, "log.level", "is not a log filter"), "{p:?}");
        let p = problems(&format!("[admin]\naddr = \"localhost\"\n{MINIMAL}"));
        assert!(has(&p, "admin.addr", "not an IP address and port"), "{p:?}");
    }

    #[test]
    fn unknown_key_is_reported_with_path_and_line() {
        let text = format!("{MINIMAL}max_qeue = 5\n");
        let p = problems(&text);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "upstream[0].max_qeue");
        assert!(p[0].message.contains("unknown field `max_qeue`"), "{p:?}");
        assert_eq!(p[0].location, Some((9, 1)));
    }

    #[test]
    fn wrong_type_is_reported_with_path_and_line() {
        let text = MINIMAL.replace(
            "addr = \"127.0.0.1:3000\"",
            "addr = \"127.0.0.1:3000\"\nmax_queue = \"ten\"",
        );
        let p = problems(&text);
        assert_eq!(p[0].path, "upstream[0].max_queue", "{p:?}");
        assert!(p[0].message.contains("invalid type"), "{p:?}");
        assert_eq!(p[0].location, Some((9, 13)));
    }

    #[test]
    fn syntax_error_has_a_location() {
        let p = problems("[[listener]\nname = 1");
        assert!(p[0].location.is_some(), "{p:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_together() {
        let text = r#"
drain_timeout = "-5s"
[[listener]]
name = "public"
addr = "localhost:80"
[[listener]]
name = "public"
addr = "127.0.0.1:81"
[[upstream]]
name = "a"
addr = "127.0.0.1:3000"
max_concurrency = 0
max_queue = -1
queue_timeout = "forever"
request_timeout = "400days"
connect_timeout = "0s"
[[upstream]]
name = "b"
addr = "http://127.0.0.1:3001"
[[upstream]]
name = "b"
addr = "127.0.0.1"
[[route]]
path_prefix = "api"
upstream = "c"
"#;
        let p = problems(text);
        let expect = [
            ("drain_timeout", "not a duration"),
            ("listener[0].addr", "not an IP address and port"),
            ("listener[1].name", "duplicate listener name \"public\""),
            ("upstream[0].max_concurrency", "0 is out of range"),
            ("upstream[0].max_queue", "-1 is out of range"),
            ("upstream[0].queue_timeout", "not a duration"),
            ("upstream[0].request_timeout", "too long"),
            ("upstream[0].connect_timeout", "longer than zero"),
            ("upstream[1].addr", "without a scheme"),
            ("upstream[2].addr", "not a host:port"),
            ("upstream[2].name", "duplicate upstream name \"b\""),
            ("route[0].path_prefix", "must start with '/'"),
            ("route[0].upstream", "no [[upstream]] is named \"c\""),
        ];
        for (path, needle) in expect {
            assert!(has(&p, path, needle), "missing {path}: {needle} in {p:#?}");
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn several_upstreams_need_routes() {
        let text = format!("{MINIMAL}[[upstream]]\nname = \"b\"\naddr = \"127.0.0.1:3001\"\n");
        assert!(has(&problems(&text), "route", "more than one"));
    }

    #[test]
    fn empty_file_asks_for_listener_and_upstream() {
        let p = problems("");
        assert!(has(&p, "listener", "at least one"));
        assert!(has(&p, "upstream", "at least one"));
    }

    #[test]
    fn routes_resolve_to_upstream_indices() {
        let text = format!(
            "{MINIMAL}[[upstream]]\nname = \"b\"\naddr = \"b.internal:3001\"\nprotocol = \"h2c\"\n\
             [[route]]\nhost = \"API.example.com\"\nupstream = \"b\"\n[[route]]\nupstream = \"app\"\n"
        );
        let c = Config::from_toml_str(&text).unwrap();
        assert_eq!(c.routes[0].upstream, 1);
        assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
        assert_eq!(c.upstreams[1].protocol, Protocol::H2c);
        assert_eq!(c.routes[1].upstream, 0);
    }

    #[test]
    fn display_names_file_path_and_reason() {
        let mut e = Config::from_toml_str(&MINIMAL.replace("3000", "0")).unwrap_err();
        e.file = Some("weir.toml".into());
        let text = e.to_string();
        assert!(
            text.contains("weir.toml: upstream[0].addr: \"127.0.0.1:0\" is not a host:port"),
            "{text}"
        );
    }

    #[test]
    fn listener_limits_parse_sizes_durations_and_tls() {
        let text = MINIMAL.replace(
            "addr = \"127.0.0.1:8080\"",
            "addr = \"127.0.0.1:8080\"\nmax_header_bytes = \"16KiB\"\nmax_body_bytes = 1000\n\
             header_timeout = \"2s\"\nmax_connections = 5\ntls = { cert = \"c.pem\", key = \"k.pem\" }",
        );
        let c = Config::from_toml_str(&text).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.max_header_bytes, 16 * 1024);
        assert_eq!(l.max_body_bytes, Some(1000));
        assert_eq!(l.header_timeout, Duration::from_secs(2));
        assert_eq!(l.idle_timeout, defaults::IDLE_TIMEOUT);
        assert_eq!(l.max_connections, 5);
        assert_eq!(
            l.tls.as_ref().map(|t| t.cert.clone()),
            Some(PathBuf::from("c.pem"))
        );
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("500kB"), Some(500_000));
        assert_eq!(parse_size("12 parsecs"), None);
    }

    #[test]
    fn listener_limits_out_of_range() {
        let text = MINIMAL.replace(
            "addr = \"127.0.0.1:8080\"",
            "addr = \"127.0.0.1:8080\"\nmax_header_bytes = 100\nmax_body_bytes = \"lots\"\n\
             max_connections = 0\nidle_timeout = \"0s\"\ntls = { cert = \"c.pem\" }",
        );
        let p = problems(&text);
        // The missing `key` is a shape error: the parser reports it first, alone.
        assert!(has(&p, "listener[0].tls", "missing field `key`"), "{p:?}");
        let text = text.replace("tls = { cert = \"c.pem\" }", "");
        let p = problems(&text);
        assert!(
            has(
                &p,
                "listener[0].max_header_bytes",
                "100 bytes is out of range"
            ),
            "{p:?}"
        );
        assert!(has(&p, "listener[0].max_body_bytes", "not a size"), "{p:?}");
        assert!(
            has(&p, "listener[0].max_connections", "0 is out of range"),
            "{p:?}"
        );
        assert!(
            has(&p, "listener[0].idle_timeout", "longer than zero"),
            "{p:?}"
        );
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../config.example.toml");
        let c = Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.listeners.is_empty());
    }
}
