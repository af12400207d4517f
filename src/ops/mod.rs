//! Operating weir: the Prometheus collector over the counters the request path keeps, the admin
//! listener (`/metrics`, `/healthz`, `/readyz`), process signals, and log output that never
//! blocks a request.

pub(crate) mod admin;
pub mod logging;
pub(crate) mod metrics;
pub mod signals;
mod status;
