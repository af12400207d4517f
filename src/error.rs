//! Request-path errors and the one table of what each is answered with: a status, a short public
//! text and the [`Reason`] it is counted under. The answer itself is built in `proxy::respond`.

use http::{HeaderName, StatusCode};

use crate::telemetry::{Reason, UpstreamErrorKind};

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
    #[error("the TLS handshake with the upstream failed")]
    UpstreamTls(#[source] BoxError),
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
    #[error("max_upgraded tunnels are open to the upstream")]
    UpgradeLimit,
    #[error("a request of a higher priority class took the queue place")]
    Evicted,
    #[error("the client's deadline cannot cover the expected wait")]
    DeadlineUnmeetable,
    #[error("the client's deadline passed before the upstream answered")]
    ClientDeadline,
    #[error("the request's tenant holds its share of the upstream while others wait")]
    TenantShare,
    #[error("the queue is standing and no slot came free within codel_target")]
    Codel,
    #[error("internal error (a panic) while handling the request")]
    Internal,
}

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the request body made no progress for body_timeout")]
    Timeout,
    #[error("the request body arrived slower than min_body_rate")]
    TooSlow,
    #[error("the request body exceeds max_body_bytes")]
    TooLarge,
    #[error("the request body cannot be buffered: max_buffered_bytes is reached")]
    BufferFull,
    #[error("reading the request body from the client failed")]
    Client(#[source] hyper::Error),
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
            ProxyError::UpstreamTls(_) => Reason::UpstreamTls,
            ProxyError::UpstreamReset(_) => Reason::UpstreamReset,
            ProxyError::UpstreamProtocol(_) => Reason::UpstreamProtocol,
            ProxyError::BadRequest(_) => Reason::BadRequest,
            ProxyError::BodyTimeout => Reason::BodyTimeout,
            ProxyError::BodyTooLarge => Reason::BodyTooLarge,
            ProxyError::ClientBody(_) => Reason::ClientGone,
            ProxyError::BufferFull => Reason::BufferFull,
            ProxyError::UpgradeLimit => Reason::UpgradeLimit,
            ProxyError::Evicted => Reason::Evicted,
            ProxyError::DeadlineUnmeetable => Reason::DeadlineUnmeetable,
            ProxyError::ClientDeadline => Reason::Deadline,
            ProxyError::TenantShare => Reason::TenantShare,
            ProxyError::Codel => Reason::Codel,
            ProxyError::Internal => Reason::Internal,
        }
    }

    pub fn upstream_error_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::UpstreamTimeout => Some(UpstreamErrorKind::Timeout),
            ProxyError::UpstreamConnect(_) => Some(UpstreamErrorKind::Connect),
            ProxyError::UpstreamTls(_) => Some(UpstreamErrorKind::Tls),
            ProxyError::UpstreamReset(_) => Some(UpstreamErrorKind::Reset),
            ProxyError::UpstreamProtocol(_) => Some(UpstreamErrorKind::Protocol),
            _ => None,
        }
    }

    /// Status and short public body. Bodies name the reason only: no addresses, no causes.
    pub(crate) fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no route\n"),
            ProxyError::TenantShare => (
                StatusCode::TOO_MANY_REQUESTS,
                "tenant over its share, retry later\n",
            ),
            ProxyError::QueueFull
            | ProxyError::QueueTimeout
            | ProxyError::BufferFull
            | ProxyError::UpgradeLimit
            | ProxyError::Evicted
            | ProxyError::Codel => (StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later\n"),
            ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
            ProxyError::DeadlineUnmeetable | ProxyError::ClientDeadline => (
                StatusCode::GATEWAY_TIMEOUT,
                "deadline too short for the wait\n",
            ),
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(_)
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

    /// The gRPC status a gRPC client is answered with (gRPC's status codes; the HTTP mapping of
    /// its PROTOCOL-HTTP2 document where one applies), and whether it is overload, which comes
    /// with a retry pushback.
    pub(crate) fn grpc_status(&self) -> (u8, bool) {
        const DEADLINE_EXCEEDED: u8 = 4;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        match self {
            ProxyError::QueueFull
            | ProxyError::QueueTimeout
            | ProxyError::BufferFull
            | ProxyError::UpgradeLimit
            | ProxyError::Evicted
            | ProxyError::Codel => (UNAVAILABLE, true),
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamProtocol(_) => (UNAVAILABLE, false),
            ProxyError::UpstreamTimeout
            | ProxyError::DeadlineUnmeetable
            | ProxyError::ClientDeadline
            | ProxyError::BodyTimeout => (DEADLINE_EXCEEDED, false),
            ProxyError::BodyTooLarge => (RESOURCE_EXHAUSTED, false),
            ProxyError::TenantShare => (RESOURCE_EXHAUSTED, true),
            ProxyError::NoRoute => (UNIMPLEMENTED, false),
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) | ProxyError::Internal => {
                (INTERNAL, false)
            }
        }
    }
}
