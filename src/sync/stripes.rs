//! Counters the request path adds to without an atomic read-modify-write.
//!
//! An atomic add (`lock xadd`) costs tens of cycles even when no other core touches the counter,
//! and when two cores count on the same one its cache line moves between them on every add. Here
//! each thread that counts has its own stripe of a counter set and is that stripe's only writer,
//! so an add is a plain load and store; a scrape adds the stripes up. The first threads to count
//! (the runtime's workers and the main thread, one per core and one more) get a stripe each;
//! threads beyond those, such as short-lived blocking-pool threads, share one last stripe with
//! atomic adds.
//!
//! Gauges work too: an add on one thread and a subtraction on another leave the stripes' wrapping
//! sum right.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// `N` counters, striped by thread.
#[derive(Debug)]
pub struct Stripes<const N: usize> {
    /// One stripe per thread that owns one, then the shared stripe.
    stripes: Box<[Stripe<N>]>,
}

/// A thread's counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe<const N: usize>([AtomicU64; N]);

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number, in the order threads first counted something; `usize::MAX` until
    /// then. (A constant initializer makes reading it one load.)
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's number.
fn thread() -> usize {
    THREAD.with(|t| {
        if t.get() == usize::MAX {
            t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

/// Threads that get a stripe of their own: one per core, and the main thread.
fn owned_stripes() -> usize {
    static OWNED: OnceLock<usize> = OnceLock::new();
    *OWNED.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()) + 1)
}

impl<const N: usize> Default for Stripes<N> {
    fn default() -> Self {
        Stripes::with_owned(owned_stripes())
    }
}

impl<const N: usize> Stripes<N> {
    /// Stripes of their own for the first `owned` threads to count, then the shared one.
    fn with_owned(owned: usize) -> Self {
        Stripes {
            stripes: (0..=owned)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl<const N: usize> Stripes<N> {
    /// The calling thread's stripe, for one or more adds.
    pub fn local(&self) -> Local<'_, N> {
        let owned = self.stripes.len() - 1;
        let thread = thread();
        Local {
            stripe: &self.stripes[thread.min(owned)],
            shared: thread >= owned,
        }
    }

    /// Adds `n` to counter `i` (wrapping).
    pub fn add(&self, i: usize, n: u64) {
        self.local().add(i, n);
    }

    /// Counter `i`: the wrapping sum of its stripes. Adds made at the same time may or may not
    /// be in it.
    pub fn sum(&self, i: usize) -> u64 {
        self.stripes.iter().fold(0u64, |s, stripe| {
            s.wrapping_add(stripe.0[i].load(Ordering::Relaxed))
        })
    }
}

/// One thread's stripe of a [`Stripes`].
pub struct Local<'a, const N: usize> {
    stripe: &'a Stripe<N>,
    /// The stripe is the shared one: adds must be atomic.
    shared: bool,
}

impl<const N: usize> Local<'_, N> {
    /// Adds `n` to counter `i` (wrapping).
    pub fn add(&self, i: usize, n: u64) {
        let cell = &self.stripe.0[i];
        if self.shared {
            cell.fetch_add(n, Ordering::Relaxed);
        } else {
            // This thread is the stripe's only writer: no add can come between the two.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// `threads` threads add to `c` at once; each checks it counts in the kind of stripe
    /// `shared` says. Returns what they added.
    fn hammer(c: &Arc<Stripes<2>>, threads: usize, shared: Option<bool>) -> u64 {
        const ADDS: u64 = 100_000;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let c = Arc::clone(c);
                std::thread::spawn(move || {
                    if let Some(shared) = shared {
                        assert_eq!(c.local().shared, shared);
                    }
                    for _ in 0..ADDS {
                        c.add(0, 1);
                        c.local().add(1, 3);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        threads as u64 * ADDS
    }

    #[test]
    fn adds_from_many_threads_are_all_counted() {
        // Every thread in a stripe of its own: the plain load-and-store adds. Thread numbers are
        // handed out process-wide as threads first count, so the stripes owned reach well past
        // the numbers these threads (and any test running beside) will take.
        let first = NEXT_THREAD.load(Ordering::Relaxed);
        let owned = Arc::new(Stripes::<2>::with_owned(first + 1024));
        let n = hammer(&owned, 8, Some(false));
        assert_eq!((owned.sum(0), owned.sum(1)), (n, 3 * n));
        // Every thread in the shared stripe: the atomic adds.
        let shared = Arc::new(Stripes::<2>::with_owned(0));
        let n = hammer(&shared, 8, Some(true));
        assert_eq!((shared.sum(0), shared.sum(1)), (n, 3 * n));
        // As configured: some of each, depending on the threads that counted before.
        let mixed = Arc::new(Stripes::<2>::default());
        let n = hammer(&mixed, owned_stripes() + 6, None);
        assert_eq!((mixed.sum(0), mixed.sum(1)), (n, 3 * n));
    }

    #[test]
    fn a_gauge_raised_on_one_thread_and_lowered_on_another_sums_right() {
        let c = Arc::new(Stripes::<1>::default());
        c.add(0, 5);
        let other = Arc::clone(&c);
        std::thread::spawn(move || other.add(0, 3u64.wrapping_neg()))
            .join()
            .unwrap();
        assert_eq!(c.sum(0), 2);
    }
}
