//! The admission pool of one upstream: at most `max_concurrency` requests in flight, at most
//! `max_queue` more waiting in arrival order, and an immediate rejection beyond that.
//!
//! A [`Permit`] owns its slot and a waiting request owns its queue place: dropping either (the
//! request finished, failed, timed out, panicked, or its client went away and hyper dropped the
//! future) gives it back. There is no release call to forget. A permit borrows its pool, which
//! costs nothing; one that must outlive the request's future (a response body still streaming)
//! becomes an [`OwnedPermit`], which holds a reference to the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::pace::Pace;
use super::slots::{Evicted, Slots};
use super::state::Adaptive;
use super::tenants::{TenantId, Tenants};
use crate::config::{Limit, Priority};
use crate::sync::Stripes;
use crate::telemetry::UpstreamCounters;

/// Why the pool turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// `max_queue` requests were already waiting.
    QueueFull,
    /// No slot came free within `queue_timeout`.
    QueueTimeout,
    /// A request of a higher class took its queue place.
    Evicted,
    /// The client's deadline cannot cover the wait the queue ahead and the recent service time
    /// promise: refused before it waits.
    Unmeetable,
    /// The client's deadline passed while it waited.
    Deadline,
    /// Its tenant holds its share (`tenant_max_share`) while other tenants wait, or lost its
    /// queue place to one that needed it.
    TenantShare,
    /// CoDel: the queue was standing, and no slot came free within its short target.
    Codel,
}

/// One upstream's slots and queue.
#[derive(Debug)]
pub struct Pool {
    /// Released slots go to waiters in arrival order, and `try_acquire` fails while anyone
    /// waits, so arrival order is kept. Admission and release cost one compare-and-swap each
    /// while nobody waits ([`Slots`]).
    slots: Slots,
    /// The limits are atomics so that a configuration reload resizes the pool in place: requests
    /// already admitted or queued keep their slot or place.
    max_concurrency: AtomicUsize,
    max_queue: AtomicUsize,
    queue_timeout_nanos: AtomicU64,
    /// Slots to retire as they are released: a limit lowered below the slots in use cannot take
    /// them back from running requests, so the next releases are not returned to the slots.
    retiring: AtomicUsize,
    /// Requests waiting for a slot now.
    queued: AtomicUsize,
    /// Requests holding a slot now: a gauge striped by thread, raised and lowered without an
    /// atomic read-modify-write.
    in_flight: Stripes<1>,
    /// The upstream's rejection and error counters. They live beside the slots so that a permit
    /// held by a streaming body can count a late deadline without a second shared reference.
    counters: UpstreamCounters,
    /// The adaptive limit's samples and state (idle while the limit is fixed).
    adaptive: Adaptive,
    /// How fast the queue drains, for deadlines and `Retry-After`.
    pace: Pace,
    /// What each tenant has in flight, and its share (`tenant_header` upstreams only).
    tenants: Tenants,
}

/// A slot in the pool, released when dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    pool: &'a Arc<Pool>,
    /// Counted in flight for its tenant (0: none).
    tenant: TenantId,
    /// How long the request waited in the queue (zero when a slot was free at once).
    queue_wait: Duration,
}

/// A slot in the pool held beyond the request's future, released when dropped.
#[derive(Debug)]
pub struct OwnedPermit {
    pool: Arc<Pool>,
    tenant: TenantId,
}

/// A place in the queue, given back when dropped (admitted, timed out, or client gone).
struct QueuePlace<'a>(&'a Pool);

impl Pool {
    pub fn new(max_concurrency: usize, max_queue: usize, queue_timeout: Duration) -> Pool {
        Pool {
            slots: Slots::new(max_concurrency),
            max_concurrency: AtomicUsize::new(max_concurrency),
            max_queue: AtomicUsize::new(max_queue),
            queue_timeout_nanos: AtomicU64::new(nanos(queue_timeout)),
            retiring: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            in_flight: Stripes::default(),
            counters: UpstreamCounters::default(),
            adaptive: Adaptive::default(),
            pace: Pace::default(),
            tenants: Tenants::default(),
        }
    }

    /// A pool for `limit` (adaptive or fixed); see [`Pool::configure`].
    pub fn with_limit(
        limit: Limit,
        max_queue: usize,
        queue_timeout: Duration,
        name: &str,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool::new(limit.initial(), max_queue, queue_timeout));
        pool.configure(limit, max_queue, queue_timeout, name);
        pool
    }

    /// Applies new limits (a configuration reload), as [`Pool::resize`] does. An adaptive limit
    /// (`"auto"`) starts its controller on the current tokio runtime, from `initial`; a fixed one
    /// stops it. `name` names the upstream in the controller's log lines.
    pub fn configure(
        self: &Arc<Self>,
        limit: Limit,
        max_queue: usize,
        queue_timeout: Duration,
        name: &str,
    ) {
        self.max_queue.store(max_queue, Ordering::Relaxed);
        self.queue_timeout_nanos
            .store(nanos(queue_timeout), Ordering::Relaxed);
        match limit {
            Limit::Fixed(n) => self.fix_limit(n),
            Limit::Auto(bounds) => self.auto_limit(bounds, name),
        }
    }

    /// Waits for a slot: at once if one is free, in the queue of its `class` for at most
    /// `queue_timeout` otherwise, or not at all when the queue is full of its class or higher
    /// ones. A full queue with a lower class waiting makes room: the latest waiter of the lowest
    /// class is answered at once ([`Rejected::Evicted`]).
    ///
    /// With the client's `deadline`, a request that would wait is refused at once when the
    /// queue ahead (at the pace it has been draining) and the recent service time would take
    /// longer than the time left ([`Rejected::Unmeetable`]), and leaves the queue when the
    /// deadline passes ([`Rejected::Deadline`]).
    pub async fn admit(
        self: &Arc<Self>,
        class: Priority,
        deadline: Option<Instant>,
        tenant: TenantId,
    ) -> Result<Permit<'_>, Rejected> {
        if class != Priority::Sheddable {
            self.slots.note_higher();
        }
        if self.slots.try_acquire_as(class) {
            return Ok(self.permit(Duration::ZERO, tenant));
        }
        // Boxed: the wait is the uncommon path, and its timer would otherwise make every
        // request's future (moved a few times per request) a few hundred bytes larger.
        Box::pin(self.wait(class, deadline, tenant)).await
    }

    /// Waits in the queue for a slot, up to `queue_timeout` or the deadline.
    async fn wait(
        self: &Arc<Self>,
        class: Priority,
        deadline: Option<Instant>,
        tenant: TenantId,
    ) -> Result<Permit<'_>, Rejected> {
        self.adaptive.samples.limited();
        let mut timeout = Duration::from_nanos(self.queue_timeout_nanos.load(Ordering::Relaxed));
        let mut by_deadline = false;
        let mut by_codel = false;
        // Critical requests are never cut short by CoDel nor by their tenant's share: they are
        // shed only when nothing lower holds a queue place.
        let critical = class == Priority::Critical;
        if self.queue_depth() == 0 {
            self.pace.emptied();
        } else if let Some(target) = self.pace.codel_timeout().filter(|_| !critical) {
            if target < timeout {
                (timeout, by_codel) = (target, true);
            }
        }
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            // Lower classes waiting are overtaken, not waited for.
            let ahead = match class {
                Priority::Sheddable => self.queue_depth(),
                _ => self.slots.ahead_of(class),
            };
            if let Some(wait) = self.pace.queue_wait(ahead) {
                if wait + self.pace.service().unwrap_or_default() > left {
                    return Err(Rejected::Unmeetable);
                }
            }
            if left < timeout {
                (timeout, by_deadline, by_codel) = (left, true, false);
            }
        }
        if tenant != 0 && !critical {
            // A tenant at its share waits only while nobody else does.
            let (mine, others) = self.slots.waiting(tenant);
            let cap = self.tenants.cap(self.max_concurrency());
            if others && self.tenants.in_flight(tenant) + mine >= cap {
                return Err(Rejected::TenantShare);
            }
        }
        let _place = self.enter_queue(class, tenant)?;
        let start = Instant::now();
        match tokio::time::timeout(timeout, self.slots.acquire(class, tenant)).await {
            Ok(Ok(())) => {
                self.pace.granted();
                Ok(self.permit(start.elapsed(), tenant))
            }
            Ok(Err(Evicted::ForClass)) => Err(Rejected::Evicted),
            Ok(Err(Evicted::OverShare)) => Err(Rejected::TenantShare),
            Err(_) if by_deadline => Err(Rejected::Deadline),
            Err(_) if by_codel => Err(Rejected::Codel),
            Err(_) => Err(Rejected::QueueTimeout),
        }
    }

    /// Sets `priority_reserve`: slots sheddable requests leave free while higher classes arrive.
    pub fn set_priority_reserve(&self, n: usize) {
        self.slots.set_reserve(n);
    }

    /// Turns CoDel on with `(target, interval)`, or off (`codel`).
    pub fn set_codel(&self, codel: Option<(Duration, Duration)>) {
        self.pace.set_codel(codel);
    }

    /// Sets `tenant_max_share`: the share of the limit one tenant may hold while others wait.
    pub fn set_tenant_share(&self, share: f64) {
        self.tenants.set_max_share(share);
    }

    /// Applies new limits (a configuration reload). Raising `max_concurrency` frees slots at once;
    /// lowering it retires free slots now and busy ones as their requests finish, so no admitted
    /// request is cancelled. Queued requests keep their place even when `max_queue` shrinks below
    /// the queue's length; new ones are turned away until it is below the limit again.
    pub fn resize(&self, max_concurrency: usize, max_queue: usize, queue_timeout: Duration) {
        self.max_queue.store(max_queue, Ordering::Relaxed);
        self.queue_timeout_nanos
            .store(nanos(queue_timeout), Ordering::Relaxed);
        self.fix_limit(max_concurrency);
    }

    /// Moves the limit to `max_concurrency`: raised, it frees slots at once; lowered, it retires
    /// free slots now and busy ones as their requests finish.
    pub(super) fn set_max_concurrency(&self, max_concurrency: usize) {
        let old = self.max_concurrency.swap(max_concurrency, Ordering::AcqRel);
        if max_concurrency > old {
            let grow = max_concurrency - old;
            // Cancel pending retirements first: those slots are still in use and simply stay.
            let retiring = self
                .retiring
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                    Some(r.saturating_sub(grow))
                })
                .unwrap_or_else(|r| r);
            self.slots.release(grow - retiring.min(grow));
        } else if max_concurrency < old {
            let shrink = old - max_concurrency;
            let taken = self.slots.forget(shrink);
            self.retiring.fetch_add(shrink - taken, Ordering::AcqRel);
        }
    }

    fn enter_queue(&self, class: Priority, tenant: TenantId) -> Result<QueuePlace<'_>, Rejected> {
        let max_queue = self.max_queue.load(Ordering::Relaxed);
        let entered = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < max_queue).then_some(q + 1)
            });
        if entered.is_err() {
            // Full: a lower class's latest waiter gives up its place, or else the latest of a
            // tenant over its share (it leaves the count as its wait ends, so the queue is over
            // its limit by one for that moment).
            let made_room = (class != Priority::Sheddable && self.slots.evict_below(class))
                || (tenant != 0 && self.evict_over_share(class, tenant));
            if !made_room {
                return Err(Rejected::QueueFull);
            }
            self.queued.fetch_add(1, Ordering::AcqRel);
        }
        Ok(QueuePlace(self))
    }

    /// Makes room in a full queue for `tenant`: the tenant with the most requests waiting, if it
    /// holds more than its share and more than `tenant` does, loses its latest waiter.
    fn evict_over_share(&self, class: Priority, tenant: TenantId) -> bool {
        let Some((other, waiting)) = self.slots.largest_other(class, tenant) else {
            return false;
        };
        let cap = self.tenants.cap(self.max_concurrency());
        let theirs = self.tenants.in_flight(other) + waiting;
        let mine = self.tenants.in_flight(tenant) + self.slots.waiting(tenant).0;
        theirs > cap && theirs > mine + 1 && self.slots.evict_tenant(class, other)
    }

    fn permit(self: &Arc<Self>, queue_wait: Duration, tenant: TenantId) -> Permit<'_> {
        self.in_flight.add(0, 1);
        self.tenants.enter(tenant);
        Permit {
            pool: self,
            tenant,
            queue_wait,
        }
    }

    /// Gives a slot back: to the slots, or to a retirement a lowered limit asked for.
    fn release(&self, tenant: TenantId) {
        self.in_flight.add(0, 1u64.wrapping_neg());
        self.tenants.leave(tenant);
        // Almost always zero: one relaxed load on the common path.
        if self.retiring.load(Ordering::Relaxed) > 0
            && self
                .retiring
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                .is_ok()
        {
            return;
        }
        self.slots.release(1);
    }

    /// Requests waiting for a slot now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        // The stripes' wrapping sum, never negative once all are in; one read while a request
        // moves between threads may see its release without its admission.
        usize::try_from(self.in_flight.sum(0) as i64).unwrap_or(0)
    }

    pub fn counters(&self) -> &UpstreamCounters {
        &self.counters
    }

    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency.load(Ordering::Relaxed)
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue.load(Ordering::Relaxed)
    }

    /// The adaptive limit's samples and state.
    pub fn adaptive(&self) -> &Adaptive {
        &self.adaptive
    }

    /// How fast the queue drains and how long requests take.
    pub(crate) fn pace(&self) -> &Pace {
        &self.pace
    }

    /// How long the queue as it is now can be expected to take to drain, if its pace is known.
    pub fn drain_time(&self) -> Option<Duration> {
        let depth = self.queue_depth();
        if depth == 0 {
            return None;
        }
        self.pace.queue_wait(depth - 1)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Permit<'_> {
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// The slot, held on past the pool's borrow.
    pub fn into_owned(self) -> OwnedPermit {
        let (pool, tenant) = (Arc::clone(self.pool), self.tenant);
        // The slot passes to the owned permit: not released here.
        std::mem::forget(self);
        OwnedPermit { pool, tenant }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.pool.release(self.tenant);
    }
}

impl OwnedPermit {
    pub fn counters(&self) -> &UpstreamCounters {
        &self.pool.counters
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.pool.release(self.tenant);
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        if self.0.queued.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.pace.emptied();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_the_limit_then_queues_then_rejects() {
        let pool = Arc::new(Pool::new(2, 1, Duration::from_millis(100)));
        let a = pool.admit(Priority::Normal, None, 0).await.unwrap();
        let _b = pool.admit(Priority::Normal, None, 0).await.unwrap();
        assert_eq!(pool.in_flight(), 2);

        let mut queued = pin!(pool.admit(Priority::Normal, None, 0));
        assert!(poll_once(queued.as_mut()).is_pending());
        assert_eq!(pool.queue_depth(), 1);

        // The queue holds one: the next is turned away without waiting.
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );

        drop(a);
        let c = queued.await.unwrap();
        assert_eq!(pool.queue_depth(), 0);
        assert_eq!(pool.in_flight(), 2);
        drop(c);
        assert_eq!(pool.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_timeout_frees_the_place() {
        let pool = Arc::new(Pool::new(1, 4, Duration::from_millis(100)));
        let _held = pool.admit(Priority::Normal, None, 0).await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueTimeout
        );
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(pool.queue_depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_waiter_leaves_the_queue_and_keeps_order() {
        let pool = Arc::new(Pool::new(1, 4, Duration::from_secs(10)));
        let held = pool.admit(Priority::Normal, None, 0).await.unwrap();
        let mut first = Box::pin(pool.admit(Priority::Normal, None, 0));
        let mut second = Box::pin(pool.admit(Priority::Normal, None, 0));
        let mut third = Box::pin(pool.admit(Priority::Normal, None, 0));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        assert!(poll_once(third.as_mut()).is_pending());
        assert_eq!(pool.queue_depth(), 3);

        drop(second); // its client went away
        assert_eq!(pool.queue_depth(), 2);

        drop(held);
        let p1 = first.await.unwrap();
        assert!(
            poll_once(third.as_mut()).is_pending(),
            "FIFO: third waits for first"
        );
        drop(p1);
        let p3 = third.await.unwrap();
        assert_eq!(p3.queue_wait(), Duration::ZERO);
        drop(p3);
        assert_eq!((pool.in_flight(), pool.queue_depth()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_keeps_admitted_work_and_retires_slots_as_they_free() {
        let pool = Arc::new(Pool::new(4, 0, Duration::from_secs(1)));
        let held: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| pool.admit(Priority::Normal, None, 0)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        pool.resize(1, 0, Duration::from_secs(1));
        assert_eq!(pool.in_flight(), 3, "admitted requests keep their slots");
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
        drop(held.next());
        let one = pool.admit(Priority::Normal, None, 0).await.unwrap();
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
        drop(one);

        // Growing again cancels nothing and adds slots at once.
        pool.resize(3, 0, Duration::from_secs(1));
        let all: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| pool.admit(Priority::Normal, None, 0)))
                .await;
        assert!(all.iter().all(Result::is_ok));
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
    }

    #[tokio::test(start_paused = true)]
    async fn growing_while_slots_retire_cancels_the_retirement() {
        let pool = Arc::new(Pool::new(2, 0, Duration::from_secs(1)));
        let a = pool.admit(Priority::Normal, None, 0).await.unwrap();
        let b = pool.admit(Priority::Normal, None, 0).await.unwrap();
        pool.resize(1, 0, Duration::from_secs(1)); // one busy slot to retire
        pool.resize(2, 0, Duration::from_secs(1)); // and back: nothing to retire
        drop(a);
        let c = pool.admit(Priority::Normal, None, 0).await.unwrap();
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
        drop((b, c));
        assert_eq!(pool.in_flight(), 0);
        let _x = pool.admit(Priority::Normal, None, 0).await.unwrap();
        let _y = pool.admit(Priority::Normal, None, 0).await.unwrap();
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_owned_permit_holds_the_slot_once_until_dropped() {
        let pool = Arc::new(Pool::new(1, 0, Duration::from_secs(1)));
        let owned = pool
            .admit(Priority::Normal, None, 0)
            .await
            .unwrap()
            .into_owned();
        assert_eq!(pool.in_flight(), 1);
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
        drop(owned);
        assert_eq!(pool.in_flight(), 0);
        let _again = pool.admit(Priority::Normal, None, 0).await.unwrap();
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_queue_rejects_when_busy() {
        let pool = Arc::new(Pool::new(1, 0, Duration::from_secs(1)));
        let _held = pool.admit(Priority::Normal, None, 0).await.unwrap();
        assert_eq!(
            pool.admit(Priority::Normal, None, 0).await.unwrap_err(),
            Rejected::QueueFull
        );
    }
}
