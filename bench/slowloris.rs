//! Slowloris benchmark: 1,000 connections that each send one header byte a second, held against a
//! listener with max_connections 2000 and header_timeout 5 s, while an ordinary client sends
//! sequential keep-alive requests through weir. Reported: the ordinary client's p50/p99 with and
//! without the slow connections, and how long each slow connection lived (it must be closed within
//! header_timeout + 1 s).
//!
//! Run: `cargo bench --bench slowloris` (loopback only; about 20 s; stops by itself).

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{ms, percentile};

const SLOW: usize = 1000;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the ordinary client measures in each phase.
const PHASE: Duration = Duration::from_secs(7);
const SLOW_HEAD: &[u8] =
    b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Sequential GETs on one keep-alive connection for `PHASE`; returns their latencies, sorted.
async fn ordinary(addr: &str) -> Vec<Duration> {
    let mut sender = common::connect_h1::<Empty<Bytes>>(addr).await;
    let mut took = Vec::new();
    let end = Instant::now() + PHASE;
    while Instant::now() < end {
        let req = Request::get("/")
            .header("host", "bench")
            .body(Empty::new())
            .expect("request");
        sender.ready().await.expect("the connection stays usable");
        let start = Instant::now();
        let resp = sender.send_request(req).await.expect("a response");
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = resp.into_body().collect().await;
        took.push(start.elapsed());
    }
    took.sort();
    took
}

/// One slow client: a byte a second until weir closes the connection. Returns how long the
/// connection lived and whether weir sent 408 first.
async fn slow_client(addr: String, connected: tokio::sync::mpsc::Sender<()>) -> (Duration, bool) {
    let stream = TcpStream::connect(&addr)
        .await
        .expect("connect a slow client");
    let start = Instant::now();
    let _ = connected.send(()).await;
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for b in SLOW_HEAD.iter().cycle() {
            tick.tick().await;
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = read.read_to_end(&mut answer).await;
    writer.abort();
    (start.elapsed(), answer.starts_with(b"HTTP/1.1 408"))
}

#[tokio::main]
async fn main() {
    let backend = support::spawn_backend().await;
    let weir = common::start_weir(
        "slowloris",
        &format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n[log]\naccess = false\n[[listener]]\nname = \"bench\"\naddr = \"127.0.0.1:0\"\nmax_connections = 2000\n\
             header_timeout = \"{}s\"\n\
             [[upstream]]\nname = \"app\"\naddr = \"{}\"\nmax_concurrency = 64\n",
            HEADER_TIMEOUT.as_secs(),
            backend.addr
        ),
    )
    .await;
    let addr = weir.addr.clone();
    println!(
        "slowloris: {SLOW} connections at one header byte a second; max_connections 2000, header_timeout {}",
        ms(HEADER_TIMEOUT)
    );

    // Warm up, then the baseline with no slow connections.
    let _ = tokio::time::timeout(Duration::from_secs(1), ordinary(&addr)).await;
    let baseline = ordinary(&addr).await;

    let (tx, mut rx) = tokio::sync::mpsc::channel(SLOW);
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slow_client(addr.clone(), tx.clone())))
        .collect();
    drop(tx);
    for _ in 0..SLOW {
        rx.recv().await;
    }
    let attacked = ordinary(&addr).await;

    let mut lifetimes = Vec::with_capacity(SLOW);
    let mut got_408 = 0;
    for t in slow {
        let (lived, is_408) = t.await.expect("slow client task");
        lifetimes.push(lived);
        got_408 += usize::from(is_408);
    }
    lifetimes.sort();

    let (b99, a99) = (percentile(&baseline, 0.99), percentile(&attacked, 0.99));
    println!(
        "ordinary client, none open:     {} requests, p50 {} p99 {}",
        baseline.len(),
        ms(percentile(&baseline, 0.5)),
        ms(b99)
    );
    println!(
        "ordinary client, {SLOW} slow open: {} requests, p50 {} p99 {}",
        attacked.len(),
        ms(percentile(&attacked, 0.5)),
        ms(a99)
    );
    println!(
        "p99 ratio (slow open / none): {:.2}x (target <= 2x)",
        a99.as_secs_f64() / b99.as_secs_f64()
    );
    println!(
        "slow connections closed: {}/{SLOW}, 408 sent to {got_408}; lifetime min {} p99 {} max {} (limit header_timeout + 1 s = {})",
        lifetimes.len(),
        ms(lifetimes[0]),
        ms(percentile(&lifetimes, 0.99)),
        ms(lifetimes[lifetimes.len() - 1]),
        ms(HEADER_TIMEOUT + Duration::from_secs(1)),
    );
    drop(weir);
}
