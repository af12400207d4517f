//! Validation: the raw configuration checked and turned into typed values, every problem
//! collected with its key path, none left for later.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;

use super::raw::*;
use super::*;

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
            location: None,
        });
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let drain_timeout = self.duration(
            "drain_timeout",
            raw.drain_timeout.as_deref(),
            defaults::DRAIN_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let shutdown_delay = self.duration_from(
            "shutdown_delay",
            raw.shutdown_delay.as_deref(),
            defaults::SHUTDOWN_DELAY,
            MAX_SHORT_DURATION,
            true,
        );
        let request_metrics = raw
            .admin
            .as_ref()
            .and_then(|a| a.request_metrics)
            .unwrap_or(true);
        let admin = self.admin(raw.admin);
        let log = self.log(raw.log);

        if raw.listener.is_empty() {
            self.problem("listener", "at least one [[listener]] is required");
        }
        if raw.upstream.is_empty() {
            self.problem("upstream", "at least one [[upstream]] is required");
        }

        let listeners: Vec<_> = raw
            .listener
            .into_iter()
            .enumerate()
            .map(|(i, l)| self.listener(i, l))
            .collect();
        self.unique_names("listener", listeners.iter().map(|l| l.name.as_str()));

        let upstreams: Vec<_> = raw
            .upstream
            .into_iter()
            .enumerate()
            .map(|(i, u)| self.upstream(i, u))
            .collect();
        self.unique_names("upstream", upstreams.iter().map(|u| u.name.as_str()));

        if upstreams.len() > 1 && raw.route.is_empty() {
            self.problem(
                "route",
                "with more than one [[upstream]], [[route]] entries must say which requests go where",
            );
        }
        let routes: Vec<_> = raw
            .route
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &upstreams))
            .collect();

        let max_buffered_bytes = self
            .size(
                "max_buffered_bytes".into(),
                raw.max_buffered_bytes,
                0,
                u64::MAX >> 1,
            )
            .unwrap_or(defaults::MAX_BUFFERED_BYTES);
        if let Some(a) = admin {
            if let Some(i) = listeners.iter().position(|l| l.addr == a && a.port() != 0) {
                self.problem(
                    "admin.addr",
                    format!("{a} is also the address of listener[{i}]: the admin listener needs its own port"),
                );
            }
        }
        let reject_status = self.reject_status(raw.reject_status.unwrap_or_default());
        Config {
            reject_status,
            drain_timeout,
            shutdown_delay,
            max_buffered_bytes,
            admin,
            request_metrics,
            log,
            listeners,
            upstreams,
            routes,
        }
    }

    fn admin(&mut self, raw: Option<RawAdmin>) -> Option<SocketAddr> {
        let raw = raw.unwrap_or(RawAdmin {
            enabled: None,
            addr: None,
            request_metrics: None,
        });
        let text = raw.addr.as_deref().unwrap_or(defaults::ADMIN_ADDR);
        let addr = match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    "admin.addr",
                    format!("{text:?} is not an IP address and port, such as \"127.0.0.1:9901\""),
                );
                None
            }
        };
        if raw.enabled == Some(false) {
            None
        } else {
            addr
        }
    }

    fn log(&mut self, raw: Option<RawLog>) -> LogConfig {
        let raw = raw.unwrap_or(RawLog {
            level: None,
            format: None,
            access: None,
        });
        let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.problem(
                "log.level",
                format!(
                    "{level:?} is not a log filter such as \"info\" or \"warn,weir=debug\": {e}"
                ),
            );
        }
        LogConfig {
            level,
            format: raw.format.unwrap_or(LogFormat::Text),
            access: raw.access.unwrap_or(true),
        }
    }

    fn unique_names<'a>(&mut self, section: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen = HashSet::new();
        let dups: Vec<(usize, String)> = names
            .enumerate()
            .filter(|(_, n)| !seen.insert(*n))
            .map(|(i, n)| (i, n.to_string()))
            .collect();
        for (i, name) in dups {
            self.problem(
                format!("{section}[{i}].name"),
                format!("duplicate {section} name {name:?}"),
            );
        }
    }

    fn name(&mut self, path: String, name: String) -> String {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            self.problem(
                path,
                format!(
                    "{name:?} is not a valid name: use 1 or more of a-z, A-Z, 0-9, '-', '_', '.'"
                ),
            );
        }
        name
    }

    fn listener(&mut self, i: usize, raw: RawListener) -> ListenerConfig {
        let name = self.name(format!("listener[{i}].name"), raw.name);
        let addr = raw.addr.parse().unwrap_or_else(|_| {
            self.problem(
                format!("listener[{i}].addr"),
                format!(
                    "{:?} is not an IP address and port, such as \"0.0.0.0:8080\" or \"[::]:8080\"",
                    raw.addr
                ),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let at = |key: &str| format!("listener[{i}].{key}");
        let short = |v: &mut Self, key: &str, raw: Option<String>, default| {
            v.duration(&at(key), raw.as_deref(), default, MAX_SHORT_DURATION)
        };
        let tls_handshake_timeout = short(
            self,
            "tls_handshake_timeout",
            raw.tls_handshake_timeout,
            defaults::TLS_HANDSHAKE_TIMEOUT,
        );
        let header_timeout = short(
            self,
            "header_timeout",
            raw.header_timeout,
            defaults::HEADER_TIMEOUT,
        );
        let body_timeout = short(
            self,
            "body_timeout",
            raw.body_timeout,
            defaults::BODY_TIMEOUT,
        );
        let write_timeout = short(
            self,
            "write_timeout",
            raw.write_timeout,
            defaults::WRITE_TIMEOUT,
        );
        let idle_timeout = short(
            self,
            "idle_timeout",
            raw.idle_timeout,
            defaults::IDLE_TIMEOUT,
        );
        let http2_keepalive_interval = short(
            self,
            "http2_keepalive_interval",
            raw.http2_keepalive_interval,
            defaults::HTTP2_KEEPALIVE_INTERVAL,
        );
        let max_connections = self.count(
            at("max_connections"),
            raw.max_connections,
            defaults::MAX_CONNECTIONS,
            1,
            MAX_CONNECTIONS,
        );
        let max_concurrent_streams = self.count(
            at("max_concurrent_streams"),
            raw.max_concurrent_streams,
            defaults::MAX_CONCURRENT_STREAMS as usize,
            1,
            MAX_STREAMS,
        ) as u32;
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        let max_header_bytes = self
            .size(
                at("max_header_bytes"),
                raw.max_header_bytes,
                8 * 1024,
                1024 * 1024,
            )
            .map_or(defaults::MAX_HEADER_BYTES, |n| n as usize);
        let max_body_bytes = self.size(at("max_body_bytes"), raw.max_body_bytes, 1, u64::MAX >> 1);
        let min_body_rate = self
            .size(at("min_body_rate"), raw.min_body_rate, 0, 1 << 40)
            .unwrap_or(defaults::MIN_BODY_RATE);
        let body_rate_grace = short(
            self,
            "body_rate_grace",
            raw.body_rate_grace,
            defaults::BODY_RATE_GRACE,
        );
        let tls = raw.tls.map(|t| TlsFiles {
            cert: t.cert,
            key: t.key,
            client_ca: t.client_ca,
        });
        ListenerConfig {
            name,
            addr,
            tls,
            max_connections,
            max_concurrent_streams,
            tls_handshake_timeout,
            header_timeout,
            body_timeout,
            write_timeout,
            idle_timeout,
            http2_keepalive_interval,
            max_header_bytes,
            max_body_bytes,
            min_body_rate,
            body_rate_grace,
        }
    }

    /// A byte size within `min..=max`, or `None` when absent or invalid (invalid is reported).
    fn size(&mut self, path: String, raw: Option<RawSize>, min: u64, max: u64) -> Option<u64> {
        let text = match raw? {
            RawSize::Bytes(n) if n >= 0 => return self.size_in_range(path, n as u64, min, max),
            RawSize::Bytes(n) => n.to_string(),
            RawSize::Text(t) => t,
        };
        match parse_size(&text) {
            Some(n) => self.size_in_range(path, n, min, max),
            None => {
                self.problem(
                    path,
                    format!("{text:?} is not a size: write bytes as an integer, or a number and a unit such as \"64KiB\", \"1MiB\" or \"500kB\""),
                );
                None
            }
        }
    }

    fn size_in_range(&mut self, path: String, n: u64, min: u64, max: u64) -> Option<u64> {
        if n < min || n > max {
            self.problem(
                path,
                format!("{n} bytes is out of range: must be from {min} to {max}"),
            );
            return None;
        }
        Some(n)
    }

    fn upstream(&mut self, i: usize, raw: RawUpstream) -> UpstreamConfig {
        let at = |key: &str| format!("upstream[{i}].{key}");
        let limit = self.limit(&at, &raw);
        let tls = self.upstream_tls(&at, raw.tls.clone());
        let name = self.name(at("name"), raw.name);
        let addr = self.upstream_addr(at("addr"), &raw.addr);
        if tls.is_some() && matches!(addr, UpstreamAddr::Unix(_)) {
            self.problem(at("tls"), "TLS to a unix: address is not supported");
        }
        let max_queue = self.count(
            at("max_queue"),
            raw.max_queue,
            defaults::MAX_QUEUE,
            0,
            MAX_QUEUE,
        );
        let queue_timeout = self.duration(
            &at("queue_timeout"),
            raw.queue_timeout.as_deref(),
            defaults::QUEUE_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let request_timeout = self.duration(
            &at("request_timeout"),
            raw.request_timeout.as_deref(),
            defaults::REQUEST_TIMEOUT,
            MAX_REQUEST_TIMEOUT,
        );
        let connect_timeout = self.duration(
            &at("connect_timeout"),
            raw.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let pool_idle_timeout = self.duration(
            &at("pool_idle_timeout"),
            raw.pool_idle_timeout.as_deref(),
            defaults::POOL_IDLE_TIMEOUT,
            MAX_SHORT_DURATION,
        );
        let pool_max_idle = self.count(
            at("pool_max_idle"),
            raw.pool_max_idle,
            limit.ceiling(),
            0,
            MAX_CONCURRENCY,
        );
        let retry_after = self.duration(
            &at("retry_after"),
            raw.retry_after.as_deref(),
            defaults::RETRY_AFTER,
            MAX_SHORT_DURATION,
        );
        let request_buffer = self
            .size(at("request_buffer"), raw.request_buffer, 0, 1 << 30)
            .unwrap_or(defaults::REQUEST_BUFFER);
        let response_buffer = self
            .size(at("response_buffer"), raw.response_buffer, 0, 1 << 30)
            .unwrap_or(defaults::RESPONSE_BUFFER);
        let max_upgraded = self.count(
            at("max_upgraded"),
            raw.max_upgraded,
            defaults::MAX_UPGRADED,
            0,
            MAX_CONNECTIONS,
        );
        let tunnel_idle_timeout = self.duration(
            &at("tunnel_idle_timeout"),
            raw.tunnel_idle_timeout.as_deref(),
            defaults::TUNNEL_IDLE_TIMEOUT,
            MAX_REQUEST_TIMEOUT,
        );
        let priority_header = self.header_name(at("priority_header"), raw.priority_header);
        let deadline_header = self.header_name(at("deadline_header"), raw.deadline_header);
        let tenant_header = self.header_name(at("tenant_header"), raw.tenant_header);
        let tenant_max_share = match raw.tenant_max_share {
            None => defaults::TENANT_MAX_SHARE,
            Some(x) if x > 0.0 && x <= 1.0 => x,
            Some(x) => {
                self.problem(
                    at("tenant_max_share"),
                    format!("{x} is out of range: a share of the limit, above 0 and at most 1"),
                );
                defaults::TENANT_MAX_SHARE
            }
        };
        if raw.tenant_max_share.is_some() && tenant_header.is_none() {
            self.problem(at("tenant_max_share"), "only applies with tenant_header");
        }
        let codel_target = self.duration(
            &at("codel_target"),
            raw.codel_target.as_deref(),
            defaults::CODEL_TARGET,
            MAX_SHORT_DURATION,
        );
        let codel_interval = self.duration(
            &at("codel_interval"),
            raw.codel_interval.as_deref(),
            defaults::CODEL_INTERVAL,
            MAX_SHORT_DURATION,
        );
        let codel = raw.codel.unwrap_or(false);
        if !codel && (raw.codel_target.is_some() || raw.codel_interval.is_some()) {
            self.problem(at("codel_target"), "only applies with codel = true");
        }
        UpstreamConfig {
            priority_header,
            deadline_header,
            tenant_header,
            tenant_max_share,
            codel: codel.then_some((codel_target, codel_interval)),
            max_upgraded,
            tunnel_idle_timeout,
            request_buffer,
            response_buffer,
            oversized_body: raw.oversized_body.unwrap_or(OversizedBody::Stream),
            name,
            addr,
            protocol: raw.protocol.unwrap_or(Protocol::Http1),
            limit,
            tls,
            max_queue,
            queue_timeout,
            request_timeout,
            connect_timeout,
            pool_idle_timeout,
            pool_max_idle,
            // Retry-After is in whole seconds; round up so "500ms" does not become "0".
            retry_after_secs: retry_after.as_millis().div_ceil(1000) as u64,
        }
    }

    /// `max_concurrency` (an integer, or "auto" with its bounds).
    fn limit(&mut self, at: &impl Fn(&str) -> String, raw: &RawUpstream) -> Limit {
        let fixed = Limit::Fixed(defaults::MAX_CONCURRENCY);
        let auto = match &raw.max_concurrency {
            None => false,
            Some(toml::Value::Integer(n)) => {
                let n = self.count(
                    at("max_concurrency"),
                    Some(*n),
                    defaults::MAX_CONCURRENCY,
                    1,
                    MAX_CONCURRENCY,
                );
                self.only_with_auto(at, raw);
                return Limit::Fixed(n);
            }
            Some(toml::Value::String(s)) if s == "auto" => true,
            Some(other) => {
                self.problem(
                    at("max_concurrency"),
                    format!(
                        "{other} is not a limit: write an integer, or \"auto\" for weir to find it"
                    ),
                );
                false
            }
        };
        if !auto {
            self.only_with_auto(at, raw);
            return fixed;
        }
        let max = self.count(
            at("max_concurrency_limit"),
            raw.max_concurrency_limit,
            defaults::MAX_CONCURRENCY_LIMIT,
            1,
            MAX_CONCURRENCY,
        );
        let min = self.count(
            at("min_concurrency"),
            raw.min_concurrency,
            defaults::MIN_CONCURRENCY.min(max),
            1,
            MAX_CONCURRENCY,
        );
        let initial = self.count(
            at("initial_concurrency"),
            raw.initial_concurrency,
            defaults::INITIAL_CONCURRENCY.clamp(min.min(max), max),
            1,
            MAX_CONCURRENCY,
        );
        if min > max {
            self.problem(
                at("min_concurrency"),
                format!("{min} is above max_concurrency_limit ({max})"),
            );
        } else if initial < min || initial > max {
            self.problem(
                at("initial_concurrency"),
                format!(
                    "{initial} is outside min_concurrency..max_concurrency_limit ({min}..{max})"
                ),
            );
        }
        Limit::Auto(AutoLimit { min, initial, max })
    }

    /// The adaptive limit's keys given with a fixed one: each is a mistake worth naming.
    fn only_with_auto(&mut self, at: &impl Fn(&str) -> String, raw: &RawUpstream) {
        for (key, given) in [
            ("min_concurrency", raw.min_concurrency.is_some()),
            ("initial_concurrency", raw.initial_concurrency.is_some()),
            ("max_concurrency_limit", raw.max_concurrency_limit.is_some()),
        ] {
            if given {
                self.problem(at(key), "only applies with max_concurrency = \"auto\"");
            }
        }
    }

    /// A request header weir reads a setting from: a valid name, not one HTTP itself uses.
    fn header_name(&mut self, path: String, raw: Option<String>) -> Option<http::HeaderName> {
        let name = raw?;
        let reserved = matches!(
            name.to_ascii_lowercase().as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "upgrade"
        );
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if !reserved => Some(h),
            _ => {
                self.problem(
                    path,
                    format!("{name:?} is not a header name weir can read, such as \"x-priority\""),
                );
                None
            }
        }
    }

    /// `[reject_status]`: reason = status, each a reason weir answers and a 4xx or 5xx status.
    fn reject_status(
        &mut self,
        raw: std::collections::BTreeMap<String, i64>,
    ) -> Vec<(&'static str, http::StatusCode)> {
        let mut out = Vec::new();
        for (reason, code) in raw {
            let path = format!("reject_status.{reason}");
            let Some(name) = REJECT_REASONS.iter().find(|r| **r == reason) else {
                self.problem(
                    path,
                    format!(
                        "not a reason weir answers; one of: {}",
                        REJECT_REASONS.join(", ")
                    ),
                );
                continue;
            };
            match u16::try_from(code).ok().filter(|c| (400..=599).contains(c)) {
                Some(c) => match http::StatusCode::from_u16(c) {
                    Ok(status) => out.push((*name, status)),
                    Err(_) => self.problem(path, format!("{code} is not a status code")),
                },
                None => self.problem(path, format!("{code} is not a 4xx or 5xx status")),
            }
        }
        out
    }

    fn route(
        &mut self,
        i: usize,
        raw: RawRoute,
        upstreams: &[UpstreamConfig],
    ) -> Option<RouteConfig> {
        let host = raw.host.map(|h| {
            let valid = !h.is_empty() && !h.contains(['/', ' ', '\t', ':']);
            if !valid {
                self.problem(
                    format!("route[{i}].host"),
                    format!("{h:?} is not a host name (no scheme, port or path), such as \"api.example.com\""),
                );
            }
            h.to_ascii_lowercase()
        });
        if let Some(p) = &raw.path_prefix {
            if !p.starts_with('/') {
                self.problem(
                    format!("route[{i}].path_prefix"),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        let Some(upstream) = upstreams.iter().position(|u| u.name == raw.upstream) else {
            self.problem(
                format!("route[{i}].upstream"),
                format!("no [[upstream]] is named {:?}", raw.upstream),
            );
            return None;
        };
        Some(RouteConfig {
            host,
            path_prefix: raw.path_prefix,
            upstream,
            priority: raw.priority,
        })
    }

    /// `tls = true`, `false`, or `{ ca, server_name, cert, key }`.
    fn upstream_tls(
        &mut self,
        at: &impl Fn(&str) -> String,
        raw: Option<toml::Value>,
    ) -> Option<UpstreamTls> {
        let table: RawUpstreamTls = match raw? {
            toml::Value::Boolean(true) => return Some(UpstreamTls::default()),
            toml::Value::Boolean(false) => return None,
            toml::Value::Table(t) => match toml::Value::Table(t).try_into() {
                Ok(t) => t,
                Err(e) => {
                    self.problem(at("tls"), e.to_string().trim().to_string());
                    return None;
                }
            },
            other => {
                self.problem(
                    at("tls"),
                    format!("{other} is not TLS settings: write true, or {{ ca = \"...\", server_name = \"...\", cert = \"...\", key = \"...\" }}"),
                );
                return None;
            }
        };
        if table.cert.is_some() != table.key.is_some() {
            self.problem(
                at("tls"),
                "cert and key go together (weir's client certificate, for mTLS)",
            );
        }
        if let Some(name) = &table.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                self.problem(
                    at("tls.server_name"),
                    format!("{name:?} is not a DNS name or an IP address"),
                );
            }
        }
        Some(UpstreamTls {
            ca: table.ca,
            server_name: table.server_name,
            cert: table.cert,
            key: table.key,
        })
    }

    /// `host:port`, or `unix:/path` for a Unix domain socket.
    fn upstream_addr(&mut self, path: String, text: &str) -> UpstreamAddr {
        match text.strip_prefix("unix:") {
            Some("") => {
                self.problem(
                    path,
                    "\"unix:\" needs a socket path, such as \"unix:/run/app.sock\"",
                );
                UpstreamAddr::Unix(PathBuf::new())
            }
            Some(p) => UpstreamAddr::Unix(PathBuf::from(p)),
            None => UpstreamAddr::Tcp(self.authority(path, text)),
        }
    }

    fn authority(&mut self, path: String, text: &str) -> Authority {
        let fallback = Authority::from_static("invalid:1");
        if text.contains("://") {
            self.problem(
                path,
                format!("{text:?}: write host:port without a scheme, such as \"127.0.0.1:3000\""),
            );
            return fallback;
        }
        match text.parse::<Authority>() {
            Ok(a)
                if a.port_u16().is_some_and(|p| p != 0)
                    && !a.host().is_empty()
                    && !text.contains('@') =>
            {
                a
            }
            _ => {
                self.problem(
                    path,
                    format!("{text:?} is not a host:port address, such as \"127.0.0.1:3000\" or \"app:8080\", nor unix:/path"),
                );
                fallback
            }
        }
    }

    fn count(
        &mut self,
        path: String,
        raw: Option<i64>,
        default: usize,
        min: u64,
        max: u64,
    ) -> usize {
        let Some(n) = raw else { return default };
        if n < min as i64 || n as u64 > max {
            self.problem(
                path,
                format!("{n} is out of range: must be from {min} to {max}"),
            );
            return default;
        }
        n as usize
    }

    fn duration(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        self.duration_from(path, raw, default, max, false)
    }

    /// A duration within `max`; zero is refused unless `zero_ok` (a setting where zero means none).
    fn duration_from(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: Duration,
        max: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(text) = raw else { return default };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(path, format!("{text:?}: must be longer than zero"));
                default
            }
            Ok(d) if d > max => {
                self.problem(
                    path,
                    format!(
                        "{text:?} is too long: at most {}",
                        humantime::format_duration(max)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(
                    path,
                    format!("{text:?} is not a duration ({e}); write a number and a unit, such as \"250ms\", \"5s\" or \"1m\""),
                );
                default
            }
        }
    }
}
