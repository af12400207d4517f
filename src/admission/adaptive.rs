//! The adaptive limit (`max_concurrency = "auto"`): the controller that finds how many requests a
//! backend can take at once, from what weir sees of it, and follows it as it changes.
//!
//! The signal is the time from sending a request to its response head (queue wait excluded),
//! recorded per exchange as two additions to the thread's own counters ([`Samples`]). Every
//! [`WINDOW`] the controller compares the window's mean latency (the *sample*) with the
//! *baseline*, the latency of the backend without a queue of weir's making, and estimates how
//! many of weir's requests wait inside the backend (TCP Vegas' estimate): the window's backend
//! concurrency (Little's law: the latencies' sum over the window's length) times the share of
//! the sample above the baseline. It keeps that queue within a band of about √limit / 4
//! requests ([`queue_band`]), and moves the limit:
//!
//! - below the band while requests had to wait for a slot: the backend has room, the limit grows
//!   by about √limit / 3, √limit / 2 while it shows no queue at all (additive increase);
//! - above the band (and the sample more than [`MIN_RATIO`] above the baseline): requests queue
//!   inside the backend, the limit shrinks by the excess, by at most a quarter per window
//!   (multiplicative decrease);
//! - backend errors (5xx, resets, failed connects, deadlines) shrink it too, in proportion to
//!   their share of the window: a backend that fails fast does not look healthy;
//! - otherwise it holds.
//!
//! Additive increase with multiplicative decrease is what makes several weirs in front of one
//! backend converge to equal shares without knowing of each other (as TCP flows share a link):
//! they see the same latency, so they shrink by the same factor and grow by the same step, and
//! the one holding more of the backend's queue gives way first.
//!
//! What keeps the baseline honest:
//! - only windows in which no request waited for a slot (weir was not the one keeping the
//!   backend busy), and *probes*, feed it; a new lowest latency always does;
//! - under sustained load no window is such, so every [`PROBE_EVERY`] the limit is halved for
//!   [`PROBE_WINDOWS`] windows: the backend's own queue drains and its latency without a queue
//!   is seen again. A probe that finds a lower baseline is repeated after [`PROBE_SOON`]: the
//!   limit was too high, and the next probe finds out by how much. The halved limit is never
//!   pinned to the floor, and the waiting requests stay in weir's queue.
//! - the baseline is the lowest of those latencies over the last [`BASELINE_HORIZON`]; it never
//!   rises for sustained load alone;
//! - when shrinking the limit by half did not bring latency below [`REBASE_RATIO`] times the
//!   baseline within [`REBASE_AFTER`] windows, the backend itself got slower (a deploy, a slow database): the baseline is
//!   measured afresh.
//!
//! When weir does not use its limit (no request waited), the limit neither grows nor falls
//! below twice the backend concurrency of the window (by Little's law, the latencies' sum over
//! the window's length), so a light load is never shed by the controller.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::AutoLimit;
use crate::sync::Stripes;

/// How often the controller looks at the samples.
pub const WINDOW: Duration = Duration::from_millis(100);
/// A window is extended until it holds this many completed exchanges, up to [`MAX_WINDOW`].
pub const MIN_SAMPLES: u64 = 8;
/// The longest window: at a low rate, one decision a second at least.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);
/// Latency within this ratio of the baseline is never taken for a queue (measurement noise).
pub const MIN_RATIO: f64 = 1.03;
/// The most one window takes off the limit for latency (a pause costs a quarter, once).
pub const MAX_SHRINK: f64 = 0.75;
/// The most one window takes off the limit for errors (all of the window's exchanges failed).
pub const MAX_ERROR_SHRINK: f64 = 0.5;
/// How long a low latency counts toward the baseline.
pub const BASELINE_HORIZON: Duration = Duration::from_secs(30);
/// Under sustained load, how often the limit is halved to see the backend without a queue (give
/// or take a fifth, at random).
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// After a probe that lowered the baseline (or before the first), how soon the next comes.
pub const PROBE_SOON: Duration = Duration::from_secs(1);
/// How many windows a probe lasts.
pub const PROBE_WINDOWS: u32 = 2;
/// Windows of latency above [`REBASE_RATIO`] times the baseline, with the limit halved
/// meanwhile, after which the baseline is measured afresh.
pub const REBASE_AFTER: u32 = 10;
pub const REBASE_RATIO: f64 = 1.25;

/// What the request path records for the controller. One exchange costs two adds to the
/// thread's stripe (no atomic read-modify-write), no lock, no allocation.
#[derive(Debug)]
pub struct Samples {
    /// Latency sum in nanoseconds, exchanges answered, exchanges failed.
    cells: Stripes<3>,
    /// Requests that found no free slot (queued or refused).
    limited: AtomicU64,
}

const RTT_SUM: usize = 0;
const ANSWERED: usize = 1;
const FAILED: usize = 2;

impl Default for Samples {
    fn default() -> Samples {
        Samples {
            cells: Stripes::default(),
            limited: AtomicU64::new(0),
        }
    }
}

/// The running totals of [`Samples`], to take differences of.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    rtt_sum: u64,
    answered: u64,
    failed: u64,
    limited: u64,
}

impl Samples {
    /// An exchange answered by the backend (a status below 500) after `rtt`.
    pub fn answered(&self, rtt: Duration) {
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        let local = self.cells.local();
        local.add(RTT_SUM, nanos);
        local.add(ANSWERED, 1);
    }

    /// An exchange that failed: a 5xx answer, a reset, a failed connect, a deadline.
    pub fn failed(&self) {
        self.cells.add(FAILED, 1);
    }

    /// A request found no free slot. On admission's slow path only.
    pub(crate) fn limited(&self) {
        self.limited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            rtt_sum: self.cells.sum(RTT_SUM),
            answered: self.cells.sum(ANSWERED),
            failed: self.cells.sum(FAILED),
            limited: self.limited.load(Ordering::Relaxed),
        }
    }
}

impl Totals {
    /// Exchanges completed (answered or failed) since `earlier`.
    pub(crate) fn completed_since(&self, earlier: &Totals) -> u64 {
        self.answered.wrapping_sub(earlier.answered) + self.failed.wrapping_sub(earlier.failed)
    }
}

/// What one window saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub length: Duration,
    /// Exchanges the backend answered, and the sum of their latencies.
    pub answered: u64,
    pub rtt_sum: Duration,
    /// Exchanges that failed.
    pub failed: u64,
    /// Requests that found no free slot.
    pub limited: u64,
}

impl Window {
    pub(crate) fn between(earlier: &Totals, later: &Totals, length: Duration) -> Window {
        Window {
            length,
            answered: later.answered.wrapping_sub(earlier.answered),
            rtt_sum: Duration::from_nanos(later.rtt_sum.wrapping_sub(earlier.rtt_sum)),
            failed: later.failed.wrapping_sub(earlier.failed),
            limited: later.limited.wrapping_sub(earlier.limited),
        }
    }

    /// The mean latency of the answered exchanges.
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.answered).unwrap_or(u32::MAX);
        (n > 0).then(|| self.rtt_sum / n)
    }

    /// Requests the backend held at once on average (Little's law).
    fn concurrency(&self) -> f64 {
        if self.length.is_zero() {
            return 0.0;
        }
        self.rtt_sum.as_secs_f64() / self.length.as_secs_f64()
    }
}

/// A probe under way: the limit halved for a few windows.
#[derive(Debug, Clone, Copy)]
struct Probe {
    windows_left: u32,
    /// The limit to go back to.
    restore: f64,
    baseline_before: Option<Duration>,
}

/// Windows in a row with latency above [`REBASE_RATIO`] times the baseline.
#[derive(Debug, Clone, Copy)]
struct Congestion {
    windows: u32,
    /// The limit when it began.
    limit_then: f64,
}

/// The controller's arithmetic: windows in, a limit out. Pure: the task that feeds it lives in
/// `pool`; tests drive it with windows and instants of their own.
#[derive(Debug)]
pub struct Controller {
    bounds: AutoLimit,
    limit: f64,
    /// Low latencies that count toward the baseline, and when they were seen, oldest first.
    lows: VecDeque<(Instant, Duration)>,
    baseline: Option<Duration>,
    sample: Option<Duration>,
    next_probe: Instant,
    probe: Option<Probe>,
    congestion: Option<Congestion>,
    /// State of the probe interval's jitter.
    jitter: u64,
    /// The baseline was seen without weir's queue in the backend (a window in which no request
    /// waited, or a probe), not only while requests were waiting.
    trusted: bool,
}

/// Why the limit moved, for the status page and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The backend had room and requests waited.
    Room,
    /// Latency rose above the baseline: requests queued inside the backend.
    Latency,
    /// The backend answered with errors.
    Errors,
    /// A probe for the backend's latency without a queue, or its end.
    Probe,
    /// The configuration changed.
    Config,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Room => "room",
            Cause::Latency => "latency",
            Cause::Errors => "errors",
            Cause::Probe => "probe",
            Cause::Config => "config",
        }
    }
}

impl Controller {
    pub fn new(bounds: AutoLimit, now: Instant) -> Controller {
        Controller {
            bounds,
            limit: bounds.initial as f64,
            lows: VecDeque::new(),
            baseline: None,
            sample: None,
            next_probe: now + PROBE_SOON,
            probe: None,
            congestion: None,
            // Seeded from the clock, so that weirs started together still differ.
            jitter: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
                | 1,
            trusted: false,
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> usize {
        // Rounded to the nearest: an additive step of 1 moves it by one slot.
        (self.limit.round() as usize).clamp(self.bounds.min, self.bounds.max)
    }

    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    pub fn sample(&self) -> Option<Duration> {
        self.sample
    }

    /// New bounds (a reload): the limit is kept, within them.
    pub fn set_bounds(&mut self, bounds: AutoLimit) {
        self.bounds = bounds;
        self.limit = self.limit.clamp(bounds.min as f64, bounds.max as f64);
        if let Some(p) = &mut self.probe {
            p.restore = p.restore.clamp(bounds.min as f64, bounds.max as f64);
        }
    }

    /// Takes in one window; returns the new limit and why it moved, if it did.
    pub fn update(&mut self, now: Instant, w: &Window) -> Option<(usize, Cause)> {
        let before = self.limit();
        let cause = self.step(now, w);
        let after = self.limit();
        (after != before).then_some((after, cause))
    }

    fn step(&mut self, now: Instant, w: &Window) -> Cause {
        let completed = w.answered + w.failed;
        if completed == 0 {
            return Cause::Room;
        }
        if let Some(mean) = w.mean() {
            self.sample = Some(mean);
        }
        if let Some(probe) = self.probe.as_mut() {
            // The backend's queue drains: its latency now is its latency without one.
            probe.windows_left = probe.windows_left.saturating_sub(1);
            let (left, restore, before) =
                (probe.windows_left, probe.restore, probe.baseline_before);
            // What a probe finds counts when it is lower than the baseline: one that found
            // nothing lower (others keep the backend busy) does not raise it.
            if let Some(mean) = w.mean().filter(|m| self.baseline.is_none_or(|b| *m < b)) {
                self.learn(now, mean);
            }
            if left == 0 {
                self.probe = None;
                let lowered = matches!((before, self.baseline), (Some(b0), Some(b1))
                    if b1.as_secs_f64() < 0.9 * b0.as_secs_f64());
                // A probe that found a much lower latency shows the limit was too high to see
                // the backend's own: another comes soon. One that did not confirms the baseline.
                self.trusted = !lowered;
                self.next_probe = now
                    + if lowered {
                        PROBE_SOON
                    } else {
                        self.probe_every()
                    };
                self.limit = restore;
            }
            return Cause::Probe;
        }

        let saturated = w.limited > 0;
        if let Some(mean) = w.mean() {
            let lower = self.baseline.is_none_or(|b| mean < b);
            if !saturated || lower {
                self.learn(now, mean);
            }
            self.trusted |= !saturated;
            if !saturated {
                // The backend was seen without weir's queue in it: no probe needed for now.
                self.next_probe = self.next_probe.max(now + self.probe_every());
            }
        }
        self.forget(now);

        let ratio = match (self.sample, self.baseline, w.mean()) {
            (Some(s), Some(b), Some(_)) if !b.is_zero() => Some(s.as_secs_f64() / b.as_secs_f64()),
            _ => None,
        };
        // This weir's requests waiting inside the backend: of those it holds there (Little's
        // law), the share of their latency above the baseline (TCP Vegas' estimate).
        let queued = ratio.map(|r| w.concurrency() * (1.0 - 1.0 / r).max(0.0));
        let (low, high) = queue_band(self.limit);
        let mut factor: f64 = 1.0;
        let mut cause = Cause::Room;
        if w.failed > 0 {
            let share = w.failed as f64 / completed as f64;
            factor = (1.0 - share / 2.0).max(MAX_ERROR_SHRINK);
            cause = Cause::Errors;
        }
        if let Some(q) = queued.filter(|q| *q > high && ratio.is_some_and(|r| r > MIN_RATIO)) {
            // Down by the excess queue, toward the low end of the band.
            let f = (1.0 - (q - low) / self.limit).max(MAX_SHRINK);
            if f < factor {
                factor = f;
                cause = Cause::Latency;
            }
        }
        if ratio.is_some_and(|r| r > REBASE_RATIO) {
            let c = self.congestion.get_or_insert(Congestion {
                windows: 0,
                limit_then: self.limit,
            });
            c.windows += 1;
            if c.windows >= REBASE_AFTER && self.limit <= c.limit_then / 2.0 {
                // Half the concurrency, and latency as high: the backend itself got slower.
                self.lows.clear();
                self.baseline = None;
                self.learn(now, self.sample.unwrap_or_default());
                self.congestion = None;
            }
        } else {
            self.congestion = None;
        }
        if factor < 1.0 {
            let floor = if saturated {
                self.bounds.min as f64
            } else {
                // Not using the limit: never below what the window used, with room for bursts.
                (2.0 * w.concurrency() + 2.0).min(self.limit)
            };
            self.limit = (self.limit * factor).max(floor);
        } else if saturated && queued.is_some_and(|q| q < low) {
            // Faster while the backend shows no queue of weir's at all (room after a step up),
            // by the same step for every weir that shares it.
            let step = if queued.is_some_and(|q| q < low / 2.0) {
                self.limit.sqrt() / 2.0
            } else {
                self.limit.sqrt() / 3.0
            };
            self.limit += step.max(1.0);
            // Growing against a baseline seen without weir's queue: a probe would find nothing,
            // and would only slow the climb down.
            if self.trusted {
                self.next_probe = self.next_probe.max(now + WINDOW * PROBE_WINDOWS);
            }
        }
        self.limit = self
            .limit
            .clamp(self.bounds.min as f64, self.bounds.max as f64);

        if saturated && now >= self.next_probe && self.baseline.is_some() {
            self.probe = Some(Probe {
                windows_left: PROBE_WINDOWS,
                restore: self.limit,
                baseline_before: self.baseline,
            });
            self.limit = (self.limit / 2.0).max(self.bounds.min as f64);
            return Cause::Probe;
        }
        cause
    }

    /// [`PROBE_EVERY`], give or take a fifth: weirs that share a backend do not probe in step,
    /// nor in step with a load that changes on a round period.
    fn probe_every(&mut self) -> Duration {
        // xorshift64: enough to spread probes; no allocation, no global state.
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        let spread = (x % 1000) as f64 / 1000.0 * 0.4 - 0.2;
        PROBE_EVERY.mul_f64(1.0 + spread)
    }

    /// A latency seen without weir's queue in the backend.
    fn learn(&mut self, now: Instant, rtt: Duration) {
        self.lows.push_back((now, rtt));
        if self.baseline.is_none_or(|b| rtt < b) {
            self.baseline = Some(rtt);
        }
    }

    /// Drops the lows older than the horizon; the baseline is the lowest left, or stays as it
    /// was when none is left.
    fn forget(&mut self, now: Instant) {
        let before = self.lows.len();
        while self
            .lows
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > BASELINE_HORIZON)
        {
            self.lows.pop_front();
        }
        if self.lows.len() != before {
            if let Some(low) = self.lows.iter().map(|(_, d)| *d).min() {
                self.baseline = Some(low);
            }
        }
    }
}

/// The band this weir's own queue inside the backend is kept in, for a limit of `limit`: below
/// `low` the limit grows, above `high` it shrinks. At least one request, and more as the limit
/// grows (as its square root, so that latency noise does not look like a queue on a large
/// backend, while a weir with a larger limit still gives way first to one with a smaller).
fn queue_band(limit: f64) -> (f64, f64) {
    let low = (limit.sqrt() / 4.0).max(1.0);
    (low, low * 1.5)
}

#[cfg(test)]
#[path = "adaptive_tests.rs"]
mod tests;
