//! The traffic side of a listener: the accept loop, and one hyper server (HTTP/1.1 and h2c on the
//! same port) per connection, watched for graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::forward::ClientInfo;
use crate::proxy::Proxy;

/// Longest pause after a failing `accept` (EMFILE, ENFILE, ENOBUFS): long enough that a full file
/// table does not spin a core, short enough that service resumes soon after descriptors free up.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// One bound listener and what its connections are served with.
pub struct Edge {
    pub name: Arc<str>,
    listener: TcpListener,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

/// Per-connection state shared by that connection's requests.
struct Conn {
    proxy: Arc<Proxy>,
    client: ClientInfo,
}

impl Edge {
    pub fn new(name: &str, listener: TcpListener, proxy: Arc<Proxy>) -> Edge {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        Edge {
            name: name.into(),
            listener,
            proxy,
            builder: Arc::new(builder),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop` is cancelled, then drops the listener so that new
    /// connections are refused. Connections already accepted are registered with `graceful` and
    /// are aborted only when `abort` is cancelled (the drain deadline passed).
    pub async fn serve(
        self,
        graceful: Arc<GracefulShutdown>,
        stop: CancellationToken,
        abort: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    self.spawn_connection(stream, peer, &graceful, &abort);
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(listener = %self.name, error = %e, "accept: connection failed");
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, backoff = ?backoff, "accept failed; backing off");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn spawn_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        graceful: &GracefulShutdown,
        abort: &CancellationToken,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let conn = Arc::new(Conn {
            proxy: Arc::clone(&self.proxy),
            client: ClientInfo::new(peer, false),
        });
        let builder = Arc::clone(&self.builder);
        let watcher = graceful.watcher();
        let abort = abort.clone();
        let listener = Arc::clone(&self.name);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let conn = Arc::clone(&conn);
                async move { Ok::<_, Infallible>(conn.proxy.handle(req, &conn.client).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = watcher.watch(connection) => {
                    if let Err(e) = result {
                        tracing::debug!(listener = %listener, peer = %peer, error = %e, "connection ended with an error");
                    }
                }
                _ = abort.cancelled() => {
                    tracing::debug!(listener = %listener, peer = %peer, "connection aborted: drain_timeout expired");
                }
            }
        });
    }
}

/// Errors that concern one connection only, not the listener: retry at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
