//! gRPC through weir with a real client and server (Python's grpcio, tests/grpc/echo.py):
//! weir's own answers reach a gRPC client as gRPC statuses with weir's message and a pushback,
//! never as a mapped HTTP status, and the backend is told the time that is left.
//!
//! Needs python3 (`WEIR_TEST_PYTHON` names another interpreter). Without grpcio, the test
//! installs it for itself with pip under cargo's test directory (`target/tmp/grpc-python`, once;
//! pip reaches PyPI, a package registry).

mod support;

use std::process::Stdio;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/echo.py");

fn python() -> String {
    std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Where grpcio is installed for these tests when the interpreter has none.
const GRPC_PYTHON: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/grpc-python");

/// A command running the test script with grpcio importable: installed for the tests if the
/// interpreter has none.
async fn script() -> Command {
    let importable = |path: Option<&str>| {
        let mut c = Command::new(python());
        c.args(["-c", "import grpc"]);
        if let Some(p) = path {
            c.env("PYTHONPATH", p);
        }
        c.stdout(Stdio::null()).stderr(Stdio::null()).status()
    };
    let path = if importable(None).await.is_ok_and(|s| s.success()) {
        None
    } else {
        if !importable(Some(GRPC_PYTHON))
            .await
            .is_ok_and(|s| s.success())
        {
            let install = Command::new(python())
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--target", GRPC_PYTHON, "grpcio"])
                .status();
            let done = tokio::time::timeout(std::time::Duration::from_secs(300), install).await;
            assert!(
                matches!(done, Ok(Ok(s)) if s.success()),
                "installing grpcio for the gRPC test failed: python3 -m pip install grpcio"
            );
        }
        Some(GRPC_PYTHON)
    };
    let mut c = Command::new(python());
    c.arg(SCRIPT).kill_on_drop(true);
    if let Some(p) = path {
        c.env("PYTHONPATH", p);
    }
    c
}

/// The gRPC server, and the port it listens on; it stops when its stdin closes (the child is
/// dropped, and killed).
async fn grpc_server() -> (Child, u16) {
    let mut child = script()
        .await
        .arg("server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    within(
        "the gRPC server's port",
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!("the gRPC server did not start ({line:?}): this test needs python3 with grpcio")
    });
    (child, port)
}

/// Runs the client's `case` through `weir`; its one JSON line.
async fn call(weir: &Weir, case: &str) -> Value {
    let out = within(
        "the gRPC client",
        script()
            .await
            .args([
                "client",
                &weir.addr.to_string(),
                &weir.admin.to_string(),
                case,
            ])
            .output(),
    )
    .await
    .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "client {case}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn grpc_clients_get_grpc_statuses_from_weir_and_the_backend_the_time_left() {
    let (_server, port) = grpc_server().await;
    let body = format!(
        "[[upstream]]\nname = \"echo\"\naddr = \"127.0.0.1:{port}\"\nprotocol = \"h2c\"\n\
         request_timeout = \"1s\"\n\
         [[upstream]]\nname = \"tight\"\naddr = \"127.0.0.1:{port}\"\nprotocol = \"h2c\"\n\
         max_concurrency = 1\nmax_queue = 0\nrequest_timeout = \"2s\"\nretry_after = \"3s\"\n\
         [[upstream]]\nname = \"shared\"\naddr = \"127.0.0.1:{port}\"\nprotocol = \"h2c\"\n\
         max_concurrency = 1\ntenant_header = \"x-tenant\"\n\
         [[route]]\npath_prefix = \"/weir.test.Echo/Echo\"\nupstream = \"echo\"\n\
         [[route]]\npath_prefix = \"/weir.test.Echo/Hold\"\nupstream = \"shared\"\n\
         [[route]]\nupstream = \"tight\"\n"
    );
    let weir = spawn_weir_on(&body, "max_body_bytes = 1000", weir::Options::default()).await;

    // Through: the client's 10 s are cut to weir's request_timeout of 1 s, and the backend is
    // told what is left of that, less weir's 5 ms margin.
    let ok = call(&weir, "echo").await;
    assert_eq!(ok["code"], "OK", "{ok}");
    let left: f64 = ok["trailing"]["x-left-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let call_ms = ok["call_ms"].as_f64().unwrap();
    eprintln!("deadline told to the backend: {left} ms of 995 (the call took {call_ms:.1} ms)");
    assert!(
        left <= 995.0 && left >= 995.0 - call_ms - 20.0,
        "the backend was told {left} ms are left (call took {call_ms} ms)"
    );

    let overload = call(&weir, "overload").await;
    assert_eq!(overload["code"], "UNAVAILABLE", "{overload}");
    assert!(
        overload["details"]
            .as_str()
            .unwrap()
            .contains("weir: overloaded"),
        "{overload}"
    );
    // No queue has drained yet: the pushback is retry_after's.
    assert_eq!(overload["trailing"]["grpc-retry-pushback-ms"], "3000");
    assert_eq!(overload["trailing"]["x-weir-reject"], "queue_full");

    // weir's request_timeout, with no deadline of the client's to tell the backend.
    let deadline = call(&weir, "deadline").await;
    assert_eq!(deadline["code"], "DEADLINE_EXCEEDED", "{deadline}");
    assert!(
        deadline["details"].as_str().unwrap().starts_with("weir: "),
        "{deadline}"
    );

    let tenant = call(&weir, "tenant").await;
    assert_eq!(tenant["code"], "RESOURCE_EXHAUSTED", "{tenant}");
    assert!(
        tenant["details"].as_str().unwrap().contains("tenant_share"),
        "{tenant}"
    );
    assert!(
        tenant["trailing"]["grpc-retry-pushback-ms"]
            .as_str()
            .is_some(),
        "{tenant}"
    );

    let too_large = call(&weir, "too_large").await;
    assert_eq!(too_large["code"], "RESOURCE_EXHAUSTED", "{too_large}");
    assert!(
        too_large["details"]
            .as_str()
            .unwrap()
            .contains("body_too_large"),
        "{too_large}"
    );
}
