//! Header rewriting between downstream and upstream: the hop-by-hop fields removed both ways
//! (RFC 9110 §7.6.1), and the `X-Forwarded-*` fields a request is forwarded with, which the
//! backend client writes in place of the client's own ([`SetFields`]).

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::downstream::Downstream;

/// Header fields a request is sent with on top of its own, each replacing every field of that
/// name the request carries (weir's `X-Forwarded-*`). Written straight into the request head on
/// HTTP/1.1, where inserting them into the request's `HeaderMap` first would cost a hash and a
/// probe each, and often the map's growth.
/// Values are borrowed: weir's own (the client's address, its scheme) live as long as the
/// connection, and a copy of each per request would take and drop a shared reference.
#[derive(Debug, Clone, Copy)]
pub struct SetFields<'a> {
    pub fields: &'a [(&'static HeaderName, Cow<'a, HeaderValue>)],
    /// A field of this name with the value of the request's first `Host` field
    /// (`X-Forwarded-Host`), taken from the head as it is written. `None` when the request has
    /// no Host field: its own fields of that name are then kept.
    pub copy_of_host: Option<&'static HeaderName>,
}

impl SetFields<'_> {
    /// Whether the request's own `name` fields are left out.
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        self.fields.iter().any(|(n, _)| *n == name) || self.copy_of_host == Some(name)
    }
}

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the comma-separated list in the `name` fields holds `token` (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &[u8]) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// The `X-Forwarded-*` fields a request is forwarded with, in place of any the client sent
/// (written by the backend client, see [`SetFields`]).
pub(crate) struct Forwarded<'a> {
    fields: [(&'static HeaderName, Cow<'a, HeaderValue>); 2],
    host: bool,
}

impl<'a> Forwarded<'a> {
    /// X-Forwarded-For: the client's list, if it sent one (`prior`), then its address.
    /// X-Forwarded-Proto: the scheme the client used. X-Forwarded-Host: the host it asked for,
    /// when it named one (`host`: the request carries a Host field).
    pub(crate) fn new(
        headers: &HeaderMap,
        prior: bool,
        host: bool,
        downstream: &'a Downstream,
    ) -> Forwarded<'a> {
        let xff = if prior {
            Cow::Owned(forwarded_for(headers, &downstream.forwarded_for))
        } else {
            Cow::Borrowed(&downstream.forwarded_for)
        };
        Forwarded {
            fields: [
                (&X_FORWARDED_FOR, xff),
                (&X_FORWARDED_PROTO, Cow::Borrowed(&downstream.proto)),
            ],
            host,
        }
    }

    pub(crate) fn fields(&self) -> SetFields<'_> {
        SetFields {
            fields: &self.fields,
            copy_of_host: self.host.then_some(&X_FORWARDED_HOST),
        }
    }
}

/// `X-Forwarded-For` with the client's address appended to what earlier proxies wrote, folded
/// into one field.
fn forwarded_for(headers: &HeaderMap, client: &HeaderValue) -> HeaderValue {
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if prior.peek().is_none() {
        return client.clone();
    }
    let mut joined = Vec::with_capacity(64);
    for value in prior {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client.as_bytes());
    // Earlier values were valid header bytes, so the join is too; keep at least ours.
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
}

/// What one pass over a request's fields finds, for the rewrite: cheaper than a hashed look-up
/// per field wanted (a request has a handful of fields).
#[derive(Default)]
pub(crate) struct Scan {
    /// The request carries a Host field.
    pub(crate) host: bool,
    /// The request carries `X-Forwarded-For`.
    pub(crate) forwarded_for: bool,
    /// The request carries a hop-by-hop field, to be removed.
    pub(crate) hop_by_hop: bool,
}

impl Scan {
    pub(crate) fn of(headers: &HeaderMap) -> Scan {
        let mut scan = Scan::default();
        for name in headers.keys() {
            if name == header::HOST {
                scan.host = true;
            } else if name == X_FORWARDED_FOR {
                scan.forwarded_for = true;
            } else if is_hop_by_hop(name) {
                scan.hop_by_hop = true;
            }
        }
        scan
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, plus the
/// fixed list. Returns whether `TE` asked for trailers, which an HTTP/2 backend may be told.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Most messages carry none of them: one pass over the names (standard names compare as
    // small integers) instead of a hashed removal per listed header.
    headers.keys().any(is_hop_by_hop) && remove_hop_by_hop(headers)
}

/// The removal of [`strip_hop_by_hop`], for headers known to carry a hop-by-hop field.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for value in &named {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    let wants_trailers = has_token(headers, header::TE, b"trailers");
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    wants_trailers
}

/// The fixed hop-by-hop headers, besides `Connection` (RFC 9110 §7.6.1, and two legacy ones).
static HOP_BY_HOP: [&HeaderName; 8] = [
    &KEEP_ALIVE,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &PROXY_CONNECTION,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || HOP_BY_HOP.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_fixed_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("x"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(strip_hop_by_hop(&mut h));
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn one_pass_finds_host_forwarded_for_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        let scan = Scan::of(&h);
        assert!(!scan.host && !scan.forwarded_for && !scan.hop_by_hop);
        h.append(header::HOST, HeaderValue::from_static("a.test"));
        h.append(header::HOST, HeaderValue::from_static("b.test"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        let scan = Scan::of(&h);
        assert!(scan.host && scan.forwarded_for && !scan.hop_by_hop);
        for name in [header::CONNECTION, header::TE, PROXY_CONNECTION.clone()] {
            let mut h = h.clone();
            h.insert(name, HeaderValue::from_static("x"));
            assert!(Scan::of(&h).hop_by_hop);
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let h = HeaderMap::new();
        let me = HeaderValue::from_static("10.0.0.9");
        assert_eq!(forwarded_for(&h, &me), "10.0.0.9");
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        assert_eq!(
            forwarded_for(&h, &me),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"
        );
    }
}
