//! The request path: one request from the moment hyper hands it over to the end of its answer.
//! Nothing here is spawned: the whole exchange lives in the future hyper polls, so a client that
//! disconnects cancels it by dropping it, and every slot and queue place is given back by `Drop`.
//!
//! # One request's path
//! 1. `listener::accept` accepts the connection (under `max_connections`), `listener::watchdog`
//!    guards its bytes (slow heads, idle, slow reads), and hyper parses the request.
//! 2. `listener::service` counts the request in progress on its connection and calls
//!    [`Proxy::handle`] (`handle`), watching a plain HTTP/1 socket for the client hanging up.
//! 3. `record` starts the request's [`Record`]: counted, timed and logged once when dropped.
//! 4. `route` picks the upstream from the host and path, and the route's priority class; `handle`
//!    reads what the upstream's headers add (a class, a tenant, a client's deadline, gRPC).
//! 5. `handle` applies the body limits and reads a small body ahead into the buffer budget
//!    (`http::RequestBody`), so a slow upload never holds a slot.
//! 6. `admission::Pool::admit` takes a slot, or waits in the bounded queue of its class (its
//!    tenant in turn) for `queue_timeout` or the client's deadline, or is refused at once (a
//!    full queue, a tenant over its share, a deadline the queue cannot meet); a higher class may
//!    take a waiting request's place.
//! 7. `upstream::rewrite` turns the head into the backend's (with the time left, and an upgrade's
//!    fields); `upstream::client` sends it on a pooled connection (`upstream::http1`) under the
//!    earlier of `request_timeout` and the client's deadline (`sync::LentTimer`).
//! 8. `upstream::forward` reads a small answer whole and frees the slot, or streams a large one
//!    in an `upstream::ResponseBody` that holds the slot until the backend's last byte; a 101
//!    frees it at once, and its body carries the backend's end of the tunnel.
//! 9. `respond` turns any error on the way into weir's own answer, counted under its reason
//!    (a gRPC trailers-only answer to a gRPC client).
//! 10. `listener::service` hands the answer to hyper; when its body ends or is dropped, the
//!     record is written and the connection may go idle (and later park, `listener::park`), or,
//!     after a 101, carry the tunnel (`upstream::Upgraded::run`) until it ends.

mod handle;
mod record;
mod respond;
mod route;

pub use handle::Proxy;
pub use record::{ACCESS_TARGET, Record};
