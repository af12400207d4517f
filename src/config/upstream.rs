//! Validation of an `[[upstream]]`: its address, limit, TLS, and the request headers it reads
//! (priority, deadline, tenant), and of `[reject_status]`.

use super::raw::*;
use super::validate::Validator;
use super::*;

impl Validator {
    pub(super) fn upstream(&mut self, i: usize, raw: RawUpstream) -> UpstreamConfig {
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
        // The reserve must leave sheddable requests a slot: below the limit's floor.
        let floor = match limit {
            Limit::Fixed(n) => n,
            Limit::Auto(bounds) => bounds.min,
        };
        let priority_reserve = self.count(
            at("priority_reserve"),
            raw.priority_reserve,
            0,
            0,
            floor.saturating_sub(1) as u64,
        );
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
            priority_reserve,
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
    pub(super) fn limit(&mut self, at: &impl Fn(&str) -> String, raw: &RawUpstream) -> Limit {
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
    pub(super) fn only_with_auto(&mut self, at: &impl Fn(&str) -> String, raw: &RawUpstream) {
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
    pub(super) fn header_name(
        &mut self,
        path: String,
        raw: Option<String>,
    ) -> Option<http::HeaderName> {
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
    pub(super) fn reject_status(
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

    /// `tls = true`, `false`, or `{ ca, server_name, cert, key }`.
    pub(super) fn upstream_tls(
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
    pub(super) fn upstream_addr(&mut self, path: String, text: &str) -> UpstreamAddr {
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
}
