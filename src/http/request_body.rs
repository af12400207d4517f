//! The downstream request body on its way to the backend, under the listener's body limits, and
//! its read-ahead into memory before admission.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::buffer::{BufferFull, BufferPool, Reservation};
use super::downstream::ListenerInfo;
use super::frames::{Frames, hint_after};
use crate::error::RequestBodyError;
use crate::telemetry::{ClientTimeout, SizeLimit};

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
