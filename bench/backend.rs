//! The benchmark suite's backend, as its own process: `cargo bench --bench backend -- ADDR
//! [WORKERS] [SERVICE_MS]`. `GET /` answers "ok" at once (scenario A); `GET /work` waits for one
//! of WORKERS workers (default 16) and holds it SERVICE_MS (default 20): a backend whose capacity
//! is WORKERS / SERVICE_MS, with excess requests waiting inside it as in a thread pool (scenario
//! B). Prints "listening ADDR" once bound; runs until killed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

fn main() {
    // `cargo bench` adds `--bench`; every other argument is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // Run by a plain `cargo bench` (no arguments): nothing to serve, do not block the others.
    let Some(addr) = args.first().cloned() else {
        println!("backend: usage: cargo bench --bench backend -- ADDR [WORKERS] [SERVICE_MS]");
        return;
    };
    let workers: usize = args.get(1).and_then(|w| w.parse().ok()).unwrap_or(16);
    let service = Duration::from_millis(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .expect("bind the backend");
        println!("listening {}", listener.local_addr().expect("bound"));
        let pool = Arc::new(Semaphore::new(workers));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            stream.set_nodelay(true).ok();
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let pool = Arc::clone(&pool);
                    async move {
                        if req.uri().path() == "/work" {
                            let _worker = pool.acquire().await;
                            tokio::time::sleep(service).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
