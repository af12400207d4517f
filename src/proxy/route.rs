//! Routing: the table of upstreams and the rules that pick one for a request.

use std::sync::Arc;

use http::{HeaderValue, Request, StatusCode, Version, header};

use crate::config::{Config, Priority, RouteConfig};
use crate::error::ProxyError;
use crate::telemetry::Reason;
use crate::upstream::Upstream;

/// The routing table: upstreams and the rules that pick one.
pub(super) struct Table {
    pub(super) upstreams: Vec<Arc<Upstream>>,
    routes: Vec<RouteConfig>,
    /// Some route has a host condition: only then is the request's host looked up again.
    by_host: bool,
    /// `[reject_status]`, by [`Reason`] (its value as the index).
    pub(super) reject_status: [Option<StatusCode>; Reason::ALL.len()],
}

impl Table {
    pub(super) fn new(upstreams: Vec<Arc<Upstream>>, config: &Config) -> Table {
        let routes = config.routes.clone();
        let by_host = routes.iter().any(|r| r.host.is_some());
        let mut reject_status = [None; Reason::ALL.len()];
        for (name, status) in &config.reject_status {
            if let Some(r) = Reason::ALL.iter().find(|r| r.as_str() == *name) {
                reject_status[*r as usize] = Some(*status);
            }
        }
        Table {
            upstreams,
            routes,
            by_host,
            reject_status,
        }
    }

    /// The first route whose conditions all hold, and the class it sets; with no routes, the
    /// only upstream.
    pub(super) fn route<B>(&self, req: &Request<B>) -> Option<(&Arc<Upstream>, Option<Priority>)> {
        if self.routes.is_empty() {
            return self.upstreams.first().map(|u| (u, None));
        }
        let host = if self.by_host {
            request_host(req)
        } else {
            None
        };
        let path = req.uri().path();
        self.routes
            .iter()
            .find(|r| {
                r.host
                    .as_deref()
                    .is_none_or(|h| host.is_some_and(|rh| rh.eq_ignore_ascii_case(h)))
                    && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            })
            .map(|r| (&self.upstreams[r.upstream], r.priority))
    }
}

/// Settles which host a request is for before it is routed, so that routing and the backend see
/// the same one (RFC 9112 §3.2): an HTTP/1.1 request must carry exactly one Host field; an
/// absolute-form target's authority replaces whatever Host says (§3.2.2); an HTTP/2 request's
/// Host, if any, must name its `:authority` (RFC 9113 §8.3.1). Anything else is refused.
pub(super) fn settle_host<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host field"));
    }
    if let Some(authority) = req.uri().authority() {
        if req.version() == Version::HTTP_2 {
            return match host {
                Some(h)
                    if !h
                        .as_bytes()
                        .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
                {
                    Err(ProxyError::BadRequest("Host differs from :authority"))
                }
                _ => Ok(()),
            };
        }
        // http(s) URIs carry no user information (RFC 9110 §4.2.4).
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest(
                "user information in the request target",
            ));
        }
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        req.headers_mut().insert(header::HOST, value);
        return Ok(());
    }
    match host {
        None if req.version() == Version::HTTP_11 => Err(ProxyError::BadRequest("no Host field")),
        Some(h) if !valid_host(h.as_bytes()) => Err(ProxyError::BadRequest("invalid Host field")),
        _ => Ok(()),
    }
}

/// Whether `host` is a `uri-host [ ":" port ]` (RFC 9110 §7.2) as far as routing cares: nothing
/// that would end or change an authority (a path, a query, user information, white space).
/// Empty is valid: a target whose authority is empty.
fn valid_host(host: &[u8]) -> bool {
    host.iter().all(|&b| HOST_BYTES[usize::from(b)])
}

/// The bytes a Host field may hold ([`valid_host`]), as a table: one load a byte.
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'.' | b'-'
                    | b'_'
                    | b'~'
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// The host a request is for, without its port: the Host header, or the URI's authority.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri().host()?,
    };
    // Strip a port, minding IPv6 literals ("[::1]:8080").
    Some(match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proxy::Proxy;

    fn proxy(toml_routes: &str) -> Proxy {
        let text = format!(
            "[[listener]]\nname=\"l\"\naddr=\"127.0.0.1:0\"\n\
             [[upstream]]\nname=\"api\"\naddr=\"127.0.0.1:1\"\n\
             [[upstream]]\nname=\"web\"\naddr=\"127.0.0.1:2\"\n{toml_routes}"
        );
        Proxy::new(&Config::from_toml_str(&text).unwrap(), None)
    }

    fn routed(p: &Proxy, host: Option<&str>, uri: &str) -> Option<String> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        p.table
            .load()
            .route(&b.body(()).unwrap())
            .map(|(u, _)| u.name.clone())
    }

    #[tokio::test]
    async fn first_match_wins_on_host_and_prefix() {
        let p = proxy(
            "[[route]]\nhost=\"api.example.com\"\npath_prefix=\"/v1\"\nupstream=\"api\"\n\
             [[route]]\npath_prefix=\"/static/\"\nupstream=\"web\"\n\
             [[route]]\nhost=\"API.example.com\"\nupstream=\"web\"\n",
        );
        assert_eq!(
            routed(&p, Some("api.example.com:8443"), "/v1/x").as_deref(),
            Some("api")
        );
        assert_eq!(
            routed(&p, Some("Api.Example.com"), "/v2").as_deref(),
            Some("web")
        );
        assert_eq!(
            routed(&p, Some("other"), "/static/a.css").as_deref(),
            Some("web")
        );
        assert_eq!(
            routed(&p, None, "http://api.example.com/v1").as_deref(),
            Some("api")
        );
        assert_eq!(routed(&p, Some("other"), "/v1"), None);
    }

    #[test]
    fn host_without_port() {
        let r = |h: &str| {
            let req = Request::builder().header(header::HOST, h).body(()).unwrap();
            request_host(&req).map(str::to_string)
        };
        assert_eq!(r("a.b:80").as_deref(), Some("a.b"));
        assert_eq!(r("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(r("[::1]").as_deref(), Some("[::1]"));
    }
}
