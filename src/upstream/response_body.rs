//! The response body weir sends to clients: a short answer of weir's own, the backend's whole
//! answer read ahead (its slot already free), or the backend's body streamed through while it
//! holds the request's slot ([`OwnedPermit`]) and enforces its deadline.
//!
//! Keeping the permit inside the body means the slot is held exactly as long as the backend
//! exchange lasts: it is freed when the backend's last byte has been read, when the deadline cuts
//! the response off, or when hyper drops the body because the client went away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use std::collections::VecDeque;

use tokio::time::Instant;

use super::client::BackendBody;
use super::tunnel::Upgraded;
use crate::admission::{OwnedPermit, Permit};
use crate::error::BoxError;
use crate::http::{Frames, Reservation, data_len, hint_after};
use crate::telemetry::{Reason, UpstreamErrorKind};

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

/// Every response is moved several times on its way to hyper, so the variants are kept small
/// (at most 56 bytes with the tag, a unit test holds it): the read-ahead ([`Frames`]) is not
/// kept in it.
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
    /// A 101's: no bytes, and the backend's end of the tunnel, for the client's connection to
    /// take ([`ResponseBody::take_upgraded`]) once the 101 is written.
    Upgraded(Box<Upgraded>),
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

    pub fn upgraded(tunnel: Upgraded) -> ResponseBody {
        ResponseBody::Upgraded(Box::new(tunnel))
    }

    /// The backend's end of a tunnel, if this is a 101's body; it is left empty.
    pub fn take_upgraded(&mut self) -> Option<Box<Upgraded>> {
        if !matches!(self, ResponseBody::Upgraded(_)) {
            return None;
        }
        match std::mem::replace(self, ResponseBody::full(Bytes::new())) {
            ResponseBody::Upgraded(tunnel) => Some(tunnel),
            _ => None,
        }
    }

    /// A response read whole; `reservation` holds its bytes in the buffer budget until sent.
    pub fn buffered(frames: Frames, reservation: Reservation) -> ResponseBody {
        let (first, mut rest) = frames.into_parts();
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
            ResponseBody::Upgraded(_) => Poll::Ready(None),
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
            ResponseBody::Upgraded(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Buffered { frames, .. } => SizeHint::with_exact(data_len(frames)),
            ResponseBody::Upstream(s) => hint_after(s.prefix.data_len(), s.inner.size_hint()),
            ResponseBody::Upgraded(_) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::{data, drain};

    /// What `body` sends, in order, as [`drain`] writes it.
    async fn sent(mut body: ResponseBody) -> Vec<String> {
        let mut frames = Frames::default();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frames.push_back(frame.unwrap_or_else(|e| panic!("{e}")));
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
