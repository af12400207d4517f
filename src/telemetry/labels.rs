//! The label values weir counts under: fixed sets, so that every metric's cardinality is bounded
//! by the code and by configured names, never by requests.

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
    /// The TLS handshake with the backend failed (its certificate, mostly).
    UpstreamTls,
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
    /// `max_upgraded` tunnels are open to the upstream (503).
    UpgradeLimit,
    /// A request of a higher priority class took its queue place (503).
    Evicted,
    /// The client's deadline could not cover the expected wait: refused before queueing (504).
    DeadlineUnmeetable,
    /// The request's tenant held its share of the limit while others waited (429).
    TenantShare,
    /// CoDel: the queue was standing and no slot came free within `codel_target` (503).
    Codel,
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::Deadline,
        Reason::ClientGone,
        Reason::UpstreamConnect,
        Reason::UpstreamTls,
        Reason::UpstreamReset,
        Reason::UpstreamProtocol,
        Reason::NoRoute,
        Reason::BadRequest,
        Reason::BodyTimeout,
        Reason::BodyTooLarge,
        Reason::BufferFull,
        Reason::UpgradeLimit,
        Reason::Evicted,
        Reason::DeadlineUnmeetable,
        Reason::TenantShare,
        Reason::Codel,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::Deadline => "deadline",
            Reason::ClientGone => "client_gone",
            Reason::UpstreamConnect => "upstream_connect",
            Reason::UpstreamTls => "upstream_tls",
            Reason::UpstreamReset => "upstream_reset",
            Reason::UpstreamProtocol => "upstream_protocol",
            Reason::NoRoute => "no_route",
            Reason::BadRequest => "bad_request",
            Reason::BodyTimeout => "body_timeout",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BufferFull => "buffer_full",
            Reason::UpgradeLimit => "upgrade_limit",
            Reason::Evicted => "evicted",
            Reason::DeadlineUnmeetable => "deadline_unmeetable",
            Reason::TenantShare => "tenant_share",
            Reason::Codel => "codel",
            Reason::Internal => "internal",
        }
    }
}

/// Kinds of upstream failure, counted per upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The deadline fired, before or during the response.
    Timeout,
    /// The connection closed or was reset mid-exchange.
    Reset,
    /// The backend sent something that is not valid HTTP.
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// Why a connection was closed before it could carry a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnReject {
    /// `max_connections` were already open.
    Limit,
    /// The TLS handshake failed (bad client hello, no or untrusted client certificate, ...).
    TlsHandshake,
}

impl ConnReject {
    pub const ALL: [ConnReject; 2] = [ConnReject::Limit, ConnReject::TlsHandshake];
    pub fn as_str(self) -> &'static str {
        match self {
            ConnReject::Limit => "limit",
            ConnReject::TlsHandshake => "tls_handshake",
        }
    }
}

/// Which slow-client deadline fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    Header,
    Body,
    Write,
    Idle,
    TlsHandshake,
}

impl ClientTimeout {
    pub const ALL: [ClientTimeout; 5] = [
        ClientTimeout::Header,
        ClientTimeout::Body,
        ClientTimeout::Write,
        ClientTimeout::Idle,
        ClientTimeout::TlsHandshake,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTimeout::Header => "header",
            ClientTimeout::Body => "body",
            ClientTimeout::Write => "write",
            ClientTimeout::Idle => "idle",
            ClientTimeout::TlsHandshake => "tls_handshake",
        }
    }
}

/// Which size limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// `max_header_bytes`: answered 431.
    HeaderBytes,
    /// `max_body_bytes`: answered 413, or the upload cut off.
    BodyBytes,
}

impl SizeLimit {
    pub const ALL: [SizeLimit; 2] = [SizeLimit::HeaderBytes, SizeLimit::BodyBytes];
    pub fn as_str(self) -> &'static str {
        match self {
            SizeLimit::HeaderBytes => "header_bytes",
            SizeLimit::BodyBytes => "body_bytes",
        }
    }
}

/// Status classes for `weir_requests_total{code}`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`] for a status code.
pub fn status_class(status: http::StatusCode) -> usize {
    (status.as_u16() / 100).clamp(1, 5) as usize - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurable_reasons_are_every_reason_weir_answers() {
        let answered: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| **r != Reason::ClientGone)
            .map(|r| r.as_str())
            .collect();
        assert_eq!(answered, crate::config::REJECT_REASONS);
    }

    #[test]
    fn status_classes() {
        let class = |n| STATUS_CLASSES[status_class(http::StatusCode::from_u16(n).unwrap())];
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(308), "3xx");
        assert_eq!(class(499), "4xx");
        assert_eq!(class(503), "5xx");
        assert_eq!(class(599), "5xx");
    }
}
