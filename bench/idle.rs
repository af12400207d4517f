//! Idle keep-alive connections (scenario C): `cargo bench --bench idle -- ADDR N [HOLD_SECONDS]`.
//!
//! Opens N connections to ADDR, sends one `GET /` on each and reads its answer (so that every
//! connection has been through a whole request, as a real keep-alive client's has), prints
//! `ready N` and holds them all open and silent for HOLD_SECONDS (default 60) or until killed.
//! The suite reads the target's resident memory before and while they are held.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections opened at once; the rest wait their turn, so the target's accept queue never
/// overflows.
const CONCURRENT_OPENS: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(addr), Some(n)) = (
        args.first().cloned(),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        println!("idle: usage: cargo bench --bench idle -- ADDR N [HOLD_SECONDS]");
        return;
    };
    let hold = Duration::from_secs(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let opens = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_OPENS));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let (addr, opens) = (addr.clone(), std::sync::Arc::clone(&opens));
            tasks.push(tokio::spawn(async move {
                let _turn = opens.acquire().await.ok()?;
                open(&addr).await.ok()
            }));
        }
        let mut held = Vec::with_capacity(n);
        let mut failed = 0usize;
        for t in tasks {
            match t.await {
                Ok(Some(stream)) => held.push(stream),
                _ => failed += 1,
            }
        }
        println!("ready {} failed {failed}", held.len());
        tokio::time::sleep(hold).await;
        drop(held);
    });
}

/// One connection that has carried one whole request and answer.
async fn open(addr: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            if buf.len() >= head + len {
                return Ok(stream);
            }
        }
    }
}
