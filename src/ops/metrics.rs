//! Prometheus metrics. The request path only touches counters that already exist for weir's own
//! decisions (queue depth, in-flight, the counters indexed by reason) plus one [`Histogram`] bucket
//! per observation; everything is turned into Prometheus families at scrape time by one
//! [`Collector`] registered in a [`Registry`] created at start (there is no global registry).
//! Label values come from fixed sets (reasons, kinds, status classes) and configured names, never
//! from requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::config::Priority;
use crate::http::ListenerInfo;
use crate::proxy::Proxy;
use crate::telemetry::{
    ClientTimeout, ConnReject, Direction, Histogram, Reason, STATUS_CLASSES, SizeLimit,
    UpstreamErrorKind,
};

/// Outcomes of configuration reloads, counted in `weir_config_reloads_total{result}`.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    success: AtomicU64,
    error: AtomicU64,
}

impl ReloadCounters {
    pub fn count(&self, ok: bool) {
        let c = if ok { &self.success } else { &self.error };
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn successes(&self) -> u64 {
        self.success.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.error.load(Ordering::Relaxed)
    }
}

/// Builds the registry weir serves on `/metrics`: weir's own families and, on Linux, the process
/// collector (open fds, resident memory, CPU seconds).
pub fn registry(
    proxy: Arc<Proxy>,
    listeners: Vec<Arc<ListenerInfo>>,
    reloads: Arc<ReloadCounters>,
) -> Registry {
    let registry = Registry::new();
    let weir = WeirCollector {
        proxy,
        listeners,
        reloads,
        descs: FAMILIES
            .iter()
            .filter_map(|(name, help, _, labels)| {
                let labels = labels.iter().map(|l| l.to_string()).collect();
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
                .ok()
            })
            .collect(),
    };
    if let Err(e) = registry.register(Box::new(weir)) {
        tracing::error!(error = %e, "cannot register weir's metrics");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::warn!(error = %e, "cannot register the process metrics");
    }
    registry
}

/// The registry's metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Writing to a Vec cannot fail; a family the encoder refuses is logged and left out.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family weir exports: name, help, type, label names.
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "weir_queue_depth",
        "Requests waiting for an upstream slot now.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_in_flight",
        "Requests holding an upstream slot now.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_concurrency_limit",
        "The concurrency limit in force per upstream: max_concurrency, or the adaptive limit's value.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_latency_baseline_seconds",
        "Adaptive limit: the backend's latency without a queue, that the sample is compared with.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_latency_sample_seconds",
        "Adaptive limit: the mean time to the response head in the controller's latest window.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_concurrency_limit_changes_total",
        "Adaptive limit: changes of the limit, by direction.",
        MetricType::COUNTER,
        &["upstream", "direction"],
    ),
    (
        "weir_queue_limit",
        "Configured max_queue: requests allowed to wait per upstream.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_requests_total",
        "Answers sent, by upstream and status class.",
        MetricType::COUNTER,
        &["upstream", "code"],
    ),
    (
        "weir_requests_rejected_total",
        "Requests weir answered (or lost to the client) without a backend response, by reason.",
        MetricType::COUNTER,
        &["upstream", "reason"],
    ),
    (
        "weir_upstream_errors_total",
        "Failed exchanges with the upstream, by kind.",
        MetricType::COUNTER,
        &["upstream", "kind"],
    ),
    (
        "weir_request_duration_seconds",
        "Time from a request's arrival to the end of its answer.",
        MetricType::HISTOGRAM,
        &["upstream"],
    ),
    (
        "weir_queue_wait_seconds",
        "Time admitted requests waited for a slot, by priority class.",
        MetricType::HISTOGRAM,
        &["upstream", "class"],
    ),
    (
        "weir_tunnels_open",
        "Upgraded connections (WebSocket tunnels) open now, handshakes under way included.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_tunnels_limit",
        "Configured max_upgraded: tunnels allowed open per upstream.",
        MetricType::GAUGE,
        &["upstream"],
    ),
    (
        "weir_tunnels_total",
        "Upgraded connections that started carrying bytes.",
        MetricType::COUNTER,
        &["upstream"],
    ),
    (
        "weir_tunnels_idle_closed_total",
        "Tunnels closed after tunnel_idle_timeout without a byte either way.",
        MetricType::COUNTER,
        &["upstream"],
    ),
    (
        "weir_tunnel_bytes_total",
        "Bytes carried by tunnels, by direction (to_backend, to_client).",
        MetricType::COUNTER,
        &["upstream", "direction"],
    ),
    (
        "weir_buffered_bytes",
        "Bytes held in request and response buffers now.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "weir_buffered_bytes_limit",
        "Configured max_buffered_bytes.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "weir_connections_active",
        "Open client connections.",
        MetricType::GAUGE,
        &["listener"],
    ),
    (
        "weir_connections_parked",
        "Open client connections idle long enough to have released their buffers (HTTP/1).",
        MetricType::GAUGE,
        &["listener"],
    ),
    (
        "weir_connections_total",
        "Client connections accepted.",
        MetricType::COUNTER,
        &["listener"],
    ),
    (
        "weir_connections_rejected_total",
        "Client connections closed before a request, by reason.",
        MetricType::COUNTER,
        &["listener", "reason"],
    ),
    (
        "weir_client_timeouts_total",
        "Client connections or requests cut off by a slow-client deadline, by kind.",
        MetricType::COUNTER,
        &["listener", "kind"],
    ),
    (
        "weir_request_limits_total",
        "Requests refused for their size, by limit.",
        MetricType::COUNTER,
        &["listener", "limit"],
    ),
    (
        "weir_requests_refused_total",
        "Requests refused before routing, by reason (bad_request: no Host, two, a bad target).",
        MetricType::COUNTER,
        &["listener", "reason"],
    ),
    (
        "weir_config_reloads_total",
        "Configuration reloads, by result.",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        "weir_build_info",
        "Always 1; the version label says which weir runs.",
        MetricType::GAUGE,
        &["version"],
    ),
];

struct WeirCollector {
    proxy: Arc<Proxy>,
    listeners: Vec<Arc<ListenerInfo>>,
    reloads: Arc<ReloadCounters>,
    descs: Vec<Desc>,
}

/// The families of one scrape, filled in the order of [`FAMILIES`].
struct Families(Vec<MetricFamily>);

impl Families {
    fn new() -> Families {
        Families(
            FAMILIES
                .iter()
                .map(|(name, help, kind, _)| {
                    let mut f = MetricFamily::default();
                    f.set_name(name.to_string());
                    f.set_help(help.to_string());
                    f.set_field_type(*kind);
                    f
                })
                .collect(),
        )
    }

    fn push(&mut self, name: &str, labels: &[(&str, &str)], value: Value<'_>) {
        let Some(family) = self.0.iter_mut().find(|f| f.name() == name) else {
            debug_assert!(false, "{name} is not in FAMILIES");
            return;
        };
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = proto::LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        match value {
            Value::Gauge(v) => {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
            Value::Counter(v) => {
                let mut c = proto::Counter::default();
                c.set_value(v as f64);
                m.set_counter(c);
            }
            Value::Histogram(h) => m.set_histogram(h.to_proto()),
        }
        family.mut_metric().push(m);
    }
}

impl Families {
    /// One counter per value of label `key`, each also labelled `base` (unless its name is empty).
    fn counters<'a>(
        &mut self,
        name: &str,
        base: (&str, &str),
        key: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        for (value, n) in values {
            let pair = (key, value);
            let labels: &[(&str, &str)] = if base.0.is_empty() {
                &[pair]
            } else {
                &[base, pair]
            };
            self.push(name, labels, Value::Counter(n));
        }
    }
}

enum Value<'a> {
    Gauge(f64),
    Counter(u64),
    Histogram(&'a Histogram),
}

impl Collector for WeirCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use Value::*;
        let mut f = Families::new();
        for upstream in self.proxy.upstreams().iter() {
            let pool = upstream.pool();
            let c = pool.counters();
            let u = ("upstream", upstream.name.as_str());
            f.push("weir_queue_depth", &[u], Gauge(pool.queue_depth() as f64));
            f.push("weir_in_flight", &[u], Gauge(pool.in_flight() as f64));
            let limit = pool.max_concurrency() as f64;
            f.push("weir_concurrency_limit", &[u], Gauge(limit));
            f.push("weir_queue_limit", &[u], Gauge(pool.max_queue() as f64));
            if let Some(view) = pool.adaptive().view() {
                let secs =
                    |d: Option<std::time::Duration>| Gauge(d.map_or(0.0, |d| d.as_secs_f64()));
                f.push("weir_latency_baseline_seconds", &[u], secs(view.baseline));
                f.push("weir_latency_sample_seconds", &[u], secs(view.sample));
                let moves = [("up", view.raised), ("down", view.lowered)];
                f.counters(
                    "weir_concurrency_limit_changes_total",
                    u,
                    "direction",
                    moves,
                );
            }
            let classes = STATUS_CLASSES.iter().enumerate();
            f.counters(
                "weir_requests_total",
                u,
                "code",
                classes.map(|(i, s)| (*s, c.responses(i))),
            );
            let reasons = Reason::ALL.map(|r| (r.as_str(), c.rejected(r)));
            f.counters("weir_requests_rejected_total", u, "reason", reasons);
            let kinds = UpstreamErrorKind::ALL.map(|k| (k.as_str(), c.upstream_errors(k)));
            f.counters("weir_upstream_errors_total", u, "kind", kinds);
            let duration = c.request_duration();
            f.push("weir_request_duration_seconds", &[u], Histogram(duration));
            for class in Priority::ALL {
                let labels = [u, ("class", class.as_str())];
                f.push(
                    "weir_queue_wait_seconds",
                    &labels,
                    Histogram(c.queue_wait(class)),
                );
            }
            let t = &c.tunnels;
            f.push("weir_tunnels_open", &[u], Gauge(t.open() as f64));
            let cap = upstream.max_upgraded() as f64;
            f.push("weir_tunnels_limit", &[u], Gauge(cap));
            f.push("weir_tunnels_total", &[u], Counter(t.opened()));
            f.push(
                "weir_tunnels_idle_closed_total",
                &[u],
                Counter(t.idle_closed()),
            );
            let ways = Direction::ALL.map(|d| (d.as_str(), t.bytes(d)));
            f.counters("weir_tunnel_bytes_total", u, "direction", ways);
        }
        let buffers = self.proxy.buffers();
        f.push("weir_buffered_bytes", &[], Gauge(buffers.used() as f64));
        let cap = buffers.capacity() as f64;
        f.push("weir_buffered_bytes_limit", &[], Gauge(cap));
        for l in &self.listeners {
            let c = &l.counters;
            let n = ("listener", l.name.as_str());
            f.push("weir_connections_active", &[n], Gauge(c.active() as f64));
            f.push("weir_connections_parked", &[n], Gauge(c.parked() as f64));
            f.push("weir_connections_total", &[n], Counter(c.accepted()));
            let refused = ConnReject::ALL.map(|r| (r.as_str(), c.rejected(r)));
            f.counters("weir_connections_rejected_total", n, "reason", refused);
            let timeouts = ClientTimeout::ALL.map(|t| (t.as_str(), c.timeouts(t)));
            f.counters("weir_client_timeouts_total", n, "kind", timeouts);
            let limits = SizeLimit::ALL.map(|s| (s.as_str(), c.limits(s)));
            f.counters("weir_request_limits_total", n, "limit", limits);
            let refused = [("bad_request", c.bad_requests())];
            f.counters("weir_requests_refused_total", n, "reason", refused);
        }
        let r = &self.reloads;
        let results = [("success", r.successes()), ("error", r.errors())];
        f.counters("weir_config_reloads_total", ("", ""), "result", results);
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        f.push("weir_build_info", &version, Gauge(1.0));
        f.0
    }
}
