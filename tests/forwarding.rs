//! Forwarding: proxy hygiene, deadlines and cancellation, upstream failures, h2c both sides, and
//! bodies that stream through without being buffered whole.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use weir::{Reason, UpstreamErrorKind};

use support::*;

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_set() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "")).await;
    let req = Request::get(weir.url("/headers"))
        .header("host", "shop.example.com:8443")
        .header("connection", "keep-alive, X-Client-Secret")
        .header("x-client-secret", "s3cret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("trailer", "x-sum")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "gopher")
        .header("x-kept", "yes")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = String::from_utf8(body.to_vec()).unwrap();
    for gone in [
        "connection:",
        "x-client-secret",
        "keep-alive",
        "te:",
        "trailer:",
        "proxy-authorization",
        "proxy-connection",
        "gopher",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the backend:\n{seen}");
    }
    for kept in [
        "host: shop.example.com:8443",
        "x-forwarded-for: 203.0.113.7, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example.com:8443",
        "x-kept: yes",
    ] {
        assert!(seen.contains(kept), "{kept:?} missing:\n{seen}");
    }

    let (status, headers, _) = get(&client(), &weir.url("/hop")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-backend-public"));
    for gone in ["x-backend-secret", "keep-alive", "proxy-authenticate"] {
        assert!(!headers.contains_key(gone), "{gone} reached the client");
    }
}

#[tokio::test]
async fn deadline_before_the_head_answers_504_and_cancels_the_backend() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "request_timeout = \"200ms\"")).await;
    let (status, headers, _) = get(&client(), &weir.url("/hang")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-weir-reject"], "deadline");
    backend.stats.wait_cancelled(1).await;
    let pool = weir.upstream("app").pool();
    assert_eq!(pool.in_flight(), 0);
    assert_eq!(pool.counters().rejected(Reason::Deadline), 1);
    assert_eq!(
        pool.counters().upstream_errors(UpstreamErrorKind::Timeout),
        1
    );
}

#[tokio::test]
async fn deadline_after_the_head_cuts_the_response_off() {
    let backend = spawn_backend().await;
    // Streamed responses: the head goes out before the body is complete.
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "request_timeout = \"300ms\"\nresponse_buffer = 0",
    ))
    .await;
    let resp = within(
        "the head",
        client().request(
            Request::get(weir.url("/head-then-hang"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"first chunk\n")
    );
    // Then the deadline fires: the body ends in an error, never a clean (truncated) end.
    let end = within("the cut-off", body.frame()).await;
    assert!(
        matches!(end, Some(Err(_))),
        "expected a broken body, got {end:?}"
    );
    backend.stats.wait_cancelled(1).await;
    let pool = weir.upstream("app").pool();
    until("the slot to be freed", || pool.in_flight() == 0).await;
    assert_eq!(
        pool.counters().upstream_errors(UpstreamErrorKind::Timeout),
        1
    );
}

/// Sends `request` for `/hang` on a connection of its own, hangs up once the backend has it,
/// and checks that the backend request is cancelled and the single slot freed and usable.
async fn hang_up_in_flight_cancels_the_backend_request(request: &[u8]) {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "max_concurrency = 1")).await;
    let mut raw = TcpStream::connect(weir.addr).await.unwrap();
    raw.write_all(request).await.unwrap();
    backend.stats.wait_seen(1).await;
    let pool = weir.upstream("app").pool();
    assert_eq!(pool.in_flight(), 1);
    drop(raw);
    backend.stats.wait_cancelled(1).await;
    until("the slot to be freed", || pool.in_flight() == 0).await;
    assert_eq!(pool.counters().rejected(Reason::ClientGone), 1);
    // The single slot is usable again.
    assert_eq!(get(&client(), &weir.url("/")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn client_that_disconnects_in_flight_cancels_the_backend_request() {
    hang_up_in_flight_cancels_the_backend_request(b"GET /hang HTTP/1.1\r\nHost: app\r\n\r\n").await;
}

#[tokio::test]
async fn client_that_disconnects_after_its_body_cancels_the_backend_request() {
    // The body is read whole first; the hang-up comes while weir waits for the backend.
    hang_up_in_flight_cancels_the_backend_request(
        b"POST /hang HTTP/1.1\r\nHost: app\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
}

#[tokio::test]
async fn client_that_disconnects_while_its_response_streams_frees_the_slot() {
    let backend = spawn_backend().await;
    // Streamed: the head and the first chunk go out while the backend holds back the rest.
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 1\nresponse_buffer = 0",
    ))
    .await;
    let mut raw = TcpStream::connect(weir.addr).await.unwrap();
    raw.write_all(b"GET /head-then-hang HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(12).any(|w| w == b"first chunk\n") {
        let n = within("the first chunk", raw.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let pool = weir.upstream("app").pool();
    assert_eq!(pool.in_flight(), 1);
    // Nothing more is written to the client: only its hang-up can end the exchange.
    drop(raw);
    backend.stats.wait_cancelled(1).await;
    until("the slot to be freed", || pool.in_flight() == 0).await;
    assert_eq!(get(&client(), &weir.url("/")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_request_pipelined_behind_one_in_flight_is_not_taken_for_a_hang_up() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "")).await;
    let mut raw = TcpStream::connect(weir.addr).await.unwrap();
    raw.write_all(b"GET /gate HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    backend.stats.wait_seen(1).await;
    // Arrives while the first waits for the backend: bytes on the socket, not an end of stream.
    // (Whether weir's watch sees them before the answer is up to the scheduler; the watch's
    // pause on unread bytes is tested on its own in `peer.rs`.)
    raw.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    backend.stats.open_gate(1);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.windows(15).filter(|w| *w == b"HTTP/1.1 200 OK").count() < 2 {
        let n = within("both answers", raw.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let pool = weir.upstream("app").pool();
    assert_eq!(pool.counters().rejected(Reason::ClientGone), 0);
    assert_eq!(backend.stats.cancelled(), 0);
}

#[tokio::test]
async fn backend_connections_are_kept_alive_reused_and_closed_when_idle() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "pool_idle_timeout = \"200ms\"\n",
    ))
    .await;
    let client = client();
    for _ in 0..20 {
        assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    }
    // One after the other: one backend connection carried all of them.
    assert_eq!(backend.stats.opened(), 1);
    assert_eq!(weir.upstream("app").idle_connections(), 1);
    // Left idle, weir closes it.
    backend.stats.wait_closed(1).await;
    until("the idle connection to leave the pool", || {
        weir.upstream("app").idle_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn a_backend_connection_closed_while_idle_is_not_used_again() {
    // A backend that answers one request per connection as keep-alive, then closes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    let backend = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let weir = spawn_weir(&upstream_toml(addr, "")).await;
    let client = client();
    for i in 1..=3 {
        assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), i);
        until("weir to see the backend close its connection", || {
            weir.upstream("app").idle_connections() == 0
        })
        .await;
    }
    backend.abort();
}

#[tokio::test]
async fn refused_upstream_connection_answers_502() {
    // Bind, learn the port, close: nothing listens there now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let weir = spawn_weir(&upstream_toml(port, "")).await;
    let (status, headers, body) = get(&client(), &weir.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-weir-reject"], "upstream_connect");
    assert_eq!(
        &body[..],
        b"upstream error\n",
        "error bodies leak no internals"
    );
    let pool = weir.upstream("app").pool();
    assert_eq!(
        pool.counters().upstream_errors(UpstreamErrorKind::Connect),
        1
    );
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test]
async fn upstream_that_breaks_http_answers_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"this is not HTTP\r\n\r\n").await;
            });
        }
    });
    let weir = spawn_weir(&upstream_toml(addr, "")).await;
    let (status, headers, _) = get(&client(), &weir.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-weir-reject"], "upstream_protocol");
}

#[tokio::test]
async fn h2c_clients_and_h2c_upstreams() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&format!(
        "{}[[upstream]]\nname = \"grpc\"\naddr = \"{}\"\nprotocol = \"h2c\"\n\
         [[route]]\npath_prefix = \"/h2/\"\nupstream = \"grpc\"\n\
         [[route]]\nhost = \"h2c.test\"\nupstream = \"grpc\"\n[[route]]\nupstream = \"app\"\n",
        upstream_toml(backend.addr, ""),
        backend.addr
    ))
    .await;
    // HTTP/2 prior knowledge from the client, HTTP/1.1 to the backend.
    let (status, _, body) = get(&h2_client(), &weir.url("/headers")).await;
    assert_eq!(status, StatusCode::OK);
    let seen = String::from_utf8(body.to_vec()).unwrap();
    assert!(seen.contains(&format!("host: {}", weir.addr)), "{seen}");
    // HTTP/1.1 from the client, h2c to the backend.
    let (status, _, _) = get(&client(), &weir.url("/h2/x")).await;
    assert_eq!(status, StatusCode::OK);
    // The forwarded fields reach an h2c backend too, the client's X-Forwarded-For extended.
    let req = Request::get(weir.url("/headers"))
        .header("host", "h2c.test")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "gopher")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = String::from_utf8(body.to_vec()).unwrap();
    for kept in [
        "x-forwarded-for: 203.0.113.7, 127.0.0.1\n",
        "x-forwarded-proto: http\n",
        "x-forwarded-host: h2c.test\n",
    ] {
        assert!(seen.contains(kept), "{kept:?} missing:\n{seen}");
    }
    assert!(!seen.contains("gopher"), "{seen}");
    assert_eq!(weir.upstream("grpc").pool().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_body_streams_both_ways_without_being_buffered() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 64 * 1024 * 1024;
    let backend = spawn_backend().await;
    // Buffering off: bodies stream both ways (what large uploads and gRPC streaming use).
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "request_buffer = 0\nresponse_buffer = 0",
    ))
    .await;

    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<_>>();
    let req = Request::post(weir.url("/echo"))
        .body(StreamBody::new(Box::pin(stream)))
        .unwrap();
    let response = tokio::spawn(async move { client.request(req).await });

    // Lock-step for the first chunks: the next chunk is only sent once the previous one came
    // back through weir and the backend. A proxy that buffered either body whole would deadlock
    // here (and the test would time out).
    let chunk = |i: usize| Bytes::from(vec![(i % 251) as u8; CHUNK]);
    let chunk_sum = |i: usize| (i % 251) as u64 * CHUNK as u64;
    tx.send(chunk(0)).await.unwrap();
    let resp = within("the echo head", response).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut received, mut received_sum) = (0usize, 0u64);
    let mut take = |data: Bytes| {
        received += data.len();
        received_sum += data.iter().map(|&b| b as u64).sum::<u64>();
        received
    };
    for i in 1..8 {
        let mut got = 0;
        while got < i * CHUNK {
            let frame = within("an echoed chunk", body.frame())
                .await
                .unwrap()
                .unwrap();
            got = take(frame.into_data().unwrap());
        }
        tx.send(chunk(i)).await.unwrap();
    }
    // Then the bulk, written concurrently with reading.
    let writer = tokio::spawn(async move {
        for i in 8..TOTAL / CHUNK {
            tx.send(chunk(i)).await.unwrap();
        }
    });
    while let Some(frame) = within("the rest of the echo", body.frame()).await {
        take(frame.unwrap().into_data().unwrap());
    }
    writer.await.unwrap();
    assert_eq!(received, TOTAL);
    assert_eq!(received_sum, (0..TOTAL / CHUNK).map(chunk_sum).sum::<u64>());
    assert_eq!(weir.upstream("app").pool().in_flight(), 0);
}

/// POSTs `total` bytes to `/consume` as a chunked body (no Content-Length).
async fn chunked_upload(weir: &Weir, total: usize) -> (StatusCode, http::HeaderMap, Bytes) {
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..total / 65536)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'u'; 65536]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<_>>();
    let resp = within(
        "the upload's answer",
        client.request(Request::post(weir.url("/consume")).body(body).unwrap()),
    )
    .await
    .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn a_body_over_request_buffer_streams_on_by_default_or_gets_413() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "request_buffer = \"256KiB\"")).await;
    // 1 MiB, chunked: the first 256 KiB are buffered, then the rest streams.
    let (status, _, body) = chunked_upload(&weir, 1 << 20).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"1048576");
    // Announced: the same.
    let req = Request::post(weir.url("/consume"))
        .body(Full::new(Bytes::from(vec![b'a'; 300_000])))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"300000"[..]));

    let rejecting = spawn_weir(&upstream_toml(
        backend.addr,
        "request_buffer = \"256KiB\"\noversized_body = \"reject\"",
    ))
    .await;
    let (status, headers, _) = chunked_upload(&rejecting, 1 << 20).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers["x-weir-reject"], "body_too_large");
    let req = Request::post(rejecting.url("/consume"))
        .body(Full::new(Bytes::from(vec![b'a'; 300_000])))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Within the buffer: served.
    let req = Request::post(rejecting.url("/consume"))
        .body(Full::new(Bytes::from(vec![b'a'; 1000])))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, StatusCode::OK);
    assert_eq!(rejecting.upstream("app").pool().in_flight(), 0);
}

#[tokio::test]
async fn a_deadline_while_buffering_the_response_answers_504() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "request_timeout = \"300ms\"")).await;
    let (status, headers, _) = get(&client(), &weir.url("/head-then-hang")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-weir-reject"], "deadline");
    backend.stats.wait_cancelled(1).await;
    assert_eq!(weir.upstream("app").pool().in_flight(), 0);
    assert_eq!(weir.proxy.buffers().used(), 0);
}

/// A backend that reads request heads (bodies are not read) and answers each with what `answer`
/// returns for (connection number from 1, request number on it from 1, request path), written
/// as given, closing the connection after an HTTP/1.0 answer; `None` closes it without a word.
/// Returns its address and a count of the connections it accepted.
async fn scripted_backend(
    answer: fn(usize, usize, &str) -> Option<&'static [u8]>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let conn = count.fetch_add(1, SeqCst) + 1;
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                for request in 1.. {
                    let end = loop {
                        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    match answer(conn, request, &path) {
                        Some(bytes) => {
                            if stream.write_all(bytes).await.is_err()
                                || bytes.starts_with(b"HTTP/1.0")
                            {
                                return;
                            }
                        }
                        None => return,
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn every_framing_a_backend_may_use_arrives_whole() {
    // Buffered whole before the head is sent, and streamed.
    for extra in ["", "response_buffer = 0\n"] {
        let (addr, accepted) = scripted_backend(|_, _, path| {
            Some(match path {
                // Chunked, with an extension and a trailer; keep-alive.
                "/chunked" => {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                      5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                }
                // An interim answer first, then the final one; keep-alive.
                "/continue" => {
                    b"HTTP/1.1 100 Continue\r\n\r\n\
                      HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
                }
                // HTTP/1.0 without a length: the body ends with the connection.
                "/until-close" => b"HTTP/1.0 200 OK\r\n\r\nuntil close",
                _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            })
        })
        .await;
        let weir = spawn_weir(&upstream_toml(addr, extra)).await;
        let client = client();
        for (path, body) in [
            ("/chunked", "hello world"),
            ("/continue", "final"),
            ("/", "ok"),
        ] {
            let (status, _, got) = get(&client, &weir.url(path)).await;
            assert_eq!(
                (status, &got[..]),
                (StatusCode::OK, body.as_bytes()),
                "{path} {extra}"
            );
        }
        // All three ended cleanly with keep-alive: one backend connection carried them.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(weir.upstream("app").idle_connections(), 1);

        let (status, _, got) = get(&client, &weir.url("/until-close")).await;
        assert_eq!((status, &got[..]), (StatusCode::OK, &b"until close"[..]));
        // The backend closed that connection after it: the next request opens another.
        assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn a_request_the_backend_drops_unanswered_on_a_pooled_connection_is_retried_if_idempotent() {
    // The first connection answers its first request, keeps alive, then closes on the next one
    // without a word (as a backend closing an idle connection just as the request arrives).
    // Later connections answer everything.
    let (addr, accepted) = scripted_backend(|conn, request, _| {
        (conn > 1 || request == 1).then_some(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..])
    })
    .await;
    let weir = spawn_weir(&upstream_toml(addr, "")).await;
    let client = client();
    assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A POST is not sent twice: the backend may have acted on it.
    let (addr, _) = scripted_backend(|conn, request, _| {
        (conn > 1 || request == 1).then_some(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..])
    })
    .await;
    let weir = spawn_weir(&upstream_toml(addr, "")).await;
    assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    let post = Request::post(weir.url("/"))
        .body(Full::new(Bytes::from_static(b"order")))
        .unwrap();
    let (status, headers, _) = send(&client, post).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-weir-reject"], "upstream_reset");
}
