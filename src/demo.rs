//! `weir demo`: a built-in backend whose capacity halves midway and then comes back, weir in
//! front of it with an adaptive limit (`max_concurrency = "auto"`), and a load driver offering
//! twice the backend's full capacity, all in one process on loopback. It prints a line a second,
//! so a newcomer watches weir find the backend's capacity and follow it down and back up, with
//! the excess shed at once, then a summary.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use weir::config::{Config, ConfigError};
use weir::{Options, REJECT_HEADER, Server, StartError};

/// Requests the built-in backend serves at once at full capacity, and how long each takes: 320
/// requests/s. In the middle third of the demo it has half the workers.
const BACKEND_CONCURRENCY: usize = 8;
const SERVICE_TIME: Duration = Duration::from_millis(25);
/// The load offered, as a multiple of the backend's full capacity.
const OFFERED: f64 = 2.0;
/// weir's queue in front of the backend: short, so the excess is shed at once.
const MAX_QUEUE: usize = 16;
const QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// Requests the driver keeps outstanding at most; beyond it a send is counted as not offered.
const MAX_OUTSTANDING: usize = 4096;

/// Entry point of `weir demo`.
pub fn main(duration: Duration, admin: SocketAddr) -> ExitCode {
    // Only warnings: the demo's own table is the output.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir demo: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(duration, admin)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo backend: {0}")]
    Backend(#[source] std::io::Error),
    #[error("cannot start weir: {0}")]
    Weir(#[from] StartError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("weir's address is not a URI: {0}")]
    Uri(#[source] http::uri::InvalidUri),
}

/// The built-in backend: `slots` workers, more requests waiting inside it, each waiting request
/// slowing the ones in service by 2% (contention), as a real server's thread pool would.
struct BackendStats {
    workers: Semaphore,
    slots: AtomicUsize,
    /// Workers to retire as they finish (capacity lowered while they were busy).
    retire: AtomicUsize,
    waiting: AtomicUsize,
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl BackendStats {
    fn new(slots: usize) -> BackendStats {
        BackendStats {
            workers: Semaphore::new(slots),
            slots: AtomicUsize::new(slots),
            retire: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Changes the number of workers: more at once, fewer as busy ones finish.
    fn set_slots(&self, n: usize) {
        let old = self.slots.swap(n, Ordering::Relaxed);
        if n > old {
            let retiring = self.retire.swap(0, Ordering::Relaxed);
            self.workers.add_permits((n - old).saturating_sub(retiring));
            self.retire
                .fetch_add(retiring.saturating_sub(n - old), Ordering::Relaxed);
        } else {
            let taken = self.workers.forget_permits(old - n);
            self.retire.fetch_add(old - n - taken, Ordering::Relaxed);
        }
    }
}

/// Outcomes of one second of load.
#[derive(Default)]
struct Second {
    offered: u64,
    served: u64,
    /// Deepest queue seen during the second.
    queued: usize,
    /// The backend's workers, and weir's limit, at the end of the second.
    slots: usize,
    limit: usize,
    rejected: BTreeMap<String, u64>,
    errors: u64,
    latencies: Vec<Duration>,
    /// Over the whole demo: weir's limit at the end of each second, by the backend's workers.
    limits: BTreeMap<usize, Vec<usize>>,
}

/// Runs the demo for `duration` (or until Ctrl-C) and prints its table and summary on stdout.
pub async fn run(duration: Duration, admin: SocketAddr) -> Result<(), DemoError> {
    let backend_stats = Arc::new(BackendStats::new(BACKEND_CONCURRENCY));
    let backend = start_backend(Arc::clone(&backend_stats)).await?;
    let capacity = BACKEND_CONCURRENCY as f64 / SERVICE_TIME.as_secs_f64();
    let offered = capacity * OFFERED;

    let server = match Server::bind(config(backend, admin)?, Options::default()).await {
        Ok(s) => s,
        // The admin port is taken (another weir?): take any free one rather than fail the demo.
        Err(StartError::Bind { name, .. }) if name == "admin" => {
            Server::bind(
                config(backend, SocketAddr::from(([127, 0, 0, 1], 0)))?,
                Options::default(),
            )
            .await?
        }
        Err(e) => return Err(e.into()),
    };
    let addr = server.local_addrs()[0].1;
    let admin = server.admin_addr();
    let upstream = server.upstream("backend");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let weir = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    println!(
        "weir demo: a backend that serves {BACKEND_CONCURRENCY} requests at a time, {} ms each \
         (capacity {capacity:.0} requests/s), then half as many from {}s to {}s;",
        SERVICE_TIME.as_millis(),
        duration.as_secs() / 3,
        2 * duration.as_secs() / 3
    );
    println!(
        "weir in front with max_concurrency = \"auto\" (it starts at 2 and finds the limit \
         itself), a queue of {MAX_QUEUE} and queue_timeout {} ms;",
        QUEUE_TIMEOUT.as_millis()
    );
    println!(
        "{offered:.0} requests/s offered for {}s: twice the full capacity, four times the half.",
        duration.as_secs()
    );
    if let Some(a) = admin {
        println!(
            "watch it: http://{a}/ (a page), http://{a}/status, http://{a}/metrics   \
             (Ctrl-C stops the demo early)"
        );
    }
    println!();
    println!(
        "{:>4} {:>8} {:>6} {:>9} {:>9} {:>7} {:>8} {:>12}",
        "sec", "backend", "limit", "offered/s", "served/s", "queued", "shed/s", "p99 served"
    );

    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_OUTSTANDING)
        .build_http();
    let url = http::Uri::try_from(format!("http://{addr}/")).map_err(DemoError::Uri)?;
    let seconds: Arc<Mutex<Vec<Second>>> = Arc::default();
    let outstanding = Arc::new(Semaphore::new(MAX_OUTSTANDING));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_report = 1u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut total = Second::default();
    let mut interrupted = false;

    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => { interrupted = true; break; }
        }
        let t = start.elapsed();
        if t >= duration {
            break;
        }
        // The backend loses half its workers for the middle third, and gets them back.
        let third = t.as_secs_f64() * 3.0 / duration.as_secs_f64();
        let slots = if (1.0..2.0).contains(&third) {
            BACKEND_CONCURRENCY / 2
        } else {
            BACKEND_CONCURRENCY
        };
        if backend_stats.slots.load(Ordering::Relaxed) != slots {
            backend_stats.set_slots(slots);
        }
        let depth = upstream.as_ref().map_or(0, |u| u.pool().queue_depth());
        let limit = upstream.as_ref().map_or(0, |u| u.pool().max_concurrency());
        record(&seconds, t.as_secs() as usize, |s| {
            s.queued = s.queued.max(depth);
            s.slots = slots;
            s.limit = limit;
        });
        // Requests due by now at the offered rate, so the load is exact whatever the tick jitter.
        let due = (offered * t.as_secs_f64()) as u64;
        while sent < due {
            sent += 1;
            let sec = t.as_secs() as usize;
            let Ok(slot) = Arc::clone(&outstanding).try_acquire_owned() else {
                continue; // the driver itself is saturated: not offered
            };
            record(&seconds, sec, |s| s.offered += 1);
            let (client, url, seconds) = (client.clone(), url.clone(), Arc::clone(&seconds));
            tokio::spawn(async move {
                let _slot = slot;
                let sent_at = Instant::now();
                let req = Request::get(url).body(Empty::new());
                let Ok(req) = req else { return };
                let outcome = match client.request(req).await {
                    Ok(resp) => {
                        let reason = resp
                            .headers()
                            .get(&REJECT_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        (ok, reason)
                    }
                    Err(_) => (false, None),
                };
                let latency = sent_at.elapsed();
                record(&seconds, sec, |s| match outcome {
                    (true, _) => {
                        s.served += 1;
                        s.latencies.push(latency);
                    }
                    (false, Some(reason)) => *s.rejected.entry(reason).or_default() += 1,
                    (false, None) => s.errors += 1,
                });
            });
        }
        // Print each second once its requests have had time to be answered.
        let settle = QUEUE_TIMEOUT + SERVICE_TIME * 2;
        while t >= Duration::from_secs(next_report) + settle {
            let s = take(&seconds, next_report as usize - 1);
            print_second(next_report, &s);
            merge(&mut total, s);
            next_report += 1;
        }
    }

    // Let the last requests finish (each is bounded by queue_timeout plus the service time).
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        outstanding.acquire_many(MAX_OUTSTANDING as u32),
    )
    .await;
    let last = seconds.lock().map(|s| s.len()).unwrap_or(0) as u64;
    while next_report <= last {
        let s = take(&seconds, next_report as usize - 1);
        print_second(next_report, &s);
        merge(&mut total, s);
        next_report += 1;
    }
    let _ = stop_tx.send(());
    let _ = weir.await;

    let rejected: u64 = total.rejected.values().sum();
    let shed = 100.0 * rejected as f64 / total.offered.max(1) as f64;
    println!();
    if interrupted {
        println!("stopped by Ctrl-C");
    }
    println!(
        "summary: offered {} requests, served {} ({} errors), shed {} with 503 ({shed:.1}%): {}",
        total.offered,
        total.served,
        total.errors,
        rejected,
        total
            .rejected
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "the backend never had more than {} requests in service (its workers: {BACKEND_CONCURRENCY}, \
         then {}); served latency p99 {}",
        backend_stats.peak.load(Ordering::Relaxed),
        BACKEND_CONCURRENCY / 2,
        p99(&mut total.latencies)
    );
    for (slots, limits) in total.limits.iter_mut().rev() {
        limits.sort_unstable();
        if let Some(median) = limits.get(limits.len() / 2) {
            println!(
                "while the backend had {slots} workers, weir's limit was {median} (median of {} \
                 seconds; from {} to {})",
                limits.len(),
                limits[0],
                limits[limits.len() - 1]
            );
        }
    }
    Ok(())
}

fn config(backend: SocketAddr, admin: SocketAddr) -> Result<Config, ConfigError> {
    Config::from_toml_str(&format!(
        "drain_timeout = \"2s\"\n\
         [admin]\naddr = \"{admin}\"\n\
         [log]\naccess = false\n\
         [[listener]]\nname = \"demo\"\naddr = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"backend\"\naddr = \"{backend}\"\n\
         max_concurrency = \"auto\"\ninitial_concurrency = 2\nmax_queue = {MAX_QUEUE}\n\
         queue_timeout = \"{}ms\"\nrequest_timeout = \"5s\"\n",
        QUEUE_TIMEOUT.as_millis()
    ))
}

/// The built-in backend on a free loopback port (see [`BackendStats`]).
async fn start_backend(stats: Arc<BackendStats>) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Backend)?;
    let addr = listener.local_addr().map_err(DemoError::Backend)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let stats = Arc::clone(&stats);
                    async move {
                        stats.waiting.fetch_add(1, Ordering::Relaxed);
                        let worker = stats.workers.acquire().await;
                        stats.waiting.fetch_sub(1, Ordering::Relaxed);
                        let now = stats.current.fetch_add(1, Ordering::Relaxed) + 1;
                        stats.peak.fetch_max(now, Ordering::Relaxed);
                        let waiting = stats.waiting.load(Ordering::Relaxed) as f64;
                        tokio::time::sleep(SERVICE_TIME.mul_f64(1.0 + 0.02 * waiting)).await;
                        stats.current.fetch_sub(1, Ordering::Relaxed);
                        let retired = stats
                            .retire
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                                r.checked_sub(1)
                            })
                            .is_ok();
                        if let (true, Ok(worker)) = (retired, worker) {
                            worker.forget();
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                    }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn record(seconds: &Mutex<Vec<Second>>, sec: usize, f: impl FnOnce(&mut Second)) {
    let mut s = seconds.lock().unwrap_or_else(|p| p.into_inner());
    if s.len() <= sec {
        s.resize_with(sec + 1, Second::default);
    }
    f(&mut s[sec]);
}

fn take(seconds: &Mutex<Vec<Second>>, sec: usize) -> Second {
    let mut s = seconds.lock().unwrap_or_else(|p| p.into_inner());
    s.get_mut(sec).map(std::mem::take).unwrap_or_default()
}

fn merge(total: &mut Second, s: Second) {
    total.offered += s.offered;
    total.served += s.served;
    total.queued = total.queued.max(s.queued);
    total.errors += s.errors;
    for (r, n) in s.rejected {
        *total.rejected.entry(r).or_default() += n;
    }
    total.latencies.extend(s.latencies);
    if s.offered > 0 {
        total.limits.entry(s.slots).or_default().push(s.limit);
    }
}

fn print_second(sec: u64, s: &Second) {
    let mut latencies = s.latencies.clone();
    let shed: u64 = s.rejected.values().sum();
    println!(
        "{:>4} {:>8} {:>6} {:>9} {:>9} {:>7} {:>8} {:>12}",
        sec,
        format!("{} slots", s.slots),
        s.limit,
        s.offered,
        s.served,
        s.queued,
        shed,
        p99(&mut latencies)
    );
}

fn p99(latencies: &mut [Duration]) -> String {
    if latencies.is_empty() {
        return "-".into();
    }
    latencies.sort_unstable();
    let i = (latencies.len() * 99).div_ceil(100).saturating_sub(1);
    format!("{:.0} ms", latencies[i].as_secs_f64() * 1e3)
}
