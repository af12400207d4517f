//! The response body weir sends to clients: a short answer of weir's own, the backend's whole
//! answer read ahead (its slot already free), or the backend's body streamed through while it
//! holds the request's slot ([`OwnedPermit`]) and enforces its deadline. The request body too.
//!
//! Keeping the permit inside the body means the slot is held exactly as long as the backend
//! exchange lasts: it is freed when the backend's last byte has been read, when the deadline cuts
//! the response off, or when hyper drops the body because the client went away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::admission::{OwnedPermit, Permit};
use crate::buffer::{BufferFull, BufferPool, Reservation};
use crate::client::BackendBody;
use crate::error::{BoxError, Reason, UpstreamErrorKind};
use crate::stats::{ClientTimeout, ListenerInfo, SizeLimit};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::time::Instant;

/// Why a streamed response was cut off. hyper answers it by closing the HTTP/1 connection or
/// resetting the HTTP/2 stream, so the client never mistakes a truncated body for a whole one.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request_timeout fired while the response was streaming")]
    Deadline,
    #[error("the client hung up while the response was streaming")]
    ClientGone,
    #[error("the upstream response body failed")]
    Upstream(#[source] BoxError),
}

/// Body frames read ahead of sending, in order. Most bodies read ahead are one piece of data
/// (a small answer, or the start of an upload): it is held inline, and only a second frame, or
/// trailers, takes an allocation. A `VecDeque` alone costs an allocation and a free per response.
/// (64 bytes: a whole answer leaves it as [`ResponseBody::Full`] or [`ResponseBody::Buffered`].)
#[derive(Debug, Default)]
pub struct Frames {
    /// The first piece of data, when it came first; empty when there is none.
    first: Bytes,
    /// Every later frame (or every frame, when the first was not data).
    rest: VecDeque<Frame<Bytes>>,
}

impl Frames {
    pub fn push_back(&mut self, frame: Frame<Bytes>) {
        if self.first.is_empty() && self.rest.is_empty() {
            match frame.into_data() {
                // An empty piece of data says nothing: it is dropped.
                Ok(data) => self.first = data,
                Err(frame) => self.rest.push_back(frame),
            }
        } else {
            self.rest.push_back(frame);
        }
    }

    pub fn pop_front(&mut self) -> Option<Frame<Bytes>> {
        if self.first.is_empty() {
            self.rest.pop_front()
        } else {
            Some(Frame::data(std::mem::take(&mut self.first)))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty() && self.rest.is_empty()
    }

    /// Bytes of data held.
    fn data_len(&self) -> u64 {
        self.first.len() as u64 + data_len(&self.rest)
    }
}

/// Bytes of data in `frames`.
fn data_len(frames: &VecDeque<Frame<Bytes>>) -> u64 {
    frames
        .iter()
        .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
        .sum()
}

/// Every response is moved several times on its way to hyper, so the variants are kept small:
/// 48 bytes, and the tag. (With the read-ahead's 64-byte [`Frames`] in it, at 80 bytes, weir
/// measured 3% to 4% more user-space cycles per request.)
pub enum ResponseBody {
    /// A complete body in one piece: weir's own answers (error pages), and the backend's whole
    /// response when it was one piece of data (most small answers), which `reservation` holds in
    /// the buffer budget until sent.
    Full {
        data: Option<Bytes>,
        reservation: Reservation,
    },
    /// The backend's whole response in several frames, read before the head was sent; its slot
    /// is already free.
    Buffered {
        frames: VecDeque<Frame<Bytes>>,
        reservation: Reservation,
    },
    /// The backend's body, streamed. Boxed: the common small answer is buffered, and this
    /// variant would make every response (moved several times per request) twice as large.
    Upstream(Pin<Box<Streaming>>),
}

pin_project! {
    /// A streamed backend body: first what was buffered, then the rest as it comes.
    #[project = StreamingProj]
    pub struct Streaming {
        prefix: Frames,
        reservation: Reservation,
        #[pin]
        inner: BackendBody,
        deadline: Instant,
        // The deadline's timer, made the first time the backend keeps the body waiting: most
        // small bodies arrive with their head, and never need one.
        #[pin]
        timer: Option<Sleep>,
        exchange: Option<Exchange>,
    }
}

/// The backend exchange behind a streaming body: holds the slot, and counts how it ended. (The
/// backend connection is the body's: an HTTP/1.1 one goes back to the pool as the body reads its
/// end, before the slot is freed.)
#[derive(Debug)]
pub struct Exchange {
    permit: OwnedPermit,
    /// Set once the exchange ended on its own (complete, or counted as an error), so that `Drop`
    /// can tell a client that went away mid-response from a normal finish.
    ended: bool,
}

impl ResponseBody {
    pub fn full(data: Bytes) -> ResponseBody {
        ResponseBody::Full {
            data: (!data.is_empty()).then_some(data),
            reservation: Reservation::default(),
        }
    }

    /// Streams `inner` under `deadline`, holding `permit` until the backend is done.
    pub fn upstream(inner: BackendBody, permit: Permit<'_>, deadline: Instant) -> ResponseBody {
        Self::upstream_after(
            Frames::default(),
            Reservation::default(),
            inner,
            permit,
            deadline,
        )
    }

    /// Like [`ResponseBody::upstream`], sending the already-read `prefix` first.
    pub fn upstream_after(
        prefix: Frames,
        reservation: Reservation,
        inner: BackendBody,
        permit: Permit<'_>,
        deadline: Instant,
    ) -> ResponseBody {
        // A body that is already complete (204, 304, HEAD, Content-Length: 0) may never be polled:
        // free the slot now (its connection is already back in the pool).
        let exchange = if inner.is_end_stream() {
            drop(permit);
            None
        } else {
            Some(Exchange {
                permit: permit.into_owned(),
                ended: false,
            })
        };
        ResponseBody::Upstream(Box::pin(Streaming {
            prefix,
            reservation,
            inner,
            deadline,
            timer: None,
            exchange,
        }))
    }

    /// A response read whole; `reservation` holds its bytes in the buffer budget until sent.
    pub fn buffered(frames: Frames, reservation: Reservation) -> ResponseBody {
        let Frames { first, mut rest } = frames;
        if rest.is_empty() {
            return ResponseBody::Full {
                data: (!first.is_empty()).then_some(first),
                reservation,
            };
        }
        if !first.is_empty() {
            rest.push_front(Frame::data(first));
        }
        ResponseBody::Buffered {
            frames: rest,
            reservation,
        }
    }
}

impl Exchange {
    /// Ends the exchange, freeing the slot; counts `kind` as an upstream error if given.
    fn end(slot: &mut Option<Exchange>, kind: Option<UpstreamErrorKind>) {
        if let Some(mut ex) = slot.take() {
            ex.ended = true;
            if let Some(kind) = kind {
                ex.permit.counters().upstream_error(kind);
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.ended {
            self.permit.counters().reject(Reason::ClientGone);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Full { data, .. } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Buffered { frames, .. } => Poll::Ready(frames.pop_front().map(Ok)),
            ResponseBody::Upstream(streaming) => {
                let StreamingProj {
                    prefix,
                    mut inner,
                    deadline,
                    mut timer,
                    exchange,
                    ..
                } = streaming.as_mut().project();
                if let Some(frame) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if exchange.is_none() {
                    // Ended: either complete (inner reports its end) or cut off.
                    return if inner.is_end_stream() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Err(BodyError::Deadline)))
                    };
                }
                if let Poll::Ready(frame) = inner.as_mut().poll_frame(cx) {
                    return Poll::Ready(match frame {
                        None => {
                            Exchange::end(exchange, None);
                            None
                        }
                        Some(Ok(frame)) => {
                            if inner.is_end_stream() {
                                Exchange::end(exchange, None);
                            }
                            Some(Ok(frame))
                        }
                        Some(Err(e)) => {
                            Exchange::end(exchange, Some(UpstreamErrorKind::Reset));
                            Some(Err(BodyError::Upstream(e)))
                        }
                    });
                }
                if timer.is_none() {
                    timer.set(Some(tokio::time::sleep_until(*deadline)));
                }
                if let Some(timer) = timer.as_pin_mut() {
                    ready!(timer.poll(cx));
                }
                Exchange::end(exchange, Some(UpstreamErrorKind::Timeout));
                Poll::Ready(Some(Err(BodyError::Deadline)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full { data, .. } => data.is_none(),
            ResponseBody::Buffered { frames, .. } => frames.is_empty(),
            ResponseBody::Upstream(s) => s.prefix.is_empty() && s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Buffered { frames, .. } => SizeHint::with_exact(data_len(frames)),
            ResponseBody::Upstream(s) => hint_after(s.prefix.data_len(), s.inner.size_hint()),
        }
    }
}

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the request body made no progress for body_timeout")]
    Timeout,
    #[error("the request body arrived slower than min_body_rate")]
    TooSlow,
    #[error("the request body exceeds max_body_bytes")]
    TooLarge,
    #[error("the request body cannot be buffered: max_buffered_bytes is reached")]
    BufferFull,
    #[error("reading the request body from the client failed")]
    Client(#[source] hyper::Error),
}

/// The client's request body on its way to the backend: first whatever was buffered before
/// admission, then (if the body was not read whole) the rest as it arrives, under the listener's
/// `body_timeout` (no progress), `min_body_rate` (trickles) and `max_body_bytes` (running total).
///
/// Most requests have no body: theirs is a null pointer, so the request that is moved through
/// the handler and into the backend connection's channel stays small, and costs no allocation.
pub struct RequestBody {
    upload: Option<Box<Upload>>,
}

/// A request body that is not empty.
struct Upload {
    /// Frames read before admission, in order.
    buffered: Frames,
    /// The part still to be read from the client; `None` once it has ended.
    client: Option<Incoming>,
    /// The buffer budget held by `buffered`, given back when the body is dropped.
    _reservation: Reservation,
    /// Created the first time the body has to wait: a body that is already buffered never needs
    /// one. Re-armed lazily from `last_progress`, not on every frame.
    timer: Option<Pin<Box<Sleep>>>,
    listener: Arc<ListenerInfo>,
    started: Instant,
    last_progress: Instant,
    received: u64,
    limit: u64,
}

/// How [`RequestBody::buffer`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffered {
    /// The whole body is in memory.
    Whole,
    /// More than the buffer allows: the rest is still with the client.
    Exceeded,
}

impl RequestBody {
    /// The body of a request that arrived at `now` (read once per request, by its record).
    pub fn new(inner: Incoming, listener: &Arc<ListenerInfo>, now: Instant) -> RequestBody {
        if inner.is_end_stream() {
            return RequestBody { upload: None };
        }
        RequestBody {
            upload: Some(Box::new(Upload {
                client: Some(inner),
                buffered: Frames::default(),
                _reservation: Reservation::default(),
                timer: None,
                listener: Arc::clone(listener),
                started: now,
                last_progress: now,
                received: 0,
                limit: listener.max_body_bytes.unwrap_or(u64::MAX),
            })),
        }
    }

    /// Whether any of the body is still to be read from the client.
    pub fn is_streaming(&self) -> bool {
        self.upload.as_ref().is_some_and(|u| u.client.is_some())
    }

    /// Reads the body into memory, up to `max` bytes, reserving them from `pool` (all at once
    /// when the client announced the length). Stops early, with the rest left to stream, when the
    /// body turns out larger than `max`.
    pub async fn buffer(
        &mut self,
        max: u64,
        announced: Option<u64>,
        pool: &BufferPool,
    ) -> Result<Buffered, RequestBodyError> {
        match self.upload.as_mut() {
            None => Ok(Buffered::Whole),
            Some(upload) => upload.buffer(max, announced, pool).await,
        }
    }
}

impl Upload {
    async fn buffer(
        &mut self,
        max: u64,
        announced: Option<u64>,
        pool: &BufferPool,
    ) -> Result<Buffered, RequestBodyError> {
        let mut reservation = std::mem::take(&mut self._reservation);
        if let Some(n) = announced.filter(|n| *n <= max) {
            pool.grow(&mut reservation, n as usize)
                .map_err(|_| RequestBodyError::BufferFull)?;
        }
        let result = loop {
            if self.client.is_none() {
                break Ok(Buffered::Whole);
            }
            if self.received > max {
                break Ok(Buffered::Exceeded);
            }
            match std::future::poll_fn(|cx| self.poll_client(cx)).await {
                Some(Ok(frame)) => {
                    // Hold budget for every byte received; an announced length was reserved
                    // up front, so then there is nothing to add.
                    let shortfall = (self.received as usize).saturating_sub(reservation.bytes());
                    if let Err(e) = pool.grow(&mut reservation, shortfall) {
                        break Err(RequestBodyError::from(e));
                    }
                    self.buffered.push_back(frame);
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(Buffered::Whole),
            }
        };
        self._reservation = reservation;
        result
    }

    /// The next frame from the client, under the body's limits.
    fn poll_client(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let Some(client) = self.client.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(client).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    if self.received > self.limit {
                        self.listener.counters.limit(SizeLimit::BodyBytes);
                        return self.fail(RequestBodyError::TooLarge);
                    }
                    self.last_progress = Instant::now();
                    let elapsed = self.last_progress - self.started;
                    let rate = self.listener.min_body_rate;
                    if rate > 0
                        && elapsed > self.listener.body_rate_grace
                        && (self.received as f64) < rate as f64 * elapsed.as_secs_f64()
                    {
                        self.listener.counters.timeout(ClientTimeout::Body);
                        return self.fail(RequestBodyError::TooSlow);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => self.fail(RequestBodyError::Client(e)),
            Poll::Ready(None) => {
                self.client = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let due = self.last_progress + self.listener.body_timeout;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                loop {
                    ready!(timer.as_mut().poll(cx));
                    let due = self.last_progress + self.listener.body_timeout;
                    if Instant::now() >= due {
                        self.listener.counters.timeout(ClientTimeout::Body);
                        return self.fail(RequestBodyError::Timeout);
                    }
                    // Bytes came since the timer was set: move it and wait again.
                    timer.as_mut().reset(due);
                }
            }
        }
    }

    /// Ends the body with `e`; it reports its end from then on.
    fn fail<T>(&mut self, e: RequestBodyError) -> Poll<Option<Result<T, RequestBodyError>>> {
        self.client = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl From<BufferFull> for RequestBodyError {
    fn from(_: BufferFull) -> Self {
        RequestBodyError::BufferFull
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let Some(this) = self.get_mut().upload.as_deref_mut() else {
            return Poll::Ready(None);
        };
        if let Some(frame) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.poll_client(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.upload
            .as_ref()
            .is_none_or(|u| u.buffered.is_empty() && u.client.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let Some(upload) = self.upload.as_ref() else {
            return SizeHint::with_exact(0);
        };
        let buffered = upload.buffered.data_len();
        match &upload.client {
            None => SizeHint::with_exact(buffered),
            Some(client) => hint_after(buffered, client.size_hint()),
        }
    }
}

/// The size of a body made of `before` bytes already read, then a stream hinted as `rest`.
fn hint_after(before: u64, rest: SizeHint) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(before + rest.lower());
    if let Some(upper) = rest.upper() {
        hint.set_upper(before + upper);
    }
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    /// What a body made of `frames` sends, in order: data as text, trailers as their count.
    fn drain(frames: &mut Frames) -> Vec<String> {
        std::iter::from_fn(|| frames.pop_front())
            .map(|f| match f.into_data() {
                Ok(d) => String::from_utf8_lossy(&d).into_owned(),
                Err(f) => format!("trailers:{}", f.into_trailers().map_or(0, |t| t.len())),
            })
            .collect()
    }

    #[test]
    fn frames_keep_their_order_whether_inline_or_queued() {
        let trailers = || {
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("1"));
            Frame::trailers(t)
        };
        let mut f = Frames::default();
        assert!(f.is_empty());
        f.push_back(data("ab"));
        f.push_back(data("cde"));
        f.push_back(trailers());
        assert_eq!(f.data_len(), 5);
        assert_eq!(drain(&mut f), ["ab", "cde", "trailers:1"]);
        assert!(f.is_empty());

        // Trailers first: what follows queues behind them, not before.
        f.push_back(trailers());
        f.push_back(data("x"));
        assert_eq!(drain(&mut f), ["trailers:1", "x"]);

        // Taken and refilled: the first piece is inline again, and ahead of the later ones.
        f.push_back(data("1"));
        assert_eq!(
            f.pop_front().and_then(|f| f.into_data().ok()).as_deref(),
            Some(&b"1"[..])
        );
        f.push_back(data("2"));
        f.push_back(data("3"));
        assert_eq!(drain(&mut f), ["2", "3"]);

        // An empty piece of data carries nothing.
        f.push_back(data(""));
        assert!(f.is_empty());
    }

    /// What `body` sends, in order, as [`drain`] writes it.
    async fn sent(mut body: ResponseBody) -> Vec<String> {
        let mut frames = Frames::default();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frames
                .rest
                .push_back(frame.unwrap_or_else(|e| panic!("{e}")));
        }
        drain(&mut frames)
    }

    #[tokio::test]
    async fn a_whole_answer_is_sent_as_it_was_read_and_kept_small() {
        // Every response is moved several times: the read-ahead (64 bytes) is not kept in it.
        assert!(std::mem::size_of::<ResponseBody>() <= 56);

        let mut one = Frames::default();
        one.push_back(data("hello"));
        let body = ResponseBody::buffered(one, Reservation::default());
        assert!(matches!(body, ResponseBody::Full { .. }));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(sent(body).await, ["hello"]);

        let mut several = Frames::default();
        several.push_back(data("a"));
        several.push_back(data("b"));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("1"));
        several.push_back(Frame::trailers(trailers));
        let body = ResponseBody::buffered(several, Reservation::default());
        assert_eq!(body.size_hint().exact(), Some(2));
        assert_eq!(sent(body).await, ["a", "b", "trailers:1"]);

        let body = ResponseBody::buffered(Frames::default(), Reservation::default());
        assert!(body.is_end_stream());
        assert!(sent(body).await.is_empty());
    }
}
