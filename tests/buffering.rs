//! Slow clients never hold a backend slot: request bodies are read before admission, under a
//! global memory cap.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use weir::Reason;

use support::*;

/// Opens an upload of `announced` bytes, sends `sent` of them at once, then trickles one byte
/// every `every` until the connection ends; returns weir's answer (empty if none came).
async fn upload(stream: TcpStream, announced: usize, sent: usize, every: Duration) -> String {
    let (mut read, mut write) = stream.into_split();
    let head =
        format!("POST /consume HTTP/1.1\r\nHost: app\r\nContent-Length: {announced}\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    write.write_all(&vec![b'u'; sent]).await.unwrap();
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for _ in sent..announced {
            tick.tick().await;
            if write.write_all(b"u").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = read.read_to_end(&mut answer).await;
    trickle.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads a `/bytes/N` response (all 'x') until `size` body bytes have arrived, `got` of them
/// already; fails if the connection closes first.
async fn read_body_bytes(stream: &mut TcpStream, mut got: usize, size: usize) {
    let mut buf = vec![0u8; 65536];
    while got < size {
        let n = within("the response bytes", stream.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed early after {got} bytes");
        got += buf[..n].iter().filter(|&&b| b == b'x').count();
    }
    assert_eq!(got, size);
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_trickling_uploads_never_reach_the_backend_or_take_a_slot() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 16\nmax_queue = 16",
    ))
    .await;
    let mut uploads = Vec::new();
    for _ in 0..500 {
        let stream = TcpStream::connect(weir.addr).await.unwrap();
        uploads.push(tokio::spawn(upload(
            stream,
            50 * 1024,
            0,
            Duration::from_secs(1),
        )));
    }
    let pool = weir.upstream("app").pool();
    let info = weir.listener();
    until("500 uploads to be connected", || {
        info.counters.active() >= 500
    })
    .await;

    // An ordinary client at a steady pace: every request is admitted and answered.
    let client = client();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..200 {
        tick.tick().await;
        assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    }
    assert_eq!(
        backend.stats.seen(),
        200,
        "a slow upload reached the backend"
    );
    assert_eq!((pool.in_flight(), pool.queue_depth()), (0, 0));
    for u in uploads {
        u.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_cap_holds_under_a_thousand_concurrent_uploads() {
    const CAP: usize = 4 << 20;
    const BODY: usize = 64 * 1024;
    let backend = spawn_backend().await;
    let weir = spawn_weir(&format!(
        "max_buffered_bytes = \"4MiB\"\n{}",
        upstream_toml(backend.addr, "")
    ))
    .await;
    let before = resident_bytes();
    // Each announces 64 KiB, sends half, and stalls: it holds its reservation until it ends.
    let mut uploads = Vec::new();
    for _ in 0..1000 {
        let stream = TcpStream::connect(weir.addr).await.unwrap();
        uploads.push(tokio::spawn(upload(
            stream,
            BODY,
            BODY / 2,
            Duration::from_secs(3600),
        )));
    }
    let buffers = weir.proxy.buffers();
    let counters = weir.upstream("app").pool().counters();
    until("every upload to be buffered or refused", || {
        buffers.used() == CAP && counters.rejected(Reason::BufferFull) == (1000 - CAP / BODY) as u64
    })
    .await;
    assert!(buffers.used() <= buffers.capacity());
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < (CAP + (64 << 20)) as u64,
        "resident memory grew by {grown} bytes with a {CAP}-byte cap"
    );
    assert_eq!(backend.stats.seen(), 0);
    // While the cap is full, a new upload is told why at once.
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let answer = within(
        "a refusal",
        upload(stream, BODY, 0, Duration::from_secs(3600)),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(answer.contains("x-weir-reject: buffer_full"), "{answer:?}");
    assert!(answer.contains("retry-after"), "{answer:?}");
    for u in uploads {
        u.abort();
    }
}

/// Slow readers whose responses are larger than the socket buffers between weir and them can
/// absorb (the kernel grows a send buffer up to 4 MiB), so the bytes must wait somewhere: in weir's
/// response buffer, with the backend slot already free, not in a backend exchange holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_do_not_hold_backend_slots() {
    const SIZE: usize = 6 << 20;
    const READERS: usize = 20;
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 16\nmax_queue = 64\nresponse_buffer = \"8MiB\"",
    ))
    .await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        // A small receive buffer: the client really does take the response a little at a time.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(weir.addr).await.unwrap();
        stream
            .write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .unwrap();
        readers.push(stream);
    }
    backend.stats.wait_seen(READERS).await;
    let pool = weir.upstream("app").pool();
    // Every response was read from the backend whole: the slots are free while the clients have
    // taken almost none of it, and the rest waits in weir's buffers.
    until("every slot to be freed", || {
        pool.in_flight() == 0 && pool.queue_depth() == 0
    })
    .await;
    assert!(weir.proxy.buffers().used() > 0);
    let client = client();
    for _ in 0..50 {
        assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    }
    // A slow reader still gets its whole response, byte for byte.
    let mut first = readers.swap_remove(0);
    read_body_bytes(&mut first, 0, SIZE).await;
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "")).await;
    let resp = within(
        "the event stream's head",
        client().request(
            Request::get(weir.url("/sse"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The first event arrives while the backend still holds back the second.
    let first = within("the first event", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), &b"data: one\n\n"[..]);
    backend.stats.open_gate(1);
    let second = within("the second event", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.into_data().unwrap(), &b"data: two\n\n"[..]);
}

#[tokio::test]
async fn a_response_announced_larger_than_the_buffer_streams_without_taking_budget() {
    const SIZE: usize = 6 << 20;
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "response_buffer = \"64KiB\"")).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader = socket.connect(weir.addr).await.unwrap();
    reader
        .write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .await
        .unwrap();
    backend.stats.wait_seen(1).await;
    let pool = weir.upstream("app").pool();
    // The head has arrived: the response is streaming. It holds its slot while the client has not
    // read it, and no buffer budget (a buffered prefix would hold its bytes until the end).
    let mut buf = vec![0u8; 65536];
    let n = within("the head", reader.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let got = buf[..n].iter().filter(|&&b| b == b'x').count();
    assert_eq!(pool.in_flight(), 1);
    assert_eq!(weir.proxy.buffers().used(), 0);
    read_body_bytes(&mut reader, got, SIZE).await;
    until("the slot to be freed", || pool.in_flight() == 0).await;
}
