//! Priority classes through a real weir and backend: a freed slot goes to the highest class
//! waiting, a full queue sheds its lowest class's latest waiter at once, a route's class beats
//! the header, and lower classes use every slot the higher ones leave.

mod support;

use http::StatusCode;
use support::*;
use tokio::task::JoinHandle;

/// weir with one slot, in front of the test backend; `x-priority` names a class, and requests
/// for host `batch.test` are sheddable whatever they say.
async fn one_slot(max_queue: usize) -> (Backend, Weir) {
    let backend = spawn_backend().await;
    let body = format!(
        "{}\n[[route]]\nhost = \"batch.test\"\nupstream = \"app\"\npriority = \"sheddable\"\n\
         [[route]]\nupstream = \"app\"\n",
        upstream_toml(
            backend.addr,
            &format!(
                "max_concurrency = 1\nmax_queue = {max_queue}\nqueue_timeout = \"20s\"\n\
                 priority_header = \"x-priority\""
            )
        )
    );
    let weir = spawn_weir(&body).await;
    (backend, weir)
}

/// A `/gate` request naming `class` (if any) for `host`, in the background.
fn gated_as(weir: &Weir, class: Option<&str>, host: &str) -> JoinHandle<(StatusCode, String)> {
    match class {
        Some(c) => gated(weir, &[("host", host), ("x-priority", c)]),
        None => gated(weir, &[("host", host)]),
    }
}

#[tokio::test]
async fn a_freed_slot_goes_to_the_highest_class_waiting() {
    let (backend, weir) = one_slot(10).await;
    let held = gated_as(&weir, None, "a");
    backend.stats.wait_seen(1).await;
    let sheddable = gated_as(&weir, Some("sheddable"), "a");
    queued(&weir, 1).await;
    let normal = gated_as(&weir, None, "a");
    queued(&weir, 2).await;
    let critical = gated_as(&weir, Some("Critical"), "a");
    queued(&weir, 3).await;
    // One request at the backend at a time: each opening lets exactly the one holding the slot
    // answer, and the slot then goes to the next by class, not by arrival.
    backend.stats.open_gate(1);
    assert_eq!(within("held", held).await.unwrap().0, 200);
    backend.stats.open_gate(1);
    assert_eq!(within("critical", critical).await.unwrap().0, 200);
    assert!(!normal.is_finished() && !sheddable.is_finished());
    backend.stats.open_gate(1);
    assert_eq!(within("normal", normal).await.unwrap().0, 200);
    assert!(!sheddable.is_finished());
    backend.stats.open_gate(1);
    assert_eq!(within("sheddable", sheddable).await.unwrap().0, 200);
    let m = scrape(weir.admin).await;
    let waits = |class| {
        m.value(
            "weir_queue_wait_seconds_count",
            &[("upstream", "app"), ("class", class)],
        )
    };
    assert_eq!(
        (waits("critical"), waits("normal"), waits("sheddable")),
        (1.0, 2.0, 1.0)
    );
}

#[tokio::test]
async fn a_full_queue_sheds_its_lowest_class_latest_waiter_at_once() {
    let (backend, weir) = one_slot(2).await;
    let held = gated_as(&weir, None, "a");
    backend.stats.wait_seen(1).await;
    let s1 = gated_as(&weir, Some("sheddable"), "a");
    queued(&weir, 1).await;
    let s2 = gated_as(&weir, Some("sheddable"), "a");
    queued(&weir, 2).await;
    // Full: a normal request takes the latest sheddable one's place, which is answered now.
    let n1 = gated_as(&weir, None, "a");
    assert_eq!(
        within("the eviction", s2).await.unwrap(),
        (StatusCode::SERVICE_UNAVAILABLE, "evicted".into())
    );
    queued(&weir, 2).await;
    let c1 = gated_as(&weir, Some("critical"), "a");
    assert_eq!(within("the eviction", s1).await.unwrap().1, "evicted");
    queued(&weir, 2).await;
    // Nothing lower is left to shed for a sheddable one, nor for a normal one.
    let s3 = gated_as(&weir, Some("sheddable"), "a");
    assert_eq!(within("s3", s3).await.unwrap().1, "queue_full");
    let c2 = gated_as(&weir, Some("critical"), "a");
    assert_eq!(within("the eviction", n1).await.unwrap().1, "evicted");
    queued(&weir, 2).await;
    backend.stats.open_gate(3);
    for r in [held, c1, c2] {
        assert_eq!(within("an answer", r).await.unwrap().0, 200);
    }
    let m = scrape(weir.admin).await;
    let rejected = |reason| m.rejected("app", reason);
    assert_eq!((rejected("evicted"), rejected("queue_full")), (3.0, 1.0));
    // Those evicted never reached the backend.
    assert_eq!(backend.stats.seen(), 3);
}

#[tokio::test]
async fn a_routes_class_beats_the_header_and_an_unknown_value_is_normal() {
    let (backend, weir) = one_slot(1).await;
    let held = gated_as(&weir, None, "a");
    backend.stats.wait_seen(1).await;
    // Sheddable by its route, whatever it claims.
    let batch = gated_as(&weir, Some("critical"), "batch.test");
    queued(&weir, 1).await;
    // "urgent" names no class: normal, which is still above sheddable.
    let unknown = gated_as(&weir, Some("urgent"), "a");
    assert_eq!(within("the eviction", batch).await.unwrap().1, "evicted");
    queued(&weir, 1).await;
    // A second normal one finds nothing lower to shed.
    let normal = gated_as(&weir, None, "a");
    assert_eq!(within("queue_full", normal).await.unwrap().1, "queue_full");
    backend.stats.open_gate(2);
    assert_eq!(within("held", held).await.unwrap().0, 200);
    assert_eq!(within("unknown", unknown).await.unwrap().0, 200);
}

#[tokio::test]
async fn lower_classes_use_every_slot_the_higher_ones_leave() {
    let backend = spawn_backend().await;
    let body = upstream_toml(
        backend.addr,
        "max_concurrency = 4\nmax_queue = 4\npriority_header = \"x-priority\"",
    );
    let weir = spawn_weir(&body).await;
    // No other class waits: sheddable requests fill all four slots.
    let batch: Vec<_> = (0..4)
        .map(|_| gated_as(&weir, Some("sheddable"), "a"))
        .collect();
    backend.stats.wait_seen(4).await;
    assert_eq!(weir.upstream("app").pool().in_flight(), 4);
    backend.stats.open_gate(4);
    for r in batch {
        assert_eq!(within("a batch answer", r).await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn under_a_standing_queue_codel_cuts_the_wait_to_its_target() {
    let backend = spawn_backend().await;
    let body = upstream_toml(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 10\nqueue_timeout = \"20s\"\n\
         codel = true\ncodel_target = \"10ms\"\ncodel_interval = \"100ms\"",
    );
    let weir = spawn_weir(&body).await;
    let held = gated_as(&weir, None, "a");
    backend.stats.wait_seen(1).await;
    // It finds the queue empty: a burst's queue, with the whole queue_timeout to wait.
    let first = gated_as(&weir, None, "a");
    queued(&weir, 1).await;
    // CoDel's rule is about time: the queue must not have been empty for its interval.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (status, reason) = within("codel", gated_as(&weir, None, "a")).await.unwrap();
    assert_eq!((status.as_u16(), reason.as_str()), (503, "codel"));
    backend.stats.open_gate(2);
    assert_eq!(within("held", held).await.unwrap().0, 200);
    assert_eq!(within("first", first).await.unwrap().0, 200);
}

#[tokio::test]
async fn a_priority_reserve_keeps_a_slot_free_for_higher_classes() {
    let backend = spawn_backend().await;
    let body = format!(
        "{}\n[[route]]\nhost = \"batch.test\"\nupstream = \"app\"\npriority = \"sheddable\"\n\
         [[route]]\nupstream = \"app\"\n",
        upstream_toml(
            backend.addr,
            "max_concurrency = 2\nmax_queue = 10\nqueue_timeout = \"20s\"\npriority_reserve = 1"
        )
    );
    let weir = spawn_weir(&body).await;
    // A normal request has been seen: the reserve holds.
    let (status, _, _) = get(&client(), &weir.url("/plain")).await;
    assert_eq!(status, 200);
    let batch1 = gated_as(&weir, None, "batch.test");
    backend.stats.wait_seen(2).await;
    // One slot is free, but it is the reserve's: the second batch request waits...
    let batch2 = gated_as(&weir, None, "batch.test");
    queued(&weir, 1).await;
    // ...and a normal one takes it at once.
    let normal = gated_as(&weir, None, "a");
    backend.stats.wait_seen(3).await;
    assert_eq!(weir.upstream("app").pool().queue_depth(), 1);
    backend.stats.open_gate(3);
    for r in [batch1, normal, batch2] {
        assert_eq!(within("an answer", r).await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn codel_does_not_cut_a_critical_requests_wait() {
    let backend = spawn_backend().await;
    let body = upstream_toml(
        backend.addr,
        "max_concurrency = 1\nmax_queue = 10\nqueue_timeout = \"20s\"\n\
         priority_header = \"x-priority\"\ncodel = true\ncodel_target = \"10ms\"",
    );
    let weir = spawn_weir(&body).await;
    let held = gated_as(&weir, None, "a");
    backend.stats.wait_seen(1).await;
    let first = gated_as(&weir, None, "a");
    queued(&weir, 1).await;
    // The queue stands for longer than codel_interval (100 ms by default).
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let critical = gated_as(&weir, Some("critical"), "a");
    queued(&weir, 2).await;
    // Well past the target, it still waits, and is served before the normal one.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!critical.is_finished());
    backend.stats.open_gate(3);
    for r in [held, critical, first] {
        assert_eq!(within("an answer", r).await.unwrap().0, 200);
    }
}
