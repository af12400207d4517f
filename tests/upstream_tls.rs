//! TLS to the upstream: a real HTTPS backend (rustls, the test CA in tests/certs), reached over
//! HTTP/1.1 and HTTP/2; a wrong name, an expired certificate and an unknown CA answered 502
//! `upstream_tls` and counted as kind `tls`; weir's client certificate for a backend that asks.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio::net::TcpListener;

fn cert_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/certs")
        .join(name)
}

/// An HTTPS backend (HTTP/1.1 and h2 by ALPN) with the certificate `chain` / `key`, asking for
/// a client certificate from `client_ca` when given. Answers what [`spawn_backend`] answers.
async fn https_backend(
    chain: &str,
    key: &str,
    client_ca: Option<&str>,
) -> (std::net::SocketAddr, Backend) {
    let inner = spawn_backend().await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path(chain))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(cert_path(key)).unwrap();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(cert_path(ca)).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain = inner.addr;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The TLS side only: the plain backend behind it answers.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut backend) = tokio::net::TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
            });
        }
    });
    (addr, inner)
}

fn tls_upstream(addr: std::net::SocketAddr, tls: &str, extra: &str) -> String {
    upstream_toml(addr, &format!("tls = {tls}\n{extra}"))
}

fn ca() -> String {
    format!("{{ ca = \"{}\" }}", cert_path("ca.pem").display())
}

async fn tls_errors(weir: &Weir) -> f64 {
    scrape(weir.admin).await.value(
        "weir_upstream_errors_total",
        &[("upstream", "app"), ("kind", "tls")],
    )
}

#[tokio::test]
async fn https_backends_over_http1_and_h2() {
    let (addr, inner) = https_backend("chain.pem", "server.key", None).await;
    for protocol in ["http1", "h2c"] {
        let weir = spawn_weir(&tls_upstream(
            addr,
            &ca(),
            &format!("protocol = \"{protocol}\""),
        ))
        .await;
        let (status, _, body) = get(&client(), &weir.url("/headers")).await;
        assert_eq!(status, 200, "{protocol}");
        assert!(
            String::from_utf8_lossy(&body)
                .to_ascii_lowercase()
                .contains("x-forwarded-for"),
            "{protocol}"
        );
        weir.stop().await;
    }
    assert_eq!(inner.stats.seen(), 2);
}

#[tokio::test]
async fn a_wrong_name_an_expired_certificate_and_an_unknown_ca_are_502_tls() {
    let (good, _inner) = https_backend("chain.pem", "server.key", None).await;
    let (expired, _inner2) = https_backend("expired-chain.pem", "expired.key", None).await;
    let cases = [
        (
            good,
            format!(
                "{{ ca = \"{}\", server_name = \"wrong.example\" }}",
                cert_path("ca.pem").display()
            ),
        ),
        (expired, ca()),
        // Mozilla's roots do not know the test CA.
        (good, "true".to_string()),
    ];
    for (addr, tls) in cases {
        let weir = spawn_weir(&tls_upstream(addr, &tls, "")).await;
        let (status, headers, _) = get(&client(), &weir.url("/")).await;
        assert_eq!(status, 502, "{tls}");
        assert_eq!(headers["x-weir-reject"], "upstream_tls", "{tls}");
        assert_eq!(tls_errors(&weir).await, 1.0, "{tls}");
        weir.stop().await;
    }
}

#[tokio::test]
async fn a_client_certificate_for_a_backend_that_asks_for_one() {
    let (addr, inner) = https_backend("chain.pem", "server.key", Some("client-ca.pem")).await;
    let mtls = format!(
        "{{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        cert_path("ca.pem").display(),
        cert_path("client.pem").display(),
        cert_path("client.key").display()
    );
    let weir = spawn_weir(&tls_upstream(addr, &mtls, "")).await;
    assert_eq!(get(&client(), &weir.url("/")).await.0, 200);
    weir.stop().await;
    assert_eq!(inner.stats.seen(), 1);

    // Without one, the backend refuses it: in TLS 1.3 the client learns so after its side of
    // the handshake, with the backend's alert in place of an answer.
    let weir = spawn_weir(&tls_upstream(addr, &ca(), "")).await;
    let (status, headers, _) = get(&client(), &weir.url("/")).await;
    assert_eq!(status, 502);
    let reason = headers["x-weir-reject"].to_str().unwrap();
    assert!(
        matches!(reason, "upstream_tls" | "upstream_reset"),
        "{reason}"
    );
    weir.stop().await;
}

#[tokio::test]
async fn bad_tls_files_stop_a_start_with_the_upstreams_name() {
    let text = weir_toml(
        &upstream_toml(
            "127.0.0.1:1".parse().unwrap(),
            "tls = { ca = \"/nonexistent/ca.pem\" }",
        ),
        "",
    );
    let config = weir::Config::from_toml_str(&text).unwrap();
    let err = weir::Server::bind(config, weir::Options::default())
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("upstream \"app\"") && message.contains("/nonexistent/ca.pem"),
        "{message}"
    );
}

#[tokio::test]
async fn a_reload_reads_rotated_files_under_the_same_names() {
    let (addr, inner) = https_backend("chain.pem", "server.key", None).await;
    let dir = std::env::temp_dir().join(format!("weir-test-{}-rotate", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("backend-ca.pem");
    // A CA that did not sign the backend's certificate, at first.
    std::fs::copy(cert_path("client-ca.pem"), &ca_file).unwrap();
    let body = tls_upstream(addr, &format!("{{ ca = \"{}\" }}", ca_file.display()), "");
    let weir = spawn_weir(&body).await;
    assert_eq!(get(&client(), &weir.url("/")).await.0, 502);

    // The right CA under the same name, and a reload of the same configuration.
    std::fs::copy(cert_path("ca.pem"), &ca_file).unwrap();
    let config = weir::Config::from_toml_str(&weir_toml(&body, "")).unwrap();
    weir.reloader.apply(config).unwrap();
    assert_eq!(get(&client(), &weir.url("/")).await.0, 200);
    assert_eq!(inner.stats.seen(), 1);
    weir.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
