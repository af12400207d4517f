//! Slow-client deadlines enforced on the connection's byte stream itself, where they cannot be
//! escaped: the request head (slowloris, and a client that connects and sends nothing), idle
//! keep-alive connections, and a client that stops reading the response.
//!
//! hyper's own `header_read_timeout` is not used: it cannot tell an idle keep-alive connection
//! from a slow head, sends no 408, and has been reported not to cover a silent client.
//!
//! The wrapper knows which phase the connection is in from the number of requests in progress
//! ([`Connection::in_progress`], held up by a guard that lives in each response body):
//! - *head*: from the connection's start (after TLS), or from the first byte of a keep-alive
//!   request, the head must be complete within `header_timeout` (HTTP/1: 408, then close);
//! - *busy*: a request is in progress; its body has its own deadline (`body_timeout`);
//! - *idle*: no request in progress; the connection is closed after `idle_timeout`. An HTTP/1
//!   connection idle for [`PARK_AFTER`] first asks its server to give back its state
//!   (`park`).
//!
//! Independently, a write that makes no progress for `write_timeout` fails the connection, which
//! drops the response body and with it the upstream request and its slot.
//! One timer serves every deadline (and the busy check-in, see `GuardedIo::check`); it is
//! re-armed only for an earlier deadline, or when it fires before the current one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::connection::{Connection, PARK_AFTER};
use crate::sync::LazyTimer;
use crate::telemetry::ClientTimeout;

/// The whole HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\nx-weir-reject: header_timeout\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Busy,
    Idle,
}

pin_project! {
    /// A client connection's byte stream under the listener's slow-client deadlines.
    pub struct GuardedIo<S> {
        #[pin]
        inner: S,
        // Unpin (its sleep is boxed), as hyper requires of a connection's IO.
        timer: LazyTimer,
        conn: Arc<Connection>,
        phase: Phase,
        // When the current phase started.
        since: Instant,
        // Whether any byte of the current head has arrived.
        head_started: bool,
        // Busy: whether the check-in has passed (see [`GuardedIo::check`]).
        checked_in: bool,
        // Idle HTTP/1: whether the server has been asked to park ([`Connection::ask_park`]); once per
        // idle spell, reset as one begins.
        park_asked: bool,
        // When writes stopped making progress, if they have.
        write_stalled: Option<Instant>,
        // HTTP/2 (from ALPN, or the connection preface): no 408, and frames that arrive while no
        // stream is open (pings, settings) do not start a head. `None` until known.
        h2: Option<bool>,
        // Bytes read ahead of the server, given to it before anything else: the first bytes,
        // read to tell the protocol ([`GuardedIo::sniff`]), or those that wake a parked
        // connection ([`GuardedIo::poll_wake`]).
        ahead: ReadAhead,
    }
}

/// Bytes read ahead of the server.
#[derive(Default)]
struct ReadAhead {
    /// What a parked server had read of the next request and not parsed (`park`):
    /// handed on first.
    unparsed: Bytes,
    /// At most an HTTP/2 connection preface.
    buf: [u8; H2_PREFACE.len()],
    // Already handed on.
    start: u8,
    end: u8,
}

impl ReadAhead {
    /// Moves what is left of the bytes read ahead into `buf`; whether there were any.
    fn replay(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if !self.unparsed.is_empty() {
            let n = self.unparsed.len().min(buf.remaining());
            buf.put_slice(&self.unparsed[..n]);
            self.unparsed.advance(n);
            return true;
        }
        let ahead = &self.buf[usize::from(self.start)..usize::from(self.end)];
        if ahead.is_empty() {
            return false;
        }
        let n = ahead.len().min(buf.remaining());
        buf.put_slice(&ahead[..n]);
        // At most the preface's 24 bytes.
        self.start += n as u8;
        true
    }

    /// Keeps the first `len` bytes of `buf` (at most its 24), to be handed on next.
    fn hold(&mut self, buf: [u8; H2_PREFACE.len()], len: usize) {
        self.buf = buf;
        self.start = 0;
        // At most the buffer's 24 bytes.
        self.end = len as u8;
    }

    /// Whether nothing is left to hand on.
    fn is_empty(&self) -> bool {
        self.unparsed.is_empty() && self.start == self.end
    }
}

impl<S> GuardedIo<S> {
    /// `h2` is known for TLS (ALPN); otherwise [`GuardedIo::sniff`] finds it out.
    pub fn new(inner: S, conn: Arc<Connection>, h2: Option<bool>) -> GuardedIo<S> {
        let now = Instant::now();
        GuardedIo {
            inner,
            timer: LazyTimer::unarmed(),
            conn,
            phase: Phase::Head,
            since: now,
            head_started: false,
            checked_in: false,
            park_asked: false,
            write_stalled: None,
            h2,
            ahead: ReadAhead::default(),
        }
    }

    /// The stream without its deadlines, for a tunnel once the server has switched protocols,
    /// and the client's bytes already read: `read` (what the server had read and not parsed),
    /// then any read ahead of it.
    pub fn into_tunnel(self, read: Bytes) -> (S, Bytes) {
        let GuardedIo {
            inner, mut ahead, ..
        } = self;
        if ahead.is_empty() {
            return (inner, read);
        }
        let mut all = bytes::BytesMut::from(read);
        all.extend_from_slice(&ahead.unparsed);
        all.extend_from_slice(&ahead.buf[usize::from(ahead.start)..usize::from(ahead.end)]);
        ahead.unparsed = Bytes::new();
        (inner, all.freeze())
    }

    /// Gives the server these bytes first: what the previous server had read and not parsed.
    pub fn unparsed(&mut self, bytes: Bytes) {
        self.ahead.unparsed = bytes;
    }

    /// Sets the protocol, once known. HTTP/2 has then spoken: from here on, no open stream
    /// means idle.
    fn set_h2(self: Pin<&mut Self>, h2: bool) {
        let this = self.project();
        *this.h2 = Some(h2);
        if h2 && *this.phase == Phase::Head {
            *this.phase = Phase::Idle;
            *this.since = Instant::now();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardedIo<S> {
    /// Reads the first bytes, under the head deadline, until they tell HTTP/2 (the connection
    /// preface) from HTTP/1; the server is then given them first. Resolves to the stream and
    /// whether it is HTTP/2, or `None` when the client closed the connection without a byte.
    pub fn sniff(self) -> Sniff<S> {
        Sniff(Some(self))
    }

    fn poll_sniff(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<bool>>> {
        loop {
            // While sniffing, `start == end`: nothing is replayed to the reads below.
            let mut buf = self.ahead.buf;
            let len = usize::from(self.ahead.end);
            let mut read = ReadBuf::new(&mut buf[len..]);
            ready!(Pin::new(&mut *self).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            let h2 = match n {
                0 if len == 0 => return Poll::Ready(Ok(None)),
                // Cut short: HTTP/1's parser says what is wrong with it.
                0 => false,
                _ if buf[..len + n] != H2_PREFACE[..len + n] => false,
                _ if len + n == H2_PREFACE.len() => true,
                _ => {
                    // Part of the preface so far: read on.
                    self.ahead.buf = buf;
                    // At most the preface's 24 bytes.
                    self.ahead.end = (len + n) as u8;
                    self.ahead.start = self.ahead.end;
                    continue;
                }
            };
            self.ahead.hold(buf, len + n);
            Pin::new(self).set_h2(h2);
            return Poll::Ready(Ok(Some(h2)));
        }
    }

    /// A parked HTTP/1 connection's wait for its next request: reads its first bytes ahead of
    /// the next server, under the idle deadline. `true` once they are here; `false` when the
    /// connection ends instead (the client closed it, or `idle_timeout` passed).
    pub fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if !self.ahead.is_empty() {
            return Poll::Ready(Ok(true));
        }
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut read = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut *self).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.ahead.hold(buf, n);
        Poll::Ready(Ok(n > 0))
    }
}

/// Finds out a connection's protocol: see [`GuardedIo::sniff`].
pub struct Sniff<S>(Option<GuardedIo<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Sniff<S> {
    type Output = io::Result<Option<(GuardedIo<S>, bool)>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(io) = self.0.as_mut() else {
            return Poll::Ready(Err(io::Error::other("sniffed already")));
        };
        let h2 = ready!(io.poll_sniff(cx))?;
        Poll::Ready(Ok(h2.and_then(|h2| Some((self.0.take()?, h2)))))
    }
}

/// Which deadline passed.
enum Expired {
    Head,
    Idle,
    Write,
}

impl<S> GuardedIo<S> {
    /// Moves between *busy* and the other phases as requests start and finish.
    fn sync_phase(self: Pin<&mut Self>) {
        let this = self.project();
        let busy = this.conn.in_progress() > 0;
        match (*this.phase, busy) {
            (Phase::Head | Phase::Idle, true) => {
                *this.phase = Phase::Busy;
                *this.checked_in = false;
            }
            (Phase::Busy, false) => {
                *this.phase = Phase::Idle;
                // Idle since the last response ended, not since this wrapper noticed.
                *this.since = this.conn.finished_at();
                *this.head_started = false;
                *this.park_asked = false;
            }
            // A request started and ended while this wrapper was not polled: a plain HTTP/1
            // server does not read while a request is in progress (see `peer`), and a
            // short answer is written at once. Idle since it ended, as above.
            (Phase::Head, false) => {
                let finished = this.conn.finished_at();
                if finished > *this.since {
                    *this.phase = Phase::Idle;
                    *this.since = finished;
                    *this.head_started = false;
                    *this.park_asked = false;
                }
            }
            _ => {}
        }
    }
}

impl<S: AsyncWrite> GuardedIo<S> {
    /// Updates the phase from the requests in progress and checks the earliest deadline, arming
    /// the timer (and so this task's wake-up) for it.
    ///
    /// While busy, the server may have polled the socket for the last time before the response
    /// ends, and then nothing would start the idle deadline. Rather than have every finished
    /// request wake this task, the timer is armed for a *check-in* at `idle_timeout` after the
    /// head started: the earliest the idle deadline could be. A request that ends before it costs
    /// nothing; at the check-in, the phase is seen idle (and the deadline counted from the
    /// request's end), or, still busy, the task asks [`Connection`] to wake it when the last request
    /// finishes.
    fn check(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Option<Expired> {
        self.as_mut().sync_phase();
        let this = self.as_mut().project();
        let limits = &this.conn.downstream.listener;
        // Idle HTTP/1, with the last answer written: the server is asked to park first.
        let park = *this.phase == Phase::Idle
            && *this.h2 == Some(false)
            && !*this.park_asked
            && this.write_stalled.is_none()
            && PARK_AFTER < limits.idle_timeout;
        let read_deadline = match this.phase {
            Phase::Head => Some(*this.since + limits.header_timeout),
            Phase::Idle if park => Some(*this.since + PARK_AFTER),
            Phase::Idle => Some(*this.since + limits.idle_timeout),
            Phase::Busy if !*this.checked_in => Some(*this.since + limits.idle_timeout),
            Phase::Busy => {
                this.conn.wake_when_idle(cx.waker());
                // The last request may have finished between the check and the registration.
                if this.conn.in_progress() == 0 {
                    cx.waker().wake_by_ref();
                }
                None
            }
        };
        let write_deadline = this.write_stalled.map(|t| t + limits.write_timeout);
        let deadline = match (read_deadline, write_deadline) {
            (Some(r), Some(w)) => r.min(w),
            (r, w) => r.or(w)?,
        };
        // The deadlines of a keep-alive connection move later with every request: the timer
        // is moved only to an earlier one (see `LazyTimer`).
        if this.timer.poll_until(deadline, cx).is_pending() {
            return None;
        }
        Some(if write_deadline == Some(deadline) {
            Expired::Write
        } else {
            match this.phase {
                Phase::Head => Expired::Head,
                Phase::Idle if park => {
                    // Asked once; the server parks when its task is next polled, at the end of
                    // this poll. From now on, the idle deadline.
                    *this.park_asked = true;
                    this.conn.ask_park();
                    return self.check(cx);
                }
                Phase::Idle => Expired::Idle,
                Phase::Busy => {
                    // The check-in, with the request still in progress: from now on, wait for it.
                    *this.checked_in = true;
                    return self.check(cx);
                }
            }
        })
    }

    /// Handles a passed deadline: counts it, sends 408 for an HTTP/1 head that started, and says
    /// how the connection ends.
    fn expire(self: Pin<&mut Self>, cx: &mut Context<'_>, which: Expired) -> io::Result<()> {
        let this = self.project();
        let counters = &this.conn.downstream.listener.counters;
        match which {
            Expired::Write => {
                counters.timeout(ClientTimeout::Write);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write_timeout: the client stopped reading",
                ))
            }
            Expired::Idle => {
                counters.timeout(ClientTimeout::Idle);
                // A clean end of stream: hyper closes the connection.
                Ok(())
            }
            Expired::Head => {
                counters.timeout(ClientTimeout::Header);
                if *this.head_started && *this.h2 != Some(true) {
                    // Best effort: the socket is idle in this phase, so the short answer fits
                    // its buffer; if it does not, the client still sees the connection close.
                    let mut inner = this.inner;
                    if let Poll::Ready(Ok(_)) = inner.as_mut().poll_write(cx, TIMEOUT_408) {
                        let _ = inner.poll_flush(cx);
                    }
                }
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "header_timeout: the request head did not arrive in time",
                ))
            }
        }
    }

    fn write_progress<T>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                *self.as_mut().project().write_stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stalled = self.as_mut().project().write_stalled;
                if stalled.is_none() {
                    *stalled = Some(Instant::now());
                }
                match self.as_mut().check(cx) {
                    None => Poll::Pending,
                    Some(which) => Poll::Ready(Err(match self.expire(cx, which) {
                        Err(e) => e,
                        Ok(()) => io::Error::new(io::ErrorKind::TimedOut, "idle_timeout"),
                    })),
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The bytes read ahead come first, and what has arrived since with them in the same read,
        // so the server takes a whole head at once and sizes its buffer as for any other read.
        let replayed = self.as_mut().project().ahead.replay(buf);
        if replayed && buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        // The previous response may have finished since the last read: bytes arriving now belong
        // to the next request, whose head must be timed.
        self.as_mut().sync_phase();
        let this = self.as_mut().project();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let data = &buf.filled()[before..];
                if !data.is_empty() {
                    match (*this.phase, *this.h2) {
                        // The first byte of a keep-alive HTTP/1 request: its head is now on the
                        // clock.
                        (Phase::Idle, Some(false)) => {
                            *this.phase = Phase::Head;
                            *this.since = Instant::now();
                        }
                        // HTTP/2 (from ALPN) has spoken: from here on, no open stream means idle.
                        (Phase::Head, Some(true)) => {
                            *this.phase = Phase::Idle;
                            *this.since = Instant::now();
                        }
                        _ => {}
                    }
                    *this.head_started = true;
                }
                Poll::Ready(Ok(()))
            }
            // The error comes again on the next read.
            Poll::Ready(Err(_)) | Poll::Pending if replayed => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.as_mut().check(cx) {
                None => Poll::Pending,
                Some(which) => Poll::Ready(self.expire(cx, which)),
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.as_mut().project().inner.poll_write(cx, buf);
        self.write_progress(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        self.write_progress(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.as_mut().project().inner.poll_flush(cx);
        self.write_progress(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use std::time::Duration;

    use crate::config::Config;
    use crate::http::{Downstream, ListenerInfo};
    use crate::listener::connection::InProgress;
    use crate::proxy::Proxy;

    /// A connection's state, and the client's end of a stream whose other end is guarded.
    fn guarded() -> (Arc<Connection>, DuplexStream, GuardedIo<DuplexStream>) {
        let config = Config::from_toml_str(
            "[[listener]]\nname = \"l\"\naddr = \"127.0.0.1:0\"\nheader_timeout = \"2s\"\n\
             [[upstream]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let info = Arc::new(ListenerInfo::new(&config.listeners[0]));
        let conn = Arc::new(Connection::new(
            Arc::new(Proxy::new(&config, None)),
            Downstream::new(([127, 0, 0, 1], 9).into(), false, info),
            None,
        ));
        let (client, server) = tokio::io::duplex(1024);
        let io = GuardedIo::new(server, Arc::clone(&conn), None);
        (conn, client, io)
    }

    #[tokio::test]
    async fn a_preface_in_pieces_is_http2_and_is_read_again_whole() {
        let (_conn, mut client, io) = guarded();
        let mut sniff = io.sniff();
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        assert!((&mut sniff).now_or_never().is_none(), "5 bytes cannot tell");
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let (mut io, h2) = sniff.await.unwrap().unwrap();
        assert!(h2);
        // The preface first, and what came after it in the same read.
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nframes");
    }

    #[tokio::test]
    async fn anything_else_is_http1_from_its_first_differing_byte() {
        let (_conn, mut client, io) = guarded();
        // Shares its first byte with the preface.
        client.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        let (mut io, h2) = io.sniff().await.unwrap().unwrap();
        assert!(!h2);
        client.write_all(b"host: a\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut buf = [0u8; 64];
            let n = io.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        assert_eq!(head, b"POST / HTTP/1.1\r\nhost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_has_no_protocol() {
        let (_conn, client, io) = guarded();
        drop(client);
        assert!(io.sniff().await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn part_of_a_preface_then_silence_is_a_slow_head() {
        let (conn, mut client, io) = guarded();
        client.write_all(b"PRI * HTTP").await.unwrap();
        let err = io.sniff().await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let counters = &conn.downstream.listener.counters;
        assert_eq!(counters.timeouts(ClientTimeout::Header), 1);
    }

    #[tokio::test]
    async fn bytes_a_parked_server_left_unparsed_come_first_and_wake_it() {
        let (_conn, mut client, mut io) = guarded();
        io.unparsed(Bytes::from_static(b"GET / HT"));
        // Nothing read from the client: what is already here wakes the connection.
        let woken = std::future::poll_fn(|cx| io.poll_wake(cx)).now_or_never();
        assert!(matches!(woken, Some(Ok(true))));
        client.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 4];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET ");
        let mut rest = [0u8; 64];
        let n = io.read(&mut rest).await.unwrap();
        // The rest of them, and what the client sent since in the same read.
        assert_eq!(&rest[..n], b"/ HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_parked_connection_is_woken_by_its_first_bytes_or_ended_by_a_close() {
        let (_conn, mut client, mut io) = guarded();
        let mut woken = std::pin::pin!(std::future::poll_fn(|cx| io.poll_wake(cx)));
        assert!((&mut woken).now_or_never().is_none(), "nothing sent yet");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(woken.await.unwrap());
        // At most 24 bytes were read ahead; they come first, the rest after.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut buf = [0u8; 64];
            let n = io.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        drop(client);
        let ended = std::future::poll_fn(|cx| io.poll_wake(cx)).await;
        assert!(!ended.unwrap(), "a closed connection does not wake");
    }

    /// An HTTP/1 connection, guarded, that has served one request, with the client's end of a
    /// stream of `capacity` bytes each way.
    async fn after_a_request(
        capacity: usize,
    ) -> (Arc<Connection>, DuplexStream, GuardedIo<DuplexStream>) {
        let (conn, _, _) = guarded();
        let (client, server) = tokio::io::duplex(capacity);
        let io = GuardedIo::new(server, Arc::clone(&conn), Some(false));
        tokio::time::advance(Duration::from_millis(1)).await;
        InProgress::start_and_end(&conn);
        (conn, client, io)
    }

    /// Reads once if something is there; `None` while the read would wait.
    fn try_read(io: &mut GuardedIo<DuplexStream>) -> Option<io::Result<usize>> {
        let mut buf = [0u8; 64];
        io.read(&mut buf).now_or_never()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_asks_to_park_once_after_park_after() {
        let (conn, _client, mut io) = after_a_request(1024).await;
        assert!(try_read(&mut io).is_none());
        tokio::time::advance(PARK_AFTER - Duration::from_millis(2)).await;
        assert!(try_read(&mut io).is_none());
        assert!(!conn.take_park(), "asked before PARK_AFTER");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(try_read(&mut io).is_none());
        assert!(conn.take_park(), "not asked at PARK_AFTER");
        // Once per idle spell: the idle deadline is next.
        tokio::time::advance(PARK_AFTER * 3).await;
        assert!(try_read(&mut io).is_none());
        assert!(!conn.take_park(), "asked twice");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_still_writing_its_answer_does_not_ask_to_park() {
        // The client reads nothing: the last answer's bytes wait in the stream.
        let (conn, _client, mut io) = after_a_request(64).await;
        let written = io.write(&[b'x'; 128]).await.unwrap();
        let more = io.write(&[b'x'; 128 - 64]).now_or_never();
        assert!(written == 64 && more.is_none(), "the write stalls");
        assert!(try_read(&mut io).is_none());
        tokio::time::advance(PARK_AFTER * 2).await;
        assert!(try_read(&mut io).is_none());
        assert!(
            !conn.take_park(),
            "a server with bytes to write cannot park"
        );
    }
}
