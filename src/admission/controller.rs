//! The adaptive limit at work: switching a pool between a fixed and an adaptive limit, and the
//! task that feeds the pool's [`Controller`] a window of samples every [`WINDOW`] and applies the
//! limit it decides.
//!
//! The task is started when a pool is configured `"auto"` and ends when the pool is configured
//! with a fixed limit again, or is dropped. Switching between the two takes the same lock as the
//! task's every change, so a reload never races a decision.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::adaptive::{Cause, Controller, MAX_WINDOW, MIN_SAMPLES, WINDOW, Window};
use super::pool::Pool;
use super::state::LimitChange;
use crate::config::AutoLimit;
use crate::sync::lock;

/// A change of at least this fraction since the last one logged is logged...
const LOG_FRACTION: f64 = 0.2;
/// ...at most this often per upstream.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Pool {
    /// Makes the limit fixed at `n` (a reload from `"auto"` stops the controller).
    pub(super) fn fix_limit(&self, n: usize) {
        let mut mode = lock(&self.adaptive().mode);
        mode.auto = None;
        self.set_max_concurrency(n);
    }

    /// Makes the limit adaptive within `bounds`. From a fixed limit it starts at
    /// `bounds.initial`; an adaptive one keeps its value, within the new bounds.
    pub(super) fn auto_limit(self: &Arc<Self>, bounds: AutoLimit, name: &str) {
        let adaptive = self.adaptive();
        let mut mode = lock(&adaptive.mode);
        let from = self.max_concurrency();
        let to = if mode.auto.is_none() {
            mode.generation += 1;
            bounds.initial
        } else {
            from.clamp(bounds.min, bounds.max)
        };
        mode.auto = Some(bounds);
        if to != from {
            self.set_max_concurrency(to);
            adaptive.note(LimitChange {
                at: SystemTime::now(),
                from,
                to,
                cause: Cause::Config,
            });
        }
        if !mode.running {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    mode.running = true;
                    runtime.spawn(run(Arc::downgrade(self), name.to_string()));
                }
                Err(_) => {
                    tracing::warn!("no runtime to run the adaptive limit on: it stays at {to}")
                }
            }
        }
    }

    /// Applies the controller's decision, unless the limit was made fixed meanwhile.
    fn apply_auto(&self, generation: u64, to: usize, cause: Cause) -> Option<LimitChange> {
        let adaptive = self.adaptive();
        let mode = lock(&adaptive.mode);
        if mode.auto.is_none() || mode.generation != generation {
            return None;
        }
        let from = self.max_concurrency();
        if from == to {
            return None;
        }
        self.set_max_concurrency(to);
        drop(mode);
        let change = LimitChange {
            at: SystemTime::now(),
            from,
            to,
            cause,
        };
        adaptive.note(change);
        Some(change)
    }
}

/// The controller's task: a window every [`WINDOW`] (extended until it holds [`MIN_SAMPLES`]
/// exchanges, up to [`MAX_WINDOW`]), until the pool is gone or its limit fixed.
async fn run(pool: Weak<Pool>, name: String) {
    let mut tick = tokio::time::interval(WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state: Option<(u64, Controller)> = None;
    let mut last = Default::default();
    let mut since = Instant::now();
    let mut log = LimitLog::new(0);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let adaptive = pool.adaptive();
        let now = Instant::now();
        let (bounds, generation) = {
            let mut mode = lock(&adaptive.mode);
            match mode.auto {
                Some(bounds) => (bounds, mode.generation),
                None => {
                    mode.running = false;
                    adaptive.baseline.store(0, Ordering::Relaxed);
                    adaptive.sample.store(0, Ordering::Relaxed);
                    return;
                }
            }
        };
        let ctl = match &mut state {
            Some((g, ctl)) if *g == generation => {
                ctl.set_bounds(bounds);
                ctl
            }
            _ => {
                // Started, or switched back to adaptive: a fresh controller, fresh samples.
                last = adaptive.samples.totals();
                since = now;
                let ctl = Controller::new(bounds, now);
                log = LimitLog::new(ctl.limit());
                &mut state.insert((generation, ctl)).1
            }
        };
        let totals = adaptive.samples.totals();
        let length = now.saturating_duration_since(since);
        if totals.completed_since(&last) < MIN_SAMPLES && length < MAX_WINDOW {
            continue;
        }
        let window = Window::between(&last, &totals, length);
        (last, since) = (totals, now);
        let decision = ctl.update(now, &window);
        adaptive.publish(ctl);
        let Some((to, cause)) = decision else {
            continue;
        };
        let Some(change) = pool.apply_auto(generation, to, cause) else {
            continue;
        };
        if cause == Cause::Probe {
            continue;
        }
        if let Some(from) = log.moved(change.to, now) {
            tracing::info!(
                upstream = %name,
                from,
                to = change.to,
                cause = cause.as_str(),
                baseline_ms = ctl.baseline().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                sample_ms = ctl.sample().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                "adaptive concurrency limit changed"
            );
        }
    }
}

/// When the limit's moves are worth a log line: a move of [`LOG_FRACTION`] from the limit last
/// logged (or the one the controller started from), at most every [`LOG_EVERY`]. Gradual
/// moves add up: they are measured from the last limit logged, not from the last change.
struct LimitLog {
    base: usize,
    at: Option<Instant>,
}

impl LimitLog {
    fn new(start: usize) -> LimitLog {
        LimitLog {
            base: start,
            at: None,
        }
    }

    /// The limit now `to`: the limit it moved from, when this move is to be logged.
    fn moved(&mut self, to: usize, now: Instant) -> Option<usize> {
        let due = self
            .at
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        let moved = (to as f64 - self.base as f64).abs() / self.base.max(1) as f64;
        if !due || moved < LOG_FRACTION {
            return None;
        }
        let from = std::mem::replace(&mut self.base, to);
        self.at = Some(now);
        Some(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradual_moves_add_up_and_lines_are_rate_limited() {
        let t0 = Instant::now();
        let mut log = LimitLog::new(16);
        // 16 -> 19 one by one: none is a fifth of its own start, together they are.
        assert_eq!(log.moved(17, t0), None);
        assert_eq!(log.moved(18, t0), None);
        assert_eq!(log.moved(20, t0), Some(16));
        // Another fifth at once: not within LOG_EVERY of the last line.
        assert_eq!(log.moved(30, t0 + Duration::from_secs(1)), None);
        assert_eq!(log.moved(30, t0 + LOG_EVERY), Some(20));
        // Down counts as much as up.
        assert_eq!(log.moved(20, t0 + LOG_EVERY * 2), Some(30));
    }
}
