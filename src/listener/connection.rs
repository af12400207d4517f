//! The state of one downstream connection that its requests and its `GuardedIo` share: the
//! requests in progress (whether the connection is idle), when the last one finished, and the
//! request to park; and the guard that counts one request in progress.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::peer::Hangup;
use crate::http::Downstream;
use crate::proxy::Proxy;
use crate::sync::lock;
use crate::upstream::Upgraded;

/// How long an HTTP/1 connection is idle before it parks: far longer than the gap between a
/// busy client's requests, short enough that idle connections park while many are opening.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// Per-connection state shared by the connection's requests and its `GuardedIo`.
pub struct Connection {
    pub proxy: Arc<Proxy>,
    pub downstream: Downstream,
    /// Requests whose response has not finished: non-zero means the connection is not idle.
    /// Changed by [`InProgress`]: with atomic read-modify-writes on HTTP/2, whose requests end on
    /// tasks of their own; with a load and a store on HTTP/1, whose requests start, run and end
    /// one at a time on the connection's task.
    in_progress: AtomicUsize,
    /// HTTP/1: set while the connection task waits to be woken when idle. Waking an
    /// `AtomicWaker` costs two atomic operations even when nothing is registered, and an HTTP/1
    /// connection task seldom is (see `GuardedIo`'s check-in).
    wants_idle: AtomicBool,
    /// When the last request finished, in nanoseconds from `opened`: where the idle deadline
    /// counts from, however late `GuardedIo` notices.
    finished: AtomicU64,
    opened: Instant,
    /// The connection task, when it asked to be woken as its last request finishes
    /// ([`Connection::wake_when_idle`]).
    idle_waker: AtomicWaker,
    /// Plain TCP: the client's socket, which HTTP/1 requests watch for the client hanging up.
    pub(super) socket: Option<Arc<TcpStream>>,
    /// HTTP/1: set by `GuardedIo` when the connection has been idle for
    /// [`PARK_AFTER`]; the server parks when it sees it.
    park: AtomicBool,
    /// HTTP/1: the backend's end of a tunnel, from a 101 answer, until the server has written
    /// the 101 and ended, and the connection task runs the tunnel (see `listener::park`).
    upgraded: Mutex<Option<Box<Upgraded>>>,
}

impl Connection {
    /// `socket`: the client's plain TCP socket ([`PeerSocket::share`]); `None` over TLS.
    pub fn new(
        proxy: Arc<Proxy>,
        downstream: Downstream,
        socket: Option<Arc<TcpStream>>,
    ) -> Connection {
        Connection {
            proxy,
            downstream,
            in_progress: AtomicUsize::new(0),
            wants_idle: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            opened: Instant::now(),
            idle_waker: AtomicWaker::new(),
            socket,
            park: AtomicBool::new(false),
            upgraded: Mutex::new(None),
        }
    }

    /// Keeps a 101's tunnel for the connection task, which runs it when the server ends.
    pub fn hand_over(&self, tunnel: Box<Upgraded>) {
        *lock(&self.upgraded) = Some(tunnel);
    }

    /// The tunnel a 101 left, once its server has ended.
    pub fn take_upgraded(&self) -> Option<Box<Upgraded>> {
        lock(&self.upgraded).take()
    }

    /// Asks the connection's HTTP/1 server to park (see `listener::park`).
    pub fn ask_park(&self) {
        self.park.store(true, Ordering::Relaxed);
    }

    /// Whether the server was asked to park since the last call. On the connection's task, as
    /// [`Connection::ask_park`]: a load, and a store only when asked.
    pub fn take_park(&self) -> bool {
        let asked = self.park.load(Ordering::Relaxed);
        if asked {
            self.park.store(false, Ordering::Relaxed);
        }
        asked
    }

    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }

    /// Asks to be woken when the connection becomes idle. Once: the wake-up takes the waker.
    pub fn wake_when_idle(&self, waker: &std::task::Waker) {
        self.wants_idle.store(true, Ordering::Relaxed);
        self.idle_waker.register(waker);
    }

    /// When the last request finished (the connection's opening if none has).
    pub fn finished_at(&self) -> Instant {
        self.opened + Duration::from_nanos(self.finished.load(Ordering::Acquire))
    }
}

/// A request in progress on its connection, from the moment hyper hands it over until its response
/// body is finished or dropped.
pub struct InProgress {
    pub(super) conn: Arc<Connection>,
    /// HTTP/2: the request may end on another thread than the connection's task, while others
    /// start. HTTP/1: hyper calls the service, polls its future and drops its body on the
    /// connection's task, one request at a time, so nothing changes the count concurrently.
    shared: bool,
    hangup: Hangup,
}

impl InProgress {
    pub(super) fn new(conn: Arc<Connection>, shared: bool) -> InProgress {
        let count = &conn.in_progress;
        if shared {
            count.fetch_add(1, Ordering::AcqRel);
        } else {
            count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        InProgress {
            conn,
            shared,
            hangup: Hangup::default(),
        }
    }

    /// A request that starts and ends at once, as an HTTP/1 server's would: for tests of what
    /// follows a request.
    #[cfg(test)]
    pub(crate) fn start_and_end(conn: &Arc<Connection>) {
        drop(InProgress::new(Arc::clone(conn), false));
    }

    /// Whether the client has hung up: watched on plain HTTP/1 connections only, where hyper
    /// does not (see `listener::peer`). Otherwise the server notices, and drops the request.
    pub(super) fn poll_gone(&self, cx: &mut Context<'_>) -> bool {
        match &self.conn.socket {
            Some(socket) if !self.shared => self.hangup.poll_gone(socket, cx),
            _ => false,
        }
    }
}

/// The error that ends an HTTP/1 connection whose client hung up while a request was in
/// progress: hyper closes the connection, and the request's [`Record`] counts `client_gone`.
#[derive(Debug, thiserror::Error)]
#[error("the client hung up while its request was in progress")]
pub struct ClientGone;

impl Drop for InProgress {
    fn drop(&mut self) {
        let conn = &self.conn;
        // Stored before the count, which publishes it. (HTTP/2 streams that finish at once on
        // two threads may leave the earlier time: off by microseconds.)
        let nanos = u64::try_from(conn.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        conn.finished.store(nanos, Ordering::Relaxed);
        let count = &conn.in_progress;
        if self.shared {
            if count.fetch_sub(1, Ordering::AcqRel) == 1 {
                conn.idle_waker.wake();
            }
        } else {
            let left = count.load(Ordering::Relaxed).saturating_sub(1);
            count.store(left, Ordering::Relaxed);
            // On the connection's task too: the flag cannot be set between this load and the wake.
            if left == 0 && conn.wants_idle.load(Ordering::Relaxed) {
                conn.wants_idle.store(false, Ordering::Relaxed);
                conn.idle_waker.wake();
            }
        }
    }
}
