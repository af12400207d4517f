//! The one place an outcome becomes an HTTP answer: a [`ProxyError`] is counted on its upstream
//! and turned into weir's own short answer, with `x-weir-reject` naming the reason and
//! `Retry-After` on every 503.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::error::{ProxyError, REJECT_HEADER};
use crate::telemetry::UpstreamCounters;
use crate::upstream::ResponseBody;

impl ProxyError {
    /// Counts the error on its upstream (when there is one) and builds the answer for the client.
    /// `retry_after` is the upstream's pre-rendered `Retry-After` value, sent with every 503.
    pub fn into_response(
        self,
        counters: Option<&UpstreamCounters>,
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
        let c = UpstreamCounters::default();
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
