//! The configuration as written in the file: serde structs that refuse unknown keys, and the
//! parsing of TOML text and of byte sizes into them.

use std::path::PathBuf;

use serde::Deserialize;

use super::{LogFormat, OversizedBody, Priority, Problem, Protocol};

pub(super) fn parse(text: &str) -> Result<RawConfig, Problem> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let location = inner.span().map(|span| line_col(text, span.start));
        Problem {
            path: if path == "." { String::new() } else { path },
            message: inner
                .message()
                .trim()
                .replace("expected i64", "expected an integer"),
            location,
        }
    })
}

/// Parses "1024", "64KiB", "1 MiB", "500kB", "2GB" (binary units for KiB/MiB/GiB, decimal for kB/MB/GB).
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) drain_timeout: Option<String>,
    pub(super) shutdown_delay: Option<String>,
    pub(super) max_buffered_bytes: Option<RawSize>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) log: Option<RawLog>,
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    #[serde(default)]
    pub(super) upstream: Vec<RawUpstream>,
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
    pub(super) reject_status: Option<std::collections::BTreeMap<String, i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) tls: Option<RawTls>,
    pub(super) max_connections: Option<i64>,
    pub(super) max_concurrent_streams: Option<i64>,
    pub(super) tls_handshake_timeout: Option<String>,
    pub(super) header_timeout: Option<String>,
    pub(super) body_timeout: Option<String>,
    pub(super) write_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) http2_keepalive_interval: Option<String>,
    pub(super) max_header_bytes: Option<RawSize>,
    pub(super) max_body_bytes: Option<RawSize>,
    pub(super) min_body_rate: Option<RawSize>,
    pub(super) body_rate_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) enabled: Option<bool>,
    pub(super) addr: Option<String>,
    pub(super) request_metrics: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) format: Option<LogFormat>,
    pub(super) access: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) client_ca: Option<PathBuf>,
}

/// A byte size: an integer, or a string with a unit ("64KiB", "1 MiB", "500kB").
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) protocol: Option<Protocol>,
    /// An integer, or "auto".
    pub(super) max_concurrency: Option<toml::Value>,
    pub(super) min_concurrency: Option<i64>,
    pub(super) initial_concurrency: Option<i64>,
    pub(super) max_concurrency_limit: Option<i64>,
    /// `true`, or a table of [`RawUpstreamTls`].
    pub(super) tls: Option<toml::Value>,
    pub(super) max_queue: Option<i64>,
    pub(super) queue_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) pool_idle_timeout: Option<String>,
    pub(super) pool_max_idle: Option<i64>,
    pub(super) retry_after: Option<String>,
    pub(super) request_buffer: Option<RawSize>,
    pub(super) oversized_body: Option<OversizedBody>,
    pub(super) response_buffer: Option<RawSize>,
    pub(super) max_upgraded: Option<i64>,
    pub(super) tunnel_idle_timeout: Option<String>,
    pub(super) priority_header: Option<String>,
    pub(super) priority_reserve: Option<i64>,
    pub(super) deadline_header: Option<String>,
    pub(super) tenant_header: Option<String>,
    pub(super) tenant_max_share: Option<f64>,
    pub(super) codel: Option<bool>,
    pub(super) codel_target: Option<String>,
    pub(super) codel_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) host: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) upstream: String,
    pub(super) priority: Option<Priority>,
}

/// `tls = { ... }` on an upstream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub(super) ca: Option<PathBuf>,
    pub(super) server_name: Option<String>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}
