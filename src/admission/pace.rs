//! How fast an upstream's queue drains, and how long its requests take: what a deadline-aware
//! admission and a computed `Retry-After` need to know about the wait ahead.
//!
//! Both are moving averages (one eighth of each new sample), fed only off the fast path: the
//! interval between slots handed to *waiting* requests (so only while a queue exists), and the
//! time to the response head of requests that carry a client deadline. A pool that never queues
//! and sees no deadlines never touches them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A gap between two grants longer than this is an idle spell, not a sample of the drain.
const IDLE_GAP: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Pace {
    epoch: Instant,
    /// When a waiting request was last granted a slot, in nanoseconds from `epoch` (0: never).
    last_grant: AtomicU64,
    /// The mean interval between grants to waiting requests, in nanoseconds (0: unknown).
    interval: AtomicU64,
    /// The mean time to the response head of requests with a deadline, in nanoseconds.
    service: AtomicU64,
    /// When the queue was last seen empty, in nanoseconds from `epoch`.
    last_empty: AtomicU64,
    /// CoDel: the queue timeout under a standing queue, in nanoseconds (0: off), and how long
    /// the queue must not have been empty for it to count as standing.
    codel_target: AtomicU64,
    codel_interval: AtomicU64,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            epoch: Instant::now(),
            last_grant: AtomicU64::new(0),
            interval: AtomicU64::new(0),
            service: AtomicU64::new(0),
            last_empty: AtomicU64::new(0),
            codel_target: AtomicU64::new(0),
            codel_interval: AtomicU64::new(0),
        }
    }
}

/// `avg` moved an eighth of the way to `sample` (or set to it, the first time).
fn blend(avg: &AtomicU64, sample: u64) {
    let old = avg.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample
    } else {
        old - old / 8 + sample / 8
    };
    // Concurrent updates may lose one another's sample: an average does not mind.
    avg.store(new.max(1), Ordering::Relaxed);
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Pace {
    /// A waiting request was granted a slot now.
    pub fn granted(&self) {
        let now = nanos(self.epoch.elapsed()).max(1);
        let last = self.last_grant.swap(now, Ordering::Relaxed);
        if last != 0 && now > last && now - last <= nanos(IDLE_GAP) {
            blend(&self.interval, now - last);
        }
    }

    /// A request with a deadline got its response head `took` after it was sent.
    pub fn served(&self, took: Duration) {
        blend(&self.service, nanos(took));
    }

    /// The time a request joining the queue behind `ahead` others can expect to wait for a slot,
    /// if the queue's drain has been seen.
    pub fn queue_wait(&self, ahead: usize) -> Option<Duration> {
        let interval = self.interval.load(Ordering::Relaxed);
        (interval > 0).then(|| Duration::from_nanos(interval.saturating_mul(ahead as u64 + 1)))
    }

    /// The queue is empty now (its last waiter left, or the first is about to join).
    pub fn emptied(&self) {
        self.last_empty
            .store(nanos(self.epoch.elapsed()), Ordering::Relaxed);
    }

    /// Turns CoDel on with `(target, interval)`, or off.
    pub fn set_codel(&self, codel: Option<(Duration, Duration)>) {
        let (target, interval) = codel.unwrap_or_default();
        self.codel_target.store(nanos(target), Ordering::Relaxed);
        self.codel_interval
            .store(nanos(interval), Ordering::Relaxed);
    }

    /// CoDel's short queue timeout, when it is on and the queue has not been empty for its
    /// interval (a standing queue: the wait it adds is not absorbing a burst).
    pub fn codel_timeout(&self) -> Option<Duration> {
        let target = self.codel_target.load(Ordering::Relaxed);
        if target == 0 {
            return None;
        }
        let now = nanos(self.epoch.elapsed());
        let since = now.saturating_sub(self.last_empty.load(Ordering::Relaxed));
        let standing = since > self.codel_interval.load(Ordering::Relaxed);
        standing.then(|| Duration::from_nanos(target))
    }

    /// The recent time to a response head, if requests with a deadline have been served.
    pub fn service(&self) -> Option<Duration> {
        let s = self.service.load(Ordering::Relaxed);
        (s > 0).then(|| Duration::from_nanos(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_learned_from_grants_and_idle_spells_are_left_out() {
        let pace = Pace::default();
        assert_eq!(pace.queue_wait(3), None);
        for _ in 0..50 {
            pace.granted();
            tokio::time::advance(Duration::from_millis(2)).await;
        }
        let wait = pace.queue_wait(9).unwrap();
        assert!(
            wait >= Duration::from_millis(19) && wait <= Duration::from_millis(21),
            "{wait:?}"
        );
        // A pause of a minute is not a slow drain.
        tokio::time::advance(Duration::from_secs(60)).await;
        pace.granted();
        assert_eq!(pace.queue_wait(9), Some(wait));
        pace.served(Duration::from_millis(40));
        assert_eq!(pace.service(), Some(Duration::from_millis(40)));
    }

    #[tokio::test(start_paused = true)]
    async fn codel_shortens_the_wait_only_under_a_standing_queue() {
        let pace = Pace::default();
        assert_eq!(pace.codel_timeout(), None, "off");
        let target = Duration::from_millis(10);
        pace.set_codel(Some((target, Duration::from_millis(100))));
        pace.emptied();
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(pace.codel_timeout(), None, "a burst's queue");
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(pace.codel_timeout(), Some(target), "standing for 120 ms");
        pace.emptied();
        assert_eq!(pace.codel_timeout(), None);
        pace.set_codel(None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.codel_timeout(), None);
    }
}
