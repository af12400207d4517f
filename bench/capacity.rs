//! The adaptive limit's benchmark tools (bench/adaptive.sh runs them; BENCHMARKS.md has the
//! figures). Two modes:
//!
//! `cargo bench --bench capacity -- backend ADDR SLOTS [SERVICE_MS]`: a backend of SLOTS workers,
//! SERVICE_MS (default 20) each; requests beyond them wait inside it, and every waiting request
//! slows those in service by 2% (contention), so its throughput falls as requests pile up.
//! `GET /_slots/N` changes the number of workers while it runs (fewer: as busy ones finish);
//! `GET /_served` answers how many requests it has served.
//!
//! `cargo bench --bench capacity -- measure BACKEND SLOTS SECONDS`: sets the backend's workers
//! to SLOTS and keeps exactly SLOTS requests outstanding on it for SECONDS (a closed loop, after
//! a second of warm-up): the requests a second it really serves with that many workers on this
//! machine (timers and scheduling make a 20 ms service take a little longer). Prints the rate.
//!
//! `cargo bench --bench capacity -- load URL RATE SECONDS [key=value...]`: an open-loop client
//! sending RATE requests a second for SECONDS, each given up after `timeout_ms` (default 1000).
//! Keys: `steps=16,8,24` (the backend's workers in equal phases, set through `backend=ADDR`),
//! `admin=ADDR` (a weir admin listener whose limit is sampled every 250 ms), `capacities=R,R,R`
//! (each phase's measured capacity in requests a second; default: workers / `service_ms`, itself
//! 20 by default), `label`. Prints a line per second on stderr and
//! one JSON document on stdout: per 250 ms, requests answered 2xx in time (goodput), shed (503),
//! given up, failed, and the limit; per phase, the steady goodput as a share of the backend's
//! capacity and the time after the step to reach 85% of it; the 2xx p99.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[path = "../tests/support/mod.rs"]
mod support;
use support::Workers;

/// Goodput and the limit are recorded in buckets of this length.
const BUCKET: Duration = Duration::from_millis(250);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("backend") => runtime.block_on(backend(&args[1..])),
        Some("load") => runtime.block_on(load(&args[1..])),
        Some("measure") => runtime.block_on(measure(&args[1..])),
        _ => {
            eprintln!(
                "usage: capacity backend ADDR SLOTS [SERVICE_MS] | capacity load URL RATE SECONDS \
                 [key=value...] | capacity measure BACKEND SLOTS SECONDS"
            );
            std::process::exit(2);
        }
    }
}

/// The stepping backend: [`Workers`] behind `/`, with its controls.
struct Backend(Workers);

impl Backend {
    async fn serve(&self, path: &str) -> Response<Full<Bytes>> {
        if let Some(n) = path.strip_prefix("/_slots/") {
            if let Ok(n) = n.parse() {
                self.0.set_slots(n);
            }
            return Response::new(Full::new(Bytes::from(format!("{n}\n"))));
        }
        if path == "/_served" {
            let n = self.0.served.load(Ordering::SeqCst);
            return Response::new(Full::new(Bytes::from(format!("{n}\n"))));
        }
        self.0.work().await;
        Response::new(Full::new(Bytes::from_static(b"ok\n")))
    }
}

async fn backend(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let slots: usize = args[1].parse().expect("SLOTS");
    let service_ms: u64 = args.get(2).map_or(20, |s| s.parse().expect("SERVICE_MS"));
    let workers = Arc::new(Backend(Workers::new(
        slots,
        Duration::from_millis(service_ms),
    )));
    let listener = TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let workers = Arc::clone(&workers);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let workers = Arc::clone(&workers);
                async move { Ok::<_, Infallible>(workers.serve(req.uri().path()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Counts of one bucket.
#[derive(Default, Clone, Copy)]
struct Bucket {
    offered: u64,
    good: u64,
    shed: u64,
    gave_up: u64,
    failed: u64,
    limit: Option<usize>,
}

async fn load(args: &[String]) {
    let url: http::Uri = args[0].parse().expect("URL");
    let rate: f64 = args[1].parse().expect("RATE");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let keys: BTreeMap<&str, &str> = args[3..].iter().filter_map(|a| a.split_once('=')).collect();
    let timeout =
        Duration::from_millis(keys.get("timeout_ms").map_or(1000, |v| v.parse().unwrap()));
    let service_ms: f64 = keys.get("service_ms").map_or(20.0, |v| v.parse().unwrap());
    let capacities: Vec<f64> = keys
        .get("capacities")
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_default();
    let steps: Vec<usize> = keys
        .get("steps")
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_default();
    let backend = keys.get("backend").map(|s| s.to_string());
    let admin = keys.get("admin").map(|s| s.to_string());
    let label = keys.get("label").unwrap_or(&"load").to_string();
    // `header=name:value`: sent with every request (a tenant, a class, a deadline).
    let header: Option<(http::HeaderName, http::HeaderValue)> = keys.get("header").map(|h| {
        let (k, v) = h.split_once(':').expect("header=name:value");
        (
            k.parse().expect("a header name"),
            v.parse().expect("a header value"),
        )
    });
    // Every answer's latency (any status), and the 504s.
    let all_latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let timeouts_504 = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(10_000)
        .build_http();
    let control: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let buckets_n = (seconds / BUCKET.as_secs_f64()).ceil() as usize + 8;
    let buckets: Arc<Mutex<Vec<Bucket>>> = Arc::new(Mutex::new(vec![Bucket::default(); buckets_n]));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let start = Instant::now();
    let phase_len = if steps.is_empty() {
        seconds
    } else {
        seconds / steps.len() as f64
    };
    if let (Some(b), Some(first)) = (&backend, steps.first()) {
        set_slots(&control, b, *first).await;
    }

    // The sampler: weir's limit every bucket, and the backend's steps on schedule.
    let sampler = {
        let (buckets, control, admin, backend, steps) = (
            Arc::clone(&buckets),
            control.clone(),
            admin.clone(),
            backend.clone(),
            steps.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BUCKET);
            let mut phase = 0;
            loop {
                tick.tick().await;
                let t = start.elapsed().as_secs_f64();
                if t > seconds {
                    return;
                }
                let now_phase = (t / phase_len) as usize;
                if now_phase != phase && now_phase < steps.len() {
                    phase = now_phase;
                    if let Some(b) = &backend {
                        set_slots(&control, b, steps[phase]).await;
                    }
                }
                if let Some(a) = &admin {
                    let limit = weir_limit(&control, a).await;
                    let i = (t / BUCKET.as_secs_f64()) as usize;
                    if let Some(b) = buckets.lock().unwrap().get_mut(i) {
                        b.limit = limit;
                    }
                }
            }
        })
    };

    let total = (rate * seconds) as u64;
    let outstanding = Arc::new(Semaphore::new(20_000));
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while sent < total {
        tick.tick().await;
        // Request k is due at k / rate: at the start, the first is due at once.
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            let scheduled = start + Duration::from_secs_f64(sent as f64 / rate);
            sent += 1;
            let bucket =
                (scheduled.duration_since(start).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
            buckets.lock().unwrap()[bucket].offered += 1;
            let Ok(permit) = Arc::clone(&outstanding).try_acquire_owned() else {
                buckets.lock().unwrap()[bucket].failed += 1;
                continue;
            };
            let (client, url, buckets, latencies) = (
                client.clone(),
                url.clone(),
                Arc::clone(&buckets),
                Arc::clone(&latencies),
            );
            let (header, all_latencies, timeouts_504) = (
                header.clone(),
                Arc::clone(&all_latencies),
                Arc::clone(&timeouts_504),
            );
            tokio::spawn(async move {
                let _permit = permit;
                let mut req = Request::get(url).body(Empty::new()).unwrap();
                if let Some((k, v)) = header {
                    req.headers_mut().insert(k, v);
                }
                let answered = tokio::time::timeout(timeout, async {
                    let resp = client.request(req).await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
                })
                .await;
                let done = Instant::now();
                let latency = done.duration_since(scheduled);
                if let Ok(Ok(s)) = &answered {
                    all_latencies.lock().unwrap().push(latency);
                    if *s == StatusCode::GATEWAY_TIMEOUT {
                        timeouts_504.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let at = (done.duration_since(start).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
                let mut b = buckets.lock().unwrap();
                let Some(bucket) = b.get_mut(at) else { return };
                match answered {
                    Ok(Ok(s)) if s.is_success() && latency <= timeout => {
                        bucket.good += 1;
                        drop(b);
                        latencies.lock().unwrap().push(latency);
                    }
                    Ok(Ok(StatusCode::SERVICE_UNAVAILABLE)) => bucket.shed += 1,
                    Ok(Ok(s)) if s.is_success() => bucket.gave_up += 1,
                    Ok(_) => bucket.failed += 1,
                    Err(_) => bucket.gave_up += 1,
                }
            });
        }
    }
    // Every request ends within its timeout.
    let _ = tokio::time::timeout(timeout * 2, outstanding.acquire_many(20_000)).await;
    sampler.abort();

    let buckets = buckets.lock().unwrap().clone();
    let per_sec = (1.0 / BUCKET.as_secs_f64()) as usize;
    for (s, chunk) in buckets
        .chunks(per_sec)
        .enumerate()
        .take(seconds.ceil() as usize)
    {
        let sum = |f: fn(&Bucket) -> u64| chunk.iter().map(f).sum::<u64>();
        let limit = chunk.iter().filter_map(|b| b.limit).next_back();
        eprintln!(
            "{label} {:>3}s offered {:>5} good {:>5} shed {:>5} gave_up {:>5} failed {:>4} limit {}",
            s + 1,
            sum(|b| b.offered),
            sum(|b| b.good),
            sum(|b| b.shed),
            sum(|b| b.gave_up),
            sum(|b| b.failed),
            limit.map_or("-".into(), |l| l.to_string())
        );
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let p99 = lat
        .get((lat.len() * 99).div_ceil(100).saturating_sub(1))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let phases: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, slots)| {
            let capacity = capacities
                .get(i)
                .copied()
                .unwrap_or(*slots as f64 / (service_ms / 1e3));
            let first = ((i as f64 * phase_len) / BUCKET.as_secs_f64()) as usize;
            let last = (((i + 1) as f64 * phase_len) / BUCKET.as_secs_f64()) as usize;
            let rate_of = |b: &Bucket| b.good as f64 / BUCKET.as_secs_f64();
            // Steady: the phase after its first 3 s.
            let steady: Vec<f64> = buckets[(first + 3 * per_sec).min(last)..last]
                .iter()
                .map(rate_of)
                .collect();
            let steady_share = steady.iter().sum::<f64>() / steady.len().max(1) as f64 / capacity;
            // Time after the step until a second's goodput first reaches 85% of capacity.
            let reach = (first..last.saturating_sub(per_sec))
                .find(|&j| {
                    let second: f64 = buckets[j..j + per_sec].iter().map(|b| b.good as f64).sum();
                    second >= 0.85 * capacity
                })
                .map(|j| (j - first) as f64 * BUCKET.as_secs_f64() + 1.0);
            format!(
                "{{\"slots\":{slots},\"capacity\":{capacity:.0},\"steady_share\":{steady_share:.4},\"seconds_to_85\":{}}}",
                reach.map_or("null".to_string(), |r| format!("{r:.2}"))
            )
        })
        .collect();
    let sum = |f: fn(&Bucket) -> u64| buckets.iter().map(f).sum::<u64>();
    let limits: Vec<String> = buckets
        .iter()
        .take((seconds / BUCKET.as_secs_f64()) as usize)
        .map(|b| b.limit.map_or("null".into(), |l| l.to_string()))
        .collect();
    let good: Vec<String> = buckets
        .iter()
        .take((seconds / BUCKET.as_secs_f64()) as usize)
        .map(|b| b.good.to_string())
        .collect();
    let mut all = all_latencies.lock().unwrap().clone();
    all.sort_unstable();
    let pct = |p: usize| {
        all.get((all.len() * p).div_ceil(100).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let (p50_all, p99_all) = (pct(50), pct(99));
    let status_504 = timeouts_504.load(Ordering::Relaxed);
    println!(
        "{{\"label\":\"{label}\",\"rate\":{rate},\"seconds\":{seconds},\"offered\":{},\"good\":{},\"shed\":{},\"gave_up\":{},\"failed\":{},\"p99_2xx_ms\":{p99:.2},\"p50_all_ms\":{p50_all:.2},\"p99_all_ms\":{p99_all:.2},\"status_504\":{status_504},\"phases\":[{}],\"good_per_250ms\":[{}],\"limit_per_250ms\":[{}]}}",
        sum(|b| b.offered),
        sum(|b| b.good),
        sum(|b| b.shed),
        sum(|b| b.gave_up),
        sum(|b| b.failed),
        phases.join(","),
        good.join(","),
        limits.join(",")
    );
}

async fn measure(args: &[String]) {
    let backend = &args[0];
    let slots: usize = args[1].parse().expect("SLOTS");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http();
    set_slots(&client, backend, slots).await;
    let url: http::Uri = format!("http://{backend}/").parse().expect("URL");
    let served = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Instant::now() + Duration::from_secs_f64(1.0 + seconds);
    let tasks: Vec<_> = (0..slots)
        .map(|_| {
            let (client, url, served, counting) = (
                client.clone(),
                url.clone(),
                Arc::clone(&served),
                Arc::clone(&counting),
            );
            tokio::spawn(async move {
                while Instant::now() < stop {
                    let ok = match client.get(url.clone()).await {
                        Ok(resp) => resp.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok && counting.load(Ordering::Relaxed) {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let rate = served.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("{rate:.1}");
}

async fn set_slots(client: &Client<HttpConnector, Empty<Bytes>>, backend: &str, n: usize) {
    if let Ok(uri) = format!("http://{backend}/_slots/{n}").parse::<http::Uri>() {
        if let Ok(resp) = client.get(uri).await {
            let _ = resp.into_body().collect().await;
        }
    }
}

/// The limit of weir's first upstream, from its admin listener's `/status`.
async fn weir_limit(client: &Client<HttpConnector, Empty<Bytes>>, admin: &str) -> Option<usize> {
    let uri: http::Uri = format!("http://{admin}/status").parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_millis(200), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).ok()?;
    doc["upstreams"][0]["limit"].as_u64().map(|n| n as usize)
}
