//! The request deadline's timer, kept by the connection and lent to its requests in turn.
//!
//! Registering a fresh timer in tokio's wheel and removing it again costs a request hundreds of
//! instructions. A timer that stays registered is moved to a *later* deadline with one atomic
//! exchange: the wheel fires it at the old time and tokio re-files it, unseen. An HTTP/1
//! connection asks one request at a time, each with a later deadline than the last, so its
//! requests share one timer. Requests that overlap (HTTP/2 streams) get their own.
//!
//! A timer back in its slot stays in the wheel until its last deadline, holding the waker of the
//! last request that polled it: for HTTP/1 the connection's own task; for HTTP/2 a finished
//! stream's task, whose memory it keeps until then (one per connection at most).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// A connection's spare deadline timer.
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Option<Pin<Box<Sleep>>>>);

impl TimerSlot {
    /// A timer set for `deadline`: the connection's own when no other request holds it, else a
    /// new one. It returns to the slot when dropped.
    pub fn lend(&self, deadline: Instant) -> LentTimer<'_> {
        let spare = self.0.lock().ok().and_then(|mut slot| slot.take());
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        LentTimer {
            sleep: Some(sleep),
            home: self,
        }
    }
}

/// A deadline timer on loan from a [`TimerSlot`].
pub struct LentTimer<'a> {
    /// `Some` until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    home: &'a TimerSlot,
}

impl LentTimer<'_> {
    /// Runs `fut` until it finishes (`Some`) or the deadline passes (`None`, and `fut` is
    /// dropped).
    pub async fn limit<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().poll(cx).map(|()| None),
                None => Poll::Pending,
            }
        })
        .await
    }
}

impl Drop for LentTimer<'_> {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        // A poisoned slot only means a panic while it was locked; the timer is simply dropped.
        if let Ok(mut slot) = self.home.0.lock() {
            slot.get_or_insert(sleep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A request that finishes a second into its loan, leaving the timer in the wheel for
    /// `deadline`.
    async fn finishes_in_time(slot: &TimerSlot, deadline: Instant) {
        let mut timer = slot.lend(deadline);
        assert_eq!(timer.limit(tokio::time::sleep(secs(1))).await, Some(()));
    }

    /// A request whose backend never answers: cut off at its deadline (rounded up to the
    /// timer's millisecond), neither sooner nor later.
    async fn cut_off_at(slot: &TimerSlot, deadline: Instant) {
        let mut timer = slot.lend(deadline);
        assert_eq!(timer.limit(std::future::pending::<()>()).await, None);
        let now = Instant::now();
        let on_time = now
            .checked_duration_since(deadline)
            .is_some_and(|late| late < Duration::from_millis(1));
        assert!(
            on_time,
            "cut off at {:?}, its deadline {:?}",
            now.into_std(),
            deadline.into_std()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_each_loans_own_deadline() {
        let slot = TimerSlot::default();
        let start = Instant::now();
        finishes_in_time(&slot, start + secs(10)).await;
        // The next, with a later deadline, is not cut short at the earlier one...
        cut_off_at(&slot, start + secs(30)).await;
        // ...and after one that left the timer in the wheel for 90 s, an earlier deadline
        // (36 s) does not wait for it.
        finishes_in_time(&slot, start + secs(90)).await;
        cut_off_at(&slot, start + secs(36)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_loans_get_their_own_timers() {
        let slot = TimerSlot::default();
        let start = Instant::now();
        let mut long = slot.lend(start + secs(60));
        let mut short = slot.lend(start + secs(2));
        let (l, s) = tokio::join!(
            long.limit(tokio::time::sleep(secs(5))),
            short.limit(std::future::pending::<()>())
        );
        assert_eq!((l, s), (Some(()), None));
        assert_eq!(start.elapsed().as_secs(), 5);
        drop(long);
        drop(short);
        // One of the two went back to the slot.
        assert!(slot.0.lock().unwrap().is_some());
    }
}
