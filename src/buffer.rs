//! The global budget for buffered request bodies (`max_buffered_bytes`): a byte-counting
//! semaphore. A [`Reservation`] owns the bytes it holds and gives them back when dropped, so a
//! buffer is accounted for exactly as long as it exists, on every path.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is full: the request is answered 503 `buffer_full` rather than waiting, so memory
/// pressure sheds load instead of queueing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("max_buffered_bytes is reached")]
pub struct BufferFull;

/// Bytes that request buffers may hold, shared by every listener and upstream.
#[derive(Debug)]
pub struct BufferPool {
    bytes: Arc<Semaphore>,
    capacity: usize,
}

/// Bytes held by one request's buffer.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl BufferPool {
    pub fn new(capacity: u64) -> BufferPool {
        let capacity = usize::try_from(capacity)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        BufferPool {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Bytes held by all buffers now.
    pub fn used(&self) -> usize {
        self.capacity - self.bytes.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds `n` bytes to `reservation`, or fails at once when the budget cannot hold them.
    pub fn grow(&self, reservation: &mut Reservation, n: usize) -> Result<(), BufferFull> {
        if n == 0 {
            return Ok(());
        }
        let n = u32::try_from(n).map_err(|_| BufferFull)?;
        let more = Arc::clone(&self.bytes)
            .try_acquire_many_owned(n)
            .map_err(|_| BufferFull)?;
        match &mut reservation.permit {
            Some(held) => held.merge(more),
            None => reservation.permit = Some(more),
        }
        Ok(())
    }
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
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
