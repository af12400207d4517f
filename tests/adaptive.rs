//! The adaptive limit (`max_concurrency = "auto"`) against a real backend whose capacity a test
//! changes while it runs, and whose throughput falls when requests pile up inside it. Bounds are
//! loose enough for a loaded 2-core machine; how fast and how close is the benchmark's business.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

/// A backend of changeable [`Workers`] on a socket of its own; `failing` makes it answer 500 at
/// once.
struct Capacity {
    addr: SocketAddr,
    workers: Workers,
    failing: AtomicBool,
}

impl Capacity {
    async fn start(slots: usize, service: Duration) -> Arc<Capacity> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Arc::new(Capacity {
            addr: listener.local_addr().unwrap(),
            workers: Workers::new(slots, service),
            failing: AtomicBool::new(false),
        });
        let b = Arc::clone(&backend);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let b = Arc::clone(&b);
                        async move { Ok::<_, Infallible>(b.serve().await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        backend
    }

    async fn serve(&self) -> Response<Full<Bytes>> {
        if self.failing.load(Ordering::SeqCst) {
            let mut r = Response::new(Full::new(Bytes::from_static(b"broken\n")));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        }
        self.workers.work().await;
        Response::new(Full::new(Bytes::from_static(b"ok\n")))
    }

    fn served(&self) -> u64 {
        self.workers.served.load(Ordering::SeqCst)
    }
}

/// `demand` clients, each sending one request after another until stopped: the count of answers
/// by status, and of requests that got no answer at all.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    shed: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, demand: usize) -> Load {
        let client = client();
        let load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            shed: Arc::default(),
            other: Arc::default(),
            lost: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..demand)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                let (stop, ok, shed, other, lost) = (
                    Arc::clone(&load.stop),
                    Arc::clone(&load.ok),
                    Arc::clone(&load.shed),
                    Arc::clone(&load.other),
                    Arc::clone(&load.lost),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let req = http::Request::get(&url).body(Full::default()).unwrap();
                        let answered = within("a response under load", client.request(req)).await;
                        let counter = match answered {
                            Ok(r) if r.status() == StatusCode::OK => &ok,
                            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                                // Shed: wait as a client told to retry later would, a little.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                &shed
                            }
                            Ok(_) => &other,
                            Err(_) => &lost,
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    async fn stop(self) -> (u64, u64, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            within("a load task to end", t).await.unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.shed.load(Ordering::SeqCst),
            self.other.load(Ordering::SeqCst),
            self.lost.load(Ordering::SeqCst),
        )
    }
}

/// The tests here load the machine's two cores on purpose: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn auto(addr: SocketAddr, keys: &str) -> String {
    upstream_toml(
        addr,
        &format!(
            "max_concurrency = \"auto\"\nmax_queue = 1000\nqueue_timeout = \"10s\"\n\
             request_timeout = \"10s\"\n{keys}"
        ),
    )
}

fn limit(weir: &Weir) -> usize {
    weir.upstream("app").pool().max_concurrency()
}

async fn until_limit(weir: &Weir, what: &str, cond: impl Fn(usize) -> bool) {
    until(what, || cond(limit(weir))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_from_below_and_from_above() {
    let _serial = SERIAL.lock().await;
    let backend = Capacity::start(8, Duration::from_millis(10)).await;
    let low = spawn_weir(&auto(backend.addr, "initial_concurrency = 2")).await;
    let load = Load::start(low.url("/"), 40);
    until_limit(&low, "the limit to climb from 2 to the backend's 8", |l| {
        l >= 8
    })
    .await;
    load.stop().await;
    low.stop().await;

    let high = spawn_weir(&auto(backend.addr, "initial_concurrency = 64")).await;
    let load = Load::start(high.url("/"), 80);
    until_limit(&high, "the limit to come down from 64 toward 8", |l| {
        l <= 16
    })
    .await;
    let (ok, _, other, lost) = load.stop().await;
    assert!(ok > 0);
    assert_eq!((other, lost), (0, 0), "every request got an answer");
    high.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_halving_and_a_doubling_and_shows_it() {
    let _serial = SERIAL.lock().await;
    let backend = Capacity::start(16, Duration::from_millis(10)).await;
    let weir = spawn_weir(&auto(backend.addr, "initial_concurrency = 16")).await;
    let load = Load::start(weir.url("/"), 60);
    backend.workers.set_slots(8);
    until_limit(&weir, "the limit to follow the backend down to 8", |l| {
        l <= 11
    })
    .await;
    let metrics = scrape(weir.admin).await;
    assert!(metrics.limit("app") <= 11.0, "the gauge moved with it");
    assert!(metrics.value("weir_latency_baseline_seconds", &[("upstream", "app")]) > 0.0);
    assert!(metrics.value("weir_latency_sample_seconds", &[("upstream", "app")]) > 0.0);
    assert!(
        metrics.value(
            "weir_concurrency_limit_changes_total",
            &[("upstream", "app"), ("direction", "down")]
        ) >= 1.0
    );
    backend.workers.set_slots(24);
    until_limit(&weir, "the limit to follow the backend up to 24", |l| {
        l >= 20
    })
    .await;

    let (status, headers, body) = get(&client(), &weir.admin_url("/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let app = &doc["upstreams"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["mode"], "auto");
    assert!(app["limit"].as_u64().unwrap() >= 20);
    assert!(app["baseline_ms"].as_f64().unwrap() >= 9.0);
    // A point a second, recorded by the admin listener since it started.
    let history = app["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{app}");
    assert_eq!(history[0].as_array().unwrap().len(), 6, "{app}");
    let changes = app["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["to"].as_u64() < c["from"].as_u64())
    );
    assert!(
        changes
            .iter()
            .any(|c| c["to"].as_u64() > c["from"].as_u64())
    );

    let (status, headers, page) = get(&client(), &weir.admin_url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("fetch(\"/status\"") && !page.contains("<script src"));
    let (_, _, other, lost) = load.stop().await;
    assert_eq!((other, lost), (0, 0), "every request got an answer");
    weir.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheds_nothing_below_capacity() {
    let _serial = SERIAL.lock().await;
    let backend = Capacity::start(16, Duration::from_millis(20)).await;
    let weir = spawn_weir(&auto(backend.addr, "initial_concurrency = 16")).await;
    // Half the backend's workers busy, all the time: nothing has to wait.
    let load = Load::start(weir.url("/"), 8);
    let target = backend.served() + 400;
    until("400 answers", || backend.served() >= target).await;
    let (ok, shed, other, lost) = load.stop().await;
    assert!(ok >= 400);
    assert_eq!((shed, other, lost), (0, 0, 0));
    assert!(
        limit(&weir) >= 16,
        "the limit fell at half load: {}",
        limit(&weir)
    );
    weir.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_lowers_the_limit_and_a_healed_one_raises_it() {
    let _serial = SERIAL.lock().await;
    let backend = Capacity::start(64, Duration::from_millis(10)).await;
    let weir = spawn_weir(&auto(
        backend.addr,
        "initial_concurrency = 32\nmin_concurrency = 2",
    ))
    .await;
    backend.failing.store(true, Ordering::SeqCst);
    let load = Load::start(weir.url("/"), 40);
    until_limit(
        &weir,
        "fast 500s to bring the limit down to the floor",
        |l| l == 2,
    )
    .await;
    backend.failing.store(false, Ordering::SeqCst);
    // How far it climbs depends on the machine (two loaded cores bound latency too).
    until_limit(&weir, "the limit to climb again once healthy", |l| l >= 8).await;
    let (ok, _, other, lost) = load.stop().await;
    assert!(ok > 0 && other > 0);
    assert_eq!(lost, 0);
    weir.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_between_auto_and_fixed_drops_nothing() {
    let _serial = SERIAL.lock().await;
    let backend = Capacity::start(8, Duration::from_millis(10)).await;
    let weir = spawn_weir(&auto(backend.addr, "initial_concurrency = 4")).await;
    let load = Load::start(weir.url("/"), 24);
    until_limit(&weir, "the adaptive limit to move", |l| l != 4).await;

    let fixed = weir_toml(
        &upstream_toml(
            backend.addr,
            "max_concurrency = 3\nmax_queue = 1000\nqueue_timeout = \"10s\"",
        ),
        "",
    );
    weir.reloader
        .apply(weir::Config::from_toml_str(&fixed).unwrap())
        .unwrap();
    assert_eq!(limit(&weir), 3);
    // The controller stops: the fixed limit holds while the load goes on.
    let served = backend.served();
    until("100 answers at the fixed limit", || {
        backend.served() >= served + 100
    })
    .await;
    assert_eq!(limit(&weir), 3);
    let doc: serde_json::Value =
        serde_json::from_slice(&get(&client(), &weir.admin_url("/status")).await.2).unwrap();
    assert_eq!(doc["upstreams"][0]["mode"], "fixed");

    let back = weir_toml(&auto(backend.addr, "initial_concurrency = 5"), "");
    weir.reloader
        .apply(weir::Config::from_toml_str(&back).unwrap())
        .unwrap();
    assert_eq!(limit(&weir), 5, "back to auto, from initial_concurrency");
    until_limit(&weir, "the controller to run again", |l| l != 5).await;
    let (ok, shed, other, lost) = load.stop().await;
    assert!(ok > 0);
    assert_eq!(
        (shed, other, lost),
        (0, 0, 0),
        "nothing dropped across the reloads"
    );
    weir.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_weirs_share_one_backend_fairly() {
    let _serial = SERIAL.lock().await;
    let backend = Capacity::start(16, Duration::from_millis(10)).await;
    let a = spawn_weir(&auto(backend.addr, "initial_concurrency = 2")).await;
    let b = spawn_weir(&auto(backend.addr, "initial_concurrency = 30")).await;
    let load_a = Load::start(a.url("/"), 48);
    let load_b = Load::start(b.url("/"), 48);
    // Time to settle, counted in the backend's own answers (about six seconds' worth).
    let settle = backend.served() + 6 * 1600;
    until("the two weirs to settle", || backend.served() >= settle).await;
    let (ok_a0, ok_b0) = (
        load_a.ok.load(Ordering::SeqCst),
        load_b.ok.load(Ordering::SeqCst),
    );
    let measure = backend.served() + 4 * 1600;
    until("four seconds of the backend's answers", || {
        backend.served() >= measure
    })
    .await;
    let x = (load_a.ok.load(Ordering::SeqCst) - ok_a0) as f64;
    let y = (load_b.ok.load(Ordering::SeqCst) - ok_b0) as f64;
    let jain = (x + y) * (x + y) / (2.0 * (x * x + y * y));
    assert!(jain >= 0.8, "Jain's index {jain:.3}: {x} vs {y} answers");
    load_a.stop().await;
    load_b.stop().await;
    a.stop().await;
    b.stop().await;
}
