//! The one place an outcome becomes an HTTP answer: a [`ProxyError`] is counted on its upstream
//! and turned into weir's own short answer, with `x-weir-reject` naming the reason and
//! `Retry-After` on every 503 and 429; to a gRPC client, a trailers-only answer with its gRPC
//! status, weir's message and, for overload, a retry pushback.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::error::{ProxyError, REJECT_HEADER};
use crate::telemetry::UpstreamCounters;
use crate::upstream::ResponseBody;

/// How a rejection is answered beyond its reason: the request's protocol, the status the
/// configuration chose for the reason, and when to come back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answering {
    /// The request is gRPC: answered as a gRPC trailers-only response.
    pub grpc: bool,
    /// `reject_status` for the reason, if configured; the status table's otherwise.
    pub status: Option<StatusCode>,
    /// When to come back: `Retry-After` (whole seconds, at least 1) on 503 and 429, and gRPC's
    /// retry pushback on overload.
    pub retry_after: Duration,
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

impl ProxyError {
    /// Counts the error on its upstream (when there is one) and builds the answer for the client.
    pub fn into_response(
        self,
        counters: Option<&UpstreamCounters>,
        how: Answering,
    ) -> Response<ResponseBody> {
        let reason = self.reason();
        if let Some(c) = counters {
            c.reject(reason);
            if let Some(kind) = self.upstream_error_kind() {
                c.upstream_error(kind);
            }
        }
        if how.grpc {
            return self.into_grpc(how.retry_after);
        }
        let (default, body) = self.status();
        let status = how.status.unwrap_or(default);
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
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            let secs = how.retry_after.as_millis().div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
        }
        response
    }

    /// A gRPC trailers-only answer: HTTP 200, and the gRPC status, weir's message and (for
    /// overload) a retry pushback in the one header block, with no body.
    fn into_grpc(self, retry_after: Duration) -> Response<ResponseBody> {
        let reason = self.reason();
        let (code, overload) = self.grpc_status();
        let (_, text) = self.status();
        let mut response = Response::new(ResponseBody::full(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
        // Printable ASCII without '%': no percent-encoding needed.
        let message = format!("weir: {} ({})", text.trim_end(), reason.as_str());
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert(GRPC_MESSAGE.clone(), v);
        }
        if overload {
            let ms = retry_after.as_millis().max(1) as u64;
            headers.insert(GRPC_PUSHBACK.clone(), HeaderValue::from(ms));
        }
        headers.insert(
            REJECT_HEADER.clone(),
            HeaderValue::from_static(reason.as_str()),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BoxError;
    use crate::telemetry::{Reason, UpstreamErrorKind};

    #[test]
    fn the_status_table() {
        let io = || -> BoxError { "x".into() };
        let table = [
            (ProxyError::NoRoute, 404),
            (ProxyError::QueueFull, 503),
            (ProxyError::QueueTimeout, 503),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::UpstreamConnect(io()), 502),
            (ProxyError::UpstreamTls(io()), 502),
            (ProxyError::UpstreamReset(io()), 502),
            (ProxyError::UpstreamProtocol(io()), 502),
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::BodyTimeout, 408),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::BufferFull, 503),
            (ProxyError::UpgradeLimit, 503),
            (ProxyError::Evicted, 503),
            (ProxyError::TenantShare, 429),
            (ProxyError::Codel, 503),
            (ProxyError::ClientBody(io()), 400),
            (ProxyError::Internal, 500),
        ];
        for (err, status) in table {
            let reason = err.reason();
            let r = err.into_response(None, Answering::default());
            assert_eq!(r.status().as_u16(), status, "{reason:?}");
            assert_eq!(r.headers()[&REJECT_HEADER], reason.as_str());
            let retry = status == 503 || status == 429;
            assert_eq!(r.headers().contains_key(header::RETRY_AFTER), retry);
        }
    }

    #[test]
    fn counts_reason_and_upstream_error_kind() {
        let c = UpstreamCounters::default();
        let how = Answering {
            retry_after: Duration::from_millis(2100),
            ..Answering::default()
        };
        let r = ProxyError::QueueFull.into_response(Some(&c), how);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        ProxyError::UpstreamTimeout.into_response(Some(&c), Answering::default());
        assert_eq!(c.rejected(Reason::QueueFull), 1);
        assert_eq!(c.rejected(Reason::Deadline), 1);
        assert_eq!(c.upstream_errors(UpstreamErrorKind::Timeout), 1);
        assert_eq!(c.upstream_errors(UpstreamErrorKind::Connect), 0);
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::*;
    use http_body::Body as _;

    #[test]
    fn grpc_clients_get_trailers_only_answers_with_a_status_they_understand() {
        let how = Answering {
            grpc: true,
            retry_after: Duration::from_millis(250),
            ..Answering::default()
        };
        let cases = [
            (ProxyError::QueueFull, "14", Some("250")),
            (ProxyError::Evicted, "14", Some("250")),
            (ProxyError::UpstreamReset("x".into()), "14", None),
            (ProxyError::DeadlineUnmeetable, "4", None),
            (ProxyError::UpstreamTimeout, "4", None),
            (ProxyError::BodyTooLarge, "8", None),
            (ProxyError::TenantShare, "8", Some("250")),
            (ProxyError::NoRoute, "12", None),
        ];
        for (err, code, pushback) in cases {
            let reason = err.reason();
            let r = err.into_response(None, how);
            assert_eq!(r.status(), StatusCode::OK, "{reason:?}");
            let h = r.headers();
            assert_eq!(h[&GRPC_STATUS], code, "{reason:?}");
            assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
            let message = h[&GRPC_MESSAGE].to_str().unwrap();
            assert!(message.starts_with("weir: ") && message.contains(reason.as_str()));
            assert_eq!(
                h.get(&GRPC_PUSHBACK).map(|v| v.to_str().unwrap()),
                pushback,
                "{reason:?}"
            );
            assert!(r.body().is_end_stream(), "trailers-only: no body");
        }
    }

    #[test]
    fn a_configured_status_replaces_the_default_and_429_says_when_to_retry() {
        let how = Answering {
            status: Some(StatusCode::TOO_MANY_REQUESTS),
            retry_after: Duration::from_millis(10),
            ..Answering::default()
        };
        let r = ProxyError::QueueFull.into_response(None, how);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[&REJECT_HEADER], "queue_full");
    }
}
