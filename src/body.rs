//! The response body weir sends to clients: either a short answer of weir's own, or the backend's
//! body streamed through while it holds the request's [`Permit`] and enforces its deadline.
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

use crate::admission::Permit;
use crate::error::{Reason, UpstreamErrorKind};
use crate::stats::{ClientTimeout, ListenerInfo, SizeLimit};
use std::sync::Arc;
use tokio::time::Instant;

/// Why a streamed response was cut off. hyper answers it by closing the HTTP/1 connection or
/// resetting the HTTP/2 stream, so the client never mistakes a truncated body for a whole one.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request_timeout fired while the response was streaming")]
    Deadline,
    #[error("the upstream response body failed")]
    Upstream(#[source] hyper::Error),
}

pin_project! {
    #[project = Proj]
    pub enum ResponseBody {
        /// A complete body of weir's own (error pages).
        Full { data: Option<Bytes> },
        /// The backend's body, streamed.
        Upstream {
            #[pin]
            inner: Incoming,
            #[pin]
            deadline: Sleep,
            exchange: Option<Exchange>,
        },
    }
}

/// The backend exchange behind a streaming body: owns the slot, and counts how it ended.
#[derive(Debug)]
pub struct Exchange {
    permit: Permit,
    /// Set once the exchange ended on its own (complete, or counted as an error), so that `Drop`
    /// can tell a client that went away mid-response from a normal finish.
    ended: bool,
}

impl ResponseBody {
    pub fn full(data: Bytes) -> ResponseBody {
        ResponseBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// Streams `inner` under `deadline`, holding `permit` until the backend is done.
    pub fn upstream(inner: Incoming, permit: Permit, deadline: Sleep) -> ResponseBody {
        // A body that is already complete (204, 304, HEAD, Content-Length: 0) may never be polled:
        // free the slot now.
        let exchange = (!inner.is_end_stream()).then_some(Exchange {
            permit,
            ended: false,
        });
        ResponseBody::Upstream {
            inner,
            deadline,
            exchange,
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
        match self.project() {
            Proj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Proj::Upstream {
                mut inner,
                deadline,
                exchange,
            } => {
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
                ready!(deadline.poll(cx));
                Exchange::end(exchange, Some(UpstreamErrorKind::Timeout));
                Poll::Ready(Some(Err(BodyError::Deadline)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full { data } => data.is_none(),
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the request body made no progress for body_timeout")]
    Timeout,
    #[error("the request body exceeds max_body_bytes")]
    TooLarge,
    #[error("reading the request body from the client failed")]
    Client(#[source] hyper::Error),
}

/// The client's request body on its way to the backend, under the listener's `body_timeout`
/// (no progress) and `max_body_bytes` (running total).
pub struct RequestBody {
    inner: Incoming,
    /// Created the first time the body has to wait: a body that is already buffered never needs
    /// one. Re-armed lazily from `last_progress`, not on every frame.
    timer: Option<Pin<Box<Sleep>>>,
    listener: Arc<ListenerInfo>,
    last_progress: Instant,
    received: u64,
    limit: u64,
    failed: bool,
}

impl RequestBody {
    pub fn new(inner: Incoming, listener: &Arc<ListenerInfo>) -> RequestBody {
        RequestBody {
            inner,
            timer: None,
            listener: Arc::clone(listener),
            last_progress: Instant::now(),
            received: 0,
            limit: listener.max_body_bytes.unwrap_or(u64::MAX),
            failed: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        this.failed = true;
                        this.listener.counters.limit(SizeLimit::BodyBytes);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                    }
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(RequestBodyError::Client(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let due = this.last_progress + this.listener.body_timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                loop {
                    ready!(timer.as_mut().poll(cx));
                    let due = this.last_progress + this.listener.body_timeout;
                    if Instant::now() >= due {
                        this.failed = true;
                        this.listener.counters.timeout(ClientTimeout::Body);
                        return Poll::Ready(Some(Err(RequestBodyError::Timeout)));
                    }
                    // Bytes came since the timer was set: move it and wait again.
                    timer.as_mut().reset(due);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
