//! The admin listener, apart from traffic: `/metrics` (Prometheus text), `/healthz` (the process
//! runs), `/readyz` (every listener is bound and shutdown has not begun), `/status` (JSON per
//! upstream) and `/`, a page that draws `/status` over the last minutes with no external script
//! or font, so it works offline inside a pod. It stays up through the drain, so the drain can be
//! watched, and stops with the process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::metrics;
use super::status::{self, History};
use crate::proxy::Proxy;

/// The status page: it polls `/status` and draws it (inline SVG).
const PAGE: &str = include_str!("page.html");

/// Connections the admin listener serves at once: scrapers and probes, not traffic.
const MAX_CONNECTIONS: usize = 64;
/// A scraper or probe must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// An admin connection is closed after this long, whatever it is doing.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Whether weir should receive traffic; `/readyz` answers from it.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The bound admin listener.
pub struct Admin {
    listener: TcpListener,
    state: Arc<State>,
}

/// What the admin listener answers from.
struct State {
    registry: Registry,
    health: Arc<Health>,
    proxy: Arc<Proxy>,
    /// The last minutes of each upstream's figures, for the status page.
    history: History,
}

impl Admin {
    pub fn new(
        listener: TcpListener,
        registry: Registry,
        health: Arc<Health>,
        proxy: Arc<Proxy>,
    ) -> Admin {
        Admin {
            listener,
            state: Arc::new(State {
                registry,
                health,
                proxy,
                history: History::default(),
            }),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled; open admin connections end with it.
    pub async fn serve(self, stop: CancellationToken) {
        let state = self.state;
        let recorder = {
            let (state, stop) = (Arc::clone(&state), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => state.history.record(&state.proxy),
                    }
                }
            })
        };
        let _recorder = AbortOnDrop(recorder);
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        // EMFILE and the like: do not spin while descriptors are short.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                continue; // dropped: closed at once
            };
            let state = Arc::clone(&state);
            let stop = stop.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(answer(&req, &state)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                }
            });
        }
    }
}

fn answer(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let (registry, health) = (&state.registry, &state.health);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics::render(registry))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/status" => typed(
            status::render(&state.proxy, &state.history),
            "application/json",
        ),
        "/" => typed(PAGE.as_bytes().to_vec(), "text/html; charset=utf-8"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Aborts a task when dropped: the history recorder ends with the admin listener.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn typed(body: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
