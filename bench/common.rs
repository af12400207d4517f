//! Helpers shared by the benchmarks: start the weir binary as its own process, read its CPU time,
//! summarize latencies.
#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// weir running as a child process; killed when dropped.
pub struct WeirProcess {
    pub child: tokio::process::Child,
    pub addr: String,
    pub pid: u32,
    config: std::path::PathBuf,
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Starts the weir binary with `config` (one listener named "bench") and waits for its start
/// line. `BENCH_WEIR_CPU=N` pins it to core N with taskset, so the load generator (run the bench
/// itself on the other core: `taskset -c 0 cargo bench ...`) cannot steal its CPU.
///
/// The binary is `WEIR_BIN` when set, otherwise the one cargo built for the benches, which has
/// the dev-dependencies' features (tokio's test-util: a mutex on every clock reading). Fine for
/// comparisons within one bench; `bench/suite.sh` sets `WEIR_BIN` to the build users get.
pub async fn start_weir(name: &str, config: &str) -> WeirProcess {
    let path = std::env::temp_dir().join(format!("weir-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, config).expect("write the bench config");
    let bin = std::env::var_os("WEIR_BIN")
        .unwrap_or_else(|| std::ffi::OsString::from(env!("CARGO_BIN_EXE_weir")));
    let mut command = match std::env::var("BENCH_WEIR_CPU") {
        Ok(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(&cpu).arg(&bin);
            c
        }
        Err(_) => tokio::process::Command::new(&bin),
    };
    let mut child = command
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn,weir=info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start weir");
    let pid = child.id().expect("weir is running");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .expect("read weir's log")
            .expect("weir exited before it started");
        if let Some(rest) = line.split("listeners=bench=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .expect("an address")
                .to_string();
        }
    };
    // Keep draining weir's log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    WeirProcess {
        child,
        addr,
        pid,
        config: path,
    }
}

/// Opens a keep-alive HTTP/1.1 connection to `addr` (TCP_NODELAY), its driver spawned.
pub async fn connect_h1<B>(addr: &str) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to weir");
    stream.set_nodelay(true).ok();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

/// CPU time used so far by every thread of process `pid` (from schedstat: nanoseconds on CPU).
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
