//! WebSocket load for bench/websocket.sh: a real echo backend (tungstenite on hyper's upgrades,
//! the same as the tests') and a closed-loop client.
//!
//! - `websocket backend ADDR`: echoes every message on every WebSocket opened to ADDR.
//! - `websocket load ADDR CONNECTIONS SECONDS SIZE`: opens CONNECTIONS WebSockets to ADDR, and on
//!   each sends a binary message of SIZE bytes and waits for its echo, again and again, for
//!   SECONDS. Prints one JSON object: messages echoed, messages/s, MB/s (each way), the round
//!   trip's p50 and p99 in ms, and errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[path = "../tests/support/mod.rs"]
mod support;
use support::websocket::{ws_backend_on, ws_connect};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // One thread each: the backend and the client share a core, as in the suite's other
    // scenarios, and the proxy under test has the other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("backend") => runtime.block_on(backend(&args[1..])),
        Some("load") => runtime.block_on(load(&args[1..])),
        _ => {
            eprintln!(
                "usage: websocket backend ADDR | websocket load ADDR CONNECTIONS SECONDS SIZE"
            );
            std::process::exit(2);
        }
    }
}

async fn backend(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let _backend = ws_backend_on(listener);
    std::future::pending::<()>().await;
}

async fn load(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let connections: usize = args[1].parse().expect("CONNECTIONS");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let size: usize = args[3].parse().expect("SIZE");
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(ws_connect(addr, "/").await.expect("a WebSocket handshake"));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut rtts = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < end {
                    let sent = Instant::now();
                    if ws.send(Message::binary(payload.clone())).await.is_err() {
                        errors += 1;
                        break;
                    }
                    match ws.next().await {
                        Some(Ok(m)) if m.len() == payload.len() => {
                            rtts.push(sent.elapsed().as_micros() as u32)
                        }
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                }
                let _ = ws.close(None).await;
                (rtts, errors)
            })
        })
        .collect();
    let mut rtts = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (r, e) = t.await.expect("a load task");
        rtts.extend(r);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    rtts.sort_unstable();
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let n = rtts.len();
    println!(
        "{{\"messages\":{n},\"seconds\":{elapsed:.3},\"msgs_per_s\":{:.1},\"mb_per_s\":{:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"errors\":{errors}}}",
        n as f64 / elapsed,
        (n * size) as f64 / elapsed / 1e6,
        pct(0.50),
        pct(0.99),
    );
}
