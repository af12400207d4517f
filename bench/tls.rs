//! TLS benchmark: weir against nginx with the same certificate (tests/certs/chain.pem, ECDSA
//! P-256), both terminating TLS in front of the same backend, measured in the same run.
//!
//! - new handshakes per second: 32 concurrent clients, each connecting, doing a full TLS 1.3
//!   handshake (client-side resumption disabled), one request, and closing;
//! - keep-alive HTTPS requests per second: 64 connections, sequential requests, with p99.
//!
//! Each proxy is given one worker and pinned to core 1 (taskset); the backend and this load
//! generator run on core 0: run it as `bench/tls.sh`, which installs nginx when missing.

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::{ms, percentile};

const MEASURE: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(1);
const HANDSHAKE_CLIENTS: usize = 32;
const KEEPALIVE_CONNECTIONS: usize = 64;

fn certs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/certs")
        .join(name)
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs("ca.pem")).expect("ca.pem") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection pays a full handshake: that is what is measured.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

async fn connect(
    addr: &str,
    tls: &TlsConnector,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from("localhost").expect("a server name");
    let stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) {
    sender.ready().await.expect("connection usable");
    let req = Request::get("/")
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("a response");
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await;
}

/// New connections (full handshake + one request) per second.
async fn handshakes(addr: &str, tls: &TlsConnector, for_how_long: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + for_how_long;
    let tasks: Vec<_> = (0..HANDSHAKE_CLIENTS)
        .map(|_| {
            let (addr, tls, done) = (addr.to_string(), tls.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let mut sender = connect(&addr, &tls).await;
                    get(&mut sender).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for t in tasks {
        t.await.expect("handshake client");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Requests per second over keep-alive connections, and their p99.
async fn keepalive(addr: &str, tls: &TlsConnector, for_how_long: Duration) -> (f64, Duration) {
    let mut senders = Vec::new();
    for _ in 0..KEEPALIVE_CONNECTIONS {
        senders.push(connect(addr, tls).await);
    }
    let end = Instant::now() + for_how_long;
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            tokio::spawn(async move {
                let mut took = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    get(&mut sender).await;
                    took.push(t.elapsed());
                }
                took
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("keep-alive client"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, percentile(&all, 0.99))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts nginx (one worker) terminating TLS with the same certificate in front of `backend`.
fn start_nginx(
    nginx: &str,
    backend: std::net::SocketAddr,
    dir: &Path,
) -> (std::process::Child, String) {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             keepalive_requests 1000000;\n\
             upstream backend {{ server {backend}; keepalive 64; }}\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n\
             location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            dir = dir.display(),
            cert = certs("chain.pem").display(),
            key = certs("server.key").display(),
        ),
    )
    .expect("write nginx.conf");
    let mut command = match std::env::var("BENCH_WEIR_CPU") {
        Ok(cpu) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", &cpu, nginx]);
            c
        }
        Err(_) => std::process::Command::new(nginx),
    };
    let child = command
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .spawn()
        .expect("start nginx");
    (child, format!("127.0.0.1:{port}"))
}

async fn wait_for_port(addr: &str) {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} never accepted a connection");
}

#[tokio::main]
async fn main() {
    let backend = support::spawn_backend().await;
    let tls = TlsConnector::from(client_config());
    let weir = common::start_weir(
        "tls",
        &format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n[log]\naccess = false\n[[listener]]\nname = \"bench\"\naddr = \"127.0.0.1:0\"\n\
             tls = {{ cert = {:?}, key = {:?} }}\n\
             [[upstream]]\nname = \"app\"\naddr = \"{}\"\nmax_concurrency = 256\n",
            certs("chain.pem").display().to_string(),
            certs("server.key").display().to_string(),
            backend.addr
        ),
    )
    .await;

    let nginx_bin = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    let dir = std::env::temp_dir().join(format!("weir-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let mut targets = vec![("weir".to_string(), weir.addr.clone())];
    let mut nginx = None;
    if Path::new(&nginx_bin).exists() {
        let (child, addr) = start_nginx(&nginx_bin, backend.addr, &dir);
        wait_for_port(&addr).await;
        nginx = Some(child);
        targets.push(("nginx".to_string(), addr));
    } else {
        println!("nginx not found at {nginx_bin}: measuring weir only (bench/tls.sh installs it)");
    }

    let mut rows = Vec::new();
    for (name, addr) in &targets {
        handshakes(addr, &tls, WARMUP).await;
        let hs = handshakes(addr, &tls, MEASURE).await;
        keepalive(addr, &tls, WARMUP).await;
        let (rps, p99) = keepalive(addr, &tls, MEASURE).await;
        rows.push((name.clone(), hs, rps, p99));
    }
    println!("| target | new TLS handshakes/s | keep-alive HTTPS req/s | keep-alive p99 |");
    println!("|---|---|---|---|");
    for (name, hs, rps, p99) in &rows {
        println!("| {name} | {hs:.0} | {rps:.0} | {} |", ms(*p99));
    }
    if rows.len() == 2 {
        println!(
            "weir / nginx: handshakes {:.2}x, keep-alive req/s {:.2}x, p99 {:.2}x",
            rows[0].1 / rows[1].1,
            rows[0].2 / rows[1].2,
            rows[0].3.as_secs_f64() / rows[1].3.as_secs_f64()
        );
    }
    if let Some(mut child) = nginx {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(weir);
}
