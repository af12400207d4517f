//! The downstream side: listeners and their connections.
//!
//! - `accept`: the accept loop of one [`Edge`] with its connection cap, TLS handshakes under a
//!   deadline, and one hyper server per connection (HTTP/1.1 and HTTP/2 on one port).
//! - `connection`: the state a connection's requests share with its guard, and the guard that
//!   counts a request in progress.
//! - `service`: the hyper service that hands each request to the proxy and tracks its answer.
//! - `watchdog`: slow-client deadlines (head, idle, write) enforced on the connection's bytes.
//! - `park`: idle HTTP/1 connections give back their server's state until the next request.
//! - `peer`: a plain client socket shared with the requests that watch it for a hang-up.
//! - `drain`: graceful drain of open connections, without a shared lock per poll.
//! - `tls`: PEM files to a rustls configuration, with certificate reload.

mod accept;
mod connection;
mod drain;
mod park;
mod peer;
mod service;
mod tls;
mod watchdog;

pub(crate) use accept::Edge;
pub(crate) use drain::Drain;
pub use tls::{Tls, TlsError};
