//! The downstream side of a request: what weir knows of the connection it came in on, rendered
//! once per connection, and what a listener's connections and requests share.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::config::ListenerConfig;
use crate::sync::LendingTimer;
use crate::telemetry::ListenerCounters;

/// What weir knows about the downstream connection a request came in on, rendered once per connection.
#[derive(Debug)]
pub struct Downstream {
    /// The client's IP address as a header value, appended to `X-Forwarded-For`.
    pub forwarded_for: HeaderValue,
    /// `http` or `https`, sent as `X-Forwarded-Proto`.
    pub proto: HeaderValue,
    /// The listener the connection came in on: its body limits and counters.
    pub listener: Arc<ListenerInfo>,
    /// The connection's request deadline timer, lent to one request at a time.
    pub timer: LendingTimer,
}

impl Downstream {
    pub fn new(peer: std::net::SocketAddr, tls: bool, listener: Arc<ListenerInfo>) -> Downstream {
        Downstream {
            forwarded_for: HeaderValue::try_from(peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            listener,
            timer: LendingTimer::default(),
        }
    }
}

/// What a listener's connections and requests share.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub counters: ListenerCounters,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: Option<u64>,
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
}

impl ListenerInfo {
    pub fn new(config: &ListenerConfig) -> ListenerInfo {
        ListenerInfo {
            name: config.name.clone(),
            counters: ListenerCounters::default(),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            body_timeout: config.body_timeout,
            max_body_bytes: config.max_body_bytes,
            min_body_rate: config.min_body_rate,
            body_rate_grace: config.body_rate_grace,
        }
    }
}
