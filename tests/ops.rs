//! Operating weir: metrics scraped from the admin listener during and after a burst, readiness
//! through shutdown, and live reloads under load.

mod support;

use http::StatusCode;
use weir::config::Config;

use support::*;

#[tokio::test]
async fn metrics_follow_a_burst_and_count_every_503_by_reason() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 2\nmax_queue = 4\nqueue_timeout = \"1h\"",
    ))
    .await;
    let before = scrape(weir.admin).await;
    assert_eq!(before.limit("app"), 2.0);
    assert_eq!(
        before.value("weir_queue_limit", &[("upstream", "app")]),
        4.0
    );
    assert_eq!(
        before.value("weir_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    // 2 reach the (gated) backend, 4 wait in the queue, and the 6 after them are turned away.
    let c = client();
    let admitted: Vec<_> = (0..6).map(|_| spawn_get(&c, weir.url("/gate"))).collect();
    backend.stats.wait_seen(2).await;
    let pool = weir.upstream("app").pool();
    until("4 requests queued", || pool.queue_depth() == 4).await;
    let mut turned_away = 0;
    for _ in 0..6 {
        let (status, headers, _) = get(&c, &weir.url("/gate")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-weir-reject"], "queue_full");
        turned_away += 1;
    }

    let during = scrape(weir.admin).await;
    let app = [("upstream", "app")];
    assert_eq!(during.value("weir_queue_depth", &app), 4.0);
    assert_eq!(during.value("weir_in_flight", &app), 2.0);
    assert_eq!(
        during.value(
            "weir_requests_rejected_total",
            &[("upstream", "app"), ("reason", "queue_full")]
        ),
        turned_away as f64
    );

    backend.stats.open_gate(6);
    for r in admitted {
        assert_eq!(r.await.unwrap().0, StatusCode::OK);
    }
    until("the last slot freed", || pool.in_flight() == 0).await;
    // A request is recorded when hyper drops its finished response body, just after the client
    // has read it: wait for all 12 records.
    let durations = pool.counters().request_duration();
    until("12 requests recorded", || durations.count() == 12).await;
    let after = scrape(weir.admin).await;
    assert_eq!(after.value("weir_queue_depth", &app), 0.0);
    assert_eq!(after.value("weir_in_flight", &app), 0.0);
    let code = |c| after.value("weir_requests_total", &[("upstream", "app"), ("code", c)]);
    assert_eq!((code("2xx"), code("5xx"), code("4xx")), (6.0, 6.0, 0.0));
    assert_eq!(
        after.histogram_count("weir_request_duration_seconds", "app"),
        12.0
    );
    // Only admitted requests have a queue wait: 2 at once, 4 after waiting.
    assert_eq!(after.histogram_count("weir_queue_wait_seconds", "app"), 6.0);
    assert_eq!(
        after.value(
            "weir_requests_rejected_total",
            &[("upstream", "app"), ("reason", "queue_full")]
        ),
        6.0
    );
    let test = [("listener", "test")];
    assert!(after.value("weir_connections_total", &test) >= 1.0);
    assert_eq!(
        after.value(
            "weir_connections_rejected_total",
            &[("listener", "test"), ("reason", "limit")]
        ),
        0.0
    );
}

#[tokio::test]
async fn queue_timeouts_are_counted_under_their_own_reason() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 10\nqueue_timeout = \"20ms\"",
    ))
    .await;
    let c = client();
    let held = spawn_get(&c, weir.url("/gate"));
    backend.stats.wait_seen(1).await;
    let mut timed_out = 0;
    for _ in 0..3 {
        let (status, headers, _) = get(&c, &weir.url("/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-weir-reject"], "queue_timeout");
        timed_out += 1;
    }
    let m = scrape(weir.admin).await;
    let reason = |r| {
        m.value(
            "weir_requests_rejected_total",
            &[("upstream", "app"), ("reason", r)],
        )
    };
    assert_eq!(reason("queue_timeout"), timed_out as f64);
    assert_eq!(reason("queue_full"), 0.0);
    backend.stats.open_gate(1);
    assert_eq!(held.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn health_and_readiness_and_unknown_paths() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "")).await;
    let c = client();
    assert_eq!(get(&c, &weir.admin_url("/healthz")).await.0, StatusCode::OK);
    assert_eq!(get(&c, &weir.admin_url("/readyz")).await.0, StatusCode::OK);
    assert_eq!(
        get(&c, &weir.admin_url("/nope")).await.0,
        StatusCode::NOT_FOUND
    );
    // The admin port is not a traffic port, and the traffic port has no admin paths.
    let (status, _, body) = get(&c, &weir.url("/metrics")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"ok"[..]),
        "answered by the backend"
    );
}

#[tokio::test]
async fn readyz_turns_503_on_shutdown_while_traffic_is_still_served() {
    let backend = spawn_backend().await;
    let mut weir = spawn_weir(&format!(
        "shutdown_delay = \"4s\"\n{}",
        upstream_toml(backend.addr, "")
    ))
    .await;
    let c = client();
    assert_eq!(get(&c, &weir.admin_url("/readyz")).await.0, StatusCode::OK);
    weir.begin_shutdown();
    within("readyz to answer 503", async {
        while get(&c, &weir.admin_url("/readyz")).await.0 != StatusCode::SERVICE_UNAVAILABLE {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Not ready, and still serving: new connections are accepted during shutdown_delay.
    let fresh = client();
    assert_eq!(get(&fresh, &weir.url("/")).await.0, StatusCode::OK);
    assert_eq!(get(&c, &weir.admin_url("/healthz")).await.0, StatusCode::OK);
    let addr = weir.addr;
    weir.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A limit raised and lowered under load: queued requests are admitted at the new limit at once,
/// admitted ones are never cancelled, and every request gets its 200.
#[tokio::test]
async fn reload_changes_a_limit_under_load_without_a_failed_request() {
    let backend = spawn_backend().await;
    let upstream = |limit: usize| {
        upstream_toml(
            backend.addr,
            &format!("max_concurrency = {limit}\nmax_queue = 100\nqueue_timeout = \"1h\""),
        )
    };
    let weir = spawn_weir(&upstream(2)).await;
    let reload = |limit| {
        let config = Config::from_toml_str(&weir_toml(&upstream(limit), "")).unwrap();
        weir.reloader.apply(config).unwrap()
    };
    let c = client();
    let requests: Vec<_> = (0..10).map(|_| spawn_get(&c, weir.url("/gate"))).collect();
    let pool = weir.upstream("app").pool();
    backend.stats.wait_seen(2).await;
    until("8 requests queued", || pool.queue_depth() == 8).await;

    // Raised: three queued requests are admitted at once, with no slot freed.
    assert!(reload(5).is_empty(), "nothing here needs a restart");
    backend.stats.wait_seen(5).await;
    assert_eq!(pool.queue_depth(), 5);

    // Lowered below what is in flight: the five keep running, and once they finish the rest go
    // through one at a time.
    reload(1);
    assert_eq!(pool.in_flight(), 5);
    backend.stats.open_gate(5);
    backend.stats.wait_seen(6).await;
    until("one in flight", || {
        pool.in_flight() == 1 && pool.queue_depth() == 4
    })
    .await;
    assert_eq!(backend.stats.current(), 1);
    for seen in 7..=10 {
        backend.stats.open_gate(1);
        backend.stats.wait_seen(seen).await;
        assert!(backend.stats.current() <= 1);
    }
    backend.stats.open_gate(1);
    for r in requests {
        assert_eq!(r.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(backend.stats.cancelled(), 0);

    let m = scrape(weir.admin).await;
    assert_eq!(m.limit("app"), 1.0);
    assert_eq!(m.reloads(), (2.0, 0.0));
}

#[tokio::test]
async fn reload_moves_routes_and_addresses_and_reports_what_needs_a_restart() {
    let old = spawn_backend().await;
    let new = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(old.addr, "")).await;
    let c = client();
    assert_eq!(get(&c, &weir.url("/")).await.0, StatusCode::OK);
    assert_eq!(old.stats.seen(), 1);

    // The same upstream at a new address, and a listener setting that cannot change live.
    let text = weir_toml(&upstream_toml(new.addr, ""), "max_connections = 7");
    let restart = weir
        .reloader
        .apply(Config::from_toml_str(&text).unwrap())
        .unwrap();
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert!(restart[0].contains("listener \"test\""), "{restart:?}");
    assert_eq!(get(&c, &weir.url("/")).await.0, StatusCode::OK);
    assert_eq!((old.stats.seen(), new.stats.seen()), (1, 1));
}

#[tokio::test]
async fn a_bad_reload_is_refused_counted_and_changes_nothing() {
    let backend = spawn_backend().await;
    let weir = spawn_weir(&upstream_toml(backend.addr, "max_concurrency = 3")).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("weir-ops-bad-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        weir_toml(
            &upstream_toml(backend.addr, "max_concurrency = 0\nmax_queue = -1"),
            "",
        ),
    )
    .unwrap();
    let err = weir.reloader.reload_file(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).ok();
    assert!(err.contains("upstream[0].max_concurrency"), "{err}");
    assert!(
        err.contains("upstream[0].max_queue"),
        "every problem is reported: {err}"
    );

    let m = scrape(weir.admin).await;
    assert_eq!(m.reloads(), (0.0, 1.0));
    assert_eq!(m.limit("app"), 3.0);
    assert_eq!(get(&client(), &weir.url("/")).await.0, StatusCode::OK);
}
