//! HTTP pieces shared by both sides of the proxy, below the upstream layer: body frames read
//! ahead, the budget for buffered bytes, the downstream request body under its limits, header
//! rewriting (hop-by-hop fields, `X-Forwarded-*`), client deadlines in headers (`grpc-timeout`),
//! and what weir knows of the downstream
//! connection and its listener.

mod buffer;
mod deadline;
mod downstream;
mod frames;
mod headers;
mod request_body;

pub use buffer::{BufferPool, Reservation};
pub(crate) use deadline::{GRPC_TIMEOUT, client_budget, grpc_timeout, is_grpc};
pub use downstream::{Downstream, ListenerInfo};
pub use frames::Frames;
#[cfg(test)]
pub(crate) use frames::testing;
pub(crate) use frames::{data_len, hint_after};
pub(crate) use headers::{
    Forwarded, Scan, SetFields, has_token, remove_hop_by_hop, strip_hop_by_hop,
};
pub use request_body::{Buffered, RequestBody};
