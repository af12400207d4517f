//! Request validation before routing (RFC 9112 §3.2): one Host per HTTP/1.1 request, and an
//! absolute-form target's authority in place of Host, so that routing and the backend see the
//! same host. Malformed requests are sent raw, as no well-behaved client would send them.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` on a new connection and reads the answer until weir closes it or a whole answer
/// with a body of `Content-Length` arrived.
async fn raw(weir: &Weir, head: &str) -> String {
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    within("an answer", async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|n| n.trim().parse::<usize>().ok());
                if len.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

const ROUTES: &str = "[[route]]\nhost = \"other.example\"\nupstream = \"other\"\n\
                      [[route]]\nupstream = \"app\"\n";

async fn two_upstreams() -> (Backend, Backend, Weir) {
    let app = spawn_backend().await;
    let other = spawn_backend().await;
    let weir = spawn_weir(&format!(
        "{}[[upstream]]\nname = \"other\"\naddr = \"{}\"\n{ROUTES}",
        upstream_toml(app.addr, ""),
        other.addr
    ))
    .await;
    (app, other, weir)
}

#[tokio::test]
async fn a_request_without_host_or_with_two_is_refused_before_routing() {
    let (app, other, weir) = two_upstreams().await;
    for head in [
        "GET /headers HTTP/1.1\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: other.example\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: a.example/x\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
    ] {
        let answer = raw(&weir, head).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?} -> {answer}");
        assert!(answer.contains("x-weir-reject: bad_request"), "{answer}");
    }
    assert_eq!(
        app.stats.seen() + other.stats.seen(),
        0,
        "no backend saw them"
    );
    let refused = scrape(weir.admin).await.value(
        "weir_requests_refused_total",
        &[("listener", "test"), ("reason", "bad_request")],
    );
    assert_eq!(refused, 4.0);

    // HTTP/1.0 has no Host requirement: forwarded to the route without a host condition.
    let answer = raw(&weir, "GET /headers HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert_eq!(app.stats.seen(), 1);
    weir.stop().await;
}

#[tokio::test]
async fn an_absolute_form_target_routes_and_forwards_by_its_authority() {
    let (app, other, weir) = two_upstreams().await;
    // The target names other.example; Host says a.example: the target wins, for routing and
    // for what the backend is told.
    let answer = raw(
        &weir,
        "GET http://other.example/headers HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!((app.stats.seen(), other.stats.seen()), (0, 1));
    let body = answer
        .split_once("\r\n\r\n")
        .unwrap()
        .1
        .to_ascii_lowercase();
    assert!(body.contains("host: other.example"), "{body}");
    assert!(!body.contains("a.example"), "{body}");

    // With no Host at all, the target's authority is the host.
    let answer = raw(
        &weir,
        "GET http://other.example/headers HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(other.stats.seen(), 2);

    // A target with user information is refused.
    let answer = raw(
        &weir,
        "GET http://u@other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    weir.stop().await;
}

#[tokio::test]
async fn http2_with_a_host_that_differs_from_its_authority_is_refused() {
    let (app, _other, weir) = two_upstreams().await;
    let c = h2_client();
    let ok = http::Request::get(weir.url("/"))
        .header("host", weir.addr.to_string())
        .body(Default::default())
        .unwrap();
    assert_eq!(send(&c, ok).await.0, 200);
    let bad = http::Request::get(weir.url("/"))
        .header("host", "elsewhere.example")
        .body(Default::default())
        .unwrap();
    let (status, headers, _) = send(&c, bad).await;
    assert_eq!(status, 400);
    assert_eq!(headers["x-weir-reject"], "bad_request");
    assert_eq!(app.stats.seen(), 1);
    weir.stop().await;
}
