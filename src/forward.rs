//! One upstream: its admission pool, its pooled keep-alive client, and the forwarding of a request
//! to it under a deadline, with proxy hygiene (hop-by-hop headers, `X-Forwarded-*`) both ways.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Response, Version};
use tokio::time::Instant;

use crate::admission::{Pool, Rejected};
use crate::body::{Frames, RequestBody, RequestBodyError, ResponseBody};
use crate::buffer::{BufferPool, Reservation};
use crate::client::{BackendBody, Client, ClientError, ClientSettings, SetFields};
use crate::config::{OversizedBody, Protocol, UpstreamConfig};
use crate::deadline::{LentTimer, TimerSlot};
use crate::error::{BoxError, ProxyError};
use crate::stats::ListenerInfo;
use http_body::Body as _;

/// Called after a request is admitted and before it is forwarded. Tests use it to inject faults
/// (a panic) at the point where a slot is held; production runs have none.
pub type RequestHook = Arc<dyn Fn(&http::request::Parts) + Send + Sync>;

/// What weir knows about the client connection a request came in on, rendered once per connection.
#[derive(Debug)]
pub struct ClientInfo {
    /// The client's IP address as a header value, appended to `X-Forwarded-For`.
    pub forwarded_for: HeaderValue,
    /// `http` or `https`, sent as `X-Forwarded-Proto`.
    pub proto: HeaderValue,
    /// The listener the connection came in on: its body limits and counters.
    pub listener: Arc<ListenerInfo>,
    /// The connection's request deadline timer, lent to one request at a time.
    pub timer: TimerSlot,
}

impl ClientInfo {
    pub fn new(peer: std::net::SocketAddr, tls: bool, listener: Arc<ListenerInfo>) -> ClientInfo {
        ClientInfo {
            forwarded_for: HeaderValue::try_from(peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            listener,
            timer: TimerSlot::default(),
        }
    }
}

/// A backend and everything weir keeps per backend. A configuration reload builds a new `Upstream`
/// that shares the old one's pool (resized in place, counters kept) and, when its connection
/// settings did not change, its client with the pooled backend connections.
pub struct Upstream {
    pub name: String,
    pool: Arc<Pool>,
    /// The backend's address and protocol live in the client's settings.
    client: Client,
    request_timeout: Duration,
    /// `Retry-After` value for this upstream's 503s, rendered once.
    retry_after: HeaderValue,
    request_buffer: u64,
    oversized_body: OversizedBody,
    response_buffer: u64,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Upstream {
        let pool = Arc::new(Pool::new(
            cfg.max_concurrency,
            cfg.max_queue,
            cfg.queue_timeout,
        ));
        Self::with(cfg, pool, Client::new(client_settings(cfg)))
    }

    /// The upstream `cfg` describes, taking over `self`'s pool (resized to the new limits, with
    /// its requests, queue and counters) and, if the connection settings are unchanged, its
    /// client and idle backend connections. Requests already admitted keep the old settings.
    pub fn reconfigured(&self, cfg: &UpstreamConfig) -> Upstream {
        self.pool
            .resize(cfg.max_concurrency, cfg.max_queue, cfg.queue_timeout);
        let settings = client_settings(cfg);
        let client = if &settings == self.client.settings() {
            self.client.clone()
        } else {
            Client::new(settings)
        };
        Self::with(cfg, Arc::clone(&self.pool), client)
    }

    fn with(cfg: &UpstreamConfig, pool: Arc<Pool>, client: Client) -> Upstream {
        Upstream {
            name: cfg.name.clone(),
            pool,
            client,
            request_timeout: cfg.request_timeout,
            retry_after: HeaderValue::from(cfg.retry_after_secs),
            request_buffer: cfg.request_buffer,
            response_buffer: cfg.response_buffer,
            oversized_body: cfg.oversized_body,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn request_buffer(&self) -> u64 {
        self.request_buffer
    }

    pub fn oversized_body(&self) -> OversizedBody {
        self.oversized_body
    }

    /// Open idle keep-alive connections to the backend (HTTP/1.1).
    pub fn idle_connections(&self) -> usize {
        self.client.idle_connections()
    }

    pub fn retry_after(&self) -> &HeaderValue {
        &self.retry_after
    }

    /// Admits `req` through the pool and forwards it. The returned response's body holds the slot
    /// until the backend has sent its last byte; every error is returned for the caller to answer.
    pub async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: RequestBody,
        client: &ClientInfo,
        hook: Option<&RequestHook>,
        buffers: &BufferPool,
        queue_wait: &mut Option<Duration>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let permit = self.pool.admit().await.map_err(|r| match r {
            Rejected::QueueFull => ProxyError::QueueFull,
            Rejected::QueueTimeout => ProxyError::QueueTimeout,
        })?;
        *queue_wait = Some(permit.queue_wait());
        if let Some(hook) = hook {
            hook(&parts);
        }
        let deadline = Instant::now() + self.request_timeout;
        let mut timer = client.timer.lend(deadline);
        let forwarded = self.rewrite(&mut parts, client)?;
        // Pinned here: the limit holds a pointer to it, not a second copy of its state.
        let send = std::pin::pin!(self.client.send(&mut parts, body, forwarded.fields()));
        let response = timer
            .limit(send)
            .await
            .ok_or(ProxyError::UpstreamTimeout)?
            .map_err(classify)?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = if bufferable(&parts, &body, self.response_buffer) {
            self.buffer_response(body, permit, deadline, &mut timer, buffers)
                .await?
        } else {
            ResponseBody::upstream(body, permit, deadline)
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Reads the backend's response as fast as it sends it, up to `response_buffer` bytes. A
    /// response that ends within that is returned whole and its slot freed at once (the backend
    /// connection goes back to the pool), however slowly the client then reads it; a larger one,
    /// or one that does not fit the buffer budget, streams on after what was read, keeping its
    /// slot. Nothing has reached the client yet, so a deadline or backend failure here can still
    /// be answered 504 / 502.
    async fn buffer_response(
        &self,
        mut body: BackendBody,
        permit: crate::admission::Permit<'_>,
        deadline: Instant,
        timer: &mut LentTimer<'_>,
        buffers: &BufferPool,
    ) -> Result<ResponseBody, ProxyError> {
        let mut frames = Frames::default();
        let mut reservation = Reservation::default();
        let mut size = 0u64;
        loop {
            let frame = if body.is_end_stream() {
                None
            } else {
                let frame = std::future::poll_fn(|cx| body.poll_frame_from(cx, &self.client));
                match timer.limit(frame).await {
                    None => return Err(ProxyError::UpstreamTimeout),
                    Some(frame) => frame,
                }
            };
            let frame = match frame {
                None => {
                    // Complete: the connection went back to the pool as the body read its end,
                    // before the slot is freed, so the request the slot admits next finds it.
                    drop(permit);
                    return Ok(ResponseBody::buffered(frames, reservation));
                }
                Some(Err(e)) => return Err(ProxyError::UpstreamReset(e)),
                Some(Ok(frame)) => frame,
            };
            let len = frame.data_ref().map_or(0, |d| d.len());
            size += len as u64;
            // When the budget is full, the frame already read is still sent, unreserved: the
            // overshoot is at most one frame per response, and the rest streams without buffering.
            let fits = buffers.grow(&mut reservation, len).is_ok();
            frames.push_back(frame);
            if size > self.response_buffer || !fits {
                return Ok(ResponseBody::upstream_after(
                    frames,
                    reservation,
                    body,
                    permit,
                    deadline,
                ));
            }
        }
    }

    /// Turns the client's request head into the backend's, in place: origin URI on the
    /// backend's address, hop-by-hop headers removed, Host preserved. Returns the
    /// `X-Forwarded-*` fields to send it with.
    fn rewrite<'c>(
        &self,
        parts: &mut http::request::Parts,
        client: &'c ClientInfo,
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
        let forwarded = Forwarded::new(headers, scan.forwarded_for, has_host, client);

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
                    .scheme(Scheme::HTTP)
                    .authority(settings.addr.clone())
                    .path_and_query(path)
                    .build()
                    .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
            };
        }
        Ok(forwarded)
    }
}

/// Whether a response may be held back until it is complete: buffering is on, the response is
/// not an event stream or gRPC (delivered as they come), and it does not announce more than the
/// buffer holds (it would only take budget before streaming anyway). A response of unknown length
/// is tried, and streams on once it outgrows the buffer.
fn bufferable(parts: &http::response::Parts, body: &BackendBody, response_buffer: u64) -> bool {
    if response_buffer == 0 {
        return false;
    }
    // The announced length, as the body's framing took it from Content-Length.
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > response_buffer)
    {
        return false;
    }
    // One pass over a response's few fields costs less than a hashed look-up.
    !parts.headers.iter().any(|(name, ct)| {
        let ct = ct.as_bytes();
        name == header::CONTENT_TYPE
            && (ct.starts_with(b"text/event-stream") || ct.starts_with(b"application/grpc"))
    })
}

/// The `X-Forwarded-*` fields a request is forwarded with, in place of any the client sent
/// (written by the backend client, see [`SetFields`]).
struct Forwarded<'a> {
    fields: [(&'static HeaderName, Cow<'a, HeaderValue>); 2],
    host: bool,
}

impl<'a> Forwarded<'a> {
    /// X-Forwarded-For: the client's list, if it sent one (`prior`), then its address.
    /// X-Forwarded-Proto: the scheme the client used. X-Forwarded-Host: the host it asked for,
    /// when it named one (`host`: the request carries a Host field).
    fn new(headers: &HeaderMap, prior: bool, host: bool, client: &'a ClientInfo) -> Forwarded<'a> {
        let xff = if prior {
            Cow::Owned(forwarded_for(headers, &client.forwarded_for))
        } else {
            Cow::Borrowed(&client.forwarded_for)
        };
        Forwarded {
            fields: [
                (&X_FORWARDED_FOR, xff),
                (&X_FORWARDED_PROTO, Cow::Borrowed(&client.proto)),
            ],
            host,
        }
    }

    fn fields(&self) -> SetFields<'_> {
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
struct Scan {
    /// The request carries a Host field.
    host: bool,
    /// The request carries `X-Forwarded-For`.
    forwarded_for: bool,
    /// The request carries a hop-by-hop field, to be removed.
    hop_by_hop: bool,
}

impl Scan {
    fn of(headers: &HeaderMap) -> Scan {
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
fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
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
    let wants_trailers = crate::h1::has_token(headers, header::TE, b"trailers");
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

/// The settings of the pooled client `cfg` describes.
fn client_settings(cfg: &UpstreamConfig) -> ClientSettings {
    ClientSettings {
        addr: cfg.addr.clone(),
        protocol: cfg.protocol,
        connect_timeout: cfg.connect_timeout,
        idle_timeout: cfg.pool_idle_timeout,
        max_idle: cfg.pool_max_idle,
    }
}

/// Sorts a client error into the kind it is counted and answered as.
fn classify(err: ClientError) -> ProxyError {
    if err.is_connect() {
        return ProxyError::UpstreamConnect(Box::new(err));
    }
    // The client's side of the exchange (its request body) is checked first: a stalled or
    // oversized upload is the client's doing, not the backend's.
    let mut protocol = false;
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<RequestBodyError>() {
            return ProxyError::for_body(body)
                .unwrap_or_else(|| ProxyError::ClientBody(Box::new(err)));
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            protocol |= h.is_parse() || h.is_parse_status();
        }
        if let Some(h) = e.downcast_ref::<crate::h1::Error>() {
            protocol |= h.is_protocol();
        }
        source = e.source();
    }
    let err: BoxError = Box::new(err);
    if protocol {
        ProxyError::UpstreamProtocol(err)
    } else {
        ProxyError::UpstreamReset(err)
    }
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
