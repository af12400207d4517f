//! Request-path errors, the reasons they are counted under, and the one place that turns any of
//! them into an HTTP answer ([`ProxyError::into_response`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::body::{RequestBodyError, ResponseBody};
use crate::metrics::Histogram;
use crate::stripes::Stripes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header naming why weir answered instead of the backend.
pub static REJECT_HEADER: HeaderName = HeaderName::from_static("x-weir-reject");

/// Everything that can stop a request from getting the backend's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("the upstream's queue is full")]
    QueueFull,
    #[error("no upstream slot came free within queue_timeout")]
    QueueTimeout,
    #[error("the upstream did not answer within request_timeout")]
    UpstreamTimeout,
    #[error("cannot connect to the upstream")]
    UpstreamConnect(#[source] BoxError),
    #[error("the upstream connection was closed or reset")]
    UpstreamReset(#[source] BoxError),
    #[error("the upstream broke the HTTP protocol")]
    UpstreamProtocol(#[source] BoxError),
    #[error("the request cannot be forwarded: {0}")]
    BadRequest(&'static str),
    #[error("the request body made no progress for body_timeout")]
    BodyTimeout,
    #[error("the request body exceeds max_body_bytes")]
    BodyTooLarge,
    #[error("the client's request body broke off")]
    ClientBody(#[source] BoxError),
    #[error("max_buffered_bytes is reached")]
    BufferFull,
    #[error("internal error (a panic) while handling the request")]
    Internal,
}

/// Why a request was answered by weir rather than the backend, or not answered at all.
/// The set is fixed so it can label counters without unbounded cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    QueueFull,
    QueueTimeout,
    /// `request_timeout` fired before the response head arrived.
    Deadline,
    /// The client went away while its request was queued or in flight.
    ClientGone,
    UpstreamConnect,
    UpstreamReset,
    UpstreamProtocol,
    NoRoute,
    BadRequest,
    /// The request body stalled for `body_timeout` (408).
    BodyTimeout,
    /// The request body is larger than `max_body_bytes` (413).
    BodyTooLarge,
    /// Request buffers hold `max_buffered_bytes` already (503).
    BufferFull,
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::Deadline,
        Reason::ClientGone,
        Reason::UpstreamConnect,
        Reason::UpstreamReset,
        Reason::UpstreamProtocol,
        Reason::NoRoute,
        Reason::BadRequest,
        Reason::BodyTimeout,
        Reason::BodyTooLarge,
        Reason::BufferFull,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::Deadline => "deadline",
            Reason::ClientGone => "client_gone",
            Reason::UpstreamConnect => "upstream_connect",
            Reason::UpstreamReset => "upstream_reset",
            Reason::UpstreamProtocol => "upstream_protocol",
            Reason::NoRoute => "no_route",
            Reason::BadRequest => "bad_request",
            Reason::BodyTimeout => "body_timeout",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BufferFull => "buffer_full",
            Reason::Internal => "internal",
        }
    }
}

/// Kinds of upstream failure, counted per upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    /// The deadline fired, before or during the response.
    Timeout,
    /// The connection closed or was reset mid-exchange.
    Reset,
    /// The backend sent something that is not valid HTTP.
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// Per-upstream counters and latency histograms, indexed by enum. Those of every request are
/// striped by thread (see [`Stripes`]); rejections and errors are plain atomics, one relaxed
/// add each. They live in the upstream's pool, which a configuration reload keeps.
#[derive(Debug, Default)]
pub struct Counters {
    rejected: [AtomicU64; Reason::ALL.len()],
    upstream_errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    /// Answers by status class (see [`crate::metrics::STATUS_CLASSES`]).
    responses: Stripes<5>,
    request_duration: Histogram,
    queue_wait: Histogram,
}

impl Counters {
    /// Counts one finished request: its answer's status, duration and queue wait.
    pub fn finished(
        &self,
        status: Option<StatusCode>,
        duration: Duration,
        queue_wait: Option<Duration>,
    ) {
        if let Some(s) = status {
            self.responses.add(crate::metrics::status_class(s), 1);
        }
        self.request_duration.observe(duration);
        if let Some(w) = queue_wait {
            self.queue_wait.observe(w);
        }
    }

    /// Answers sent in status class `class` (an index into [`crate::metrics::STATUS_CLASSES`]).
    pub fn responses(&self, class: usize) -> u64 {
        self.responses.sum(class)
    }

    pub fn request_duration(&self) -> &Histogram {
        &self.request_duration
    }

    pub fn queue_wait(&self) -> &Histogram {
        &self.queue_wait
    }

    pub fn reject(&self, reason: Reason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    pub fn upstream_errors(&self, kind: UpstreamErrorKind) -> u64 {
        self.upstream_errors[kind as usize].load(Ordering::Relaxed)
    }
}

impl From<RequestBodyError> for ProxyError {
    fn from(e: RequestBodyError) -> Self {
        ProxyError::for_body(&e).unwrap_or_else(|| ProxyError::ClientBody(Box::new(e)))
    }
}

impl ProxyError {
    /// The answer for a request body that failed on weir's limits; `None` when the client's own
    /// stream broke, whose cause the caller keeps as the source of [`ProxyError::ClientBody`].
    pub fn for_body(e: &RequestBodyError) -> Option<ProxyError> {
        match e {
            RequestBodyError::Timeout | RequestBodyError::TooSlow => Some(ProxyError::BodyTimeout),
            RequestBodyError::TooLarge => Some(ProxyError::BodyTooLarge),
            RequestBodyError::BufferFull => Some(ProxyError::BufferFull),
            RequestBodyError::Client(_) => None,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::NoRoute => Reason::NoRoute,
            ProxyError::QueueFull => Reason::QueueFull,
            ProxyError::QueueTimeout => Reason::QueueTimeout,
            ProxyError::UpstreamTimeout => Reason::Deadline,
            ProxyError::UpstreamConnect(_) => Reason::UpstreamConnect,
            ProxyError::UpstreamReset(_) => Reason::UpstreamReset,
            ProxyError::UpstreamProtocol(_) => Reason::UpstreamProtocol,
            ProxyError::BadRequest(_) => Reason::BadRequest,
            ProxyError::BodyTimeout => Reason::BodyTimeout,
            ProxyError::BodyTooLarge => Reason::BodyTooLarge,
            ProxyError::ClientBody(_) => Reason::ClientGone,
            ProxyError::BufferFull => Reason::BufferFull,
            ProxyError::Internal => Reason::Internal,
        }
    }

    pub fn upstream_error_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::UpstreamTimeout => Some(UpstreamErrorKind::Timeout),
            ProxyError::UpstreamConnect(_) => Some(UpstreamErrorKind::Connect),
            ProxyError::UpstreamReset(_) => Some(UpstreamErrorKind::Reset),
            ProxyError::UpstreamProtocol(_) => Some(UpstreamErrorKind::Protocol),
            _ => None,
        }
    }

    /// Status and short public body. Bodies name the reason only: no addresses, no causes.
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no route\n"),
            ProxyError::QueueFull | ProxyError::QueueTimeout | ProxyError::BufferFull => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later\n")
            }
            ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamProtocol(_) => (StatusCode::BAD_GATEWAY, "upstream error\n"),
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => {
                (StatusCode::BAD_REQUEST, "bad request\n")
            }
            ProxyError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request body timed out\n"),
            ProxyError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            ProxyError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
        }
    }

    /// Counts the error on its upstream (when there is one) and builds the answer for the client.
    /// `retry_after` is the upstream's pre-rendered `Retry-After` value, sent with every 503.
    pub fn into_response(
        self,
        counters: Option<&Counters>,
        retry_after: Option<&HeaderValue>,
    ) -> Response<ResponseBody> {
        let reason = self.reason();
        if let Some(c) = counters {
            c.reject(reason);
            if let Some(kind) = self.upstream_error_kind() {
                c.upstream_error(kind);
            }
        }
        let (status, body) = self.status();
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            REJECT_HEADER.clone(),
            HeaderValue::from_static(reason.as_str()),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let value = retry_after
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("1"));
            headers.insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table() {
        let io = || -> BoxError { "x".into() };
        let table = [
            (ProxyError::NoRoute, 404),
            (ProxyError::QueueFull, 503),
            (ProxyError::QueueTimeout, 503),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::UpstreamConnect(io()), 502),
            (ProxyError::UpstreamReset(io()), 502),
            (ProxyError::UpstreamProtocol(io()), 502),
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::BodyTimeout, 408),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::BufferFull, 503),
            (ProxyError::ClientBody(io()), 400),
            (ProxyError::Internal, 500),
        ];
        for (err, status) in table {
            let reason = err.reason();
            let r = err.into_response(None, None);
            assert_eq!(r.status().as_u16(), status, "{reason:?}");
            assert_eq!(r.headers()[&REJECT_HEADER], reason.as_str());
            assert_eq!(r.headers().contains_key(header::RETRY_AFTER), status == 503);
        }
    }

    #[test]
    fn counts_reason_and_upstream_error_kind() {
        let c = Counters::default();
        let retry = HeaderValue::from_static("3");
        let r = ProxyError::QueueFull.into_response(Some(&c), Some(&retry));
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        ProxyError::UpstreamTimeout.into_response(Some(&c), None);
        assert_eq!(c.rejected(Reason::QueueFull), 1);
        assert_eq!(c.rejected(Reason::Deadline), 1);
        assert_eq!(c.upstream_errors(UpstreamErrorKind::Timeout), 1);
        assert_eq!(c.upstream_errors(UpstreamErrorKind::Connect), 0);
    }
}
