//! Deadline timers that a keep-alive connection's requests share at almost no cost, and the
//! request deadline's timer, kept by the connection and lent to its requests in turn.
//!
//! A fresh tokio timer is registered in the timer wheel and removed again, hundreds of
//! instructions; moving one to a new deadline takes atomic operations, and each poll registers
//! the task's waker with two more. A [`LazyTimer`] is moved only to an *earlier* deadline: the
//! deadlines of a keep-alive connection move later with every request, so the timer stays set
//! for an earlier one, fires there, and is then moved on to the current one. Until it fires,
//! polling it again with the waker it holds is skipped.
//!
//! An HTTP/1 connection asks one request at a time, so its requests share one timer
//! ([`LendingTimer`]). Requests that overlap (HTTP/2 streams) get their own.
//!
//! A timer back in its slot stays in the wheel until its last deadline, holding the waker of the
//! last request that polled it: for HTTP/1 the connection's own task, which it may wake once for
//! nothing; for HTTP/2 a finished stream's task, whose memory it keeps until then (one per
//! connection at most).

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

/// A tokio timer re-armed only when a deadline is earlier than the one it is set for, or when it
/// fires before the deadline asked for. See the module docs.
#[derive(Debug)]
pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    /// The deadline the timer is set for, once one was asked.
    armed: Option<Instant>,
    /// The waker the timer holds for `armed`, when its last poll was pending: until the timer
    /// fires or moves, polling it again with the same waker would change nothing.
    waiting: Option<Waker>,
}

impl LazyTimer {
    /// A timer for `deadline`, not yet registered: that happens on its first poll.
    pub fn new(deadline: Instant) -> LazyTimer {
        LazyTimer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: Some(deadline),
            waiting: None,
        }
    }

    /// A timer set for no deadline yet.
    pub fn unarmed() -> LazyTimer {
        LazyTimer {
            armed: None,
            ..LazyTimer::new(Instant::now())
        }
    }

    /// `Ready` once `deadline` has passed. Otherwise the task is woken by then: at `deadline`,
    /// or at an earlier deadline the timer was left at (a wake-up that finds nothing to do).
    pub fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed.is_none_or(|armed| deadline < armed) {
            self.arm(deadline);
        }
        if !self.sleep.is_elapsed()
            && self
                .waiting
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if self.poll_sleep(cx).is_pending() {
            return Poll::Pending;
        }
        if self.armed != Some(deadline) {
            // It fired for an earlier deadline than this one: move it on.
            self.arm(deadline);
            if self.poll_sleep(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    }

    fn arm(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.armed = Some(deadline);
        self.waiting = None;
    }

    /// Polls the timer, noting the waker it holds when pending.
    fn poll_sleep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let polled = self.sleep.as_mut().poll(cx);
        self.waiting = polled.is_pending().then(|| cx.waker().clone());
        polled
    }
}

/// A connection's request deadline timer, lent to one request at a time.
#[derive(Debug, Default)]
pub struct LendingTimer(parking_lot::Mutex<Option<LazyTimer>>);

impl LendingTimer {
    /// A timer for `deadline`: the connection's own when no other request holds it, else a new
    /// one. The connection's is held by a try-lock for the loan, and is free again when the
    /// loan is dropped: one atomic operation to take it and one to give it back, where taking it
    /// out of a locked slot and putting it back took four. Nothing ever waits for the lock.
    pub fn lend(&self, deadline: Instant) -> LentTimer<'_> {
        let timer = match self.0.try_lock() {
            Some(slot) => Loan::Slot(slot),
            None => Loan::Own(LazyTimer::new(deadline)),
        };
        LentTimer { timer, deadline }
    }
}

/// A deadline timer on loan from a [`LendingTimer`].
pub struct LentTimer<'a> {
    timer: Loan<'a>,
    deadline: Instant,
}

enum Loan<'a> {
    /// The connection's timer (made on its first loan).
    Slot(parking_lot::MutexGuard<'a, Option<LazyTimer>>),
    /// A timer of the loan's own: another request holds the connection's.
    Own(LazyTimer),
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
            let deadline = self.deadline;
            let timer = match &mut self.timer {
                Loan::Slot(slot) => slot.get_or_insert_with(|| LazyTimer::new(deadline)),
                Loan::Own(timer) => timer,
            };
            timer.poll_until(deadline, cx).map(|()| None)
        })
        .await
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
    async fn finishes_in_time(slot: &LendingTimer, deadline: Instant) {
        let mut timer = slot.lend(deadline);
        assert_eq!(timer.limit(tokio::time::sleep(secs(1))).await, Some(()));
    }

    /// A request whose backend never answers: cut off at its deadline (rounded up to the
    /// timer's millisecond), neither sooner nor later.
    async fn cut_off_at(slot: &LendingTimer, deadline: Instant) {
        let mut timer = slot.lend(deadline);
        // Bounded: a timer that misses its wake-up would leave the test waiting for ever.
        let cut = tokio::time::timeout_at(
            deadline + secs(1),
            timer.limit(std::future::pending::<()>()),
        );
        assert_eq!(cut.await, Ok(None), "not cut off at its deadline");
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
        let slot = LendingTimer::default();
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
        let slot = LendingTimer::default();
        let start = Instant::now();
        let mut long = slot.lend(start + secs(60));
        let mut short = slot.lend(start + secs(2));
        let both = tokio::time::timeout(secs(60), async {
            tokio::join!(
                long.limit(tokio::time::sleep(secs(5))),
                short.limit(std::future::pending::<()>())
            )
        });
        assert_eq!(both.await, Ok((Some(()), None)));
        assert_eq!(start.elapsed().as_secs(), 5);
        drop(long);
        drop(short);
        // The first loan had the connection's timer, and it is back in the slot.
        assert!(slot.0.lock().is_some());
    }
}
