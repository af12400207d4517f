//! Shared test harness: a real backend, weir started through the library, and real clients.
//! Readiness comes from binding before serving; waits are on events or on weir's own counters,
//! each bounded by a deadline, never a fixed sleep.
#![allow(dead_code)]

pub mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use weir::Upstream;
use weir::config::Config;
use weir::{Options, Server};

/// Upper bound for any single wait in a test: generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Fails the test if `fut` takes longer than [`PATIENCE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `cond` (a read of weir's or the backend's own counters) until it holds.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// What the backend observed, readable by tests.
pub struct BackendStats {
    /// Requests that reached a handler.
    pub seen: watch::Sender<usize>,
    /// Handlers (or response bodies) dropped before they finished: the backend saw a cancellation.
    pub cancelled: watch::Sender<usize>,
    current: AtomicUsize,
    /// Highest number of requests in handlers at once.
    pub peak: AtomicUsize,
    /// `/gate` requests wait for a permit here.
    pub gate: Semaphore,
    /// Connections accepted, and connections that have ended.
    pub opened: watch::Sender<usize>,
    pub closed: watch::Sender<usize>,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            seen: watch::Sender::new(0),
            cancelled: watch::Sender::new(0),
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            opened: watch::Sender::new(0),
            closed: watch::Sender::new(0),
        }
    }
}

/// Waits until `count` reaches `n`.
async fn at_least(count: &watch::Sender<usize>, n: usize, what: &str) {
    let mut rx = count.subscribe();
    within(
        &format!("backend to see {n} {what}"),
        rx.wait_for(|v| *v >= n),
    )
    .await
    .ok();
}

impl BackendStats {
    pub fn seen(&self) -> usize {
        *self.seen.borrow()
    }
    pub fn cancelled(&self) -> usize {
        *self.cancelled.borrow()
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }
    pub async fn wait_seen(&self, n: usize) {
        at_least(&self.seen, n, "requests").await;
    }
    pub async fn wait_cancelled(&self, n: usize) {
        at_least(&self.cancelled, n, "cancellations").await;
    }
    pub fn opened(&self) -> usize {
        *self.opened.borrow()
    }
    pub async fn wait_closed(&self, n: usize) {
        at_least(&self.closed, n, "connections closed").await;
    }
    /// Lets `n` waiting `/gate` requests answer.
    pub fn open_gate(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

/// Counts a request in the backend; dropping it before `done()` counts a cancellation.
struct InHandler {
    stats: Arc<BackendStats>,
    done: bool,
}

impl InHandler {
    fn enter(stats: &Arc<BackendStats>) -> InHandler {
        let now = stats.current.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak.fetch_max(now, Ordering::SeqCst);
        stats.seen.send_modify(|v| *v += 1);
        InHandler {
            stats: Arc::clone(stats),
            done: false,
        }
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        self.stats.current.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.stats.cancelled.send_modify(|v| *v += 1);
        }
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend (HTTP/1.1 and h2c) on 127.0.0.1:0. Routes:
/// `/sleep/MS`, `/hang` (never answers), `/gate` (answers when the test opens the gate),
/// `/echo` (streams the body back), `/consume` (reads the whole body, then answers its length), `/headers` (lists the request headers), `/hop` (answers with
/// hop-by-hop headers), `/head-then-hang` (sends a head and one chunk, then nothing),
/// `/bytes/N` (N bytes), `/sse` (an event, then another once the gate opens), anything else: "ok".
pub async fn spawn_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(BackendStats::default());
    let s = Arc::clone(&stats);
    let task = tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                serve_backend_connection(stream, &s);
            }
        }
    });
    Backend { addr, stats, task }
}

/// The backend of [`spawn_backend`] on a Unix domain socket (a fresh path under the temporary
/// directory, removed when dropped).
pub struct UnixBackend {
    pub path: std::path::PathBuf,
    pub stats: Arc<BackendStats>,
    task: JoinHandle<()>,
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

pub async fn spawn_unix_backend() -> UnixBackend {
    spawn_unix_backend_at(unix_socket_path()).await
}

/// A fresh socket path under the temporary directory.
pub fn unix_socket_path() -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "weir-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ))
}

pub async fn spawn_unix_backend_at(path: std::path::PathBuf) -> UnixBackend {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let stats = Arc::new(BackendStats::default());
    let s = Arc::clone(&stats);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_backend_connection(stream, &s);
        }
    });
    UnixBackend { path, stats, task }
}

/// Serves one backend connection (HTTP/1.1 or h2c) on a task of its own.
fn serve_backend_connection<S>(stream: S, stats: &Arc<BackendStats>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let s = Arc::clone(stats);
    s.opened.send_modify(|v| *v += 1);
    tokio::spawn(async move {
        let stats = Arc::clone(&s);
        let svc = service_fn(move |req| handle(Arc::clone(&s), req));
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
        stats.closed.send_modify(|v| *v += 1);
    });
}

fn text(body: impl Into<Bytes>) -> Response<TestBody> {
    Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed())
}

async fn handle(
    stats: Arc<BackendStats>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let mut guard = InHandler::enter(&stats);
    let path = req.uri().path().to_string();
    if path == "/sse" {
        // One event at once, the next only when the test opens the gate.
        let stats = Arc::clone(&stats);
        let events = futures_util::stream::once(async {
            Ok(Frame::data(Bytes::from_static(b"data: one\n\n")))
        })
        .chain(futures_util::stream::once(async move {
            let _ = stats.gate.acquire().await.map(|p| p.forget());
            Ok(Frame::data(Bytes::from_static(b"data: two\n\n")))
        }));
        guard.done = true;
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(events)));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(r);
    }
    if path == "/head-then-hang" {
        // The body owns the guard: dropping it before the end counts a cancellation.
        let stream = futures_util::stream::once(async {
            Ok(Frame::data(Bytes::from_static(b"first chunk\n")))
        })
        .chain(futures_util::stream::pending())
        .map(
            move |frame: Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>| {
                let _ = &guard;
                frame
            },
        );
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    let response = if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        text("ok")
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        text(vec![b'x'; n.parse().unwrap_or(0)])
    } else {
        match path.as_str() {
            "/hang" => std::future::pending().await,
            "/gate" => {
                stats.gate.acquire().await.unwrap().forget();
                text("ok")
            }
            "/echo" => Response::new(req.into_body().map_err(Into::into).boxed()),
            "/consume" => match req.into_body().collect().await {
                Ok(body) => text(format!("{}", body.to_bytes().len())),
                Err(_) => return Ok(text("body failed")),
            },
            "/headers" => text(render_headers(req.headers())),
            "/hop" => {
                let mut r = text("ok");
                let h = r.headers_mut();
                h.insert("connection", "x-backend-secret".parse().unwrap());
                h.insert("x-backend-secret", "1".parse().unwrap());
                h.insert("keep-alive", "timeout=5".parse().unwrap());
                h.insert("proxy-authenticate", "Basic".parse().unwrap());
                h.insert("x-backend-public", "1".parse().unwrap());
                r
            }
            _ => text("ok"),
        }
    };
    guard.done = true;
    Ok(response)
}

fn render_headers(headers: &HeaderMap) -> String {
    let mut lines: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("<binary>")))
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

/// A running weir.
pub struct Weir {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), on its own port.
    pub admin: SocketAddr,
    pub proxy: Arc<weir::Proxy>,
    listener: Arc<weir::ListenerInfo>,
    pub reloader: weir::Reloader,
    server_upstreams: Vec<Arc<Upstream>>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl Weir {
    pub fn upstream(&self, name: &str) -> &Upstream {
        self.server_upstreams
            .iter()
            .find(|u| u.name == name)
            .expect("test names an upstream that exists")
    }

    pub fn listener(&self) -> Arc<weir::ListenerInfo> {
        Arc::clone(&self.listener)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Starts the graceful drain (what SIGTERM does).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Drains and waits for weir to finish.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            within("weir to stop", task).await.unwrap();
        }
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The `[[upstream]]` block for the backend at `addr`, named "app", plus `extra` keys.
pub fn upstream_toml(addr: SocketAddr, extra: &str) -> String {
    format!("[[upstream]]\nname = \"app\"\naddr = \"{addr}\"\n{extra}\n")
}

/// Starts weir on 127.0.0.1:0 with `body` (upstreams, routes, top-level keys go first).
pub async fn spawn_weir(body: &str) -> Weir {
    spawn_weir_with(body, Options::default()).await
}

pub async fn spawn_weir_with(body: &str, options: Options) -> Weir {
    spawn_weir_on(body, "", options).await
}

/// Top-level keys a test body may set; they are moved before the first table.
const TOP_LEVEL_KEYS: [&str; 3] = ["drain_timeout", "max_buffered_bytes", "shutdown_delay"];

/// The configuration text for `body` with a listener named "test" on 127.0.0.1:0 and the admin
/// listener on another free port.
pub fn weir_toml(body: &str, listener_keys: &str) -> String {
    let (top, rest): (Vec<&str>, Vec<&str>) = body
        .lines()
        .partition(|l| TOP_LEVEL_KEYS.iter().any(|k| l.starts_with(k)));
    format!(
        "{}\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"test\"\naddr = \"127.0.0.1:0\"\n{listener_keys}\n{}",
        top.join("\n"),
        rest.join("\n")
    )
}

/// Starts weir with `listener_keys` added to its `[[listener]]` block.
pub async fn spawn_weir_on(body: &str, listener_keys: &str, options: Options) -> Weir {
    let text = weir_toml(body, listener_keys);
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let names: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
    let server = Server::bind(config, options).await.unwrap();
    let addr = server.local_addrs()[0].1;
    let admin = server.admin_addr().expect("the admin listener");
    let listener = server.listener("test").expect("the test listener");
    let proxy = server.proxy();
    let reloader = server.reloader();
    let server_upstreams = names.iter().filter_map(|n| server.upstream(n)).collect();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Weir {
        addr,
        admin,
        proxy,
        listener,
        reloader,
        server_upstreams,
        shutdown: Some(tx),
        task: Some(task),
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET `url`; returns the status, headers and whole body.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::get(url).body(Full::default()).unwrap();
    send(client, req).await
}

/// A GET sent in the background; its answer comes with the handle.
pub fn spawn_get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: String,
) -> tokio::task::JoinHandle<(StatusCode, HeaderMap, Bytes)> {
    let client = client.clone();
    tokio::spawn(async move { get(&client, &url).await })
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = within("a response", client.request(req)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = within("the body", body.collect()).await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// One scrape of weir's `/metrics`, parsed by a Prometheus text-format parser.
pub struct Metrics(pub prometheus_parse::Scrape);

impl Metrics {
    /// The value of the sample `name` whose labels include `labels` (counters and gauges).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"));
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a counter or gauge: {other:?}"),
        }
    }

    /// The observation count of histogram `name` for `upstream`, over its other labels (the
    /// queue wait's priority classes).
    pub fn histogram_count(&self, name: &str, upstream: &str) -> f64 {
        let counts: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("upstream") == Some(upstream))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect();
        assert!(
            !counts.is_empty(),
            "no histogram {name}{{upstream={upstream}}}"
        );
        counts.iter().sum()
    }

    /// `weir_requests_rejected_total` of `upstream` for `reason`.
    pub fn rejected(&self, upstream: &str, reason: &str) -> f64 {
        self.value(
            "weir_requests_rejected_total",
            &[("upstream", upstream), ("reason", reason)],
        )
    }

    /// `weir_concurrency_limit` of `upstream`.
    pub fn limit(&self, upstream: &str) -> f64 {
        self.value("weir_concurrency_limit", &[("upstream", upstream)])
    }

    /// `weir_config_reloads_total`: (successes, errors).
    pub fn reloads(&self) -> (f64, f64) {
        let n = |r| self.value("weir_config_reloads_total", &[("result", r)]);
        (n("success"), n("error"))
    }

    /// Every metric family name in the scrape.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.0.docs.keys().cloned().collect()
    }
}

/// Scrapes the admin listener at `admin` and parses the answer; panics on an unparsable line.
pub async fn scrape(admin: SocketAddr) -> Metrics {
    let (status, headers, body) = get(&client(), &format!("http://{admin}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(body.to_vec()).expect("metrics are UTF-8");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Metrics(prometheus_parse::Scrape::parse(lines).expect("the exposition parses"))
}

/// A backend's workers, whose number can change while it runs: a request takes one for
/// `service`, slowed by 2% for every request waiting for a worker (contention, so that
/// throughput falls as requests pile up); when the number drops, busy workers retire as they
/// finish. The adaptive limit's tests and bench/capacity.rs serve with it.
pub struct Workers {
    permits: Semaphore,
    slots: AtomicUsize,
    /// Permits to take out of service as they come back.
    retire: AtomicUsize,
    waiting: AtomicUsize,
    in_service: AtomicUsize,
    /// Most requests in service at once.
    pub peak: AtomicUsize,
    /// Requests served.
    pub served: std::sync::atomic::AtomicU64,
    service: Duration,
}

impl Workers {
    pub fn new(slots: usize, service: Duration) -> Workers {
        Workers {
            permits: Semaphore::new(slots),
            slots: AtomicUsize::new(slots),
            retire: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            in_service: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            served: Default::default(),
            service,
        }
    }

    /// Changes the number of workers: more at once, fewer as busy ones finish.
    pub fn set_slots(&self, n: usize) {
        let old = self.slots.swap(n, Ordering::SeqCst);
        if n > old {
            let retiring = self.retire.swap(0, Ordering::SeqCst);
            self.permits.add_permits((n - old).saturating_sub(retiring));
            self.retire
                .fetch_add(retiring.saturating_sub(n - old), Ordering::SeqCst);
        } else {
            let taken = self.permits.forget_permits(old - n);
            self.retire.fetch_add(old - n - taken, Ordering::SeqCst);
        }
    }

    /// Serves one request: waits for a worker (counted as waiting until it has one, however
    /// the wait ends), then works.
    pub async fn work(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&self.waiting);
        let Ok(worker) = self.permits.acquire().await else {
            return;
        };
        drop(waiting);
        let now = self.in_service.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let queue = self.waiting.load(Ordering::SeqCst) as f64;
        tokio::time::sleep(self.service.mul_f64(1.0 + 0.02 * queue)).await;
        self.in_service.fetch_sub(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
        let retired = self
            .retire
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
            .is_ok();
        if retired {
            worker.forget();
        }
    }
}

/// A GET of `/gate` (answered when the test's backend opens its gate) sent in the background
/// with `headers`: its status and `x-weir-reject` ("-" for the backend's own answers).
pub fn gated(weir: &Weir, headers: &[(&str, &str)]) -> JoinHandle<(StatusCode, String)> {
    let mut req = Request::get(weir.url("/gate"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::default()).unwrap();
    let client = client();
    tokio::spawn(async move {
        let (status, headers, _) = send(&client, req).await;
        let reason = headers
            .get("x-weir-reject")
            .map_or("-", |v| v.to_str().unwrap())
            .to_string();
        (status, reason)
    })
}

/// Waits until upstream "app" has `n` requests waiting for a slot.
pub async fn queued(weir: &Weir, n: usize) {
    until("the queue", || {
        weir.upstream("app").pool().queue_depth() == n
    })
    .await;
}
