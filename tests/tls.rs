//! TLS termination with real handshakes: ALPN (h2, http/1.1) seen from the client, every key
//! format, mTLS, certificate rotation without disturbing open connections, and the handshake
//! deadline. Certificates are in tests/certs (made by tests/certs/make.sh).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weir::Options;
use weir::{ClientTimeout, ConnReject};

use support::*;

fn certs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/certs")
        .join(name)
}

fn tls_keys(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "tls = {{ cert = {:?}, key = {:?}{extra} }}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn client_config(alpn: &[&[u8]], client_cert: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if client_cert {
        let chain = CertificateDer::pem_file_iter(certs("client.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(certs("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    weir: &Weir,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(weir.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    within(
        "the TLS handshake",
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

fn peer_cn(stream: &TlsStream<TcpStream>) -> String {
    let der = &stream.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject().to_string()
}

/// Sends GET `path` over an HTTP/1.1 connection on `stream`; returns the sender to reuse it.
async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> (StatusCode, Bytes) {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::default())
        .unwrap();
    answer(sender.send_request(req)).await
}

/// Waits for a response and reads its body.
async fn answer(
    response: impl std::future::Future<Output = hyper::Result<http::Response<Incoming>>>,
) -> (StatusCode, Bytes) {
    let resp = within("a response", response).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn h1(stream: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends GET `path` over a new HTTP/2 connection on `stream`.
async fn h2_get(stream: TlsStream<TcpStream>, path: &str) -> (StatusCode, Bytes) {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://localhost{path}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    answer(sender.send_request(req)).await
}

#[tokio::test]
async fn alpn_selects_h2_or_http11_and_every_key_format_serves() {
    let backend = spawn_backend().await;
    for (cert, key) in [
        ("chain.pem", "server.key"),
        ("rsa-chain.pem", "rsa.key"),
        ("ec-chain.pem", "ec.key"),
    ] {
        let weir = spawn_weir_on(
            &upstream_toml(backend.addr, ""),
            &tls_keys(&certs(cert), &certs(key), ""),
            Options::default(),
        )
        .await;

        // HTTP/2 when offered.
        let stream = connect(&weir, client_config(&[b"h2", b"http/1.1"], false))
            .await
            .unwrap();
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "{cert}"
        );
        let (status, seen) = h2_get(stream, "/headers").await;
        assert_eq!(status, StatusCode::OK);
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.contains("x-forwarded-proto: https"), "{seen}");

        // HTTP/1.1 when that is all the client speaks.
        let stream = connect(&weir, client_config(&[b"http/1.1"], false))
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut sender = h1(stream).await;
        assert_eq!(h1_get(&mut sender, "/").await.0, StatusCode::OK);

        // No ALPN at all: the first bytes tell, HTTP/2 by prior knowledge or HTTP/1.1.
        let stream = connect(&weir, client_config(&[], false)).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), None);
        assert_eq!(h2_get(stream, "/").await.0, StatusCode::OK, "{cert}");
        let stream = connect(&weir, client_config(&[], false)).await.unwrap();
        let mut sender = h1(stream).await;
        assert_eq!(h1_get(&mut sender, "/").await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn mtls_accepts_a_trusted_client_certificate_and_refuses_none() {
    let backend = spawn_backend().await;
    let client_ca = format!(
        ", client_ca = {:?}",
        certs("client-ca.pem").display().to_string()
    );
    let weir = spawn_weir_on(
        &upstream_toml(backend.addr, ""),
        &tls_keys(&certs("chain.pem"), &certs("server.key"), &client_ca),
        Options::default(),
    )
    .await;
    let stream = connect(&weir, client_config(&[b"http/1.1"], true))
        .await
        .unwrap();
    let mut sender = h1(stream).await;
    assert_eq!(h1_get(&mut sender, "/").await.0, StatusCode::OK);

    // Without a certificate: with TLS 1.3 the client learns of the refusal on its first read.
    let refused = match connect(&weir, client_config(&[b"http/1.1"], false)).await {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = stream
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            !matches!(within("the refusal", stream.read(&mut buf)).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate was served");
    let info = weir.listener();
    until("the refusal to be counted", || {
        info.counters.rejected(ConnReject::TlsHandshake) == 1
    })
    .await;
    assert_eq!(backend.stats.seen(), 1);
}

#[tokio::test]
async fn reload_rotates_the_certificate_for_new_handshakes_only() {
    let backend = spawn_backend().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("weir-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(certs("chain.pem"), &cert).unwrap();
    std::fs::copy(certs("server.key"), &key).unwrap();
    let weir = spawn_weir_on(
        &upstream_toml(backend.addr, ""),
        &tls_keys(&cert, &key, ""),
        Options::default(),
    )
    .await;

    let old = connect(&weir, client_config(&[b"http/1.1"], false))
        .await
        .unwrap();
    assert_eq!(peer_cn(&old), "CN=localhost");
    let mut old = h1(old).await;
    assert_eq!(h1_get(&mut old, "/").await.0, StatusCode::OK);

    // A bad pair is refused and the current one stays in service.
    std::fs::copy(certs("rsa.key"), &key).unwrap();
    let errors = weir.reloader.reload_tls();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().contains("does not match"),
        "{}",
        errors[0]
    );
    let still = connect(&weir, client_config(&[b"http/1.1"], false))
        .await
        .unwrap();
    assert_eq!(peer_cn(&still), "CN=localhost");

    std::fs::copy(certs("rotated-chain.pem"), &cert).unwrap();
    std::fs::copy(certs("rotated.key"), &key).unwrap();
    assert!(weir.reloader.reload_tls().is_empty());
    let new = connect(&weir, client_config(&[b"http/1.1"], false))
        .await
        .unwrap();
    assert_eq!(peer_cn(&new), "CN=rotated");
    // The connection opened before the rotation keeps working.
    assert_eq!(h1_get(&mut old, "/").await.0, StatusCode::OK);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_stalled_or_broken_handshake_is_dropped_and_counted() {
    let backend = spawn_backend().await;
    let weir = spawn_weir_on(
        &upstream_toml(backend.addr, ""),
        &format!(
            "{}\ntls_handshake_timeout = \"300ms\"",
            tls_keys(&certs("chain.pem"), &certs("server.key"), "")
        ),
        Options::default(),
    )
    .await;
    let mut silent = TcpStream::connect(weir.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = within("the stalled handshake to be dropped", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let mut plain = TcpStream::connect(weir.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(
        "the broken handshake to be dropped",
        plain.read_to_end(&mut rest),
    )
    .await;
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"));

    let info = weir.listener();
    assert_eq!(info.counters.timeouts(ClientTimeout::TlsHandshake), 1);
    until("the failure to be counted", || {
        info.counters.rejected(ConnReject::TlsHandshake) == 1
    })
    .await;
    assert_eq!(backend.stats.seen(), 0, "no request handler was reached");
}

#[tokio::test]
async fn an_idle_https_connection_parks_and_serves_its_next_request() {
    let backend = spawn_backend().await;
    let weir = spawn_weir_on(
        &upstream_toml(backend.addr, ""),
        &tls_keys(&certs("chain.pem"), &certs("server.key"), ""),
        Options::default(),
    )
    .await;
    let info = weir.listener();
    let stream = connect(&weir, client_config(&[b"http/1.1"], false))
        .await
        .unwrap();
    let mut sender = h1(stream).await;
    assert_eq!(h1_get(&mut sender, "/").await.0, StatusCode::OK);
    until("the idle connection parked", || info.counters.parked() == 1).await;
    // The TLS session outlives the HTTP server it had: the next request, on the same
    // connection, wakes a new one.
    assert_eq!(h1_get(&mut sender, "/").await.0, StatusCode::OK);
    assert_eq!(info.counters.parked(), 0);
    assert_eq!(info.counters.accepted(), 1);
    assert_eq!(backend.stats.seen(), 2);
}

#[tokio::test]
async fn a_websocket_over_a_tls_listener_is_tunnelled_and_its_slot_freed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let backend = support::websocket::spawn_ws_backend().await;
    let weir = spawn_weir_on(
        &upstream_toml(backend.addr, "max_concurrency = 1\nmax_queue = 0"),
        &tls_keys(&certs("chain.pem"), &certs("server.key"), ""),
        Options::default(),
    )
    .await;
    // A browser offers both; a WebSocket handshake is HTTP/1.1.
    let stream = connect(&weir, client_config(&[b"http/1.1"], false))
        .await
        .unwrap();
    let (mut ws, response) = within(
        "the handshake",
        tokio_tungstenite::client_async("wss://localhost/chat", stream),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(weir.upstream("app").pool().in_flight(), 0);
    for size in [5, 70_000] {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        ws.send(Message::binary(payload.clone())).await.unwrap();
        let echo = within("an echo", ws.next()).await.unwrap().unwrap();
        assert!(
            echo.into_data() == payload,
            "{size} bytes came back changed"
        );
    }
    ws.close(None).await.unwrap();
    support::websocket::WsStats::wait(&backend.stats.ended, 1).await;
}
