//! Open-loop load: `cargo bench --bench openloop -- URL RATE SECONDS`. Sends RATE requests a
//! second on a fixed schedule whatever the answers do (a closed loop would slow down with the
//! target and hide its queueing), measures each latency from its scheduled send time, and prints
//! one JSON line: counts by status class, errors, and p50/p99 of the 2xx and of the 503s in ms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Default)]
struct Results {
    ok: Vec<Duration>,
    unavailable: Vec<Duration>,
    other: u64,
    errors: u64,
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
        println!("openloop: usage: cargo bench --bench openloop -- URL RATE [SECONDS]");
        return;
    };
    let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(10_000)
            .build_http();
        let results = Arc::new(Mutex::new(Results::default()));
        let start = Instant::now();
        let total = (rate * seconds) as u64;
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            let (client, url, results) = (client.clone(), url.clone(), Arc::clone(&results));
            tasks.push(tokio::spawn(async move {
                let req = http::Request::get(url).body(Empty::new()).expect("a request");
                let outcome = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.into_body().collect().await {
                            Ok(_) => Some(status),
                            Err(_) => None,
                        }
                    }
                    Err(_) => None,
                };
                let latency = at.elapsed();
                let mut r = results.lock().expect("results");
                match outcome {
                    Some(s) if s.is_success() => r.ok.push(latency),
                    Some(s) if s.as_u16() == 503 => r.unavailable.push(latency),
                    Some(_) => r.other += 1,
                    None => r.errors += 1,
                }
            }));
        }
        let sent = start.elapsed();
        for t in tasks {
            let _ = t.await;
        }
        let mut r = results.lock().expect("results");
        let q = |v: &mut Vec<Duration>, p: f64| {
            v.sort_unstable();
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1e3
        };
        let (ok50, ok99) = (q(&mut r.ok, 0.5), q(&mut r.ok, 0.99));
        let (u50, u99) = (q(&mut r.unavailable, 0.5), q(&mut r.unavailable, 0.99));
        println!(
            "{{\"offered_rps\":{rate},\"seconds\":{:.2},\"ok\":{},\"status_503\":{},\"other\":{},\"errors\":{},\"goodput_rps\":{:.1},\"ok_p50_ms\":{ok50:.3},\"ok_p99_ms\":{ok99:.3},\"u503_p50_ms\":{u50:.3},\"u503_p99_ms\":{u99:.3}}}",
            sent.as_secs_f64(),
            r.ok.len(),
            r.unavailable.len(),
            r.other,
            r.errors,
            r.ok.len() as f64 / sent.as_secs_f64(),
        );
    });
}
