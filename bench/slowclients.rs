//! Slow clients against a 16-slot pool (issue 6's figures), weir as its own process:
//! 1. an ordinary client's success rate and p99 with no slow clients, with 500 uploaders sending a
//!    50 KiB body at one byte a second, and with 200 readers taking a 256 KiB response at one byte
//!    a second;
//! 2. the throughput cost of buffering: 64 keep-alive connections POSTing a small body in a closed
//!    loop, through weir with buffering on (the defaults) and off (request_buffer and
//!    response_buffer 0), measured in the same run.
//!
//! Run: `cargo bench --bench slowclients` (loopback only; about a minute; stops by itself).

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::{ms, percentile};

const PHASE: Duration = Duration::from_secs(5);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> Sender {
    common::connect_h1(addr).await
}

/// One request; returns whether it got a 2xx.
async fn request(sender: &mut Sender, path: &str, body: &'static [u8]) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let method = if body.is_empty() { "GET" } else { "POST" };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request");
    match sender.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            ok && resp.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// An ordinary client: sequential GETs for `PHASE`, one every 2 ms. Returns (ok, total, sorted
/// latencies of the ok ones).
async fn ordinary(addr: &str) -> (usize, usize, Vec<Duration>) {
    let mut sender = connect(addr).await;
    let (mut ok, mut total, mut took) = (0, 0, Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let end = Instant::now() + PHASE;
    while Instant::now() < end {
        tick.tick().await;
        let start = Instant::now();
        total += 1;
        if request(&mut sender, "/", b"").await {
            ok += 1;
            took.push(start.elapsed());
        } else {
            sender = connect(addr).await;
        }
    }
    took.sort();
    (ok, total, took)
}

fn report(name: &str, (ok, total, took): &(usize, usize, Vec<Duration>)) -> Duration {
    let p99 = percentile(took, 0.99);
    println!(
        "| {name} | {total} | {:.2}% | {} | {} |",
        100.0 * *ok as f64 / *total as f64,
        ms(percentile(took, 0.5)),
        ms(p99)
    );
    p99
}

async fn trickling_uploader(addr: String) {
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return;
    };
    let head = "POST /consume HTTP/1.1\r\nHost: bench\r\nContent-Length: 51200\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if stream.write_all(b"u").await.is_err() {
            return;
        }
    }
}

async fn trickling_reader(addr: String) {
    let Ok(socket) = TcpSocket::new_v4() else {
        return;
    };
    let _ = socket.set_recv_buffer_size(4096);
    let Ok(addr) = addr.parse() else { return };
    let Ok(mut stream) = socket.connect(addr).await else {
        return;
    };
    if stream
        .write_all(b"GET /bytes/262144 HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut byte = [0u8; 1];
    loop {
        tick.tick().await;
        if !matches!(stream.read(&mut byte).await, Ok(1)) {
            return;
        }
    }
}

/// Requests per second from 64 connections POSTing 100 bytes in a closed loop for `PHASE`.
async fn throughput(addr: &str) -> f64 {
    const BODY: &[u8] = &[b'b'; 100];
    let end = Instant::now() + Duration::from_secs(1) + PHASE;
    let measure_from = Instant::now() + Duration::from_secs(1);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let mut sender = connect(addr).await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let ok = request(&mut sender, "/consume", BODY).await;
                if ok && Instant::now() >= measure_from {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("throughput task");
    }
    total as f64 / PHASE.as_secs_f64()
}

fn config(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[log]\naccess = false\n[[listener]]\nname = \"bench\"\naddr = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"app\"\naddr = \"{backend}\"\nmax_concurrency = 16\nmax_queue = 64\n{extra}\n"
    )
}

#[tokio::main]
async fn main() {
    let backend = support::spawn_backend().await;
    let weir = common::start_weir("slowclients", &config(backend.addr, "")).await;
    let addr = weir.addr.clone();

    println!("| ordinary client (GET every 2 ms, 5 s) | requests | 2xx | p50 | p99 |");
    println!("|---|---|---|---|---|");
    let _ = ordinary(&addr).await; // warm-up
    let base = report("no slow clients", &ordinary(&addr).await);

    let uploaders: Vec<_> = (0..500)
        .map(|_| tokio::spawn(trickling_uploader(addr.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await; // let them connect and start
    let up = report(
        "500 trickling uploaders (50 KiB at 1 B/s)",
        &ordinary(&addr).await,
    );
    let seen_during = backend.stats.seen();
    for u in uploaders {
        u.abort();
    }

    let readers: Vec<_> = (0..200)
        .map(|_| tokio::spawn(trickling_reader(addr.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rd = report(
        "200 trickling readers (256 KiB at 1 B/s)",
        &ordinary(&addr).await,
    );
    for r in readers {
        r.abort();
    }
    println!(
        "p99 ratios vs none: uploaders {:.2}x, readers {:.2}x (target <= 2x); backend requests seen while uploaders were open: {seen_during} (all from the ordinary client)",
        up.as_secs_f64() / base.as_secs_f64(),
        rd.as_secs_f64() / base.as_secs_f64()
    );
    drop(weir);

    // Buffering cost: the same build, buffering on (defaults) and off, in one run.
    let on = common::start_weir("buffer-on", &config(backend.addr, "")).await;
    let off = common::start_weir(
        "buffer-off",
        &config(backend.addr, "request_buffer = 0\nresponse_buffer = 0"),
    )
    .await;
    let mut on_rps = Vec::new();
    let mut off_rps = Vec::new();
    for _ in 0..3 {
        on_rps.push(throughput(&on.addr).await);
        off_rps.push(throughput(&off.addr).await);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "small-body POST throughput, 64 connections: buffering on {:.0} req/s, off {:.0} req/s (on/off {:.3}; runs on {:?} off {:?})",
        best(&on_rps),
        best(&off_rps),
        best(&on_rps) / best(&off_rps),
        on_rps.iter().map(|r| *r as u64).collect::<Vec<_>>(),
        off_rps.iter().map(|r| *r as u64).collect::<Vec<_>>()
    );
}
