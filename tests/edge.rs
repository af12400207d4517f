//! The hardened edge over plain HTTP: slow-client deadlines, size limits, the connection cap and
//! the HTTP/2 stream cap. A client that trickles keeps trickling for the whole test, so a deadline
//! that progress could extend would make the test time out rather than pass.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir::Options;
use weir::{ClientTimeout, ConnReject, SizeLimit};

use support::*;

async fn weir_with(backend: &Backend, listener_keys: &str, upstream_keys: &str) -> Weir {
    spawn_weir_on(
        &upstream_toml(backend.addr, upstream_keys),
        listener_keys,
        Options::default(),
    )
    .await
}

/// Reads until the peer closes; returns what it sent. A reset counts as a close.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within("the connection to close", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&all).into_owned(),
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends a GET on an open raw connection and expects a 200 back.
async fn raw_ok(stream: &mut TcpStream) {
    raw_get_ok(stream, "/").await
}

/// Sends a GET for `path` on an open raw connection and expects a 200 back.
async fn raw_get_ok(stream: &mut TcpStream, path: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = within("a response", stream.read(&mut buf)).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// A keep-alive connection that has made one request and then parked (`listener::park`): the
/// listener's only parked one.
async fn parked_connection(weir: &Weir) -> TcpStream {
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    raw_ok(&mut stream).await;
    let info = weir.listener();
    until("the idle connection parked", || info.counters.parked() == 1).await;
    stream
}

/// Sends `bytes` one at a time, every 20 ms, until the peer stops taking them.
fn trickle(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    bytes: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for b in bytes.iter().cycle() {
            tick.tick().await;
            if stream.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_header_timeout() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "header_timeout = \"300ms\"", "").await;
    let mut silent = TcpStream::connect(weir.addr).await.unwrap();
    assert_eq!(
        read_until_closed(&mut silent).await,
        "",
        "nothing is sent to a client that said nothing"
    );
    let info = weir.listener();
    let counters = &info.counters;
    assert_eq!(counters.timeouts(ClientTimeout::Header), 1);
    assert_eq!(backend.stats.seen(), 0);
}

#[tokio::test]
async fn a_slowloris_head_gets_408_and_is_closed() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "header_timeout = \"400ms\"", "").await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut read, write) = stream.into_split();
    let trickler = trickle(
        write,
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    );
    let mut answer = Vec::new();
    let _ = within("the 408", read.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(
        answer.contains("x-weir-reject: header_timeout"),
        "{answer:?}"
    );
    trickler.abort();
    assert_eq!(weir.listener().counters.timeouts(ClientTimeout::Header), 1);
    assert_eq!(backend.stats.seen(), 0);
}

#[tokio::test]
async fn a_keep_alive_request_head_is_timed_too_and_idle_connections_are_closed() {
    let backend = spawn_backend().await;
    let weir = weir_with(
        &backend,
        "header_timeout = \"300ms\"\nidle_timeout = \"300ms\"",
        "",
    )
    .await;

    // Second request on a keep-alive connection starts, then stalls: 408.
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    raw_ok(&mut stream).await;
    stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");

    // A keep-alive connection with no request in progress is closed after idle_timeout, silently.
    let mut idle = TcpStream::connect(weir.addr).await.unwrap();
    raw_ok(&mut idle).await;
    assert_eq!(read_until_closed(&mut idle).await, "");
    let info = weir.listener();
    let counters = &info.counters;
    assert_eq!(counters.timeouts(ClientTimeout::Header), 1);
    assert_eq!(counters.timeouts(ClientTimeout::Idle), 1);
}

#[tokio::test]
async fn an_idle_deadline_later_than_the_head_deadline_is_kept() {
    let backend = spawn_backend().await;
    let weir = weir_with(
        &backend,
        "header_timeout = \"1s\"\nidle_timeout = \"2s\"",
        "",
    )
    .await;
    // The connection waits for its first byte under the head deadline, so the watchdog's timer
    // is armed for it; after the request the connection is idle, with a later deadline the
    // timer must move on to, not close the connection at the first.
    let mut idle = TcpStream::connect(weir.addr).await.unwrap();
    let info = weir.listener();
    until("the connection served", || info.counters.active() == 1).await;
    raw_ok(&mut idle).await;
    let answered = std::time::Instant::now();
    assert_eq!(read_until_closed(&mut idle).await, "");
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(1990),
        "closed after {waited:?}"
    );
    assert_eq!(info.counters.timeouts(ClientTimeout::Idle), 1);
    assert_eq!(info.counters.timeouts(ClientTimeout::Header), 0);
}

#[tokio::test]
async fn a_connection_idle_after_a_request_longer_than_idle_timeout_is_closed() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "idle_timeout = \"200ms\"", "").await;
    // The request outlives the idle deadline's earliest moment: the connection is not idle
    // then, and must still be closed once the response has ended and idle_timeout passed,
    // counted from the response's end. Counted from the head's start instead, it closes at once
    // (microseconds); the bound leaves this client up to 100 ms to read the response, so that
    // a loaded machine cannot fail it.
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    raw_get_ok(&mut stream, "/sleep/600").await;
    let answered = std::time::Instant::now();
    assert_eq!(read_until_closed(&mut stream).await, "");
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "closed after {waited:?}"
    );
    let info = weir.listener();
    assert_eq!(info.counters.timeouts(ClientTimeout::Idle), 1);
}

/// Sends the head and 10 of 100 announced body bytes, then nothing; returns weir's answer.
async fn stalled_upload(weir: &Weir) -> String {
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream
        .write_all(b"POST /consume HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    read_until_closed(&mut stream).await
}

#[tokio::test]
async fn a_stalled_buffered_body_gets_408_without_reaching_the_pool() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "body_timeout = \"300ms\"", "max_concurrency = 1").await;
    let answer = stalled_upload(&weir).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("x-weir-reject: body_timeout"), "{answer:?}");
    assert_eq!(weir.listener().counters.timeouts(ClientTimeout::Body), 1);
    // Read before admission: the backend never saw it, no slot was taken.
    assert_eq!(backend.stats.seen(), 0);
    assert_eq!(weir.upstream("app").pool().in_flight(), 0);
}

#[tokio::test]
async fn a_stalled_streamed_body_gets_408_and_frees_the_slot() {
    let backend = spawn_backend().await;
    let weir = weir_with(
        &backend,
        "body_timeout = \"300ms\"",
        "max_concurrency = 1\nrequest_buffer = 0",
    )
    .await;
    let answer = stalled_upload(&weir).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("x-weir-reject: body_timeout"), "{answer:?}");
    let pool = weir.upstream("app").pool();
    until("the slot to be freed", || pool.in_flight() == 0).await;
    assert_eq!(weir.listener().counters.timeouts(ClientTimeout::Body), 1);
    // Streamed: the backend's request was aborted, not completed with a short body.
    backend.stats.wait_cancelled(1).await;
    // The single slot serves the next request.
    assert_eq!(get(&client(), &weir.url("/")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_its_slot_freed() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "write_timeout = \"300ms\"", "max_concurrency = 1").await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    // 64 MiB: far more than the socket buffers between weir and this client can hold.
    stream
        .write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    backend.stats.wait_seen(1).await;
    let pool = weir.upstream("app").pool();
    let info = weir.listener();
    let counters = &info.counters;
    until("the write timeout", || {
        counters.timeouts(ClientTimeout::Write) == 1
    })
    .await;
    until("the slot to be freed", || pool.in_flight() == 0).await;
    assert_eq!(get(&client(), &weir.url("/")).await.0, StatusCode::OK);
    drop(stream);
}

#[tokio::test]
async fn oversized_heads_get_431_and_oversized_bodies_413() {
    let backend = spawn_backend().await;
    let weir = weir_with(
        &backend,
        "max_header_bytes = \"8KiB\"\nmax_body_bytes = 1000",
        "",
    )
    .await;

    let big = "x".repeat(16 * 1024);
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: app\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");

    // Announced too large: refused before admission, never reaches the backend.
    let req = Request::post(weir.url("/consume"))
        .body(Full::new(Bytes::from(vec![b'a'; 2000])))
        .unwrap();
    let (status, headers, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers["x-weir-reject"], "body_too_large");
    assert_eq!(backend.stats.seen(), 0);

    // Chunked, growing past the limit: the upload is cut off with 413.
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    let mut chunked =
        b"POST /consume HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'b'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    stream.write_all(&chunked).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer:?}");
    let info = weir.listener();
    let counters = &info.counters;
    assert_eq!(counters.limits(SizeLimit::HeaderBytes), 1);
    assert_eq!(counters.limits(SizeLimit::BodyBytes), 2);
    until("the slot to be freed", || {
        weir.upstream("app").pool().in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn the_connection_cap_is_exact() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "max_connections = 2", "").await;
    let info = weir.listener();
    let counters = &info.counters;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(weir.addr).await.unwrap();
        raw_ok(&mut s).await;
        open.push(s);
    }
    // The third is closed at once, without an answer; the two keep working.
    let mut third = TcpStream::connect(weir.addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await;
    assert_eq!(read_until_closed(&mut third).await, "");
    assert_eq!(counters.rejected(ConnReject::Limit), 1);
    for s in &mut open {
        raw_ok(s).await;
    }
    // One closes: a new connection is accepted again.
    drop(open.pop());
    until("the closed connection to be released", || {
        counters.active() == 1
    })
    .await;
    let mut fourth = TcpStream::connect(weir.addr).await.unwrap();
    raw_ok(&mut fourth).await;
    assert_eq!(counters.rejected(ConnReject::Limit), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connection_cannot_exceed_max_concurrent_streams() {
    let backend = spawn_backend().await;
    let weir = weir_with(
        &backend,
        "max_concurrent_streams = 2",
        "max_concurrency = 50",
    )
    .await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // One request first, so the client has weir's SETTINGS (and its stream limit) before it opens
    // more: streams sent beyond the limit before that are refused (REFUSED_STREAM), as HTTP/2 says.
    let mut first = sender.clone();
    let resp = first
        .send_request(Request::get(weir.url("/")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut sender = sender.clone();
        let url = weir.url("/gate");
        tasks.push(tokio::spawn(async move {
            let req = Request::get(url).body(Full::default()).unwrap();
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }));
    }
    backend.stats.wait_seen(3).await;
    // Let them through one by one: never more than two are at the backend at once.
    for _ in 0..6 {
        backend.stats.open_gate(1);
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(backend.stats.seen(), 7);
    assert_eq!(backend.stats.peak(), 2);
}

#[tokio::test]
async fn an_idle_connection_parks_and_is_woken_by_its_next_request() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "", "").await;
    let info = weir.listener();
    let counters = &info.counters;
    let mut stream = parked_connection(&weir).await;
    let metrics = scrape(weir.admin).await;
    let parked = metrics.value("weir_connections_parked", &[("listener", "test")]);
    assert_eq!(parked, 1.0);

    // The first bytes of the next request wake it; the rest comes later, and hyper's new
    // server reads the woken bytes first.
    stream.write_all(b"GET /byt").await.unwrap();
    until("the connection woken", || counters.parked() == 0).await;
    stream
        .write_all(b"es/5 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = within("a response", stream.read(&mut buf)).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("content-length: 5\r\n"), "{answer:?}");

    // Parked again, it is woken by a head longer than what is read ahead of the server.
    until("parked again", || counters.parked() == 1).await;
    let long = format!("/{}", "x".repeat(200));
    raw_get_ok(&mut stream, &long).await;
    assert_eq!(counters.accepted(), 1, "one connection throughout");
    assert_eq!(backend.stats.seen(), 3);
}

#[tokio::test]
async fn a_parked_connection_times_a_slow_head_and_closes_when_idle() {
    let backend = spawn_backend().await;
    let weir = weir_with(
        &backend,
        "header_timeout = \"400ms\"\nidle_timeout = \"2s\"",
        "",
    )
    .await;
    let info = weir.listener();
    let counters = &info.counters;

    // Woken by the start of a head that never ends: 408 after header_timeout.
    let mut stream = parked_connection(&weir).await;
    stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert_eq!(counters.timeouts(ClientTimeout::Header), 1);

    // Parked and left alone: closed at idle_timeout, counted as idle.
    let mut idle = parked_connection(&weir).await;
    assert_eq!(read_until_closed(&mut idle).await, "");
    assert_eq!(counters.timeouts(ClientTimeout::Idle), 1);
    assert_eq!(counters.parked(), 0);
}

#[tokio::test]
async fn a_parked_connection_closed_by_its_client_is_let_go() {
    let backend = spawn_backend().await;
    let weir = weir_with(&backend, "", "").await;
    let info = weir.listener();
    let counters = &info.counters;
    let stream = parked_connection(&weir).await;
    drop(stream);
    until("the connection closed", || counters.active() == 0).await;
    assert_eq!(counters.parked(), 0);
}
