//! The upstream side: one [`Upstream`] per backend, with its admission pool and weir's own
//! client to it.
//!
//! - `forward`: [`Upstream`], and a request admitted, sent under its deadline, and its answer
//!   read ahead or streamed.
//! - `rewrite`: the request head as the backend gets it.
//! - `response_body`: the [`ResponseBody`] that holds the slot while the backend streams.
//! - `client`: the pooled keep-alive client: HTTP/1.1 connections of weir's own, or one shared
//!   h2c connection on hyper's client.
//! - `http1`: weir's HTTP/1.1 client side: codec, connection, idle pool.
//! - `tunnel`: an upgraded connection (WebSocket): the bytes carried both ways after a 101, and
//!   the upstream's `max_upgraded` places.
//! - `stream`: a backend connection over TCP, a Unix domain socket or TLS; `tls`: the TLS
//!   client settings of an upstream.

mod client;
mod forward;
mod http1;
mod response_body;
mod rewrite;
mod stream;
mod tls;
mod tunnel;

pub use forward::{Admission, RequestHook, Upstream};
pub use response_body::{BodyError, ResponseBody};
pub use tls::{UpstreamTlsError, check_upstream_tls};
pub use tunnel::Upgraded;
