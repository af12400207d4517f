//! Per-listener state shared by its connections: the limits the request path needs, and counters
//! of connections, rejections, client timeouts and size limits. Counters are plain atomics indexed
//! by enum, so counting costs one relaxed add and label values stay a fixed set.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::ListenerConfig;

/// Why a connection was closed before it could carry a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnReject {
    /// `max_connections` were already open.
    Limit,
    /// The TLS handshake failed (bad client hello, no or untrusted client certificate, ...).
    TlsHandshake,
}

impl ConnReject {
    pub const ALL: [ConnReject; 2] = [ConnReject::Limit, ConnReject::TlsHandshake];
    pub fn as_str(self) -> &'static str {
        match self {
            ConnReject::Limit => "limit",
            ConnReject::TlsHandshake => "tls_handshake",
        }
    }
}

/// Which slow-client deadline fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    Header,
    Body,
    Write,
    Idle,
    TlsHandshake,
}

impl ClientTimeout {
    pub const ALL: [ClientTimeout; 5] = [
        ClientTimeout::Header,
        ClientTimeout::Body,
        ClientTimeout::Write,
        ClientTimeout::Idle,
        ClientTimeout::TlsHandshake,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTimeout::Header => "header",
            ClientTimeout::Body => "body",
            ClientTimeout::Write => "write",
            ClientTimeout::Idle => "idle",
            ClientTimeout::TlsHandshake => "tls_handshake",
        }
    }
}

/// Which size limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// `max_header_bytes`: answered 431.
    HeaderBytes,
    /// `max_body_bytes`: answered 413, or the upload cut off.
    BodyBytes,
}

impl SizeLimit {
    pub const ALL: [SizeLimit; 2] = [SizeLimit::HeaderBytes, SizeLimit::BodyBytes];
    pub fn as_str(self) -> &'static str {
        match self {
            SizeLimit::HeaderBytes => "header_bytes",
            SizeLimit::BodyBytes => "body_bytes",
        }
    }
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    accepted: AtomicU64,
    active: AtomicUsize,
    parked: AtomicUsize,
    rejected: [AtomicU64; ConnReject::ALL.len()],
    timeouts: [AtomicU64; ClientTimeout::ALL.len()],
    limits: [AtomicU64; SizeLimit::ALL.len()],
}

impl ListenerCounters {
    pub fn reject(&self, r: ConnReject) {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn timeout(&self, t: ClientTimeout) {
        self.timeouts[t as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn limit(&self, l: SizeLimit) {
        self.limits[l as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// Counts an accepted connection as open until the returned guard is dropped.
    pub fn open(&self) -> Counted<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Counted::new(&self.active)
    }

    /// Counts an open connection as parked ([`crate::park`]) until the returned guard is dropped.
    pub fn park(&self) -> Counted<'_> {
        Counted::new(&self.parked)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
    pub fn rejected(&self, r: ConnReject) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }
    pub fn timeouts(&self, t: ClientTimeout) -> u64 {
        self.timeouts[t as usize].load(Ordering::Relaxed)
    }
    pub fn limits(&self, l: SizeLimit) -> u64 {
        self.limits[l as usize].load(Ordering::Relaxed)
    }
}

/// A connection counted in one of the gauges of [`ListenerCounters`] (open, parked) while it
/// lives.
pub struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicUsize) -> Counted<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a listener's connections and requests share.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub counters: ListenerCounters,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: Option<u64>,
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
}

impl ListenerInfo {
    pub fn new(config: &ListenerConfig) -> ListenerInfo {
        ListenerInfo {
            name: config.name.clone(),
            counters: ListenerCounters::default(),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            body_timeout: config.body_timeout,
            max_body_bytes: config.max_body_bytes,
            min_body_rate: config.min_body_rate,
            body_rate_grace: config.body_rate_grace,
        }
    }
}
