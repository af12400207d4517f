//! A real WebSocket backend (hyper's server with upgrades, tungstenite's protocol) and client
//! helpers, for the upgrade tests and the WebSocket benchmark.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};

/// What the WebSocket backend saw.
#[derive(Default)]
pub struct WsStats {
    /// Upgrades it accepted (101s sent).
    pub upgrades: watch::Sender<usize>,
    /// Its WebSocket connections that have ended (the peer closed or went away).
    pub ended: watch::Sender<usize>,
    /// Plain requests it answered.
    pub plain: watch::Sender<usize>,
    /// The `Upgrade` field of the latest plain request, if it had one.
    pub last_plain_upgrade: std::sync::Mutex<Option<String>>,
}

impl WsStats {
    pub async fn wait(counter: &watch::Sender<usize>, n: usize) {
        let mut rx = counter.subscribe();
        super::within("a WebSocket backend count", rx.wait_for(|v| *v >= n))
            .await
            .unwrap();
    }
}

pub struct WsBackend {
    pub addr: SocketAddr,
    pub stats: Arc<WsStats>,
    task: JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend on 127.0.0.1:0 that accepts a WebSocket upgrade on any path but `/refuse` (426) and
/// echoes every text and binary message; a request without an upgrade gets 200 "ok".
pub async fn spawn_ws_backend() -> WsBackend {
    ws_backend_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// The backend of [`spawn_ws_backend`] on `listener`.
pub fn ws_backend_on(listener: TcpListener) -> WsBackend {
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(WsStats::default());
    let s = Arc::clone(&stats);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, Arc::clone(&s)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    WsBackend { addr, stats, task }
}

async fn answer(
    mut req: Request<Incoming>,
    stats: Arc<WsStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let (Some(key), true) = (key, websocket) else {
        let upgrade = req.headers().get(header::UPGRADE);
        *stats.last_plain_upgrade.lock().unwrap() =
            upgrade.map(|v| v.to_str().unwrap_or("?").to_string());
        stats.plain.send_modify(|n| *n += 1);
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    };
    if req.uri().path() == "/refuse" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"no upgrade here")));
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        return Ok(r);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    stats.upgrades.send_modify(|n| *n += 1);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None);
            echo(ws.await).await;
        }
        stats.ended.send_modify(|n| *n += 1);
    });
    let mut r = Response::new(Full::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, "upgrade".parse().unwrap());
    h.insert(header::UPGRADE, "websocket".parse().unwrap());
    let accept = derive_accept_key(key.as_bytes());
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
    Ok(r)
}

/// Echoes every data message until the peer closes.
async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// A WebSocket client connected to `addr` (weir, or the backend), asking for `path`.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tungstenite::Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await?;
    Ok(ws)
}

/// Sends `msg` and waits for its echo.
pub async fn round_trip(ws: &mut WebSocketStream<TcpStream>, msg: Message) -> Message {
    ws.send(msg).await.unwrap();
    loop {
        match super::within("an echo", ws.next()).await {
            Some(Ok(m)) if m.is_text() || m.is_binary() => return m,
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
}
