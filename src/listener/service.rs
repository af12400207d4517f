//! The hyper service of a downstream connection: each request counted in progress, handed to
//! the proxy, watched for the client hanging up while it waits, and its answer's body tracked
//! until it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::{HttpService, service_fn};
use hyper::{Request, Response, StatusCode};
use pin_project_lite::pin_project;

use super::connection::{ClientGone, Connection, InProgress};
use crate::proxy::Record;
use crate::upstream::{BodyError, ResponseBody};

pin_project! {
    /// A request's future, or `None` once its client has hung up. The hang-up is watched only
    /// while the request waits: most answers are ready at the first poll, or at the first after
    /// the backend's.
    struct UntilHangup<'a, F> {
        #[pin]
        inner: F,
        request: &'a InProgress,
    }
}

impl<F: Future> Future for UntilHangup<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(done) => Poll::Ready(Some(done)),
            Poll::Pending if this.request.poll_gone(cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted as in progress until it is done, and
    /// feeds its request's [`Record`] the bytes sent and whether the answer was whole.
    pub struct Tracked {
        #[pin]
        body: ResponseBody,
        record: Record,
        _request: InProgress,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        if polled.is_pending() && this._request.poll_gone(cx) {
            return Poll::Ready(Some(Err(BodyError::ClientGone)));
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.sent(data.len());
                }
                // hyper stops polling once the body says it is at its end.
                if this.body.is_end_stream() {
                    this.record.complete();
                }
            }
            Poll::Ready(None) => this.record.complete(),
            _ => {}
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The service that answers the connection's requests: [`Connection::proxy`].
pub(super) fn service(
    conn: Arc<Connection>,
    h2: bool,
) -> impl HttpService<Incoming, ResBody = Tracked, Error = ClientGone, Future: Send + Unpin + 'static>
+ Send
+ Unpin
+ 'static {
    service_fn(move |req| {
        let request = InProgress::new(Arc::clone(&conn), h2);
        respond(req, request)
    })
}

/// A request's future, on the connection's server, whatever its transport.
///
/// Boxed per request: hyper keeps the room for a connection's request future for the
/// connection's whole life, so an idle keep-alive connection would hold kilobytes. The box is
/// allocated before the future is made, so that the future can be made in it; whether it is, or
/// is made on the stack and copied, is the optimiser's choice.
fn respond(
    req: Request<Incoming>,
    request: InProgress,
) -> Pin<Box<impl Future<Output = Result<Response<Tracked>, ClientGone>> + Send>> {
    let boxed = Box::new_uninit();
    Box::into_pin(Box::write(boxed, async move {
        // Pinned in a statement of its own (see `Proxy::handle`).
        let handled = {
            let conn = &*request.conn;
            let handled = std::pin::pin!(UntilHangup {
                inner: conn.proxy.handle(req, &conn.downstream),
                request: &request,
            });
            handled.await
        };
        // Dropped unanswered, its record counts `client_gone`.
        let (mut response, mut record) = handled.ok_or(ClientGone)?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(tunnel) = response.body_mut().take_upgraded() {
                request.conn.hand_over(tunnel);
            }
        }
        if response.body().is_end_stream() {
            // hyper will not poll a body that is already at its end (HEAD, 204, empty).
            record.complete();
        }
        Ok(response.map(|body| Tracked {
            body,
            record,
            _request: request,
        }))
    }))
}
