//! The dashboard and alert rules in deploy/ name only metrics that weir really exports.

mod support;

use std::collections::BTreeSet;

use http::StatusCode;
use support::*;

/// Metric names (`weir_*`, `process_*`) in a PromQL-bearing file.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["weir_", "process_"] {
        for (i, _) in text.match_indices(prefix) {
            let word_start = text[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if !word_start {
                continue;
            }
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let backend = spawn_backend().await;
    // An adaptive limit: its families (the dashboard draws them) are exported for it alone.
    let weir = spawn_weir(&upstream_toml(backend.addr, "max_concurrency = \"auto\"")).await;
    assert_eq!(get(&client(), &weir.url("/")).await.0, StatusCode::OK);
    let exported = scrape(weir.admin).await;
    let families = exported.names();
    let histograms: BTreeSet<&str> =
        ["weir_request_duration_seconds", "weir_queue_wait_seconds"].into();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["grafana/weir.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let named = metric_names(&text);
        assert!(named.len() >= 5, "{file} names metrics: {named:?}");
        for name in &named {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(b)))
                .unwrap_or(name);
            assert!(
                families.contains(family),
                "{file} names {name}, which weir does not export; it exports {families:?}"
            );
        }
    }
}

#[test]
fn metric_names_are_found_as_whole_words() {
    let names = metric_names(
        "rate(weir_requests_total{x=\"y\"}[5m]) / my_weir_thing + process_open_fds weir's",
    );
    let names: Vec<_> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["process_open_fds", "weir_requests_total"]);
}
