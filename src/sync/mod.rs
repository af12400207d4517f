//! Primitives the request path is built on, below every other layer: counters striped by thread,
//! deadline timers moved only to earlier deadlines (and lent to a connection's requests in turn),
//! and a mutex lock that survives a panic elsewhere.

mod lock;
mod stripes;
mod timer;

pub(crate) use lock::lock;
pub(crate) use stripes::Stripes;
pub(crate) use timer::{LazyTimer, LendingTimer, LentTimer};
