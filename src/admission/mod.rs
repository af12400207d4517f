//! Admission: which requests an upstream takes on now, which wait, and which are turned away.
//!
//! - [`pool`]: one upstream's [`Pool`]: its limit, its bounded queue with `queue_timeout`, and the
//!   RAII [`Permit`] that owns a slot (released when dropped, on every path).
//! - [`slots`]: the pool's slots, taken and released with one compare-and-swap while nobody
//!   waits, with waiters served in arrival order.

mod pool;
mod slots;

pub use pool::{OwnedPermit, Permit, Pool, Rejected};
