//! WebSocket (HTTP/1.1 Upgrade) through weir, with a real client and server (tungstenite):
//! echoes small and large, many sockets at once, the slot freed after the 101, `max_upgraded`,
//! the idle timeout, the drain, an upgrade the backend refuses, and `h2c` not forwarded.

mod support;

use futures_util::StreamExt;
use support::websocket::{WsStats, round_trip, spawn_ws_backend, ws_connect};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

/// weir in front of a WebSocket backend, with `extra` upstream keys.
async fn weir_for(backend: std::net::SocketAddr, extra: &str) -> Weir {
    spawn_weir(&upstream_toml(backend, extra)).await
}

async fn metric(weir: &Weir, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(weir.admin).await.value(name, labels)
}

#[tokio::test]
async fn many_small_messages_and_one_of_a_megabyte_on_twenty_sockets_at_once() {
    let backend = spawn_ws_backend().await;
    let weir = weir_for(backend.addr, "max_concurrency = 4").await;
    let addr = weir.addr;
    let sockets = (0..20).map(|i| {
        tokio::spawn(async move {
            let mut ws = within("the handshake", ws_connect(addr, "/chat"))
                .await
                .unwrap();
            for n in 0..50 {
                let text = format!("socket {i} message {n}");
                let echo = round_trip(&mut ws, Message::text(text.clone())).await;
                assert_eq!(echo.into_text().unwrap().as_str(), text);
            }
            let big: Vec<u8> = (0..1 << 20).map(|b: u32| (b * 7 + i) as u8).collect();
            let echo = round_trip(&mut ws, Message::binary(big.clone())).await;
            assert!(echo.into_data() == big, "the megabyte came back changed");
            ws.close(None).await.unwrap();
        })
    });
    for s in sockets {
        within("a socket's messages", s).await.unwrap();
    }
    WsStats::wait(&backend.stats.ended, 20).await;
    let m = scrape(weir.admin).await;
    let u = ("upstream", "app");
    assert_eq!(m.value("weir_tunnels_total", &[u]), 20.0);
    for way in ["to_backend", "to_client"] {
        let bytes = m.value("weir_tunnel_bytes_total", &[u, ("direction", way)]);
        assert!(bytes > 20.0 * (1 << 20) as f64, "{way}: {bytes} bytes");
    }
    // The 101s are counted as answers; the tunnels are gone once both ends closed.
    assert_eq!(m.value("weir_requests_total", &[u, ("code", "1xx")]), 20.0);
    until("the tunnels to close", || {
        weir.upstream("app").pool().counters().tunnels.open() == 0
    })
    .await;
}

#[tokio::test]
async fn a_tunnel_holds_no_slot_after_the_101() {
    let backend = spawn_ws_backend().await;
    let weir = weir_for(backend.addr, "max_concurrency = 1\nmax_queue = 0").await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(
            within("a handshake", ws_connect(weir.addr, "/"))
                .await
                .unwrap(),
        );
    }
    // Three tunnels open, the one slot free: plain requests pass, none is turned away.
    assert_eq!(weir.upstream("app").pool().in_flight(), 0);
    for _ in 0..5 {
        let (status, _, body) = get(&client(), &weir.url("/plain")).await;
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    for ws in &mut tunnels {
        let echo = round_trip(ws, Message::text("still here")).await;
        assert_eq!(echo.into_text().unwrap().as_str(), "still here");
    }
    assert_eq!(scrape(weir.admin).await.rejected("app", "queue_full"), 0.0);
}

#[tokio::test]
async fn upgrades_beyond_max_upgraded_get_503_and_never_reach_the_backend() {
    let backend = spawn_ws_backend().await;
    let weir = weir_for(backend.addr, "max_upgraded = 2").await;
    let mut first = within("a handshake", ws_connect(weir.addr, "/"))
        .await
        .unwrap();
    let _second = within("a handshake", ws_connect(weir.addr, "/"))
        .await
        .unwrap();
    let refused = within("the third handshake", ws_connect(weir.addr, "/")).await;
    let Err(tungstenite::Error::Http(response)) = refused else {
        panic!("the third upgrade was not refused: {refused:?}");
    };
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["x-weir-reject"], "upgrade_limit");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(*backend.stats.upgrades.borrow(), 2);
    let u = ("upstream", "app");
    let m = scrape(weir.admin).await;
    assert_eq!(m.rejected("app", "upgrade_limit"), 1.0);
    assert_eq!(m.value("weir_tunnels_open", &[u]), 2.0);
    assert_eq!(m.value("weir_tunnels_limit", &[u]), 2.0);

    // A tunnel that ends gives its place back.
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    drop(first);
    until("a place to come free", || {
        weir.upstream("app").pool().counters().tunnels.open() < 2
    })
    .await;
    let mut third = within("a handshake", ws_connect(weir.addr, "/"))
        .await
        .unwrap();
    let echo = round_trip(&mut third, Message::text("in")).await;
    assert_eq!(echo.into_text().unwrap().as_str(), "in");
}

#[tokio::test]
async fn a_tunnel_idle_for_tunnel_idle_timeout_is_closed_on_both_sides() {
    let backend = spawn_ws_backend().await;
    let weir = weir_for(backend.addr, "tunnel_idle_timeout = \"300ms\"").await;
    let mut ws = within("a handshake", ws_connect(weir.addr, "/"))
        .await
        .unwrap();
    let echo = round_trip(&mut ws, Message::text("hello")).await;
    assert_eq!(echo.into_text().unwrap().as_str(), "hello");
    // Nothing more is sent: weir closes the client's connection and the backend's.
    loop {
        match within("the idle tunnel to close", ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(m)) => assert!(m.is_close() || m.is_ping(), "unexpected {m:?}"),
        }
    }
    WsStats::wait(&backend.stats.ended, 1).await;
    let closed = metric(
        &weir,
        "weir_tunnels_idle_closed_total",
        &[("upstream", "app")],
    )
    .await;
    assert_eq!(closed, 1.0);
}

#[tokio::test]
async fn the_drain_lets_a_tunnel_work_until_drain_timeout_then_closes_it() {
    let backend = spawn_ws_backend().await;
    let body = format!(
        "drain_timeout = \"3s\"\n{}",
        upstream_toml(backend.addr, "")
    );
    let mut weir = spawn_weir(&body).await;
    let mut ws = within("a handshake", ws_connect(weir.addr, "/"))
        .await
        .unwrap();
    weir.begin_shutdown();
    // Draining: the tunnel still carries messages...
    let echo = round_trip(&mut ws, Message::text("during the drain")).await;
    assert_eq!(echo.into_text().unwrap().as_str(), "during the drain");
    // ...until the drain's deadline closes it, and weir stops.
    loop {
        match within("the drain to close the tunnel", ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(m)) => assert!(m.is_close(), "unexpected {m:?}"),
        }
    }
    WsStats::wait(&backend.stats.ended, 1).await;
    if let Some(task) = weir.task.take() {
        within("weir to stop", task).await.unwrap();
    }
}

#[tokio::test]
async fn an_upgrade_the_backend_refuses_is_relayed_and_the_place_given_back() {
    let backend = spawn_ws_backend().await;
    let weir = weir_for(backend.addr, "max_upgraded = 1").await;
    for _ in 0..3 {
        let refused = within("a handshake", ws_connect(weir.addr, "/refuse")).await;
        let Err(tungstenite::Error::Http(response)) = refused else {
            panic!("the refused upgrade was not relayed: {refused:?}");
        };
        assert_eq!(response.status().as_u16(), 426);
        assert_eq!(response.body().as_deref(), Some(&b"no upgrade here"[..]));
    }
    // With max_upgraded = 1, each refusal gave its place back.
    let mut ws = within("a handshake", ws_connect(weir.addr, "/"))
        .await
        .unwrap();
    let echo = round_trip(&mut ws, Message::text("ok")).await;
    assert_eq!(echo.into_text().unwrap().as_str(), "ok");
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_forwarded_and_the_request_is_answered_over_http1() {
    let backend = spawn_ws_backend().await;
    let weir = weir_for(backend.addr, "").await;
    let mut s = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    s.write_all(
        b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = within("the answer", s.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert_eq!(*backend.stats.last_plain_upgrade.lock().unwrap(), None);
    assert_eq!(*backend.stats.upgrades.borrow(), 0);
    // The connection stays an HTTP/1.1 one.
    s.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let n = within("the second answer", s.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}
