//! `GET /status` on the admin listener: per upstream, the limit and how it is set, requests in
//! flight and queued, the adaptive limit's baseline and sample latency, rejections by reason,
//! and the latest limit changes, as JSON. The status page (`GET /`) polls it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::proxy::Proxy;
use crate::telemetry::{Reason, STATUS_CLASSES};

/// The status document of every upstream `proxy` routes to.
pub fn render(proxy: &Proxy) -> Vec<u8> {
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
