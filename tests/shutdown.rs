//! Graceful drain: new connections are refused, in-flight and queued requests finish, idle
//! keep-alive connections are closed, and a drain that overruns `drain_timeout` is cut short.

mod support;

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir::Options;

use support::*;

/// Reads one HTTP/1.1 response of a known small size off a raw connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = within("a response", stream.read(&mut buf)).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_and_queued_requests_and_refuses_new_connections() {
    let backend = spawn_backend().await;
    let mut weir = spawn_weir_on(
        &format!(
            "drain_timeout = \"60s\"\n{}",
            upstream_toml(
                backend.addr,
                "max_concurrency = 1\nmax_queue = 4\nqueue_timeout = \"60s\""
            )
        ),
        // Longer than the test's patience: only the drain can close the silent connection.
        "header_timeout = \"60s\"\nidle_timeout = \"60s\"",
        Options::default(),
    )
    .await;
    let addr = weir.addr;

    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let info = weir.listener();
    // Idle long enough to have given back its server's state (`listener::park`).
    until("the idle connection parked", || info.counters.parked() == 1).await;
    // A connection that has not sent a byte yet.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    until("the silent connection accepted", || {
        info.counters.active() == 2
    })
    .await;

    let client = client();
    let in_flight = spawn_get(&client, weir.url("/gate"));
    backend.stats.wait_seen(2).await;
    let queued = spawn_get(&client, weir.url("/gate"));
    let pool = weir.upstream("app").pool();
    until("a queued request", || pool.queue_depth() == 1).await;

    weir.begin_shutdown();

    // The idle connection is closed by weir (EOF), without waiting for the busy ones.
    let mut rest = Vec::new();
    let n = within("the idle connection to close", idle.read_to_end(&mut rest)).await;
    assert!(n.is_ok(), "{n:?}");
    assert!(rest.is_empty());
    let n = within(
        "the silent connection to close",
        silent.read_to_end(&mut rest),
    )
    .await;
    assert!(n.is_ok(), "{n:?}");
    assert!(rest.is_empty());

    // New connections are refused once the listener is closed.
    within("new connections to be refused", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    // The in-flight and the queued request both complete.
    backend.stats.open_gate(2);
    let (status, headers, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert_eq!(queued.await.unwrap().0, StatusCode::OK);
    weir.stop().await;
}

#[tokio::test]
async fn drain_timeout_cuts_a_stuck_request_short() {
    let backend = spawn_backend().await;
    let mut weir = spawn_weir(&format!(
        "drain_timeout = \"200ms\"\n{}",
        upstream_toml(backend.addr, "request_timeout = \"1h\"")
    ))
    .await;
    let mut stuck = TcpStream::connect(weir.addr).await.unwrap();
    stuck
        .write_all(b"GET /hang HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    backend.stats.wait_seen(1).await;
    weir.begin_shutdown();
    // weir returns after the drain deadline; the stuck connection is closed and the backend
    // request cancelled.
    let task = weir.task.take().unwrap();
    within("weir to give up draining", task).await.unwrap();
    let mut rest = Vec::new();
    let _ = within(
        "the stuck connection to close",
        stuck.read_to_end(&mut rest),
    )
    .await;
    backend.stats.wait_cancelled(1).await;
    assert_eq!(weir.upstream("app").pool().in_flight(), 0);
}
