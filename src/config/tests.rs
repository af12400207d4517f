//! Tests of parsing and validation, on configuration text alone.

use super::raw::parse_size;
use super::*;

const MINIMAL: &str = r#"
[[listener]]
name = "public"
addr = "127.0.0.1:8080"

[[upstream]]
name = "app"
addr = "127.0.0.1:3000"
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("expected config errors for:\n{text}"),
        Err(e) => e.problems,
    }
}

fn has(problems: &[Problem], path: &str, needle: &str) -> bool {
    problems
        .iter()
        .any(|p| p.path == path && p.message.contains(needle))
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.drain_timeout, defaults::DRAIN_TIMEOUT);
    let u = &c.upstreams[0];
    assert_eq!(u.limit, Limit::Fixed(defaults::MAX_CONCURRENCY));
    assert_eq!(u.max_queue, defaults::MAX_QUEUE);
    assert_eq!(u.queue_timeout, defaults::QUEUE_TIMEOUT);
    assert_eq!(u.protocol, Protocol::Http1);
    assert_eq!(u.retry_after_secs, 1);
    assert!(c.routes.is_empty());
    assert_eq!(c.admin, Some(defaults::ADMIN_ADDR.parse().unwrap()));
    assert_eq!(c.shutdown_delay, Duration::ZERO);
    assert!(c.request_metrics);
    assert_eq!(
        c.log,
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access: true
        }
    );
}

#[test]
fn admin_and_log_sections() {
    let text = format!(
        "shutdown_delay = \"5s\"\n[admin]\nenabled = false\n[log]\nformat = \"json\"\naccess = false\n{MINIMAL}"
    );
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.admin, None);
    assert_eq!(c.shutdown_delay, Duration::from_secs(5));
    assert_eq!((c.log.format, c.log.access), (LogFormat::Json, false));

    let text =
        format!("[admin]\naddr = \"127.0.0.1:8080\"\n[log]\nlevel = \"info,weir=loud\"\n{MINIMAL}");
    let p = problems(&text);
    assert!(
        has(&p, "admin.addr", "also the address of listener[0]"),
        "{p:?}"
    );
    assert!(has(&p, "log.level", "is not a log filter"), "{p:?}");
    let p = problems(&format!("[admin]\naddr = \"localhost\"\n{MINIMAL}"));
    assert!(has(&p, "admin.addr", "not an IP address and port"), "{p:?}");
}

#[test]
fn unknown_key_is_reported_with_path_and_line() {
    let text = format!("{MINIMAL}max_qeue = 5\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "upstream[0].max_qeue");
    assert!(p[0].message.contains("unknown field `max_qeue`"), "{p:?}");
    assert_eq!(p[0].location, Some((9, 1)));
}

#[test]
fn wrong_type_is_reported_with_path_and_line() {
    let text = MINIMAL.replace(
        "addr = \"127.0.0.1:3000\"",
        "addr = \"127.0.0.1:3000\"\nmax_queue = \"ten\"",
    );
    let p = problems(&text);
    assert_eq!(p[0].path, "upstream[0].max_queue", "{p:?}");
    assert!(p[0].message.contains("invalid type"), "{p:?}");
    assert_eq!(p[0].location, Some((9, 13)));
}

#[test]
fn syntax_error_has_a_location() {
    let p = problems("[[listener]\nname = 1");
    assert!(p[0].location.is_some(), "{p:?}");
}

#[test]
fn every_semantic_problem_is_reported_together() {
    let text = r#"
drain_timeout = "-5s"
[[listener]]
name = "public"
addr = "localhost:80"
[[listener]]
name = "public"
addr = "127.0.0.1:81"
[[upstream]]
name = "a"
addr = "127.0.0.1:3000"
max_concurrency = 0
max_queue = -1
queue_timeout = "forever"
request_timeout = "400days"
connect_timeout = "0s"
[[upstream]]
name = "b"
addr = "http://127.0.0.1:3001"
[[upstream]]
name = "b"
addr = "127.0.0.1"
[[route]]
path_prefix = "api"
upstream = "c"
"#;
    let p = problems(text);
    let expect = [
        ("drain_timeout", "not a duration"),
        ("listener[0].addr", "not an IP address and port"),
        ("listener[1].name", "duplicate listener name \"public\""),
        ("upstream[0].max_concurrency", "0 is out of range"),
        ("upstream[0].max_queue", "-1 is out of range"),
        ("upstream[0].queue_timeout", "not a duration"),
        ("upstream[0].request_timeout", "too long"),
        ("upstream[0].connect_timeout", "longer than zero"),
        ("upstream[1].addr", "without a scheme"),
        ("upstream[2].addr", "not a host:port"),
        ("upstream[2].name", "duplicate upstream name \"b\""),
        ("route[0].path_prefix", "must start with '/'"),
        ("route[0].upstream", "no [[upstream]] is named \"c\""),
    ];
    for (path, needle) in expect {
        assert!(has(&p, path, needle), "missing {path}: {needle} in {p:#?}");
    }
    assert_eq!(p.len(), expect.len(), "{p:#?}");
}

#[test]
fn several_upstreams_need_routes() {
    let text = format!("{MINIMAL}[[upstream]]\nname = \"b\"\naddr = \"127.0.0.1:3001\"\n");
    assert!(has(&problems(&text), "route", "more than one"));
}

#[test]
fn empty_file_asks_for_listener_and_upstream() {
    let p = problems("");
    assert!(has(&p, "listener", "at least one"));
    assert!(has(&p, "upstream", "at least one"));
}

#[test]
fn routes_resolve_to_upstream_indices() {
    let text = format!(
        "{MINIMAL}[[upstream]]\nname = \"b\"\naddr = \"b.internal:3001\"\nprotocol = \"h2c\"\n\
             [[route]]\nhost = \"API.example.com\"\nupstream = \"b\"\n[[route]]\nupstream = \"app\"\n"
    );
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.routes[0].upstream, 1);
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(c.upstreams[1].protocol, Protocol::H2c);
    assert_eq!(c.routes[1].upstream, 0);
}

#[test]
fn display_names_file_path_and_reason() {
    let mut e = Config::from_toml_str(&MINIMAL.replace("3000", "0")).unwrap_err();
    e.file = Some("weir.toml".into());
    let text = e.to_string();
    assert!(
        text.contains("weir.toml: upstream[0].addr: \"127.0.0.1:0\" is not a host:port"),
        "{text}"
    );
}

#[test]
fn listener_limits_parse_sizes_durations_and_tls() {
    let text = MINIMAL.replace(
            "addr = \"127.0.0.1:8080\"",
            "addr = \"127.0.0.1:8080\"\nmax_header_bytes = \"16KiB\"\nmax_body_bytes = 1000\n\
             header_timeout = \"2s\"\nmax_connections = 5\ntls = { cert = \"c.pem\", key = \"k.pem\" }",
        );
    let c = Config::from_toml_str(&text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.max_header_bytes, 16 * 1024);
    assert_eq!(l.max_body_bytes, Some(1000));
    assert_eq!(l.header_timeout, Duration::from_secs(2));
    assert_eq!(l.idle_timeout, defaults::IDLE_TIMEOUT);
    assert_eq!(l.max_connections, 5);
    assert_eq!(
        l.tls.as_ref().map(|t| t.cert.clone()),
        Some(PathBuf::from("c.pem"))
    );
    assert_eq!(parse_size("1 MiB"), Some(1 << 20));
    assert_eq!(parse_size("500kB"), Some(500_000));
    assert_eq!(parse_size("12 parsecs"), None);
}

#[test]
fn listener_limits_out_of_range() {
    let text = MINIMAL.replace(
        "addr = \"127.0.0.1:8080\"",
        "addr = \"127.0.0.1:8080\"\nmax_header_bytes = 100\nmax_body_bytes = \"lots\"\n\
             max_connections = 0\nidle_timeout = \"0s\"\ntls = { cert = \"c.pem\" }",
    );
    let p = problems(&text);
    // The missing `key` is a shape error: the parser reports it first, alone.
    assert!(has(&p, "listener[0].tls", "missing field `key`"), "{p:?}");
    let text = text.replace("tls = { cert = \"c.pem\" }", "");
    let p = problems(&text);
    assert!(
        has(
            &p,
            "listener[0].max_header_bytes",
            "100 bytes is out of range"
        ),
        "{p:?}"
    );
    assert!(has(&p, "listener[0].max_body_bytes", "not a size"), "{p:?}");
    assert!(
        has(&p, "listener[0].max_connections", "0 is out of range"),
        "{p:?}"
    );
    assert!(
        has(&p, "listener[0].idle_timeout", "longer than zero"),
        "{p:?}"
    );
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../config.example.toml");
    let c = Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.listeners.is_empty());
}

#[test]
fn an_adaptive_limit_and_its_bounds() {
    let up = |keys: &str| format!("{MINIMAL}{keys}\n");
    let c = Config::from_toml_str(&up("max_concurrency = \"auto\"")).unwrap();
    assert_eq!(
        c.upstreams[0].limit,
        Limit::Auto(AutoLimit {
            min: defaults::MIN_CONCURRENCY,
            initial: defaults::INITIAL_CONCURRENCY,
            max: defaults::MAX_CONCURRENCY_LIMIT,
        })
    );
    let c = Config::from_toml_str(&up(
        "max_concurrency = \"auto\"\nmin_concurrency = 4\ninitial_concurrency = 8\nmax_concurrency_limit = 50",
    ))
    .unwrap();
    assert_eq!(
        c.upstreams[0].limit,
        Limit::Auto(AutoLimit {
            min: 4,
            initial: 8,
            max: 50
        })
    );
    // A small ceiling pulls the default start and floor under it.
    let c = Config::from_toml_str(&up("max_concurrency = \"auto\"\nmax_concurrency_limit = 1"))
        .unwrap();
    assert_eq!(c.upstreams[0].limit.initial(), 1);

    let cases = [
        (
            "max_concurrency = \"lots\"",
            "max_concurrency",
            "write an integer, or \"auto\"",
        ),
        ("max_concurrency = 1.5", "max_concurrency", "is not a limit"),
        (
            "max_concurrency = \"auto\"\nmin_concurrency = 10\nmax_concurrency_limit = 5",
            "min_concurrency",
            "above max_concurrency_limit",
        ),
        (
            "max_concurrency = \"auto\"\ninitial_concurrency = 2000",
            "initial_concurrency",
            "outside min_concurrency..max_concurrency_limit",
        ),
        (
            "max_concurrency = 8\nmin_concurrency = 2",
            "min_concurrency",
            "only applies with max_concurrency = \"auto\"",
        ),
        (
            "initial_concurrency = 2",
            "initial_concurrency",
            "only applies",
        ),
    ];
    for (keys, key, needle) in cases {
        let p = problems(&up(keys));
        let path = format!("upstream[0].{key}");
        assert!(has(&p, &path, needle), "{keys}: {p:#?}");
    }
}

#[test]
fn upstream_tls_and_unix_addresses() {
    let up = |keys: &str| format!("{MINIMAL}{keys}\n");
    let c = Config::from_toml_str(&up("tls = true")).unwrap();
    assert_eq!(c.upstreams[0].tls, Some(UpstreamTls::default()));
    let c = Config::from_toml_str(&up("tls = false")).unwrap();
    assert_eq!(c.upstreams[0].tls, None);
    let c = Config::from_toml_str(&up(
        "tls = { ca = \"ca.pem\", server_name = \"app.internal\", cert = \"c.pem\", key = \"k.pem\" }",
    ))
    .unwrap();
    let tls = c.upstreams[0].tls.clone().unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("app.internal"));
    assert_eq!(tls.ca, Some(std::path::PathBuf::from("ca.pem")));

    let text = MINIMAL.replace("127.0.0.1:3000", "unix:/run/app.sock");
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(
        c.upstreams[0].addr,
        UpstreamAddr::Unix("/run/app.sock".into())
    );
    assert_eq!(c.upstreams[0].addr.to_string(), "unix:/run/app.sock");

    let cases = [
        ("tls = \"yes\"", "upstream[0].tls", "is not TLS settings"),
        (
            "tls = { cert = \"c.pem\" }",
            "upstream[0].tls",
            "cert and key go together",
        ),
        (
            "tls = { ca = \"a\", cafile = \"b\" }",
            "upstream[0].tls",
            "cafile",
        ),
        (
            "tls = { server_name = \"not a name\" }",
            "upstream[0].tls.server_name",
            "not a DNS name",
        ),
    ];
    for (keys, path, needle) in cases {
        let p = problems(&up(keys));
        assert!(has(&p, path, needle), "{keys}: {p:#?}");
    }
    let p = problems(&format!("{}tls = true\n", text));
    assert!(has(&p, "upstream[0].tls", "not supported"), "{p:#?}");
    let p = problems(&MINIMAL.replace("127.0.0.1:3000", "unix:"));
    assert!(has(&p, "upstream[0].addr", "needs a socket path"), "{p:#?}");
}

#[test]
fn upgrade_limits() {
    let up = |keys: &str| format!("{MINIMAL}{keys}\n");
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.upstreams[0].max_upgraded, defaults::MAX_UPGRADED);
    assert_eq!(c.upstreams[0].tunnel_idle_timeout, Duration::from_secs(300));
    let c = Config::from_toml_str(&up("max_upgraded = 0\ntunnel_idle_timeout = \"2h\"")).unwrap();
    assert_eq!(c.upstreams[0].max_upgraded, 0);
    assert_eq!(
        c.upstreams[0].tunnel_idle_timeout,
        Duration::from_secs(7200)
    );
    let p = problems(&up("max_upgraded = -1\ntunnel_idle_timeout = \"0s\""));
    assert!(has(&p, "upstream[0].max_upgraded", "range"), "{p:#?}");
    assert!(has(&p, "upstream[0].tunnel_idle_timeout", ""), "{p:#?}");
}

#[test]
fn shedding_keys_classes_tenants_deadlines_codel_and_statuses() {
    let text = format!(
        "reject_status = {{ queue_full = 429, tenant_share = 503 }}\n{MINIMAL}\
         priority_header = \"x-priority\"\ndeadline_header = \"x-deadline-ms\"\n\
         tenant_header = \"x-tenant\"\ntenant_max_share = 0.25\ncodel = true\n\
         [[route]]\npath_prefix = \"/batch/\"\nupstream = \"app\"\npriority = \"sheddable\"\n"
    );
    let c = Config::from_toml_str(&text).unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.priority_header.as_ref().unwrap(), "x-priority");
    assert_eq!(u.deadline_header.as_ref().unwrap(), "x-deadline-ms");
    assert_eq!(u.tenant_header.as_ref().unwrap(), "x-tenant");
    assert_eq!(u.tenant_max_share, 0.25);
    assert_eq!(
        u.codel,
        Some((defaults::CODEL_TARGET, defaults::CODEL_INTERVAL))
    );
    assert_eq!(c.routes[0].priority, Some(Priority::Sheddable));
    assert_eq!(
        c.reject_status,
        [
            ("queue_full", http::StatusCode::TOO_MANY_REQUESTS),
            ("tenant_share", http::StatusCode::SERVICE_UNAVAILABLE)
        ]
    );

    let bad = format!(
        "reject_status = {{ queue_ful = 429, queue_timeout = 200 }}\n{MINIMAL}\
         priority_header = \"Host\"\ntenant_max_share = 2.0\ncodel_target = \"5ms\"\n\
         priority_reserve = 64\n\
         [[route]]\nupstream = \"app\"\npriority = \"urgent\"\n"
    );
    let p = match Config::from_toml_str(&bad) {
        Err(e) => e.problems,
        Ok(_) => panic!("accepted"),
    };
    // An unknown class is a type error, reported alone by the parser.
    assert!(
        has(&p, "route[0].priority", "urgent") || p.len() == 1,
        "{p:#?}"
    );
    let bad = bad.replace("priority = \"urgent\"", "priority = \"critical\"");
    let p = problems(&bad);
    assert!(has(&p, "reject_status.queue_ful", "not a reason"), "{p:#?}");
    assert!(
        has(&p, "reject_status.queue_timeout", "4xx or 5xx"),
        "{p:#?}"
    );
    assert!(
        has(&p, "upstream[0].priority_header", "header name"),
        "{p:#?}"
    );
    assert!(
        has(&p, "upstream[0].tenant_max_share", "out of range"),
        "{p:#?}"
    );
    assert!(
        has(&p, "upstream[0].tenant_max_share", "tenant_header"),
        "{p:#?}"
    );
    assert!(
        has(&p, "upstream[0].codel_target", "codel = true"),
        "{p:#?}"
    );
}
