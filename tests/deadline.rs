//! A plain HTTP client's deadline (the upstream's `deadline_header`): told to the backend as
//! what is left, a queued request leaves when it passes, and a request that cannot make it
//! through the queue ahead is refused at once and never reaches the backend.

mod support;

use std::time::Instant;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

async fn weir_with_deadlines(backend: std::net::SocketAddr, extra: &str) -> Weir {
    let keys = format!("deadline_header = \"x-deadline-ms\"\n{extra}");
    spawn_weir(&upstream_toml(backend, &keys)).await
}

fn with_deadline(weir: &Weir, path: &str, ms: u64) -> Request<Full<bytes::Bytes>> {
    Request::get(weir.url(path))
        .header("x-deadline-ms", ms.to_string())
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn the_backend_is_told_what_is_left_of_the_clients_deadline() {
    let backend = spawn_backend().await;
    let weir = weir_with_deadlines(backend.addr, "").await;
    let start = Instant::now();
    let (status, _, body) = send(&client(), with_deadline(&weir, "/headers", 800)).await;
    let call_ms = start.elapsed().as_millis() as u64;
    assert_eq!(status, 200);
    let seen = String::from_utf8_lossy(&body);
    let told: u64 = seen
        .lines()
        .find_map(|l| l.strip_prefix("x-deadline-ms: "))
        .unwrap_or_else(|| panic!("no deadline forwarded: {seen}"))
        .parse()
        .unwrap();
    // What was left less weir's 5 ms margin, however long the trip took.
    assert!(
        told <= 795 && told + call_ms + 5 >= 795,
        "told {told} ms, call took {call_ms} ms"
    );
    // weir's own request_timeout (30 s) is longer: without the header, nothing is added.
    let (_, _, body) = get(&client(), &weir.url("/headers")).await;
    assert!(!String::from_utf8_lossy(&body).contains("x-deadline-ms"));
}

#[tokio::test]
async fn a_queued_request_leaves_when_its_deadline_passes() {
    let backend = spawn_backend().await;
    let weir =
        weir_with_deadlines(backend.addr, "max_concurrency = 1\nqueue_timeout = \"20s\"").await;
    let held = spawn_get(&client(), weir.url("/gate"));
    backend.stats.wait_seen(1).await;
    let (status, headers, _) = send(&client(), with_deadline(&weir, "/late", 200)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-weir-reject"], "deadline");
    assert_eq!(weir.upstream("app").pool().queue_depth(), 0);
    backend.stats.open_gate(1);
    assert_eq!(within("held", held).await.unwrap().0, 200);
    assert_eq!(
        backend.stats.seen(),
        1,
        "the late request reached the backend"
    );
    // Not the backend's failure: no upstream timeout is counted.
    let m = scrape(weir.admin).await;
    let timeouts = m.value(
        "weir_upstream_errors_total",
        &[("upstream", "app"), ("kind", "timeout")],
    );
    assert_eq!(timeouts, 0.0);
}

#[tokio::test]
async fn a_deadline_shorter_than_the_queue_ahead_is_refused_at_once() {
    let backend = spawn_backend().await;
    let weir = weir_with_deadlines(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 100\nqueue_timeout = \"20s\"",
    )
    .await;
    // Ten requests of 50 ms through one slot: the queue drains one every 50 ms, and weir learns
    // that pace.
    let c = client();
    let first: Vec<_> = (0..10)
        .map(|_| spawn_get(&c, weir.url("/sleep/50")))
        .collect();
    for r in first {
        assert_eq!(within("a sleep", r).await.unwrap().0, 200);
    }
    // Ten more queue; one that has 100 ms cannot wait behind nine of 50 ms.
    let second: Vec<_> = (0..10)
        .map(|_| spawn_get(&c, weir.url("/sleep/50")))
        .collect();
    until("a queue", || weir.upstream("app").pool().queue_depth() >= 5).await;
    let (status, headers, _) = send(&c, with_deadline(&weir, "/hopeless", 100)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-weir-reject"], "deadline_unmeetable");
    for r in second {
        assert_eq!(within("a sleep", r).await.unwrap().0, 200);
    }
    assert_eq!(
        backend.stats.seen(),
        20,
        "the hopeless request reached the backend"
    );
    let m = scrape(weir.admin).await;
    assert_eq!(m.rejected("app", "deadline_unmeetable"), 1.0);
}

#[tokio::test]
async fn lower_classes_waiting_do_not_count_against_a_higher_classs_deadline() {
    let backend = spawn_backend().await;
    let weir = weir_with_deadlines(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 100\nqueue_timeout = \"20s\"\n\
         priority_header = \"x-priority\"",
    )
    .await;
    let c = client();
    let sheddable = |path: &str| {
        let req = Request::get(weir.url(path))
            .header("x-priority", "sheddable")
            .body(Full::default())
            .unwrap();
        let c = c.clone();
        tokio::spawn(async move { send(&c, req).await })
    };
    // The pace is learned: one 50 ms request after another.
    let first: Vec<_> = (0..10).map(|_| sheddable("/sleep/50")).collect();
    for r in first {
        assert_eq!(within("a sleep", r).await.unwrap().0, 200);
    }
    let second: Vec<_> = (0..10).map(|_| sheddable("/sleep/50")).collect();
    until("a queue", || weir.upstream("app").pool().queue_depth() >= 5).await;
    // 300 ms would not cover the sheddable queue (nine of 50 ms), but a critical request
    // overtakes it: it waits for one slot, and is served.
    let req = Request::get(weir.url("/sleep/50"))
        .header("x-priority", "critical")
        .header("x-deadline-ms", "300")
        .body(Full::default())
        .unwrap();
    let (status, headers, _) = send(&c, req).await;
    assert_eq!(status, 200, "{headers:?}");
    for r in second {
        assert_eq!(within("a sleep", r).await.unwrap().0, 200);
    }
}
