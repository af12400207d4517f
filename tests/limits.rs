//! The admission pool seen from outside: the limit holds under a burst, a full queue answers 503
//! at once, queued requests time out or leave when their client goes, panics free their slot.

mod support;

use std::sync::Arc;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weir::Options;
use weir::Reason;
use weir::RequestHook;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_200_never_exceeds_the_limit() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 4\nmax_queue = 1000\nqueue_timeout = \"60s\"",
    ))
    .await;
    let client = client();
    let tasks: Vec<_> = (0..200)
        .map(|_| spawn_get(&client, weir.url("/sleep/5")))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(backend.stats.seen(), 200);
    assert_eq!(
        backend.stats.peak(),
        4,
        "the backend saw more (or fewer) than max_concurrency at once"
    );
    let pool = weir.upstream("app").pool();
    assert_eq!((pool.in_flight(), pool.queue_depth()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_1000_at_ten_times_capacity_gets_1000_answers() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 16\nmax_queue = 64\nqueue_timeout = \"30s\"",
    ))
    .await;
    let client = client();
    let tasks: Vec<_> = (0..1000)
        .map(|_| spawn_get(&client, weir.url("/sleep/20")))
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let (status, headers, _) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(headers["x-weir-reject"], "queue_full");
                shed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok + shed, 1000);
    assert!(
        ok >= 80,
        "at least the slots and the queue are served: {ok}"
    );
    assert!(backend.stats.peak() <= 16, "peak {}", backend.stats.peak());
    let counters = weir.upstream("app").pool().counters();
    assert_eq!(counters.rejected(Reason::QueueFull), shed);
    assert_eq!(backend.stats.seen() as u64, ok);
}

#[tokio::test]
async fn full_queue_answers_503_at_once_without_touching_the_backend() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 1\nqueue_timeout = \"60s\"\nretry_after = \"2s\"",
    ))
    .await;
    let client = client();
    let holder = spawn_get(&client, weir.url("/gate"));
    backend.stats.wait_seen(1).await;
    let queued = spawn_get(&client, weir.url("/gate"));
    let pool = weir.upstream("app").pool();
    until("one request queued", || pool.queue_depth() == 1).await;

    // The slot and the queue are full, and the backend will not answer until the gate opens:
    // getting this answer at all proves it did not wait for the backend.
    let (status, headers, body) = get(&client, &weir.url("/gate")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["x-weir-reject"], "queue_full");
    assert_eq!(&body[..], b"overloaded, retry later\n");
    assert_eq!(backend.stats.seen(), 1);
    assert_eq!(pool.counters().rejected(Reason::QueueFull), 1);

    backend.stats.open_gate(2);
    assert_eq!(holder.await.unwrap().0, StatusCode::OK);
    assert_eq!(queued.await.unwrap().0, StatusCode::OK);
    until("idle pool", || pool.in_flight() == 0).await;
}

#[tokio::test]
async fn queue_timeout_answers_503() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 4\nqueue_timeout = \"100ms\"",
    ))
    .await;
    let client = client();
    let holder = spawn_get(&client, weir.url("/gate"));
    backend.stats.wait_seen(1).await;

    let (status, headers, _) = get(&client, &weir.url("/gate")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-weir-reject"], "queue_timeout");
    assert!(headers.contains_key("retry-after"));
    let pool = weir.upstream("app").pool();
    assert_eq!(pool.counters().rejected(Reason::QueueTimeout), 1);
    assert_eq!(pool.queue_depth(), 0);
    assert_eq!(
        backend.stats.seen(),
        1,
        "the timed-out request never reached the backend"
    );

    backend.stats.open_gate(1);
    assert_eq!(holder.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn client_that_leaves_the_queue_never_reaches_the_backend() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 4\nqueue_timeout = \"60s\"",
    ))
    .await;
    let client = client();
    let holder = spawn_get(&client, weir.url("/gate"));
    backend.stats.wait_seen(1).await;

    let mut raw = TcpStream::connect(weir.addr).await.unwrap();
    raw.write_all(b"GET /gate HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let pool = weir.upstream("app").pool();
    until("the raw request to queue", || pool.queue_depth() == 1).await;
    drop(raw);
    until("the queue to empty", || pool.queue_depth() == 0).await;
    assert_eq!(pool.counters().rejected(Reason::ClientGone), 1);

    backend.stats.open_gate(2);
    assert_eq!(holder.await.unwrap().0, StatusCode::OK);
    // A request after it goes through, and the one that left was never forwarded.
    assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    assert_eq!(backend.stats.seen(), 2);
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test]
async fn a_panic_answers_500_frees_the_slot_and_weir_keeps_serving() {
    let backend = spawn_backend().await;
    let hook: RequestHook = Arc::new(|req| {
        if req.uri.path() == "/panic" {
            panic!("injected by the test");
        }
    });
    let weir = spawn_weir_with(
        &upstream_toml(backend.addr, "max_concurrency = 1\nmax_queue = 0"),
        Options {
            request_hook: Some(hook),
        },
    )
    .await;
    let client = client();
    for _ in 0..3 {
        let (status, headers, _) = get(&client, &weir.url("/panic")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers["x-weir-reject"], "internal");
    }
    let pool = weir.upstream("app").pool();
    assert_eq!(pool.in_flight(), 0);
    // With a single slot and no queue, this only succeeds if the panics gave the slot back.
    assert_eq!(get(&client, &weir.url("/")).await.0, StatusCode::OK);
    assert_eq!(pool.counters().rejected(Reason::Internal), 3);
    assert_eq!(backend.stats.seen(), 1);
}
