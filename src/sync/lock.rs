//! Locking a mutex whose data stays valid whatever panics.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex whose data no code path leaves half-changed, so that a panic elsewhere while it
/// was held does not make it unusable (weir's locks guard plain lists and values).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
