//! weir: a reverse-proxy sidecar that protects a backend from overload.
//!
//! Each request is routed to an upstream, admitted through that upstream's bounded pool (a fixed
//! number of slots, a bounded FIFO queue, an immediate 503 when the queue is full), and forwarded
//! over a pooled keep-alive client under a deadline. The slot is owned by the request's future and
//! then by its response body, so it is released on every path by `Drop`. One request's path, step
//! by step, is told at the top of `proxy`.
//!
//! # Layout
//! Folders along the request path, lowest layer first; nothing imports a layer above it.
//! - `sync`: primitives: counters striped by thread, lazy and lent deadline timers, `lock`.
//! - [`config`]: TOML -> validated, typed [`Config`] (raw structs, validation, tests beside it).
//! - `telemetry`: label enums, the upstream and listener counters, the latency histogram.
//! - `error`: request-path errors and the one status table.
//! - `admission`: the per-upstream [`Pool`], its slots and queue, the RAII permit.
//! - `http`: body frames, the buffer budget, the request body, header rewriting, the
//!   downstream connection's info.
//! - `upstream`: [`Upstream`], forwarding, the request rewrite, the response body, weir's
//!   backend client, its streams (TCP, Unix socket, TLS) and TLS settings, upgraded connections
//!   (`tunnel`), and its HTTP/1.1 side (`http1`: codec, connection, idle pool).
//! - `proxy`: routing, handling, the one place outcomes become answers, the request record.
//! - `listener`: accept loop, connection state, service, watchdog, park (and the tunnel after a
//!   101), peer, drain, TLS.
//! - `ops`: metrics collector, admin listener, signals, logging.
//! - `server`: [`Server`] and [`Reloader`], which wire the layers together.
#![forbid(unsafe_code)]

mod admission;
pub mod config;
mod error;
mod http;
mod listener;
pub mod ops;
mod proxy;
mod server;
mod sync;
mod telemetry;
mod upstream;

pub use admission::Pool;
pub use config::Config;
pub use error::REJECT_HEADER;
pub use http::ListenerInfo;
pub use proxy::{ACCESS_TARGET, Proxy};
pub use server::{Options, ReloadError, Reloader, Server, StartError, load_tls, run};
pub use telemetry::{ClientTimeout, ConnReject, Reason, SizeLimit, UpstreamErrorKind};
pub use upstream::{RequestHook, Upstream};
