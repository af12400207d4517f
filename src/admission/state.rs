//! An upstream's adaptive-limit state, kept in its pool: what the request path records, whether
//! the limit is adaptive, and what the controller publishes for the metrics and the status page.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::adaptive::{Cause, Controller, Samples};
use crate::config::AutoLimit;
use crate::sync::lock;

/// Limit changes kept for the status page.
const CHANGES_KEPT: usize = 32;

/// One change of the limit, as the status page shows it.
#[derive(Debug, Clone, Copy)]
pub struct LimitChange {
    pub at: SystemTime,
    pub from: usize,
    pub to: usize,
    pub cause: Cause,
}

/// An upstream's adaptive state, in its pool. Present whatever the limit: a fixed pool records
/// nothing into it and starts no task.
#[derive(Debug, Default)]
pub struct Adaptive {
    /// What the request path records; read by the task only.
    pub(super) samples: Samples,
    pub(super) mode: Mutex<Mode>,
    /// The controller's baseline and sample latency, in nanoseconds (0: none yet).
    pub(super) baseline: AtomicU64,
    pub(super) sample: AtomicU64,
    raised: AtomicU64,
    lowered: AtomicU64,
    changes: Mutex<VecDeque<LimitChange>>,
}

#[derive(Debug, Default)]
pub(super) struct Mode {
    /// `Some` while the limit is adaptive.
    pub(super) auto: Option<AutoLimit>,
    /// Counts switches to adaptive: a task that sees it move starts its controller afresh.
    pub(super) generation: u64,
    /// A task runs (it clears this, under the lock, as it ends).
    pub(super) running: bool,
}

/// What the status page and the metrics show of an adaptive limit.
#[derive(Debug, Clone)]
pub struct AdaptiveView {
    pub bounds: AutoLimit,
    pub baseline: Option<Duration>,
    pub sample: Option<Duration>,
    pub raised: u64,
    pub lowered: u64,
    /// The latest changes, oldest first.
    pub changes: Vec<LimitChange>,
}

impl Adaptive {
    /// The request path's recorder.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// The adaptive limit's state, when the limit is adaptive.
    pub fn view(&self) -> Option<AdaptiveView> {
        let bounds = lock(&self.mode).auto?;
        let nanos = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        };
        Some(AdaptiveView {
            bounds,
            baseline: nanos(&self.baseline),
            sample: nanos(&self.sample),
            raised: self.raised.load(Ordering::Relaxed),
            lowered: self.lowered.load(Ordering::Relaxed),
            changes: lock(&self.changes).iter().copied().collect(),
        })
    }

    pub(super) fn publish(&self, ctl: &Controller) {
        let nanos =
            |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.baseline
            .store(nanos(ctl.baseline()), Ordering::Relaxed);
        self.sample.store(nanos(ctl.sample()), Ordering::Relaxed);
    }

    pub(super) fn note(&self, change: LimitChange) {
        let counter = if change.to > change.from {
            &self.raised
        } else {
            &self.lowered
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut changes = lock(&self.changes);
        if changes.len() == CHANGES_KEPT {
            changes.pop_front();
        }
        changes.push_back(change);
    }
}
