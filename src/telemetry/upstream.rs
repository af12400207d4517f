//! The counters and histograms of one upstream.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::histogram::Histogram;
use super::labels::{Reason, UpstreamErrorKind, status_class};
use crate::config::Priority;
use crate::sync::Stripes;

/// Per-upstream counters and latency histograms, indexed by enum. Those of every request are
/// striped by thread (see [`Stripes`]); rejections and errors are plain atomics, one relaxed
/// add each. They live in the upstream's admission pool, which a configuration reload keeps.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    rejected: [AtomicU64; Reason::ALL.len()],
    upstream_errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    /// Answers by status class (see [`super::STATUS_CLASSES`]).
    responses: Stripes<5>,
    request_duration: Histogram,
    /// By priority class (its value as the index).
    queue_wait: [Histogram; Priority::ALL.len()],
    pub tunnels: TunnelCounters,
}

/// Upgraded connections (WebSocket tunnels) of one upstream. `open` is also what `max_upgraded`
/// is checked against (see `upstream::tunnel`).
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Tunnels open now, and upgrades on their way (a reservation is taken before the handshake).
    pub open: AtomicUsize,
    opened: AtomicU64,
    idle_closed: AtomicU64,
    /// Bytes carried, by [`Direction`].
    bytes: [AtomicU64; 2],
}

/// Which way a tunnel's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToBackend,
    ToClient,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ToBackend, Direction::ToClient];
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToBackend => "to_backend",
            Direction::ToClient => "to_client",
        }
    }
}

impl TunnelCounters {
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
    pub fn count_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
    pub fn idle_closed(&self) -> u64 {
        self.idle_closed.load(Ordering::Relaxed)
    }
    pub fn count_idle_close(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn bytes(&self, way: Direction) -> u64 {
        self.bytes[way as usize].load(Ordering::Relaxed)
    }
    pub fn carried(&self, way: Direction, n: usize) {
        self.bytes[way as usize].fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl UpstreamCounters {
    /// Counts one finished request: its answer's status, duration and queue wait (in its
    /// priority class).
    pub fn finished(
        &self,
        status: Option<StatusCode>,
        duration: Duration,
        queue_wait: Option<Duration>,
        class: Priority,
    ) {
        if let Some(s) = status {
            self.responses.add(status_class(s), 1);
        }
        self.request_duration.observe(duration);
        if let Some(w) = queue_wait {
            self.queue_wait[class as usize].observe(w);
        }
    }

    /// Answers sent in status class `class` (an index into [`super::STATUS_CLASSES`]).
    pub fn responses(&self, class: usize) -> u64 {
        self.responses.sum(class)
    }

    pub fn request_duration(&self) -> &Histogram {
        &self.request_duration
    }

    pub fn queue_wait(&self, class: Priority) -> &Histogram {
        &self.queue_wait[class as usize]
    }

    pub fn reject(&self, reason: Reason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    pub fn upstream_errors(&self, kind: UpstreamErrorKind) -> u64 {
        self.upstream_errors[kind as usize].load(Ordering::Relaxed)
    }
}
