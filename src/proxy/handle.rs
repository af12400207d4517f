//! The request handler: routes a request to its upstream, forwards it, and turns every outcome,
//! a panic included, into an answer. Nothing here is spawned: the whole exchange lives in the
//! future hyper polls, so a client that disconnects cancels it by dropping it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::{Request, Response, Version, header};
use hyper::body::Incoming;

use super::record::Record;
use super::respond::Answering;
use super::route::{Table, settle_host};
use crate::config::{Config, OversizedBody, defaults};
use crate::error::ProxyError;
use crate::http::{BufferPool, Buffered, Downstream, RequestBody, client_budget, is_grpc};
use crate::telemetry::SizeLimit;
use crate::upstream::{Admission, RequestHook, ResponseBody, Upstream};

/// Everything the request path needs, shared by every connection.
pub struct Proxy {
    /// Upstreams and routes; a configuration reload swaps in a new table, and each request uses
    /// the table that was current when it arrived.
    pub(super) table: ArcSwap<Table>,
    /// The budget for request bodies read before admission (`max_buffered_bytes`).
    buffers: BufferPool,
    hook: Option<RequestHook>,
    /// Write one access-log line per request.
    access_log: bool,
    /// Count each request's status class and latencies (on unless turned off to measure them).
    request_metrics: bool,
}

impl Proxy {
    pub fn new(config: &Config, hook: Option<RequestHook>) -> Proxy {
        Proxy {
            table: ArcSwap::from_pointee(Table::new(
                config
                    .upstreams
                    .iter()
                    .map(|u| Arc::new(Upstream::new(u)))
                    .collect(),
                config,
            )),
            buffers: BufferPool::new(config.max_buffered_bytes),
            hook,
            access_log: config.log.access,
            request_metrics: config.request_metrics,
        }
    }

    /// Applies a reloaded configuration's upstreams, routes and buffer cap to new requests. An
    /// upstream that keeps its name keeps its pool (resized in place: admitted and queued requests
    /// are not disturbed), its counters and, when its connection settings are unchanged, its
    /// pooled backend connections. A removed upstream finishes the requests it has.
    pub fn reconfigure(&self, config: &Config) {
        let old = self.table.load();
        let upstreams = config
            .upstreams
            .iter()
            .map(|cfg| {
                Arc::new(match old.upstreams.iter().find(|u| u.name == cfg.name) {
                    Some(u) => u.reconfigured(cfg),
                    None => Upstream::new(cfg),
                })
            })
            .collect();
        self.buffers.set_capacity(config.max_buffered_bytes);
        self.table.store(Arc::new(Table::new(upstreams, config)));
    }

    /// The current upstreams.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.table.load().upstreams.clone()
    }

    pub fn buffers(&self) -> &BufferPool {
        &self.buffers
    }

    /// Answers one request. Never fails: errors and panics become responses here. The returned
    /// [`Record`] goes with the response body and is written out when the answer ends.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        downstream: &Downstream,
    ) -> (Response<ResponseBody>, Record) {
        let mut record = Record::start(
            req.method(),
            req.uri(),
            self.access_log,
            self.request_metrics,
        );
        let started = record.started();
        let mut req = req;
        // gRPC runs over HTTP/2 only: an HTTP/1.1 request costs no look-up.
        let grpc = req.version() == Version::HTTP_2 && is_grpc(req.headers());
        if let Err(e) = settle_host(&mut req) {
            downstream.listener.counters.bad_request();
            return self.reject(e, record, grpc);
        }
        // The table's guard is dropped at once: a guard held across the exchange would take
        // one of the thread's few fast slots for as long (see arc-swap's `Guard`).
        let routed = self.table.load().route(&req).map(|(u, c)| (u.clone(), c));
        let Some((upstream, class)) = routed else {
            return self.reject(ProxyError::NoRoute, record, grpc);
        };
        // A route's class is final; without one, the upstream's priority header may name one.
        let class = class
            .or_else(|| upstream.header_priority(req.headers()))
            .unwrap_or_default();
        record.set_class(class);
        // A budget too far off to count from now is no deadline.
        let deadline = client_budget(req.headers(), grpc, upstream.deadline_header())
            .and_then(|budget| started.checked_add(budget));
        let tenant = upstream.tenant(req.headers());
        // From here, dropping `record` before an answer exists counts `client_gone`.
        let (upstream, queue_wait) = record.route_to(upstream);
        let (parts, body) = req.into_parts();
        // Pinned in a statement of its own: awaited as a temporary of a longer statement, the
        // future would take room in this one's state twice, as the temporary and as the
        // awaited value. (The block drops it, and its borrows of `record`, once it is done.)
        let outcome = {
            let guarded = std::pin::pin!(
                AssertUnwindSafe(async {
                    let body = RequestBody::new(body, &downstream.listener, started);
                    let body = self
                        .prepare_body(upstream, &parts, body, downstream)
                        .await?;
                    upstream
                        .forward(
                            parts,
                            body,
                            downstream,
                            self.hook.as_ref(),
                            &self.buffers,
                            Admission {
                                class,
                                deadline,
                                grpc,
                                tenant,
                                queue_wait,
                            },
                        )
                        .await
                })
                .catch_unwind()
            );
            guarded.await
        };
        let err = match outcome {
            Ok(Ok(response)) => {
                record.answered(response.status(), None);
                return (response, record);
            }
            Ok(Err(err)) => {
                tracing::debug!(upstream = record.upstream_name(), error = %err, "request failed");
                err
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("non-string panic payload");
                let upstream = record.upstream_name();
                tracing::error!(upstream, panic = what, "request handler panicked");
                ProxyError::Internal
            }
        };
        self.reject(err, record, grpc)
    }

    /// Answers `err` (counted on the request's upstream, when it has one, see `respond`) with
    /// the status `[reject_status]` sets for its reason, and notes it in `record`.
    fn reject(
        &self,
        err: ProxyError,
        mut record: Record,
        grpc: bool,
    ) -> (Response<ResponseBody>, Record) {
        let reason = err.reason();
        let upstream = record.upstream();
        let how = Answering {
            grpc,
            status: self.table.load().reject_status[reason as usize],
            retry_after: upstream.map_or(defaults::RETRY_AFTER, Upstream::retry_after),
        };
        let response = err.into_response(upstream.map(|u| u.pool().counters()), how);
        record.answered(response.status(), Some(reason));
        (response, record)
    }

    /// Applies the body limits that can be decided before admission, and reads a body that fits
    /// the upstream's `request_buffer` into memory, so that a slow upload costs a connection and
    /// buffer memory but never a slot or a queue place.
    async fn prepare_body(
        &self,
        upstream: &Upstream,
        parts: &http::request::Parts,
        mut body: RequestBody,
        downstream: &Downstream,
    ) -> Result<RequestBody, ProxyError> {
        if !body.is_streaming() {
            return Ok(body);
        }
        let announced = announced_length(&parts.headers);
        if let (Some(limit), Some(n)) = (downstream.listener.max_body_bytes, announced) {
            if n > limit {
                downstream.listener.counters.limit(SizeLimit::BodyBytes);
                return Err(ProxyError::BodyTooLarge);
            }
        }
        let max = upstream.request_buffer();
        if max == 0 {
            return Ok(body);
        }
        let oversized = match announced {
            Some(n) if n > max => true,
            // Boxed: most requests have no body, and this future would enlarge all of them.
            _ => Box::pin(body.buffer(max, announced, &self.buffers)).await? == Buffered::Exceeded,
        };
        if oversized && upstream.oversized_body() == OversizedBody::Reject {
            return Err(ProxyError::BodyTooLarge);
        }
        Ok(body)
    }
}

/// The body length the client announced in Content-Length, if it did.
fn announced_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
