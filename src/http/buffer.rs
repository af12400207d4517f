//! The global budget for buffered request bodies (`max_buffered_bytes`): a byte-counting
//! semaphore. A [`Reservation`] owns the bytes it holds and gives them back when dropped, so a
//! buffer is accounted for exactly as long as it exists, on every path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget is full: the request is answered 503 `buffer_full` rather than waiting, so memory
/// pressure sheds load instead of queueing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("max_buffered_bytes is reached")]
pub struct BufferFull;

/// Bytes that request and response buffers may hold, shared by every listener and upstream.
/// A plain atomic counter: nothing ever waits for buffer space (a full budget is an answer, not a
/// queue), so no semaphore and no lock is needed on the request path.
#[derive(Debug)]
pub struct BufferPool {
    used: Arc<AtomicUsize>,
    /// Atomic so that a configuration reload can change it; a lower cap never takes back bytes
    /// already held, it only refuses new ones until usage is below it.
    capacity: AtomicUsize,
}

/// Bytes held by one buffer, given back to the pool when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    pool: Option<Arc<AtomicUsize>>,
    bytes: usize,
}

impl BufferPool {
    pub fn new(capacity: u64) -> BufferPool {
        BufferPool {
            used: Arc::new(AtomicUsize::new(0)),
            capacity: AtomicUsize::new(usize::try_from(capacity).unwrap_or(usize::MAX)),
        }
    }

    /// Sets a new cap (a configuration reload).
    pub fn set_capacity(&self, capacity: u64) {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Bytes held by all buffers now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Adds `n` bytes to `reservation`, or fails at once when the budget cannot hold them.
    pub fn grow(&self, reservation: &mut Reservation, n: usize) -> Result<(), BufferFull> {
        if n == 0 {
            return Ok(());
        }
        let capacity = self.capacity();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= capacity)
            })
            .map_err(|_| BufferFull)?;
        if reservation.pool.is_none() {
            reservation.pool = Some(Arc::clone(&self.used));
        }
        reservation.bytes += n;
        Ok(())
    }
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_until_the_cap_and_give_back_on_drop() {
        let pool = BufferPool::new(100);
        let mut a = Reservation::default();
        pool.grow(&mut a, 60).unwrap();
        pool.grow(&mut a, 30).unwrap();
        assert_eq!((a.bytes(), pool.used()), (90, 90));
        let mut b = Reservation::default();
        assert_eq!(pool.grow(&mut b, 20), Err(BufferFull));
        pool.grow(&mut b, 10).unwrap();
        drop(a);
        assert_eq!(pool.used(), 10);
        drop(b);
        assert_eq!(pool.used(), 0);
    }
}
