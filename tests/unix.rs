//! Unix domain socket upstreams (`addr = "unix:/path"`): HTTP/1.1 and h2c to a real backend on a
//! socket, with the pool's limit holding, and `weir check`'s word on a path that is not a socket.

mod support;

use std::process::Command;

use support::*;

fn unix_upstream(path: &std::path::Path, keys: &str) -> String {
    format!(
        "[[upstream]]\nname = \"app\"\naddr = \"unix:{}\"\n{keys}\n",
        path.display()
    )
}

#[tokio::test]
async fn http1_and_h2c_over_a_unix_socket_with_the_limit_holding() {
    for protocol in ["http1", "h2c"] {
        let backend = spawn_unix_backend().await;
        let weir = spawn_weir(&unix_upstream(
            &backend.path,
            &format!("protocol = \"{protocol}\"\nmax_concurrency = 2\nmax_queue = 100\nqueue_timeout = \"20s\""),
        ))
        .await;
        let c = client();
        let (status, _, body) = get(&c, &weir.url("/headers")).await;
        assert_eq!(status, 200, "{protocol}");
        let body = String::from_utf8_lossy(&body).to_ascii_lowercase();
        assert!(body.contains("x-forwarded-for"), "{protocol}: {body}");

        let waiting: Vec<_> = (0..8)
            .map(|_| spawn_get(&c, weir.url("/sleep/50")))
            .collect();
        for w in waiting {
            assert_eq!(within("an answer", w).await.unwrap().0, 200, "{protocol}");
        }
        assert!(
            backend.stats.peak() <= 2,
            "{protocol}: the backend saw {} at once",
            backend.stats.peak()
        );
        assert_eq!(backend.stats.seen(), 9, "{protocol}");
        weir.stop().await;
    }
}

#[tokio::test]
async fn a_socket_missing_at_start_answers_502_then_serves_once_the_app_listens() {
    let path = unix_socket_path();
    let weir = spawn_weir(&unix_upstream(&path, "")).await;
    let c = client();
    let (status, headers, _) = get(&c, &weir.url("/")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-weir-reject"], "upstream_connect");
    let backend = spawn_unix_backend_at(path).await;
    let (status, _, body) = get(&c, &weir.url("/")).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    assert_eq!(backend.stats.seen(), 1);
    weir.stop().await;
}

#[test]
fn check_warns_about_a_path_that_is_not_a_socket() {
    let dir = std::env::temp_dir().join(format!("weir-test-{}-check", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    let config = dir.join("weir.toml");
    let text = |addr: &str| {
        format!(
            "[[listener]]\nname = \"l\"\naddr = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"app\"\naddr = \"{addr}\"\n"
        )
    };
    let check = |text: String| {
        std::fs::write(&config, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = check(text(&format!("unix:{}", file.display())));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("warning: upstream[0].addr:") && stdout.contains("is not a socket"),
        "{stdout}"
    );
    // Missing is fine: the app may come later.
    let out = check(text("unix:/run/weir-test-never-there.sock"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stdout.contains("warning"), "{stdout}");
    let out = check(text("unix:"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a socket path"));
    let _ = std::fs::remove_dir_all(&dir);
}
