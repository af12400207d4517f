//! Burst benchmark: 1,000 concurrent requests at ten times the pool's capacity.
//!
//! weir runs as its own process (the release binary); the backend (20 ms service time, counting its
//! own peak concurrency) and the clients run here. 1,000 keep-alive connections are opened first,
//! then every client sends its request at the same instant. Reported per round: answers by status,
//! the backend's peak concurrency, latency of the 2xx and of the 503s, and an upper bound on how
//! long any 2xx waited in weir's queue (its latency minus the 20 ms service time).
//!
//! Run: `cargo bench --bench burst` (loopback only; stops by itself).

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{cpu_time, ms, percentile};

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::sync::watch;

const CLIENTS: usize = 1000;
const SERVICE: Duration = Duration::from_millis(20);
const QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// Rounds to run; `BENCH_ROUNDS` overrides (more rounds give a profiler more samples).
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() {
    let backend = support::spawn_backend().await;
    let weir = common::start_weir(
        "burst",
        &format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n[log]\naccess = false\n[[listener]]\nname = \"bench\"\naddr = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"app\"\naddr = \"{}\"\nmax_concurrency = 16\nmax_queue = 64\n\
             queue_timeout = \"{}ms\"\nrequest_timeout = \"5s\"\n",
            backend.addr,
            QUEUE_TIMEOUT.as_millis()
        ),
    )
    .await;
    let (addr, weir_pid) = (weir.addr.clone(), weir.pid);

    println!(
        "burst: {CLIENTS} concurrent requests, weir max_concurrency=16 max_queue=64 queue_timeout={}, backend service time {}",
        ms(QUEUE_TIMEOUT),
        ms(SERVICE)
    );
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    for round in 1..=rounds {
        backend
            .stats
            .peak
            .store(0, std::sync::atomic::Ordering::SeqCst);
        let (go_tx, go_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(CLIENTS);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(CLIENTS);
        for _ in 0..CLIENTS {
            let mut sender = common::connect_h1::<Empty<Bytes>>(&addr).await;
            let mut go = go_rx.clone();
            let ready = ready_tx.clone();
            let host = addr.clone();
            tasks.push(tokio::spawn(async move {
                sender.ready().await.expect("connection ready");
                let _ = ready.send(()).await;
                let _ = go.wait_for(|g| *g).await;
                let req = Request::get("/sleep/20")
                    .header("host", host)
                    .body(Empty::new())
                    .expect("a valid request");
                let start = Instant::now();
                let resp = sender.send_request(req).await.expect("a response");
                let head = start.elapsed();
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                (status, head)
            }));
        }
        drop(ready_tx);
        for _ in 0..CLIENTS {
            ready_rx.recv().await;
        }
        let cpu_before = cpu_time(weir_pid);
        let started = Instant::now();
        go_tx.send(true).expect("clients listen");
        let mut ok = Vec::new();
        let mut shed = Vec::new();
        let mut other = 0;
        for t in tasks {
            let (status, took) = t.await.expect("client task");
            match status {
                StatusCode::OK => ok.push(took),
                StatusCode::SERVICE_UNAVAILABLE => shed.push(took),
                _ => other += 1,
            }
        }
        let wall = started.elapsed();
        let weir_cpu = cpu_time(weir_pid).saturating_sub(cpu_before);
        ok.sort();
        shed.sort();
        let max_ok = ok.last().copied().unwrap_or_default();
        println!(
            "round {round}: answers {} (2xx {}, 503 {}, other {other}) in {}; backend peak concurrency {}; weir CPU {} ({:.1} us/request)",
            ok.len() + shed.len() + other,
            ok.len(),
            shed.len(),
            ms(wall),
            backend.stats.peak(),
            ms(weir_cpu),
            weir_cpu.as_secs_f64() * 1e6 / CLIENTS as f64,
        );
        println!(
            "  2xx latency p50 {} p99 {} max {}; queue wait <= max - service = {} (limit queue_timeout + 50 ms = {})",
            ms(percentile(&ok, 0.5)),
            ms(percentile(&ok, 0.99)),
            ms(max_ok),
            ms(max_ok.saturating_sub(SERVICE)),
            ms(QUEUE_TIMEOUT + Duration::from_millis(50)),
        );
        println!(
            "  503 latency p50 {} p99 {} max {}",
            ms(percentile(&shed, 0.5)),
            ms(percentile(&shed, 0.99)),
            ms(shed.last().copied().unwrap_or_default()),
        );
    }
    drop(weir);
}
