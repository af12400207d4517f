//! Open-loop load: `cargo bench --bench openloop -- URL RATE [SECONDS] [CONNECTIONS]`.
//!
//! Sends RATE requests a second on a fixed schedule whatever the answers do (a closed loop would
//! slow down with the target and hide its queueing), over CONNECTIONS (default 256) HTTP/1.1
//! keep-alive connections, and measures each latency from the request's *scheduled* send time,
//! so a target that stalls is charged for the requests that waited behind the stall (no
//! coordinated omission). Prints one JSON line: counts by status class, errors, p50/p99 of the
//! 2xx and of the 503s in ms, and `send_lag_p99_ms`: how late the generator itself sent (large
//! values mean the generator, not the target, was the limit). The `*_from_send_ms` fields time
//! the same answers from the moment each request was actually written: the target's own answer
//! time, without the generator's lateness.
//!
//! A pacing thread releases the tickets of the scheduled requests at the right instant (sleeping
//! on the kernel's high-resolution timers, not tokio's 1 ms wheel, and at least 50 µs at a time,
//! so that it wakes at most 20,000 times a second); each connection's task takes the
//! next ticket, sends a fixed request and reads the answer with a minimal HTTP/1.1 parser: no
//! task spawn, channel hop or allocation per request, so one core holds tens of thousands a second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The pacing thread's shortest sleep: tickets due within it are released together.
const PACING_QUANTUM: Duration = Duration::from_micros(50);

/// How long answers still in flight are waited for once the schedule has ended.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Results {
    ok: Vec<Duration>,
    unavailable: Vec<Duration>,
    /// The same latencies measured from the actual send: the target's own answer time.
    ok_sent: Vec<Duration>,
    unavailable_sent: Vec<Duration>,
    lag: Vec<Duration>,
    other: u64,
    errors: u64,
}

struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
    next: AtomicU64,
    tickets: Semaphore,
    over: AtomicBool,
}

impl Schedule {
    fn at(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(url), Some(rate)) = (
        args.first().and_then(|u| u.parse::<http::Uri>().ok()),
        args.get(1).and_then(|r| r.parse::<f64>().ok()),
    ) else {
        // Run by a plain `cargo bench`: nothing to measure.
        println!(
            "openloop: usage: cargo bench --bench openloop -- URL RATE [SECONDS] [CONNECTIONS]"
        );
        return;
    };
    let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let connections: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(256);
    let (Some(authority), Some(path)) = (url.authority().cloned(), url.path_and_query().cloned())
    else {
        eprintln!("openloop: URL must be http://HOST:PORT/PATH");
        std::process::exit(2);
    };
    let request: Arc<[u8]> =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: weir-openloop\r\n\r\n")
            .into_bytes()
            .into();
    let schedule = Arc::new(Schedule {
        start: Instant::now() + Duration::from_millis(50),
        rate,
        total: (rate * seconds) as u64,
        next: AtomicU64::new(0),
        tickets: Semaphore::new(0),
        over: AtomicBool::new(false),
    });

    let pacer = {
        let schedule = Arc::clone(&schedule);
        std::thread::spawn(move || pace(&schedule))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let results = runtime.block_on(async {
        let mut tasks = Vec::with_capacity(connections);
        let mut shards = Vec::with_capacity(connections);
        for _ in 0..connections {
            let results = Arc::new(Mutex::new(Results::default()));
            let (schedule, request, addr, out) = (
                Arc::clone(&schedule),
                Arc::clone(&request),
                authority.to_string(),
                Arc::clone(&results),
            );
            shards.push(results);
            tasks.push(tokio::spawn(async move {
                connection(&schedule, &request, &addr, &out).await
            }));
        }
        let end = schedule.at(schedule.total) + GRACE;
        for t in tasks {
            // A request still unanswered at the end is counted as an error in the report.
            let _ = tokio::time::timeout_at(end.into(), t).await;
        }
        let mut all = Results::default();
        for shard in shards {
            let mut r = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.ok.append(&mut r.ok);
            all.unavailable.append(&mut r.unavailable);
            all.lag.append(&mut r.lag);
            all.ok_sent.append(&mut r.ok_sent);
            all.unavailable_sent.append(&mut r.unavailable_sent);
            all.other += r.other;
            all.errors += r.errors;
        }
        all
    });
    let _ = pacer.join();
    report(rate, seconds, schedule.total, results);
    // Connections a stalled target still holds are not waited for.
    runtime.shutdown_background();
}

/// Releases tickets on schedule until the last one, then lets every connection finish.
fn pace(s: &Schedule) {
    let mut issued = 0u64;
    while issued < s.total {
        let now = Instant::now();
        if now >= s.start {
            let due = (((now - s.start).as_secs_f64() * s.rate) as u64 + 1).min(s.total);
            if due > issued {
                s.tickets.add_permits((due - issued) as usize);
                issued = due;
            }
        }
        // Never sooner than PACING_QUANTUM: at tens of thousands of requests a second, a wake-up
        // per request would cost the core that the generator shares with the backend more than
        // the requests themselves. A ticket released late is charged as latency (and lag).
        let next = s.at(issued).max(Instant::now() + PACING_QUANTUM);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // The last tickets are taken at once by a target that keeps up; one that does not leaves
    // the rest unclaimed, counted as unanswered.
    std::thread::sleep(Duration::from_millis(100));
    s.over.store(true, Ordering::Release);
    // Wakes the connections still waiting for a ticket; they find none left and stop.
    s.tickets.add_permits(Semaphore::MAX_PERMITS / 2);
}

async fn connection(s: &Schedule, request: &[u8], addr: &str, out: &Mutex<Results>) {
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    loop {
        match s.tickets.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        if s.over.load(Ordering::Acquire) {
            break;
        }
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= s.total {
            break;
        }
        let at = s.at(i);
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(c) => {
                    let _ = c.set_nodelay(true);
                    stream = Some(c);
                }
                Err(_) => {
                    lock(out).errors += 1;
                    continue;
                }
            }
        }
        let Some(conn) = stream.as_mut() else {
            continue;
        };
        let sent = Instant::now();
        let outcome = exchange(conn, request, &mut buf).await;
        let mut r = lock(out);
        r.lag.push(sent.saturating_duration_since(at));
        match outcome {
            Ok((status, keep_alive)) => {
                let latency = at.elapsed();
                let answer = sent.elapsed();
                match status {
                    200..=299 => {
                        r.ok.push(latency);
                        r.ok_sent.push(answer);
                    }
                    503 => {
                        r.unavailable.push(latency);
                        r.unavailable_sent.push(answer);
                    }
                    _ => r.other += 1,
                }
                if !keep_alive {
                    stream = None;
                }
            }
            Err(_) => {
                r.errors += 1;
                stream = None;
            }
        }
    }
}

fn lock(m: &Mutex<Results>) -> std::sync::MutexGuard<'_, Results> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends the request and reads one whole response; returns its status and whether the
/// connection can be used again.
async fn exchange(
    conn: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, bool)> {
    conn.write_all(request).await?;
    buf.clear();
    let (status, head_len, body, keep_alive) = loop {
        read_more(conn, buf).await?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let mut body = Framing::Close;
                let mut keep_alive = resp.version == Some(1);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| invalid("bad content-length"))?;
                        body = Framing::Length(len);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        body = Framing::Chunked;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep_alive &= !h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                break (status, n, body, keep_alive);
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err(invalid("bad response head")),
        }
    };
    match body {
        Framing::Length(len) => {
            while buf.len() < head_len + len {
                read_more(conn, buf).await?;
            }
            Ok((status, keep_alive))
        }
        Framing::Chunked => {
            // The answers measured here are short: wait for the last chunk's marker.
            while !buf[head_len..].windows(5).any(|w| w == b"0\r\n\r\n") {
                read_more(conn, buf).await?;
            }
            Ok((status, keep_alive))
        }
        Framing::Close => {
            while read_more(conn, buf).await.is_ok() {}
            Ok((status, false))
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = conn.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn report(rate: f64, seconds: f64, total: u64, mut r: Results) {
    let q = |v: &mut Vec<Duration>, p: f64| {
        v.sort_unstable();
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    };
    let answered = r.ok.len() as u64 + r.unavailable.len() as u64 + r.other + r.errors;
    // Scheduled requests that never got an answer before the grace period ended.
    let unanswered = total.saturating_sub(answered);
    let (ok50, ok99) = (q(&mut r.ok, 0.5), q(&mut r.ok, 0.99));
    let (u50, u99) = (q(&mut r.unavailable, 0.5), q(&mut r.unavailable, 0.99));
    let lag99 = q(&mut r.lag, 0.99);
    let ok99_sent = q(&mut r.ok_sent, 0.99);
    let (u50_sent, u99_sent) = (
        q(&mut r.unavailable_sent, 0.5),
        q(&mut r.unavailable_sent, 0.99),
    );
    println!(
        "{{\"offered_rps\":{rate},\"seconds\":{seconds:.2},\"scheduled\":{total},\"ok\":{},\"status_503\":{},\"other\":{},\"errors\":{},\"goodput_rps\":{:.1},\"ok_p50_ms\":{ok50:.3},\"ok_p99_ms\":{ok99:.3},\"u503_p50_ms\":{u50:.3},\"u503_p99_ms\":{u99:.3},\"send_lag_p99_ms\":{lag99:.3},\"ok_p99_from_send_ms\":{ok99_sent:.3},\"u503_p50_from_send_ms\":{u50_sent:.3},\"u503_p99_from_send_ms\":{u99_sent:.3}}}",
        r.ok.len(),
        r.unavailable.len(),
        r.other,
        r.errors + unanswered,
        r.ok.len() as f64 / seconds,
    );
}
