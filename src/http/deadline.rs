//! A client's deadline as it travels in headers: gRPC's `grpc-timeout` (PROTOCOL-HTTP2: 1 to 8
//! digits and a unit, H M S m u n), and a plain header of milliseconds for other HTTP clients
//! (the upstream's `deadline_header`); read on arrival, written again with what is left.

use std::time::Duration;

use http::HeaderValue;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName};

pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is gRPC: `content-type: application/grpc`, alone or with a suffix
/// (`+proto`, `+json`, `;...`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes();
        ct.starts_with(b"application/grpc") && matches!(ct.get(16), None | Some(b'+' | b';'))
    })
}

/// The budget a `grpc-timeout` value gives; `None` for a malformed one.
pub(crate) fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value: milliseconds while they fit in eight digits (27 hours),
/// whole seconds beyond.
pub(crate) fn grpc_timeout(left: Duration) -> HeaderValue {
    let ms = left.as_millis();
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    // Digits and a letter.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// The budget a header of milliseconds gives; `None` for anything but digits.
pub(crate) fn parse_millis(value: &[u8]) -> Option<Duration> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(Duration::from_millis(
        std::str::from_utf8(value).ok()?.parse().ok()?,
    ))
}

/// The client's budget for a request: `grpc-timeout` on a gRPC request, else the upstream's
/// deadline header if it has one.
pub(crate) fn client_budget(
    headers: &HeaderMap,
    grpc: bool,
    deadline_header: Option<&HeaderName>,
) -> Option<Duration> {
    if grpc {
        if let Some(t) = headers.get(&GRPC_TIMEOUT) {
            return parse_grpc_timeout(t.as_bytes());
        }
    }
    parse_millis(headers.get(deadline_header?)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_read_and_written() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(parse_grpc_timeout(b"100m"), ms(100));
        assert_eq!(parse_grpc_timeout(b"2S"), ms(2000));
        assert_eq!(parse_grpc_timeout(b"1H"), ms(3_600_000));
        assert_eq!(parse_grpc_timeout(b"1M"), ms(60_000));
        assert_eq!(
            parse_grpc_timeout(b"1500u"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(parse_grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"10x",
            b"-1S",
            b"1.5S",
            b"10",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(Duration::from_millis(1234)), "1234m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(parse_millis(b"250"), ms(250));
        assert_eq!(parse_millis(b"2.5"), None);
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }
}
