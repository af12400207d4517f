//! What weir counts, and under which labels: the upstream and listener counters the request path
//! adds to, the latency histogram, and the fixed label sets. The request path only touches these;
//! `ops::metrics` turns them into Prometheus families at scrape time. Nothing here imports any
//! other layer of weir but the `sync` primitives and the configuration's priority classes.

mod histogram;
mod labels;
mod listener;
mod upstream;

pub(crate) use histogram::Histogram;
pub use labels::{ClientTimeout, ConnReject, Reason, STATUS_CLASSES, SizeLimit, UpstreamErrorKind};
pub use listener::ListenerCounters;
pub use upstream::{Direction, TunnelCounters, UpstreamCounters};
