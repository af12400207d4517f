//! Validation: the raw configuration checked and turned into typed values, every problem
//! collected with its key path, none left for later.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;

use super::raw::*;
use super::*;

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
}

impl Validator {
    pub(super) fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
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

    pub(super) fn name(&mut self, path: String, name: String) -> String {
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
    pub(super) fn size(
        &mut self,
        path: String,
        raw: Option<RawSize>,
        min: u64,
        max: u64,
    ) -> Option<u64> {
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

    pub(super) fn size_in_range(
        &mut self,
        path: String,
        n: u64,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        if n < min || n > max {
            self.problem(
                path,
                format!("{n} bytes is out of range: must be from {min} to {max}"),
            );
            return None;
        }
        Some(n)
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

    pub(super) fn authority(&mut self, path: String, text: &str) -> Authority {
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

    pub(super) fn count(
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

    pub(super) fn duration(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        self.duration_from(path, raw, default, max, false)
    }

    /// A duration within `max`; zero is refused unless `zero_ok` (a setting where zero means none).
    pub(super) fn duration_from(
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
