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
//! 4. `route` picks the upstream from the host and path.
//! 5. `handle` applies the body limits and reads a small body ahead into the buffer budget
//!    (`http::RequestBody`), so a slow upload never holds a slot.
//! 6. `admission::Pool::admit` takes a slot, or waits in the bounded queue for `queue_timeout`,
//!    or is refused at once.
//! 7. `upstream::rewrite` turns the head into the backend's; `upstream::client` sends it on a
//!    pooled connection (`upstream::http1`) under the request deadline (`sync::LentTimer`).
//! 8. `upstream::forward` reads a small answer whole and frees the slot, or streams a large one
//!    in an `upstream::ResponseBody` that holds the slot until the backend's last byte.
//! 9. `respond` turns any error on the way into weir's own answer, counted under its reason.
//! 10. `listener::service` hands the answer to hyper; when its body ends or is dropped, the
//!     record is written and the connection may go idle (and later park, `listener::park`).

mod handle;
mod record;
mod respond;
mod route;

pub use handle::Proxy;
pub use record::{ACCESS_TARGET, Record};
