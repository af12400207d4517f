//! The request head as the backend gets it: origin-form (or HTTP/2's pseudo-headers) on the
//! backend's address, hop-by-hop fields removed, Host kept, `X-Forwarded-*` set.

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Version};

use super::forward::Upstream;
use crate::config::Protocol;
use crate::error::ProxyError;
use crate::http::{Downstream, Forwarded, Scan, remove_hop_by_hop};

impl Upstream {
    /// Turns the client's request head into the backend's, in place: origin URI on the
    /// backend's address, hop-by-hop headers removed, Host preserved. Returns the
    /// `X-Forwarded-*` fields to send it with.
    pub(super) fn rewrite<'c>(
        &self,
        parts: &mut http::request::Parts,
        downstream: &'c Downstream,
    ) -> Result<Forwarded<'c>, ProxyError> {
        if parts.method == Method::CONNECT {
            return Err(ProxyError::BadRequest("CONNECT is not supported"));
        }
        let scan = Scan::of(&parts.headers);
        let wants_trailers = scan.hop_by_hop && remove_hop_by_hop(&mut parts.headers);
        let headers = &mut parts.headers;
        // A header the client named in `Connection` is gone now, Host included.
        let mut has_host = if scan.hop_by_hop {
            headers.contains_key(header::HOST)
        } else {
            scan.host
        };
        // HTTP/2 clients (and HTTP/1 absolute-form requests) carry the host in the URI.
        if !has_host {
            if let Some(authority) = parts.uri.authority() {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
                headers.insert(header::HOST, host);
                has_host = true;
            }
        }
        let forwarded = Forwarded::new(headers, scan.forwarded_for, has_host, downstream);

        let settings = self.client.settings();
        parts.version = match settings.protocol {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::H2c => {
                // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
                if wants_trailers {
                    headers.insert(header::TE, HeaderValue::from_static("trailers"));
                }
                Version::HTTP_2
            }
        };

        if parts
            .uri
            .path_and_query()
            .is_some_and(|p| p.as_str() == "*")
        {
            return Err(ProxyError::BadRequest("asterisk-form is not supported"));
        }
        // HTTP/1.1 backends get origin-form, which is what HTTP/1.1 clients send: the URI then
        // passes through untouched. HTTP/2 carries the scheme and authority as pseudo-headers.
        let absolute = parts.uri.scheme().is_some() || parts.uri.authority().is_some();
        if settings.protocol == Protocol::H2c || absolute {
            let path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = match settings.protocol {
                Protocol::Http1 => Uri::from(path),
                Protocol::H2c => Uri::builder()
                    .scheme(if settings.tls.is_some() {
                        Scheme::HTTPS
                    } else {
                        Scheme::HTTP
                    })
                    .authority(settings.addr.authority())
                    .path_and_query(path)
                    .build()
                    .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
            };
        }
        Ok(forwarded)
    }
}
