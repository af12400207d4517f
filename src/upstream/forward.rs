//! One upstream: its admission pool, its pooled keep-alive client, and the forwarding of a request
//! to it under a deadline: admitted, rewritten (`rewrite`), sent, and its answer read ahead or
//! streamed.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body as _;
use tokio::time::Instant;

use super::client::{BackendBody, Client, ClientError, ClientSettings};
use super::http1;
use super::response_body::ResponseBody;
use super::tunnel::{TunnelPermit, Upgraded};
use crate::admission::{Permit, Pool, Rejected, TenantId, tenant_of};
use crate::config::{Limit, OversizedBody, Priority, Protocol, UpstreamConfig};
use crate::error::{BoxError, ProxyError, RequestBodyError};
use crate::http::{
    BufferPool, Downstream, Frames, GRPC_TIMEOUT, RequestBody, Reservation, grpc_timeout,
    has_token, strip_hop_by_hop,
};
use crate::sync::LentTimer;

/// What the proxy learned of a request before it is forwarded: the class it is admitted under,
/// the client's deadline, whether it is gRPC, and where its queue wait is noted.
pub struct Admission<'a> {
    pub class: Priority,
    /// The client's deadline (`grpc-timeout`, or the upstream's `deadline_header`), from the
    /// request's arrival; the earlier of it and `request_timeout` bounds the exchange.
    pub deadline: Option<Instant>,
    pub grpc: bool,
    /// Its tenant's bucket (0: none).
    pub tenant: TenantId,
    pub queue_wait: &'a mut Option<Duration>,
}

/// A deadline forwarded to the backend is this much shorter than what is left, for the trip
/// back: the backend gives up a little before the client does.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// Called after a request is admitted and before it is forwarded. Tests use it to inject faults
/// (a panic) at the point where a slot is held; production runs have none.
pub type RequestHook = Arc<dyn Fn(&http::request::Parts) + Send + Sync>;

/// A backend and everything weir keeps per backend. A configuration reload builds a new `Upstream`
/// that shares the old one's pool (resized in place, counters kept) and, when its connection
/// settings did not change, its client with the pooled backend connections.
pub struct Upstream {
    pub name: String,
    pool: Arc<Pool>,
    /// The backend's address and protocol live in the client's settings.
    pub(super) client: Client,
    request_timeout: Duration,
    /// When to come back after a 503, while the queue's pace is unknown (`retry_after`).
    retry_after: Duration,
    request_buffer: u64,
    oversized_body: OversizedBody,
    response_buffer: u64,
    /// The limit is adaptive: each exchange's latency or failure is recorded for its controller.
    adaptive: bool,
    max_upgraded: usize,
    tunnel_idle_timeout: Duration,
    priority_header: Option<http::HeaderName>,
    deadline_header: Option<http::HeaderName>,
    tenant_header: Option<http::HeaderName>,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Upstream {
        let pool = Pool::with_limit(cfg.limit, cfg.max_queue, cfg.queue_timeout, &cfg.name);
        Self::with(cfg, pool, Client::new(client_settings(cfg)))
    }

    /// The upstream `cfg` describes, taking over `self`'s pool (resized to the new limits, with
    /// its requests, queue and counters) and, if the connection settings are unchanged and use no
    /// TLS, its client and idle backend connections. Requests already admitted keep the old settings.
    pub fn reconfigured(&self, cfg: &UpstreamConfig) -> Upstream {
        self.pool
            .configure(cfg.limit, cfg.max_queue, cfg.queue_timeout, &cfg.name);
        let settings = client_settings(cfg);
        // With TLS, the same file names may hold new certificates (a rotation is what a reload
        // is for): a new client reads them, and its connections use them.
        let client = if &settings == self.client.settings() && settings.tls.is_none() {
            self.client.clone()
        } else {
            Client::new(settings)
        };
        Self::with(cfg, Arc::clone(&self.pool), client)
    }

    fn with(cfg: &UpstreamConfig, pool: Arc<Pool>, client: Client) -> Upstream {
        pool.set_tenant_share(cfg.tenant_max_share);
        pool.set_codel(cfg.codel);
        pool.set_priority_reserve(cfg.priority_reserve);
        Upstream {
            name: cfg.name.clone(),
            pool,
            client,
            request_timeout: cfg.request_timeout,
            retry_after: Duration::from_secs(cfg.retry_after_secs),
            request_buffer: cfg.request_buffer,
            response_buffer: cfg.response_buffer,
            oversized_body: cfg.oversized_body,
            adaptive: matches!(cfg.limit, Limit::Auto(_)),
            max_upgraded: cfg.max_upgraded,
            tunnel_idle_timeout: cfg.tunnel_idle_timeout,
            priority_header: cfg.priority_header.clone(),
            deadline_header: cfg.deadline_header.clone(),
            tenant_header: cfg.tenant_header.clone(),
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

    /// The class `headers` name in the upstream's `priority_header`, when it has one and the
    /// value is a class name.
    pub fn header_priority(&self, headers: &http::HeaderMap) -> Option<Priority> {
        let name = self.priority_header.as_ref()?;
        Priority::from_bytes(headers.get(name)?.as_bytes())
    }

    /// Tunnels allowed open at once (`max_upgraded`).
    pub fn max_upgraded(&self) -> usize {
        self.max_upgraded
    }

    /// When a client turned away should come back: the time the queue as it is now takes to
    /// drain at the pace it has been draining, bounded to 10 ms .. 60 s; `retry_after` while
    /// that pace is unknown (no queue has drained yet, or none waits now).
    pub fn retry_after(&self) -> Duration {
        self.pool.drain_time().map_or(self.retry_after, |d| {
            d.clamp(Duration::from_millis(10), Duration::from_secs(60))
        })
    }

    /// The tenant `headers` name in the upstream's `tenant_header` (0 without one).
    pub fn tenant(&self, headers: &http::HeaderMap) -> TenantId {
        let Some(name) = self.tenant_header.as_ref() else {
            return 0;
        };
        headers.get(name).map_or(0, |v| tenant_of(v.as_bytes()))
    }

    /// The header carrying a plain HTTP client's deadline, if configured.
    pub fn deadline_header(&self) -> Option<&http::HeaderName> {
        self.deadline_header.as_ref()
    }

    /// Admits `req` through the pool and forwards it. The returned response's body holds the slot
    /// until the backend has sent its last byte; every error is returned for the caller to answer.
    pub async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: RequestBody,
        downstream: &Downstream,
        hook: Option<&RequestHook>,
        buffers: &BufferPool,
        admission: Admission<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let Admission {
            class,
            deadline: client_deadline,
            grpc,
            tenant,
            queue_wait,
        } = admission;
        // An upgrade takes its place among the tunnels first: beyond `max_upgraded`, it is
        // refused before it waits for a slot.
        let upgrade = match self.upgrade_asked(&parts) {
            None => None,
            Some(protocol) => Some((
                protocol,
                TunnelPermit::reserve(&self.pool, self.max_upgraded)
                    .ok_or(ProxyError::UpgradeLimit)?,
            )),
        };
        let permit = self
            .pool
            .admit(class, client_deadline, tenant)
            .await
            .map_err(|r| match r {
                Rejected::QueueFull => ProxyError::QueueFull,
                Rejected::QueueTimeout => ProxyError::QueueTimeout,
                Rejected::Evicted => ProxyError::Evicted,
                Rejected::Unmeetable => ProxyError::DeadlineUnmeetable,
                Rejected::Deadline => ProxyError::ClientDeadline,
                Rejected::TenantShare => ProxyError::TenantShare,
                Rejected::Codel => ProxyError::Codel,
            })?;
        *queue_wait = Some(permit.queue_wait());
        if let Some(hook) = hook {
            hook(&parts);
        }
        let sent = Instant::now();
        let mut deadline = sent + self.request_timeout;
        // The client's own deadline, when it comes first, bounds the exchange; the backend is
        // told what is left.
        let client_bound = client_deadline.filter(|d| *d < deadline);
        if let Some(d) = client_bound {
            deadline = d;
        }
        let mut timer = downstream.timer.lend(deadline);
        let forwarded = self.rewrite(&mut parts, downstream)?;
        if let Some((protocol, _)) = &upgrade {
            // Removed with the other hop-by-hop fields; this hop asks for the switch again.
            let headers = &mut parts.headers;
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        if client_deadline.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            let left = left.saturating_sub(DEADLINE_MARGIN);
            if left.is_zero() {
                return Err(ProxyError::ClientDeadline);
            }
            self.propagate(&mut parts.headers, left, grpc);
        }
        let fields = forwarded.fields();
        // Pinned here: the limit holds a pointer to it, not a second copy of its state.
        let send = std::pin::pin!(
            self.client
                .send(&mut parts, body, fields, upgrade.is_some())
        );
        let response = match timer.limit(send).await {
            // The client's deadline is not the backend's failure.
            None if client_bound.is_some() => Err(ProxyError::ClientDeadline),
            None => Err(ProxyError::UpstreamTimeout),
            Some(sent) => sent.map_err(classify),
        };
        if client_deadline.is_some() && response.is_ok() {
            self.pool.pace().served(sent.elapsed());
        }
        if self.adaptive {
            self.sample(sent, &response);
        }
        let response = response?;
        let (mut parts, body) = response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The handshake is done, and with it the request's work: the slot is freed now.
            drop(permit);
            return self.upgraded(parts, body, upgrade.map(|(_, t)| t));
        }
        strip_hop_by_hop(&mut parts.headers);
        let body = if bufferable(&parts, &body, self.response_buffer) {
            self.buffer_response(body, permit, deadline, &mut timer, buffers)
                .await?
        } else {
            ResponseBody::upstream(body, permit, deadline)
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` and `Upgrade`),
    /// when weir forwards the switch: to an HTTP/1.1 backend, and not to HTTP/2 (`h2c`), whose
    /// requests would then all reach the backend past admission. A request weir does not
    /// upgrade is forwarded without the fields, as any other hop-by-hop ones.
    fn upgrade_asked(&self, parts: &http::request::Parts) -> Option<HeaderValue> {
        // hyper marks an HTTP/1.1 request that carries `Upgrade`: for every other request, this
        // finds an empty extension map.
        parts.extensions.get::<hyper::upgrade::OnUpgrade>()?;
        let headers = &parts.headers;
        let wanted = parts.version == Version::HTTP_11
            && self.client.settings().protocol == Protocol::Http1
            && has_token(headers, header::CONNECTION, b"upgrade")
            && !has_token(headers, header::UPGRADE, b"h2c");
        wanted
            .then(|| headers.get(header::UPGRADE).cloned())
            .flatten()
    }

    /// The answer to a request the backend switched to another protocol: the 101, its body the
    /// backend's end of the tunnel, which the client's connection runs once the 101 is written.
    fn upgraded(
        &self,
        mut parts: http::response::Parts,
        body: BackendBody,
        permit: Option<TunnelPermit>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        // The codec accepts a 101 only for a request that asked for it.
        let (Some(permit), Some(protocol), Some((stream, ahead))) =
            (permit, protocol, body.into_upgraded())
        else {
            let why = "a 101 without Upgrade, or before the request was sent whole";
            return Err(ProxyError::UpstreamProtocol(why.into()));
        };
        strip_hop_by_hop(&mut parts.headers);
        let headers = &mut parts.headers;
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        let tunnel = Upgraded::new(stream, ahead, permit, self.tunnel_idle_timeout);
        Ok(Response::from_parts(parts, ResponseBody::upgraded(tunnel)))
    }

    /// Tells the backend the time `left`: `grpc-timeout` on a gRPC request, and the deadline
    /// header in milliseconds when the upstream has one.
    fn propagate(&self, headers: &mut http::HeaderMap, left: Duration, grpc: bool) {
        if grpc {
            headers.insert(GRPC_TIMEOUT.clone(), grpc_timeout(left));
        }
        if let Some(name) = &self.deadline_header {
            let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            headers.insert(name.clone(), HeaderValue::from(ms));
        }
    }

    /// Records how the exchange went for the adaptive limit: the time to the response head, or a
    /// failure (a 5xx, or an error of the backend's or of the deadline's; not the client's).
    fn sample(&self, sent: Instant, outcome: &Result<Response<BackendBody>, ProxyError>) {
        let samples = self.pool.adaptive().samples();
        match outcome {
            Ok(r) if r.status().is_server_error() => samples.failed(),
            Ok(_) => samples.answered(sent.elapsed()),
            Err(e) if e.upstream_error_kind().is_some() => samples.failed(),
            Err(_) => {}
        }
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
        permit: Permit<'_>,
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

/// The settings of the pooled client `cfg` describes.
fn client_settings(cfg: &UpstreamConfig) -> ClientSettings {
    ClientSettings {
        addr: cfg.addr.clone(),
        protocol: cfg.protocol,
        connect_timeout: cfg.connect_timeout,
        idle_timeout: cfg.pool_idle_timeout,
        max_idle: cfg.pool_max_idle,
        tls: cfg.tls.clone(),
    }
}

/// Sorts a client error into the kind it is counted and answered as.
fn classify(err: ClientError) -> ProxyError {
    if matches!(err, ClientError::Tls { .. }) {
        return ProxyError::UpstreamTls(Box::new(err));
    }
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
        if let Some(h) = e.downcast_ref::<http1::Error>() {
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
