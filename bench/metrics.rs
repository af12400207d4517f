//! What the per-request metrics cost: throughput and weir's CPU time per request with
//! `[admin] request_metrics` on and off (and, for information, with the access log on too), each
//! a separate weir process of the same build, measured in alternating rounds of the same run.
//!
//! Load: 64 keep-alive HTTP/1.1 connections in a closed loop, tiny responses (scenario A of the
//! benchmark suite). weir runs as its own process; the backend and the clients run here. Pin weir
//! to one core and this bench to the other for steadier numbers:
//! `BENCH_WEIR_CPU=1 taskset -c 0 cargo bench --bench metrics`.

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};

const CONNECTIONS: usize = 64;
const WINDOW: Duration = Duration::from_secs(3);
const WARMUP: Duration = Duration::from_millis(500);
const ROUNDS: usize = 5;

struct Variant {
    name: &'static str,
    keys: &'static str,
    weir: Option<common::WeirProcess>,
    /// (requests/s, CPU µs per request) of each round.
    rounds: Vec<(f64, f64)>,
}

#[tokio::main]
async fn main() {
    let backend = support::spawn_backend().await;
    let mut variants = [
        Variant {
            name: "metrics off",
            keys: "request_metrics = false\n[log]\naccess = false",
            weir: None,
            rounds: vec![],
        },
        Variant {
            name: "metrics on",
            keys: "request_metrics = true\n[log]\naccess = false",
            weir: None,
            rounds: vec![],
        },
        Variant {
            name: "metrics on + access log",
            keys: "request_metrics = true\n[log]\naccess = true",
            weir: None,
            rounds: vec![],
        },
    ];
    for v in &mut variants {
        let config = format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n{}\n[[listener]]\nname = \"bench\"\naddr = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"app\"\naddr = \"{}\"\nmax_concurrency = 128\nmax_queue = 128\n",
            v.keys, backend.addr
        );
        let name = v.name.replace(' ', "-").replace('+', "");
        v.weir = Some(common::start_weir(&name, &config).await);
    }
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    println!(
        "metrics cost: {CONNECTIONS} keep-alive connections, closed loop, {}s windows, {rounds} alternating rounds",
        WINDOW.as_secs()
    );
    for round in 1..=rounds {
        for v in &mut variants {
            let weir = v.weir.as_ref().expect("started");
            let (rps, cpu_us) = measure(&weir.addr, weir.pid).await;
            println!(
                "round {round} {:<24} {rps:>9.0} req/s  {cpu_us:>6.2} µs CPU/request",
                v.name
            );
            v.rounds.push((rps, cpu_us));
        }
    }
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let base_rps = median(&mut variants[0].rounds.iter().map(|r| r.0).collect());
    let base_cpu = median(&mut variants[0].rounds.iter().map(|r| r.1).collect());
    println!("\nmedians, as ratios to \"metrics off\" measured in the same run:");
    for v in &variants {
        let rps = median(&mut v.rounds.iter().map(|r| r.0).collect());
        let cpu = median(&mut v.rounds.iter().map(|r| r.1).collect());
        println!(
            "{:<24} {rps:>9.0} req/s ({:.3}x)  {cpu:>6.2} µs CPU/request ({:.3}x)",
            v.name,
            rps / base_rps,
            cpu / base_cpu
        );
    }
}

/// Runs the closed loop against `addr` for a warm-up and then one window; returns requests/s and
/// weir's CPU microseconds per request over the window.
async fn measure(addr: &str, pid: u32) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut sender = common::connect_h1::<Empty<Bytes>>(addr).await;
        let (done, stop, host) = (Arc::clone(&done), Arc::clone(&stop), addr.to_string());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if sender.ready().await.is_err() {
                    return;
                }
                let req = Request::get("/")
                    .header("host", &host)
                    .body(Empty::new())
                    .expect("request");
                let Ok(resp) = sender.send_request(req).await else {
                    return;
                };
                let ok = resp.status().is_success();
                if resp.into_body().collect().await.is_ok() && ok {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(WARMUP).await;
    let (n0, c0, t0) = (
        done.load(Ordering::Relaxed),
        common::cpu_time(pid),
        Instant::now(),
    );
    tokio::time::sleep(WINDOW).await;
    let (n1, c1, elapsed) = (
        done.load(Ordering::Relaxed),
        common::cpu_time(pid),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let n = (n1 - n0).max(1) as f64;
    (n / elapsed.as_secs_f64(), (c1 - c0).as_secs_f64() * 1e6 / n)
}
