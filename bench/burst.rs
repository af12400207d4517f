//! Burst benchmark: 1,000 concurrent requests at ten times the pool's capacity.
//!
//! weir runs as its own process (the release binary); the backend (20 ms service time, counting its
//! own peak concurrency) and the clients run here. 1,000 keep-alive connections are opened first,
//! then every client sends its request at the same instant. Reported per round: answers by status,
//! the backend's peak concurrency, latency of the 2xx and of the 503s, and an upper bound on how
//! long any 2xx waited in weir's queue (its latency minus the 20 ms service time).
//!
//! Run: `cargo bench --bench burst` (loopback only; stops by itself).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

const CLIENTS: usize = 1000;
const SERVICE: Duration = Duration::from_millis(20);
const QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// Rounds to run; `BENCH_ROUNDS` overrides (more rounds give a profiler more samples).
const ROUNDS: usize = 3;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// CPU time used so far by every thread of process `pid` (from schedstat: nanoseconds on CPU).
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let backend = support::spawn_backend().await;
    let config = std::env::temp_dir().join(format!("weir-burst-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"bench\"\naddr = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"app\"\naddr = \"{}\"\nmax_concurrency = 16\nmax_queue = 64\n\
             queue_timeout = \"{}ms\"\nrequest_timeout = \"5s\"\n",
            backend.addr,
            QUEUE_TIMEOUT.as_millis()
        ),
    )
    .expect("write the bench config");
    // BENCH_WEIR_CPU=1 pins weir to that core with taskset (run the bench itself on the other
    // one: `taskset -c 0 cargo bench --bench burst`), so the load generator cannot steal its CPU.
    let mut weir = match std::env::var("BENCH_WEIR_CPU") {
        Ok(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", &cpu, env!("CARGO_BIN_EXE_weir")]);
            c
        }
        Err(_) => tokio::process::Command::new(env!("CARGO_BIN_EXE_weir")),
    };
    let mut weir = weir
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn,weir=info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start weir");
    let weir_pid = weir.id().expect("weir is running");
    let mut lines = BufReader::new(weir.stdout.take().expect("piped stdout")).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .expect("read weir's log")
            .expect("weir exited before it started");
        if let Some(rest) = line.split("listeners=bench=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .expect("an address")
                .to_string();
        }
    };
    // Keep draining weir's log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

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
            let stream = TcpStream::connect(&addr).await.expect("connect to weir");
            stream.set_nodelay(true).ok();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
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
    let _ = weir.kill().await;
    let _ = std::fs::remove_file(&config);
}
