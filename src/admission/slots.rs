//! The slots of an admission pool: a counting semaphore whose admission and release are one
//! compare-and-swap each while nobody waits, with waiters served by priority class, and in
//! arrival order within a class.
//!
//! tokio's semaphore takes its waiters' mutex on every release, whether anyone waits or not: on
//! the request path that is two more atomic operations per request, and on several cores one
//! lock that every request of an upstream passes through. Here the lock is taken only when the
//! pool is full and requests queue, which is the case the lock exists for.
//!
//! The state is one word: free slots times two, plus one while requests wait. While the bit is
//! set no slot is free (a released slot goes to the first waiter) and admission without waiting
//! fails, so a new request cannot overtake the queue. The bit is set and cleared only under the
//! queue's lock, with the queue: set when the first waiter joins, cleared when the last leaves.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::time::Instant;

use futures_util::task::AtomicWaker;

use super::tenants::TenantId;
use crate::config::Priority;
use crate::sync::lock;

/// How long after the last request above sheddable the reserve still holds.
const RESERVE_FOR: Duration = Duration::from_secs(1);

/// Set in [`Slots::state`] while requests wait.
const WAITING: usize = 1;
/// One free slot in [`Slots::state`].
const ONE: usize = 2;

#[derive(Debug)]
pub struct Slots {
    /// Free slots times [`ONE`], plus [`WAITING`] while `queue` is not empty. While the bit is
    /// set, a slot is free only when held back for the higher classes (`priority_reserve`).
    state: AtomicUsize,
    /// `priority_reserve`: slots sheddable requests leave free while a higher class has been
    /// seen within [`RESERVE_FOR`] (0: none, every slot is used).
    reserve: AtomicUsize,
    /// When a request above sheddable last arrived, in nanoseconds from `epoch` (kept only with
    /// a reserve).
    last_higher: AtomicU64,
    epoch: Instant,
    /// The waiting requests, by class ([`Priority`] as an index), each in arrival order.
    queue: Mutex<Queues>,
}

/// The waiting requests of each class, lowest class first.
#[derive(Debug, Default)]
struct Queues([ClassQueue; Priority::ALL.len()]);

impl Queues {
    fn is_empty(&self) -> bool {
        self.0.iter().all(ClassQueue::is_empty)
    }

    /// The highest class waiting.
    fn next_class(&self) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .rev()
            .find(|c| !self.0[*c as usize].is_empty())
    }

    /// The next waiter of the highest class waiting.
    fn pop_next(&mut self) -> Option<Arc<Waiter>> {
        self.0.iter_mut().rev().find_map(ClassQueue::pop_next)
    }
}

/// The waiters of one class, by tenant: served round-robin across tenants (one request per
/// tenant per turn), in arrival order within a tenant. Without tenants (all are tenant 0), it is
/// one queue in arrival order.
#[derive(Debug, Default)]
struct ClassQueue {
    by_tenant: HashMap<TenantId, VecDeque<Arc<Waiter>>>,
    /// Tenants with waiters, in the order of their next turn.
    ring: VecDeque<TenantId>,
}

impl ClassQueue {
    fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    fn push(&mut self, waiter: Arc<Waiter>) {
        let queue = self.by_tenant.entry(waiter.tenant).or_default();
        if queue.is_empty() {
            self.ring.push_back(waiter.tenant);
        }
        queue.push_back(waiter);
    }

    /// The first waiter of the tenant whose turn it is.
    fn pop_next(&mut self) -> Option<Arc<Waiter>> {
        let tenant = self.ring.pop_front()?;
        let queue = self.by_tenant.get_mut(&tenant)?;
        let waiter = queue.pop_front();
        if queue.is_empty() {
            self.by_tenant.remove(&tenant);
        } else {
            self.ring.push_back(tenant);
        }
        waiter
    }

    /// The latest waiter of `tenant`, or of the tenant with the most waiters when `None`.
    fn pop_latest(&mut self, tenant: Option<TenantId>) -> Option<Arc<Waiter>> {
        let tenant = match tenant {
            Some(t) => t,
            None => *self.by_tenant.iter().max_by_key(|(_, q)| q.len())?.0,
        };
        let queue = self.by_tenant.get_mut(&tenant)?;
        let waiter = queue.pop_back();
        if queue.is_empty() {
            self.forget(tenant);
        }
        waiter
    }

    /// Takes `waiter` out; whether it was here.
    fn remove(&mut self, waiter: &Arc<Waiter>) -> bool {
        let Some(queue) = self.by_tenant.get_mut(&waiter.tenant) else {
            return false;
        };
        let Some(i) = queue.iter().position(|w| Arc::ptr_eq(w, waiter)) else {
            return false;
        };
        queue.remove(i);
        if queue.is_empty() {
            self.forget(waiter.tenant);
        }
        true
    }

    fn forget(&mut self, tenant: TenantId) {
        self.by_tenant.remove(&tenant);
        self.ring.retain(|t| *t != tenant);
    }

    fn waiting(&self, tenant: TenantId) -> usize {
        self.by_tenant.get(&tenant).map_or(0, VecDeque::len)
    }

    fn len(&self) -> usize {
        self.by_tenant.values().map(VecDeque::len).sum()
    }
}

/// Why a waiter was taken out of the queue before its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// A request of a higher class took its place.
    ForClass,
    /// Its tenant held more than its share while another tenant needed the place.
    OverShare,
}

/// A request waiting for a slot.
#[derive(Debug, Default)]
struct Waiter {
    class: Priority,
    tenant: TenantId,
    /// Set, under the queue's lock, when a released slot was handed to this waiter.
    granted: AtomicBool,
    /// Set, under the queue's lock, when another request took its place: 1 for a higher class,
    /// 2 for a tenant over its share.
    evicted: AtomicU8,
    waker: AtomicWaker,
}

impl Slots {
    pub fn new(free: usize) -> Slots {
        Slots {
            state: AtomicUsize::new(free * ONE),
            queue: Mutex::new(Queues::default()),
            reserve: AtomicUsize::new(0),
            last_higher: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Sets `priority_reserve`.
    pub fn set_reserve(&self, n: usize) {
        self.reserve.store(n, Ordering::Relaxed);
    }

    /// A request above sheddable arrived: the reserve holds for [`RESERVE_FOR`]. One load when
    /// there is no reserve; with one, the shared time is written at most once a millisecond, not
    /// by every request.
    pub fn note_higher(&self) {
        if self.reserve.load(Ordering::Relaxed) > 0 {
            let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let last = self.last_higher.load(Ordering::Relaxed);
            if now.saturating_sub(last) > 1_000_000 || last == 0 {
                self.last_higher.store(now.max(1), Ordering::Relaxed);
            }
        }
    }

    /// The slots sheddable requests must leave free now.
    fn held_back(&self) -> usize {
        let reserve = self.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return 0;
        }
        let last = self.last_higher.load(Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let recent = last != 0 && now.saturating_sub(last) < RESERVE_FOR.as_nanos() as u64;
        if recent { reserve } else { 0 }
    }

    /// Takes a free slot if there is one and nobody waits for it.
    #[cfg(test)]
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_leaving(0)
    }

    /// [`Slots::try_acquire`] for `class`: a sheddable request leaves the reserve free.
    pub fn try_acquire_as(&self, class: Priority) -> bool {
        match class {
            Priority::Sheddable => self.try_acquire_leaving(self.held_back()),
            _ => self.try_acquire_leaving(0),
        }
    }

    /// Takes a free slot if nobody waits and more than `hold` are free.
    fn try_acquire_leaving(&self, hold: usize) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & WAITING != 0 || s / ONE <= hold {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(s, s - ONE, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// Waits for a slot, behind the requests of its class or a higher one already waiting, in
    /// its tenant's turn. Resolves to the slot, or to why another request took its place
    /// ([`Slots::evict_below`], [`Slots::evict_tenant`]). Dropping the future leaves the queue,
    /// or passes on a slot it was handed and had not taken yet.
    pub fn acquire(&self, class: Priority, tenant: TenantId) -> Acquire<'_> {
        Acquire {
            slots: self,
            class,
            tenant,
            waiter: None,
        }
    }

    /// Takes the place of the latest waiter of the lowest class below `class`, if any waits: it
    /// is woken to leave at once. Whether one did.
    pub fn evict_below(&self, class: Priority) -> bool {
        let mut queue = lock(&self.queue);
        let lower = &mut queue.0[..class as usize];
        let Some(waiter) = lower.iter_mut().find_map(|q| q.pop_latest(None)) else {
            return false;
        };
        self.evicted(&mut queue, &waiter, Evicted::ForClass);
        true
    }

    /// Takes the place of the latest waiter of `tenant` in `class` or a lower one. Whether one
    /// waited.
    pub fn evict_tenant(&self, class: Priority, tenant: TenantId) -> bool {
        let mut queue = lock(&self.queue);
        let classes = &mut queue.0[..=class as usize];
        let Some(waiter) = classes.iter_mut().find_map(|q| q.pop_latest(Some(tenant))) else {
            return false;
        };
        self.evicted(&mut queue, &waiter, Evicted::OverShare);
        true
    }

    /// Tells an evicted waiter, under the queue's lock.
    fn evicted(&self, queue: &mut Queues, waiter: &Waiter, why: Evicted) {
        let code = match why {
            Evicted::ForClass => 1,
            Evicted::OverShare => 2,
        };
        waiter.evicted.store(code, Ordering::Release);
        waiter.waker.wake();
        if queue.is_empty() {
            self.clear_waiting();
        }
    }

    /// The tenant other than `me` with the most requests waiting in `class` or a lower one, and
    /// how many.
    pub fn largest_other(&self, class: Priority, me: TenantId) -> Option<(TenantId, usize)> {
        let queue = lock(&self.queue);
        let mut counts: HashMap<TenantId, usize> = HashMap::new();
        for q in &queue.0[..=class as usize] {
            for (t, waiting) in &q.by_tenant {
                if *t != me {
                    *counts.entry(*t).or_default() += waiting.len();
                }
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n)
    }

    /// Requests waiting now that a request of `class` would wait behind: those of its class and
    /// higher ones.
    pub fn ahead_of(&self, class: Priority) -> usize {
        let queue = lock(&self.queue);
        queue.0[class as usize..].iter().map(ClassQueue::len).sum()
    }

    /// Requests of `tenant` waiting now, and whether any other tenant's wait.
    pub fn waiting(&self, tenant: TenantId) -> (usize, bool) {
        let queue = lock(&self.queue);
        let mine: usize = queue.0.iter().map(|q| q.waiting(tenant)).sum();
        let others = queue.0.iter().any(|q| q.ring.iter().any(|t| *t != tenant));
        (mine, others)
    }

    /// Adds `n` free slots: to the waiters first, highest class first and in order within a
    /// class, then to the count.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut queue = loop {
            let mut s = self.state.load(Ordering::Relaxed);
            while s & WAITING == 0 {
                match self.state.compare_exchange_weak(
                    s,
                    s + n * ONE,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(now) => s = now,
                }
            }
            let queue = lock(&self.queue);
            // The last waiter may have left while this waited for the lock, and slots been
            // counted and taken since: with the bit clear, count this one like them.
            if self.state.load(Ordering::Acquire) & WAITING != 0 {
                break queue;
            }
        };
        // The bit is set and this holds the lock: nothing else changes the state. Slots free
        // while it is set are held back for the higher classes.
        let hold = self.held_back();
        let mut free = self.state.load(Ordering::Acquire) / ONE;
        let mut left = n;
        while let Some(next) = queue.next_class() {
            // A sheddable waiter takes a released slot, or one held back that is no longer
            // needed, only while the reserve stays free.
            if next == Priority::Sheddable && free + left <= hold {
                break;
            }
            if left > 0 {
                left -= 1;
            } else if free > 0 {
                free -= 1;
            } else {
                break;
            }
            let Some(waiter) = queue.pop_next() else {
                break;
            };
            waiter.granted.store(true, Ordering::Release);
            waiter.waker.wake();
        }
        let free = free + left;
        let waiting = if queue.is_empty() { 0 } else { WAITING };
        self.state.store(free * ONE + waiting, Ordering::Release);
    }

    /// Takes up to `n` free slots away for good; returns how many it took.
    pub fn forget(&self, n: usize) -> usize {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let take = if s & WAITING != 0 {
                0
            } else {
                (s / ONE).min(n)
            };
            if take == 0 {
                return 0;
            }
            match self.state.compare_exchange_weak(
                s,
                s - take * ONE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => s = now,
            }
        }
    }

    /// Joins the queue, unless a slot came free meanwhile: then takes it and returns `true`. A
    /// sheddable waiter leaves the reserve free.
    fn enqueue(&self, waiter: &Arc<Waiter>) -> bool {
        let mut queue = lock(&self.queue);
        let hold = match waiter.class {
            Priority::Sheddable => self.held_back(),
            _ => 0,
        };
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let (next, took) = if s & WAITING != 0 {
                // Others wait: only a slot held back may be taken, by a class above sheddable
                // (or once it is no longer held back); the lock keeps the state still.
                if s / ONE > hold {
                    self.state.store(s - ONE, Ordering::Release);
                    return true;
                }
                break;
            } else if s / ONE > hold {
                (s - ONE, true)
            } else {
                // Slots held back stay counted as free while the bit is set.
                (s | WAITING, false)
            };
            match self
                .state
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) if took => return true,
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        queue.0[waiter.class as usize].push(Arc::clone(waiter));
        false
    }

    /// A waiting future was dropped.
    fn cancel(&self, waiter: &Arc<Waiter>) {
        let mut queue = lock(&self.queue);
        if waiter.granted.load(Ordering::Acquire) {
            // Handed a slot it never took: pass it on.
            drop(queue);
            self.release(1);
            return;
        }
        // Not granted nor evicted, so still queued, and the bit is set: nothing else changes the
        // state.
        if queue.0[waiter.class as usize].remove(waiter) && queue.is_empty() {
            self.clear_waiting();
        }
    }

    /// The last waiter has gone: the bit is cleared, and slots held back are free to anyone.
    /// Under the queue's lock, with the bit set: nothing else changes the state.
    fn clear_waiting(&self) {
        let s = self.state.load(Ordering::Acquire);
        self.state.store(s & !WAITING, Ordering::Release);
    }

    /// Free slots now (none while requests wait).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.state.load(Ordering::Relaxed) / ONE
    }
}

/// The future of [`Slots::acquire`].
pub struct Acquire<'a> {
    slots: &'a Slots,
    class: Priority,
    tenant: TenantId,
    /// Set while it waits in the queue.
    waiter: Option<Arc<Waiter>>,
}

impl Future for Acquire<'_> {
    type Output = Result<(), Evicted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Evicted>> {
        let slots = self.slots;
        match &self.waiter {
            None => {
                if slots.try_acquire_as(self.class) {
                    return Poll::Ready(Ok(()));
                }
                let waiter = Arc::new(Waiter {
                    class: self.class,
                    tenant: self.tenant,
                    ..Waiter::default()
                });
                // Registered before it can be granted, so the grant's wake is not lost.
                waiter.waker.register(cx.waker());
                if slots.enqueue(&waiter) {
                    return Poll::Ready(Ok(()));
                }
                self.waiter = Some(waiter);
                Poll::Pending
            }
            Some(waiter) => {
                waiter.waker.register(cx.waker());
                if waiter.granted.load(Ordering::Acquire) {
                    self.waiter = None;
                    return Poll::Ready(Ok(()));
                }
                let why = match waiter.evicted.load(Ordering::Acquire) {
                    0 => return Poll::Pending,
                    1 => Evicted::ForClass,
                    _ => Evicted::OverShare,
                };
                self.waiter = None;
                Poll::Ready(Err(why))
            }
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            self.slots.cancel(&waiter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::Waker;
    use std::time::Duration;

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn waiters_are_served_in_order_and_block_newcomers() {
        let slots = Slots::new(1);
        assert!(slots.try_acquire());
        let mut first = pin!(slots.acquire(Priority::Normal, 0));
        let mut second = pin!(slots.acquire(Priority::Normal, 0));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        slots.release(1);
        // The slot went to the first waiter: a newcomer cannot take it, nor can the second.
        assert!(!slots.try_acquire());
        assert!(poll_once(second.as_mut()).is_pending());
        assert!(poll_once(first.as_mut()).is_ready());
        slots.release(1);
        assert!(poll_once(second.as_mut()).is_ready());
        slots.release(1);
        assert_eq!(slots.free(), 1);
    }

    #[test]
    fn the_highest_class_is_served_first_and_eviction_takes_the_lowest_latest() {
        let slots = Slots::new(1);
        assert!(slots.try_acquire());
        let mut low_old = pin!(slots.acquire(Priority::Sheddable, 0));
        let mut low_new = pin!(slots.acquire(Priority::Sheddable, 0));
        let mut normal = pin!(slots.acquire(Priority::Normal, 0));
        for f in [low_old.as_mut(), low_new.as_mut(), normal.as_mut()] {
            assert!(poll_once(f).is_pending());
        }
        // Nothing below sheddable; a critical request evicts the latest sheddable one.
        assert!(!slots.evict_below(Priority::Sheddable));
        assert!(slots.evict_below(Priority::Critical));
        assert_eq!(
            poll_once(low_new.as_mut()),
            Poll::Ready(Err(Evicted::ForClass))
        );
        slots.release(1);
        assert_eq!(poll_once(normal.as_mut()), Poll::Ready(Ok(())));
        assert!(poll_once(low_old.as_mut()).is_pending());
        // The last waiter evicted: the queue is empty and a release counts again.
        assert!(slots.evict_below(Priority::Normal));
        assert_eq!(
            poll_once(low_old.as_mut()),
            Poll::Ready(Err(Evicted::ForClass))
        );
        slots.release(1);
        assert_eq!(slots.free(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reserve_keeps_slots_from_sheddable_requests_while_higher_classes_come() {
        let slots = Slots::new(2);
        slots.set_reserve(1);
        slots.note_higher();
        assert!(slots.try_acquire_as(Priority::Sheddable));
        // The last slot is the reserve's.
        assert!(!slots.try_acquire_as(Priority::Sheddable));
        let mut shed = pin!(slots.acquire(Priority::Sheddable, 0));
        assert!(poll_once(shed.as_mut()).is_pending());
        assert_eq!(slots.free(), 1);
        // A normal request takes it at once, past the sheddable one.
        let mut normal = pin!(slots.acquire(Priority::Normal, 0));
        assert_eq!(poll_once(normal.as_mut()), Poll::Ready(Ok(())));
        // A slot released goes back to the reserve, not to the sheddable waiter.
        slots.release(1);
        assert!(poll_once(shed.as_mut()).is_pending());
        assert_eq!(slots.free(), 1);
        // A second after the last higher request, the reserve lapses: the next release hands
        // the sheddable waiter a slot, and the held one is free again.
        tokio::time::advance(RESERVE_FOR + Duration::from_millis(1)).await;
        slots.release(1);
        assert_eq!(poll_once(shed.as_mut()), Poll::Ready(Ok(())));
        assert_eq!(slots.free(), 1);
        assert!(slots.try_acquire_as(Priority::Sheddable));
    }

    #[test]
    fn a_slot_handed_to_a_waiter_that_left_is_passed_on() {
        let slots = Slots::new(1);
        assert!(slots.try_acquire());
        let mut first = Box::pin(slots.acquire(Priority::Normal, 0));
        let mut second = Box::pin(slots.acquire(Priority::Normal, 0));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        slots.release(1);
        drop(first); // granted, never took it
        assert!(poll_once(second.as_mut()).is_ready());
        drop(second); // completed: nothing to give back
        assert_eq!(slots.free(), 0);
        slots.release(1);

        // And with nobody behind it, the slot is free again.
        assert!(slots.try_acquire());
        let mut alone = Box::pin(slots.acquire(Priority::Normal, 0));
        assert!(poll_once(alone.as_mut()).is_pending());
        slots.release(1);
        drop(alone);
        assert_eq!(slots.free(), 1);
        assert!(slots.try_acquire());
    }

    #[test]
    fn the_last_waiter_leaving_frees_the_queue_and_released_slots_count() {
        let slots = Slots::new(1);
        assert!(slots.try_acquire());
        let mut waiting = Box::pin(slots.acquire(Priority::Normal, 0));
        assert!(poll_once(waiting.as_mut()).is_pending());
        drop(waiting); // its client went away
        // Nobody waits: a release is a plain count again, and a newcomer takes it at once.
        slots.release(2);
        assert_eq!(slots.free(), 2);
        assert_eq!(slots.forget(5), 2);
        assert!(!slots.try_acquire());
    }

    #[test]
    fn joining_the_queue_takes_a_slot_that_came_free_meanwhile() {
        // A request whose `try_acquire` failed may find a slot free by the time it holds the
        // queue's lock: it takes it rather than wait behind nobody (and lose it to the count).
        let slots = Slots::new(1);
        let waiter = Arc::new(Waiter::default());
        assert!(slots.enqueue(&waiter));
        assert_eq!(slots.free(), 0);
        assert!(!slots.enqueue(&waiter));
        slots.release(1);
        assert!(waiter.granted.load(Ordering::Acquire));
        slots.release(1);
        assert_eq!(slots.free(), 1);
    }

    #[test]
    fn contending_threads_never_hold_more_slots_than_there_are_nor_lose_any() {
        const SLOTS: usize = 3;
        let slots = Arc::new(Slots::new(SLOTS));
        let held = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (slots, held) = (Arc::clone(&slots), Arc::clone(&held));
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    // Bounded: a lost wake-up fails the test instead of hanging it.
                    let wait = || async {
                        tokio::time::timeout(
                            Duration::from_secs(10),
                            slots.acquire(Priority::Normal, 0),
                        )
                        .await
                    };
                    for i in 0..30_000 {
                        match i % 3 {
                            0 => {
                                if !slots.try_acquire() {
                                    continue;
                                }
                            }
                            1 => rt.block_on(wait()).expect("a slot within 10 s").unwrap(),
                            // Joins the queue and leaves it (its client went away), unless a
                            // slot was free; it may be handed one as it leaves.
                            _ => {
                                let mut once = Box::pin(slots.acquire(Priority::Normal, 0));
                                if poll_once(once.as_mut()).is_pending() {
                                    continue;
                                }
                            }
                        }
                        assert!(held.fetch_add(1, Ordering::SeqCst) < SLOTS);
                        held.fetch_sub(1, Ordering::SeqCst);
                        slots.release(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(slots.free(), SLOTS);
    }
}
