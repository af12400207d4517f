//! Admission: which requests an upstream takes on now, which wait, and which are turned away.
//!
//! - [`pool`]: one upstream's [`Pool`]: its limit, its bounded queue with `queue_timeout`, and the
//!   RAII [`Permit`] that owns a slot (released when dropped, on every path).
//! - `adaptive`: the adaptive limit's controller (`max_concurrency = "auto"`): windows of
//!   latency samples in, a limit out; `controller`: the task that runs it for a pool; `state`:
//!   what the pool keeps of it (samples, mode, the published baseline, sample and changes).
//! - `pace`: how fast the queue drains and how long requests take, for deadline-aware admission
//!   and a computed `Retry-After`.
//! - `tenants`: the bounded table of tenants (`tenant_header`) and what each has in flight.
//! - [`slots`]: the pool's slots, taken and released with one compare-and-swap while nobody
//!   waits, with waiters served in arrival order.

mod adaptive;
mod controller;
mod pace;
mod pool;
mod slots;
mod state;
mod tenants;

pub use pool::{OwnedPermit, Permit, Pool, Rejected};
pub use tenants::{TenantId, tenant_of};
