//! Fair shares between tenants (`tenant_header`): waiting requests are served round-robin
//! across tenants, a tenant holding its share while others wait is turned away (429
//! `tenant_share`), and a full queue sheds such a tenant's latest waiter first.

mod support;

use http::StatusCode;
use support::*;
use tokio::task::JoinHandle;

async fn weir_with_tenants(backend: &Backend, keys: &str) -> Weir {
    let keys = format!("tenant_header = \"x-tenant\"\nqueue_timeout = \"20s\"\n{keys}");
    spawn_weir(&upstream_toml(backend.addr, &keys)).await
}

/// A `/gate` request of `tenant`, in the background.
fn of(weir: &Weir, tenant: &str) -> JoinHandle<(StatusCode, String)> {
    gated(weir, &[("x-tenant", tenant)])
}

#[tokio::test]
async fn waiting_requests_are_served_round_robin_across_tenants() {
    let backend = spawn_backend().await;
    let weir = weir_with_tenants(&backend, "max_concurrency = 1\ntenant_max_share = 1.0").await;
    let held = of(&weir, "h");
    backend.stats.wait_seen(1).await;
    let a1 = of(&weir, "a");
    queued(&weir, 1).await;
    let a2 = of(&weir, "a");
    queued(&weir, 2).await;
    let a3 = of(&weir, "a");
    queued(&weir, 3).await;
    let b1 = of(&weir, "b");
    queued(&weir, 4).await;
    // One request at the backend at a time: each opening answers the one holding the slot.
    backend.stats.open_gate(1);
    assert_eq!(within("held", held).await.unwrap().0, 200);
    backend.stats.open_gate(1);
    assert_eq!(within("a1", a1).await.unwrap().0, 200);
    // b's turn comes before a's second request, though it arrived after a's third.
    backend.stats.open_gate(1);
    assert_eq!(within("b1", b1).await.unwrap().0, 200);
    assert!(!a2.is_finished() && !a3.is_finished());
    backend.stats.open_gate(2);
    for r in [a2, a3] {
        assert_eq!(within("a", r).await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn a_tenant_at_its_share_while_others_wait_is_turned_away_with_429() {
    let backend = spawn_backend().await;
    let weir = weir_with_tenants(&backend, "max_concurrency = 4").await;
    // Alone, a tenant uses every slot: nobody else waits.
    let mut a: Vec<_> = (0..4).map(|_| of(&weir, "a")).collect();
    backend.stats.wait_seen(4).await;
    let b1 = of(&weir, "b");
    queued(&weir, 1).await;
    // Now b waits, and a holds 4 of 4 slots, over its half.
    let (status, reason) = within("a5", of(&weir, "a")).await.unwrap();
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "tenant_share")
    );
    backend.stats.open_gate(5);
    a.push(b1);
    for r in a {
        assert_eq!(within("an answer", r).await.unwrap().0, 200);
    }
    let m = scrape(weir.admin).await;
    assert_eq!(m.rejected("app", "tenant_share"), 1.0);
}

#[tokio::test]
async fn a_full_queue_sheds_the_latest_waiter_of_a_tenant_over_its_share_first() {
    let backend = spawn_backend().await;
    let weir = weir_with_tenants(&backend, "max_concurrency = 2\nmax_queue = 2").await;
    let held: Vec<_> = (0..2).map(|_| of(&weir, "a")).collect();
    backend.stats.wait_seen(2).await;
    let a3 = of(&weir, "a");
    queued(&weir, 1).await;
    let a4 = of(&weir, "a");
    queued(&weir, 2).await;
    // Full, and all of it a's: b takes a's latest place.
    let b1 = of(&weir, "b");
    let (status, reason) = within("a4", a4).await.unwrap();
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "tenant_share")
    );
    queued(&weir, 2).await;
    backend.stats.open_gate(4);
    for r in held.into_iter().chain([a3, b1]) {
        assert_eq!(within("an answer", r).await.unwrap().0, 200);
    }
    assert_eq!(
        backend.stats.seen(),
        4,
        "the shed request reached the backend"
    );
}

#[tokio::test]
async fn a_critical_request_is_not_turned_away_for_its_tenants_share() {
    let backend = spawn_backend().await;
    let weir = weir_with_tenants(
        &backend,
        "max_concurrency = 2\npriority_header = \"x-priority\"",
    )
    .await;
    let held: Vec<_> = (0..2).map(|_| of(&weir, "a")).collect();
    backend.stats.wait_seen(2).await;
    let b1 = of(&weir, "b");
    queued(&weir, 1).await;
    // a holds both slots while b waits: a's normal request is over its share...
    let (status, _) = within("a3", of(&weir, "a")).await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // ...its critical one waits its turn.
    let critical = gated(&weir, &[("x-tenant", "a"), ("x-priority", "critical")]);
    queued(&weir, 2).await;
    backend.stats.open_gate(4);
    for r in held.into_iter().chain([b1, critical]) {
        assert_eq!(within("an answer", r).await.unwrap().0, 200);
    }
}
