//! The counters and histograms of one upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::histogram::Histogram;
use super::labels::{Reason, UpstreamErrorKind, status_class};
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
    queue_wait: Histogram,
}

impl UpstreamCounters {
    /// Counts one finished request: its answer's status, duration and queue wait.
    pub fn finished(
        &self,
        status: Option<StatusCode>,
        duration: Duration,
        queue_wait: Option<Duration>,
    ) {
        if let Some(s) = status {
            self.responses.add(status_class(s), 1);
        }
        self.request_duration.observe(duration);
        if let Some(w) = queue_wait {
            self.queue_wait.observe(w);
        }
    }

    /// Answers sent in status class `class` (an index into [`super::STATUS_CLASSES`]).
    pub fn responses(&self, class: usize) -> u64 {
        self.responses.sum(class)
    }

    pub fn request_duration(&self) -> &Histogram {
        &self.request_duration
    }

    pub fn queue_wait(&self) -> &Histogram {
        &self.queue_wait
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
