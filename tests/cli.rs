//! The `weir` binary: `check` exit codes and messages, and signal handling on a real process.

mod support;

use std::process::{Command, Stdio};

use http::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::ChildStdout;

use support::*;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn write_config(text: &str) -> tempfile_path::Path {
    tempfile_path::Path::new(text)
}

/// A config file in the target directory, removed on drop (no extra crate needed for that).
mod tempfile_path {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn new(text: &str) -> Path {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
            let n = N.fetch_add(1, Ordering::SeqCst);
            let p = dir.join(format!("weir-cli-{}-{n}.toml", std::process::id()));
            std::fs::write(&p, text).unwrap();
            Path(p)
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Runs `weir check -c FILE`; returns the exit code and stderr.
fn check(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(WEIR)
        .arg("check")
        .arg("-c")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = Command::new(WEIR)
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn check_prints_every_problem_with_file_and_key_path_and_fails() {
    let file = write_config(
        "[[listener]]\nname = \"a\"\naddr = \"nowhere\"\n\
         [[upstream]]\nname = \"app\"\naddr = \"127.0.0.1:3000\"\nmax_concurrency = 0\nqueue_timeout = \"-1s\"\n\
         [[route]]\nupstream = \"ghost\"\n",
    );
    let (code, err) = check(&file.0);
    assert_eq!(code, Some(1));
    let name = file.0.display().to_string();
    for line in [
        format!("{name}: 4 problems"),
        format!("{name}: listener[0].addr: \"nowhere\" is not an IP address and port"),
        format!("{name}: upstream[0].max_concurrency: 0 is out of range"),
        format!("{name}: upstream[0].queue_timeout: \"-1s\" is not a duration"),
        format!("{name}: route[0].upstream: no [[upstream]] is named \"ghost\""),
    ] {
        assert!(err.contains(&line), "missing {line:?} in:\n{err}");
    }
}

#[test]
fn check_reports_the_line_of_a_type_error() {
    let file = write_config("[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nbacklog = 5\n");
    let (code, err) = check(&file.0);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(":4:1: listener[0].backlog: unknown field `backlog`"),
        "{err}"
    );
}

#[test]
fn missing_config_flag_and_missing_file_are_clear_errors() {
    let out = Command::new(WEIR).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config PATH is required"));
    let out = Command::new(WEIR)
        .args(["check", "-c", "/nonexistent/weir.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/weir.toml: cannot read the file")
    );
}

#[test]
fn a_port_in_use_fails_at_startup_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file = write_config(&format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[[listener]]\nname = \"edge\"\naddr = \"{}\"\n[[upstream]]\nname = \"app\"\naddr = \"127.0.0.1:1\"\n",
        taken.local_addr().unwrap()
    ));
    let out = Command::new(WEIR).arg("-c").arg(&file.0).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listener \"edge\": cannot bind"), "{err}");
}

struct Running {
    child: tokio::process::Child,
    lines: Lines<BufReader<ChildStdout>>,
    addr: String,
    admin: String,
    config: tempfile_path::Path,
}

/// Starts the binary on 127.0.0.1:0 and reads the bound address from its start line.
async fn start_weir(backend: std::net::SocketAddr, drain: &str) -> Running {
    start_weir_with(backend, drain, "").await
}

/// A configuration for the binary: a listener "edge" and the admin listener on free ports.
fn config_text(
    top: &str,
    listener_keys: &str,
    upstream_keys: &str,
    backend: std::net::SocketAddr,
) -> String {
    format!(
        "{top}\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"edge\"\naddr = \"127.0.0.1:0\"\n{listener_keys}\n{}",
        upstream_toml(backend, upstream_keys)
    )
}

async fn start_weir_with(
    backend: std::net::SocketAddr,
    drain: &str,
    listener_keys: &str,
) -> Running {
    start_weir_text(&config_text(
        &format!("drain_timeout = \"{drain}\""),
        listener_keys,
        "",
        backend,
    ))
    .await
}

async fn start_weir_text(text: &str) -> Running {
    start_weir_in(tokio::process::Command::new(WEIR), text).await
}

/// Starts the binary as `command` (the binary, or a command that runs it) with a configuration.
async fn start_weir_in(mut command: tokio::process::Command, text: &str) -> Running {
    let config = write_config(text);
    let mut child = command
        .arg("--config")
        .arg(&config.0)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let word_after = |line: &str, key: &str| {
        line.split(key).nth(1).map(|rest| {
            rest.split(|c: char| c.is_whitespace() || c == '"' || c == ',')
                .next()
                .unwrap()
                .to_string()
        })
    };
    let (addr, admin) = loop {
        let line = within("the start line", lines.next_line())
            .await
            .unwrap()
            .expect("weir exited");
        // Text ("admin=ADDR") or JSON ("admin":"ADDR") log lines.
        let admin = word_after(&line, "admin=").or_else(|| word_after(&line, "\"admin\":\""));
        if let (Some(addr), Some(admin)) = (word_after(&line, "edge="), admin) {
            break (addr, admin);
        }
    };
    Running {
        child,
        lines,
        addr,
        admin,
        config,
    }
}

async fn wait_for_line(r: &mut Running, needle: &str) {
    loop {
        let line = within(needle, r.lines.next_line()).await.unwrap();
        match line {
            Some(l) if l.contains(needle) => return,
            Some(_) => {}
            None => panic!("weir exited before logging {needle:?}"),
        }
    }
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("weir is running");
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let backend = spawn_backend().await;
    let mut weir = start_weir(backend.addr, "30s").await;
    let client = client();
    let in_flight = spawn_get(&client, format!("http://{}/gate", weir.addr));
    backend.stats.wait_seen(1).await;
    signal(&weir.child, "TERM");
    wait_for_line(&mut weir, "draining").await;
    backend.stats.open_gate(1);
    assert_eq!(in_flight.await.unwrap().0, StatusCode::OK);
    wait_for_line(&mut weir, "weir stopped").await;
    let status = within("weir to exit", weir.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let backend = spawn_backend().await;
    let mut weir = start_weir(backend.addr, "1h").await;
    let mut stuck = tokio::net::TcpStream::connect(&weir.addr).await.unwrap();
    stuck
        .write_all(b"GET /hang HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    backend.stats.wait_seen(1).await;
    signal(&weir.child, "INT");
    wait_for_line(&mut weir, "draining").await;
    signal(&weir.child, "TERM");
    wait_for_line(&mut weir, "second signal").await;
    let status = within("weir to exit", weir.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn check_names_a_bad_certificate_file_resolved_next_to_the_config() {
    let file = write_config(
        "[[listener]]\nname = \"tls\"\naddr = \"127.0.0.1:0\"\n\
         tls = { cert = \"missing-chain.pem\", key = \"missing.key\" }\n\
         [[upstream]]\nname = \"app\"\naddr = \"127.0.0.1:1\"\n",
    );
    let (code, err) = check(&file.0);
    assert_eq!(code, Some(1));
    let expected = format!(
        "listener \"tls\": {}: cannot read the file",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("missing-chain.pem")
            .display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let backend = spawn_backend().await;
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("weir-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(certs.join("chain.pem"), &cert).unwrap();
    std::fs::copy(certs.join("server.key"), &key).unwrap();
    let mut weir = start_weir_with(
        backend.addr,
        "5s",
        &format!(
            "tls = {{ cert = {:?}, key = {:?} }}",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .await;
    std::fs::copy(certs.join("rsa.key"), &key).unwrap();
    signal(&weir.child, "HUP");
    wait_for_line(&mut weir, "TLS reload refused").await;
    std::fs::copy(certs.join("rotated-chain.pem"), &cert).unwrap();
    std::fs::copy(certs.join("rotated.key"), &key).unwrap();
    signal(&weir.child, "HUP");
    wait_for_line(&mut weir, "TLS certificate reloaded").await;
    // Still running: SIGTERM drains and exits 0.
    signal(&weir.child, "TERM");
    let status = within("weir to exit", weir.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn on_one_core_weir_keeps_to_one_thread_through_requests_reloads_and_logs() {
    // A second thread would put glibc's socket calls on their slower multi-threaded path for
    // good: neither logging nor a reload may start one.
    let backend = spawn_backend().await;
    let text = |keys: &str| config_text("", "", keys, backend.addr);
    let mut one_core = tokio::process::Command::new("taskset");
    one_core.args(["-c", "0", WEIR]);
    let mut weir = start_weir_in(one_core, &text("max_concurrency = 3")).await;
    let url = format!("http://{}/", weir.addr);
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    std::fs::write(&weir.config.0, text("max_concurrency = 5")).unwrap();
    signal(&weir.child, "HUP");
    wait_for_line(&mut weir, "configuration reloaded").await;
    assert_eq!(scrape(weir.admin.parse().unwrap()).await.limit("app"), 5.0);
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    let pid = weir.child.id().expect("weir is running");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "weir runs {threads} threads on one core");
    // Its last lines still come out as it exits.
    signal(&weir.child, "TERM");
    wait_for_line(&mut weir, "weir stopped").await;
    let status = within("weir to exit", weir.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_refuses_a_bad_one() {
    let backend = spawn_backend().await;
    let text = |keys: &str| config_text("", "", keys, backend.addr);
    let mut weir = start_weir_text(&text("max_concurrency = 3")).await;
    let admin: std::net::SocketAddr = weir.admin.parse().unwrap();
    assert_eq!(scrape(admin).await.limit("app"), 3.0);

    // Two problems in one file: both are logged, the reload is refused, nothing changes.
    std::fs::write(&weir.config.0, text("max_concurrency = 0\nmax_queue = -1")).unwrap();
    signal(&weir.child, "HUP");
    wait_for_line(&mut weir, "upstream[0].max_concurrency").await;
    wait_for_line(&mut weir, "upstream[0].max_queue").await;
    wait_for_line(&mut weir, "reload refused").await;
    let m = scrape(admin).await;
    assert_eq!(m.reloads(), (0.0, 1.0));
    assert_eq!(m.limit("app"), 3.0);
    assert_eq!(
        get(&client(), &format!("http://{}/", weir.addr)).await.0,
        StatusCode::OK
    );

    // A valid file applies; a changed listener address is reported as needing a restart.
    std::fs::write(
        &weir.config.0,
        text("max_concurrency = 5")
            .replace("addr = \"127.0.0.1:0\"\n\n", "addr = \"127.0.0.1:1\"\n\n"),
    )
    .unwrap();
    signal(&weir.child, "HUP");
    wait_for_line(&mut weir, "needs a restart").await;
    wait_for_line(&mut weir, "configuration reloaded").await;
    let m = scrape(admin).await;
    assert_eq!(m.reloads(), (1.0, 1.0));
    assert_eq!(m.limit("app"), 5.0);
    assert_eq!(
        get(&client(), &format!("http://{}/", weir.addr)).await.0,
        StatusCode::OK
    );

    signal(&weir.child, "TERM");
    let status = within("weir to exit", weir.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_access_log_writes_one_json_line_per_request() {
    let backend = spawn_backend().await;
    let mut weir = start_weir_text(&config_text(
        "[log]\nformat = \"json\"",
        "",
        "max_concurrency = 1\nmax_queue = 0",
        backend.addr,
    ))
    .await;
    let c = client();
    let held = spawn_get(&c, format!("http://{}/gate", weir.addr));
    backend.stats.wait_seen(1).await;
    let (status, _, _) = get(&c, &format!("http://{}/turned-away?secret=1", weir.addr)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    backend.stats.open_gate(1);
    assert_eq!(held.await.unwrap().0, StatusCode::OK);

    let mut access = Vec::new();
    while access.len() < 2 {
        let line = within("an access log line", weir.lines.next_line())
            .await
            .unwrap()
            .expect("weir is running");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["target"] == "weir::access" {
            access.push(v);
        }
    }
    let rejected = access
        .iter()
        .find(|v| v["path"] == "/turned-away")
        .expect("the 503 is logged");
    assert_eq!(rejected["status"], 503);
    assert_eq!(rejected["reason"], "queue_full");
    assert_eq!(rejected["upstream"], "app");
    assert_eq!(rejected["method"], "GET");
    assert!(
        !rejected.to_string().contains("secret"),
        "the query string is not logged"
    );
    let served = access
        .iter()
        .find(|v| v["path"] == "/gate")
        .expect("the 200 is logged");
    assert_eq!(served["status"], 200);
    assert_eq!(served["reason"], "-");
    assert_eq!(served["complete"], true);
    assert_eq!(served["bytes"], 2);
    assert!(served["duration_ms"].as_f64().unwrap() >= served["queue_wait_ms"].as_f64().unwrap());

    signal(&weir.child, "TERM");
    within("weir to exit", weir.child.wait()).await.unwrap();
}

#[test]
fn demo_runs_to_the_end_and_reports_shedding() {
    let out = Command::new(WEIR)
        .args(["demo", "--duration", "3s", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("/metrics"),
        "prints the admin URL: {stdout}"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    let shed: u64 = summary
        .split("shed ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no shed count: {summary}"));
    assert!(
        shed > 0,
        "5x the capacity is offered, so some is shed: {summary}"
    );
    assert!(summary.contains("queue_full="), "{summary}");
    assert!(summary.contains("(0 errors)"), "{summary}");
    let peak: usize = stdout
        .split("never had more than ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no backend peak: {stdout}"));
    assert!(
        peak <= 8,
        "the pool holds the backend at its capacity: {stdout}"
    );
    // Every line shows weir's adaptive limit, and the summary what it was.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("limit") && l.contains("backend")),
        "{stdout}"
    );
    assert!(stdout.contains("weir's limit was"), "{stdout}");
}

#[tokio::test]
async fn sigterm_turns_readyz_503_while_traffic_is_still_served() {
    let backend = spawn_backend().await;
    let mut weir = start_weir_text(&config_text(
        "shutdown_delay = \"3s\"\ndrain_timeout = \"5s\"",
        "",
        "",
        backend.addr,
    ))
    .await;
    let c = client();
    let readyz = format!("http://{}/readyz", weir.admin);
    assert_eq!(get(&c, &readyz).await.0, StatusCode::OK);
    signal(&weir.child, "TERM");
    within("readyz to answer 503", async {
        while get(&c, &readyz).await.0 != StatusCode::SERVICE_UNAVAILABLE {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Not ready, yet a new client is still served: the listener closes only after the delay.
    let fresh = client();
    assert_eq!(
        get(&fresh, &format!("http://{}/", weir.addr)).await.0,
        StatusCode::OK
    );
    wait_for_line(&mut weir, "weir stopped").await;
    let status = within("weir to exit", weir.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
