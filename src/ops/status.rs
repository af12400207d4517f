//! `GET /status` on the admin listener: per upstream, the limit and how it is set, requests in
//! flight and queued, the adaptive limit's baseline and sample latency, rejections by reason,
//! the latest limit changes, and the last five minutes of the figures a second, as JSON. The
//! status page (`GET /`) polls it, and draws the history from its first poll.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::sync::lock;

/// Seconds of history kept per upstream.
pub const HISTORY_SECONDS: usize = 300;

/// One second of an upstream: time, limit, in flight, queued, baseline and sample (ms).
type Point = (f64, usize, usize, usize, Option<f64>, Option<f64>);

/// The figures of every upstream, a point a second for the last [`HISTORY_SECONDS`], recorded
/// by the admin listener's own task (nothing on the request path).
#[derive(Debug, Default)]
pub struct History(Mutex<HashMap<String, VecDeque<Point>>>);

impl History {
    /// Records the present of every upstream of `proxy`; forgets upstreams no longer there.
    pub fn record(&self, proxy: &Proxy) {
        let now = unix(SystemTime::now());
        let mut all = lock(&self.0);
        let upstreams = proxy.upstreams();
        all.retain(|name, _| upstreams.iter().any(|u| &u.name == name));
        for u in &upstreams {
            let pool = u.pool();
            let view = pool.adaptive().view();
            let points = all.entry(u.name.clone()).or_default();
            if points.len() == HISTORY_SECONDS {
                points.pop_front();
            }
            points.push_back((
                now,
                pool.max_concurrency(),
                pool.in_flight(),
                pool.queue_depth(),
                view.as_ref().and_then(|v| v.baseline).map(millis),
                view.as_ref().and_then(|v| v.sample).map(millis),
            ));
        }
    }

    fn of(&self, name: &str) -> Value {
        let all = lock(&self.0);
        let points = all.get(name).map(|p| {
            p.iter()
                .map(|p| json!([p.0, p.1, p.2, p.3, p.4, p.5]))
                .collect()
        });
        Value::Array(points.unwrap_or_default())
    }
}

use crate::proxy::Proxy;
use crate::telemetry::{Reason, STATUS_CLASSES};

/// The status document of every upstream `proxy` routes to, with `history`.
pub fn render(proxy: &Proxy, history: &History) -> Vec<u8> {
    let upstreams: Vec<Value> = proxy
        .upstreams()
        .iter()
        .map(|u| {
            let pool = u.pool();
            let c = pool.counters();
            let rejected: Map<String, Value> = Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), json!(c.rejected(*r))))
                .collect();
            let answers: Map<String, Value> = STATUS_CLASSES
                .iter()
                .enumerate()
                .map(|(i, class)| (class.to_string(), json!(c.responses(i))))
                .collect();
            let mut doc = json!({
                "name": u.name,
                "limit": pool.max_concurrency(),
                "mode": "fixed",
                "in_flight": pool.in_flight(),
                "queued": pool.queue_depth(),
                "max_queue": pool.max_queue(),
                "rejected": rejected,
                "answers": answers,
                "history": history.of(&u.name),
            });
            if let (Some(view), Some(obj)) = (pool.adaptive().view(), doc.as_object_mut()) {
                obj.insert("mode".into(), json!("auto"));
                obj.insert("min".into(), json!(view.bounds.min));
                obj.insert("max".into(), json!(view.bounds.max));
                obj.insert("baseline_ms".into(), json!(view.baseline.map(millis)));
                obj.insert("sample_ms".into(), json!(view.sample.map(millis)));
                let changes: Vec<Value> = view
                    .changes
                    .iter()
                    .map(|ch| {
                        json!({
                            "at": unix(ch.at),
                            "from": ch.from,
                            "to": ch.to,
                            "cause": ch.cause.as_str(),
                        })
                    })
                    .collect();
                obj.insert("changes".into(), Value::Array(changes));
            }
            doc
        })
        .collect();
    let doc = json!({ "time": unix(SystemTime::now()), "upstreams": upstreams });
    // A tree of plain values always serializes.
    serde_json::to_vec(&doc).unwrap_or_default()
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_secs_f64() * 1e3).round() / 1e3)
}
