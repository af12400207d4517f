//! Slow-client deadlines enforced on the connection's byte stream itself, where they cannot be
//! escaped: the request head (slowloris, and a client that connects and sends nothing), idle
//! keep-alive connections, and a client that stops reading the response.
//!
//! hyper's own `header_read_timeout` is not used: it cannot tell an idle keep-alive connection
//! from a slow head, sends no 408, and has been reported not to cover a silent client.
//!
//! The wrapper knows which phase the connection is in from the number of requests in progress
//! ([`Conn::in_progress`], held up by a guard that lives in each response body):
//! - *head*: from the connection's start (after TLS), or from the first byte of a keep-alive
//!   request, the head must be complete within `header_timeout` (HTTP/1: 408, then close);
//! - *busy*: a request is in progress; its body has its own deadline (`body_timeout`);
//! - *idle*: no request in progress; the connection is closed after `idle_timeout`.
//!
//! Independently, a write that makes no progress for `write_timeout` fails the connection, which
//! drops the response body and with it the upstream request and its slot.
//! One timer serves every deadline; it is re-armed only when the deadline changes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::edge::Conn;
use crate::stats::ClientTimeout;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
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
        // Boxed so the wrapper is Unpin, as hyper requires of a connection's IO.
        timer: Pin<Box<Sleep>>,
        conn: Arc<Conn>,
        phase: Phase,
        // When the current phase started.
        since: Instant,
        // Whether any byte of the current head has arrived.
        head_started: bool,
        // When writes stopped making progress, if they have.
        write_stalled: Option<Instant>,
        // The deadline the timer is set to.
        armed: Option<Instant>,
        // HTTP/2 (from ALPN, or the connection preface): no 408, and frames that arrive while no
        // stream is open (pings, settings) do not start a head.
        h2: Option<bool>,
    }
}

impl<S> GuardedIo<S> {
    /// `h2` is known for TLS (ALPN) and detected from the first bytes otherwise.
    pub fn new(inner: S, conn: Arc<Conn>, h2: Option<bool>) -> GuardedIo<S> {
        let now = Instant::now();
        GuardedIo {
            inner,
            timer: Box::pin(tokio::time::sleep_until(now)),
            conn,
            phase: Phase::Head,
            since: now,
            head_started: false,
            write_stalled: None,
            armed: None,
            h2,
        }
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
            (Phase::Head | Phase::Idle, true) => *this.phase = Phase::Busy,
            (Phase::Busy, false) => {
                *this.phase = Phase::Idle;
                *this.since = Instant::now();
                *this.head_started = false;
            }
            _ => {}
        }
    }
}

impl<S: AsyncWrite> GuardedIo<S> {
    /// Updates the phase from the requests in progress and checks the earliest deadline, arming
    /// the timer (and so this task's wake-up) for it.
    fn check(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Option<Expired> {
        self.as_mut().sync_phase();
        let this = self.project();
        let limits = &this.conn.client.listener;
        let read_deadline = match this.phase {
            Phase::Head => Some(*this.since + limits.header_timeout),
            Phase::Idle => Some(*this.since + limits.idle_timeout),
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
        let timer = this.timer;
        if *this.armed != Some(deadline) {
            timer.as_mut().reset(deadline);
            *this.armed = Some(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        Some(if write_deadline == Some(deadline) {
            Expired::Write
        } else if *this.phase == Phase::Head {
            Expired::Head
        } else {
            Expired::Idle
        })
    }

    /// Handles a passed deadline: counts it, sends 408 for an HTTP/1 head that started, and says
    /// how the connection ends.
    fn expire(self: Pin<&mut Self>, cx: &mut Context<'_>, which: Expired) -> io::Result<()> {
        let this = self.project();
        let counters = &this.conn.client.listener.counters;
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
        let before = buf.filled().len();
        // The previous response may have finished since the last read: bytes arriving now belong
        // to the next request, whose head must be timed.
        self.as_mut().sync_phase();
        let this = self.as_mut().project();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let data = &buf.filled()[before..];
                if !data.is_empty() {
                    let h2 = *this.h2.get_or_insert_with(|| data.starts_with(H2_PREFACE));
                    match (*this.phase, h2) {
                        // The first byte of a keep-alive request: its head is now on the clock.
                        (Phase::Idle, false) => {
                            *this.phase = Phase::Head;
                            *this.since = Instant::now();
                        }
                        // HTTP/2 has spoken: from here on, no open stream means idle.
                        (Phase::Head, true) => {
                            *this.phase = Phase::Idle;
                            *this.since = Instant::now();
                        }
                        _ => {}
                    }
                    *this.head_started = true;
                }
                Poll::Ready(Ok(()))
            }
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
