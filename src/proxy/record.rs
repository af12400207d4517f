//! One request, from its arrival to the end of its answer: counted, timed and written to the
//! access log when dropped, so that every path (answered, cut off, abandoned by the client) is
//! recorded exactly once without a call to remember.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use tokio::time::Instant;

use crate::config::Priority;
use crate::telemetry::Reason;
use crate::upstream::Upstream;

/// Target of the access log's events: filter it with `weir::access=off` or `[log] access`.
pub const ACCESS_TARGET: &str = "weir::access";

/// The request line, kept only when the access log is on. Cloning a `Method` or a `Uri` copies
/// no bytes (standard methods are constants; a `Uri`'s parts are shared).
struct RequestLine {
    method: Method,
    uri: Uri,
}

/// The record of one request; see the module docs.
pub struct Record {
    start: Instant,
    upstream: Option<Arc<Upstream>>,
    status: Option<StatusCode>,
    reason: Option<Reason>,
    queue_wait: Option<Duration>,
    bytes: u64,
    complete: bool,
    /// Boxed: a record moves with its response several times per request, and the line (about
    /// 100 bytes) is then one pointer; with the access log on, it costs one small allocation.
    line: Option<Box<RequestLine>>,
    metrics: bool,
    /// The priority class it was admitted under: its queue wait is counted per class.
    class: Priority,
}

impl Record {
    /// Starts the record of a request that just arrived. `log` keeps its request line for the
    /// access log; `metrics` counts it in the upstream's status classes and histograms.
    pub fn start(method: &Method, uri: &Uri, log: bool, metrics: bool) -> Record {
        Record {
            start: Instant::now(),
            upstream: None,
            status: None,
            reason: None,
            queue_wait: None,
            class: Priority::Normal,
            bytes: 0,
            complete: false,
            line: log.then(|| {
                Box::new(RequestLine {
                    method: method.clone(),
                    uri: uri.clone(),
                })
            }),
            metrics,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Notes the upstream the request goes to. Returns it, with the place where the request's
    /// queue wait is written once it is admitted, for the forwarding to borrow: the record holds
    /// the request's one reference to the upstream.
    /// The priority class the request is admitted under.
    pub fn set_class(&mut self, class: Priority) {
        self.class = class;
    }

    pub fn route_to(&mut self, upstream: Arc<Upstream>) -> (&Upstream, &mut Option<Duration>) {
        (self.upstream.insert(upstream), &mut self.queue_wait)
    }

    /// The upstream the request was routed to, if any.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.as_deref()
    }

    /// The name of the upstream the request was routed to, or `-`, for logs.
    pub fn upstream_name(&self) -> &str {
        self.upstream.as_ref().map_or("-", |u| u.name.as_str())
    }

    /// The answer's status, and the reason when weir answered instead of the backend.
    pub fn answered(&mut self, status: StatusCode, reason: Option<Reason>) {
        self.status = Some(status);
        self.reason = reason;
    }

    /// Counts body bytes sent to the client.
    pub fn sent(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// The answer's body was delivered whole.
    pub fn complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let duration = self.start.elapsed();
        if let Some(u) = &self.upstream {
            let counters = u.pool().counters();
            if self.status.is_none() {
                // Dropped before an answer existed: hyper dropped the request future because the
                // client went away while it was queued or waiting for the backend's head.
                counters.reject(Reason::ClientGone);
                self.reason = Some(Reason::ClientGone);
            }
            if self.metrics {
                counters.finished(self.status, duration, self.queue_wait, self.class);
            }
        }
        let Some(line) = &self.line else { return };
        tracing::info!(
            target: ACCESS_TARGET,
            method = %line.method,
            path = line.uri.path(),
            // 499 (nginx's "client closed request") when the client left before any answer.
            status = self.status.map_or(499, |s| s.as_u16()),
            upstream = self.upstream_name(),
            reason = self.reason.map_or("-", Reason::as_str),
            queue_wait_ms = self.queue_wait.map_or(0.0, |w| w.as_secs_f64() * 1e3),
            duration_ms = duration.as_secs_f64() * 1e3,
            bytes = self.bytes,
            complete = self.complete,
        );
    }
}
