//! weir's HTTP/1.1 client side: one backend connection, driven by the task of the request it
//! carries.
//!
//! hyper's client runs each connection on a task of its own and hands requests, responses and
//! body chunks to it over channels: two tasks and several wake-ups per request. Here the request's
//! own task writes the request and reads the response head, and the response body reads the
//! backend's bytes straight from the socket when the client side polls it. The upload goes on at
//! the same time (HTTP/1.1 is full-duplex: a backend may answer before it has read the whole
//! request, and stream its answer while it reads the rest).
//!
//! The connection goes back to its pool when the response has been read to its end, the request
//! was sent whole and both sides allow keep-alive; any other ending drops it, which closes it.
//! Dropping the response body mid-way (the client went away, the deadline fired) is that ending.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, Response, request};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::codec::{
    Decode, Decoded, Error, Framing, Head, MAX_HEAD, Parsed, decode_body, encode_head,
    end_of_stream, idempotent, parse_head, put_chunk, put_last_chunk,
};
use super::pool::{IdlePool, Reusable};

/// The pool a backend connection returns to.
pub(crate) type Home = IdlePool<Box<BackendConn>>;
use crate::http::{RequestBody, SetFields};
use crate::upstream::stream::BackendStream;

/// How much room a read asks for at first; it doubles, up to `READ_MAX`, while reads fill it.
const READ_CHUNK: usize = 8 * 1024;
const READ_MAX: usize = 256 * 1024;
/// Buffers larger than this are let go when the connection goes back to the pool.
const IDLE_KEEP: usize = 16 * 1024;
/// Upload bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

impl Reusable for Box<BackendConn> {
    /// Whether an idle connection can carry a request: the backend has neither closed it nor
    /// sent anything unasked. Costs no system call unless the socket was signalled readable.
    fn is_open(&self) -> bool {
        self.io.is_open()
    }
}

/// How [`send`] failed: `Retry` gives the request body back when the request may be sent again on
/// another connection (it cannot have reached the backend's application, or it is idempotent and
/// was not answered at all).
pub(crate) enum SendError {
    Retry { error: Error, body: RequestBody },
    Failed(Error),
}

/// One open connection to the backend, with its read and write buffers.
pub(crate) struct BackendConn {
    io: BackendStream,
    /// Bytes read from the backend and not yet handed on.
    pub(super) buf: BytesMut,
    /// Bytes to write: the request head, then upload bytes with their framing.
    out: BytesMut,
    /// Room the next read asks for.
    read_size: usize,
    /// The pool the connection returns to when an exchange ends cleanly.
    home: Weak<Home>,
}

impl BackendConn {
    /// Boxed: a connection passes from the pool to a request, into its response body and back
    /// on every exchange, and the box moves as one pointer.
    pub(crate) fn new(io: BackendStream, home: Weak<Home>) -> Box<BackendConn> {
        Box::new(BackendConn {
            io,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            read_size: READ_CHUNK,
            home,
        })
    }

    /// Readies the connection to wait in the pool: buffers a large exchange grew are let go.
    fn idle(mut self: Box<Self>) -> Box<BackendConn> {
        if self.buf.capacity() > IDLE_KEEP {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > IDLE_KEEP {
            self.out = BytesMut::new();
        }
        self.read_size = READ_CHUNK;
        self
    }

    /// Reads more from the backend into `buf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))
        .map_err(Error::Read)?;
        // A read that filled all the room it had: the backend sends faster than we read.
        if n == room && self.read_size < READ_MAX {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what `out` holds: `Ready(Ok)` once all of it is written, `Pending` while the
    /// socket is full. `wrote` is set as soon as any byte is written.
    fn poll_flush_out(
        &mut self,
        cx: &mut Context<'_>,
        wrote: &mut bool,
    ) -> Poll<Result<(), Error>> {
        while !self.out.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out)) {
                Ok(0) => return Poll::Ready(Err(Error::Write(io::ErrorKind::WriteZero.into()))),
                Ok(n) => {
                    *wrote = true;
                    self.out.advance(n);
                }
                Err(e) => return Poll::Ready(Err(Error::Write(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the final response head, skipping interim (1xx) ones; a 101 is final when the request
    /// asked to `upgrade`.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        (to_head, upgrade): (bool, bool),
        spare: &mut HeaderMap,
    ) -> Poll<Result<Head, Error>> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, to_head, upgrade, spare)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Interim => continue,
                    Parsed::Partial if self.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(Error::HeadTooLarge));
                    }
                    Parsed::Partial => {}
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(if self.buf.is_empty() {
                    Error::Unanswered
                } else {
                    Error::Incomplete
                }));
            }
        }
    }

    /// The next part of the response body, as `decode` frames it, reading more from the backend
    /// while nothing decodable is buffered.
    pub(super) fn poll_decode(
        &mut self,
        cx: &mut Context<'_>,
        decode: &mut Decode,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match decode_body(&mut self.buf, decode) {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return match end_of_stream(decode) {
                    Ok(()) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e))),
                };
            }
        }
    }
}

/// The request on its way out: the head, then the body with its framing.
struct Outgoing {
    body: RequestBody,
    framing: Framing,
    /// Body bytes taken so far (checked against a `Content-Length`).
    taken: u64,
    /// The body has ended and its end (framing included) is in `out` or written.
    ended: bool,
    /// Some bytes reached the socket.
    wrote: bool,
    /// The body was polled: what it gave cannot be given again.
    polled: bool,
}

impl Outgoing {
    /// Writes the head and as much of the body as is ready; `Ready(Ok)` once all is written.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut BackendConn,
    ) -> Poll<Result<(), Error>> {
        loop {
            while !self.ended && conn.out.len() < WRITE_BATCH {
                self.polled = true;
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::RequestBody(e))),
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame, &mut conn.out)?,
                    Poll::Ready(None) => self.finish(None, &mut conn.out)?,
                }
            }
            if conn.out.is_empty() {
                return if self.ended {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            ready!(conn.poll_flush_out(cx, &mut self.wrote))?;
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>, out: &mut BytesMut) -> Result<(), Error> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers end the body; they can only be sent with chunked framing.
                let trailers = frame.into_trailers().ok();
                return self.finish(trailers.as_ref(), out);
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        self.taken += data.len() as u64;
        match self.framing {
            Framing::Length(n) if self.taken > n => Err(Error::RequestBodyLength),
            Framing::Chunked => {
                put_chunk(out, &data);
                Ok(())
            }
            _ => {
                out.extend_from_slice(&data);
                Ok(())
            }
        }
    }

    fn finish(&mut self, trailers: Option<&HeaderMap>, out: &mut BytesMut) -> Result<(), Error> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        match self.framing {
            Framing::Chunked => {
                put_last_chunk(out, trailers);
                Ok(())
            }
            Framing::Length(n) if self.taken != n => Err(Error::RequestBodyLength),
            _ => Ok(()),
        }
    }
}

/// Sends a request on `conn`, its head with `set`'s fields, and returns the response once its
/// head has arrived. `pooled` says the connection was idle in the pool (a retry on another one is
/// then worth it). The response's fields take the place of the request's in `parts`, whose map
/// they reuse: `parts` keeps its fields until the answer's head is complete, for a retry.
/// `upgrade`: the request asks to switch protocols, and a 101 is a final answer (see
/// [`Body::into_upgraded`]).
pub(crate) async fn send(
    mut conn: Box<BackendConn>,
    parts: &mut request::Parts,
    (set, upgrade): (SetFields<'_>, bool),
    body: RequestBody,
    pooled: bool,
) -> Result<Response<Body>, SendError> {
    let framing = if body.is_end_stream() {
        Framing::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    encode_head(&mut conn.out, parts, set, framing);
    let mut upload = Outgoing {
        body,
        framing,
        taken: 0,
        ended: framing == Framing::None,
        wrote: false,
        polled: false,
    };
    let to_head = parts.method == Method::HEAD;
    let mut sent = false;
    let mut write_failed = None;
    let head = poll_fn(|cx| {
        if !sent && write_failed.is_none() {
            match upload.poll_send(cx, &mut conn) {
                Poll::Ready(Ok(())) => sent = true,
                // The client's body failed: the backend will not get the rest, so it would never
                // answer. Give up now.
                Poll::Ready(Err(e @ Error::RequestBody(_))) => return Poll::Ready(Err(e)),
                // The backend may still have answered (early, then closed): read on, and report
                // the write error only if there is no answer.
                Poll::Ready(Err(e)) => write_failed = Some(e),
                Poll::Pending => {}
            }
        }
        match ready!(conn.poll_head(cx, (to_head, upgrade), &mut parts.headers)) {
            Err(e) => Poll::Ready(Err(write_failed.take().unwrap_or(e))),
            ok => Poll::Ready(ok),
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(error) => {
            let unsent = !upload.wrote;
            let unanswered = matches!(error, Error::Write(_) | Error::Read(_) | Error::Unanswered)
                && conn.buf.is_empty()
                && idempotent(&parts.method);
            return Err(if pooled && !upload.polled && (unsent || unanswered) {
                SendError::Retry {
                    error,
                    body: upload.body,
                }
            } else {
                SendError::Failed(error)
            });
        }
    };
    // An upload the backend stopped taking is given up, and the connection with it.
    let gave_up = write_failed.is_some();
    let mut body = Body {
        conn: Some(conn),
        upload: (!sent && !gave_up).then_some(upload),
        decode: head.decode,
        keep_alive: head.keep_alive && !gave_up,
    };
    if body.decode == Decode::Length(0) {
        body.decode = Decode::Done;
        body.finish(None);
    }
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// A response body read from the backend connection, which it owns until the end.
pub struct Body {
    /// `None` once the body has ended (the connection went back to the pool, or was closed).
    conn: Option<Box<BackendConn>>,
    /// The rest of the request, when the backend answered before it was all sent.
    upload: Option<Outgoing>,
    decode: Decode,
    keep_alive: bool,
}

impl Body {
    /// The connection of a 101 answer and what the backend sent after its head: the backend's end
    /// of a tunnel. `None` when the request was not sent whole before the switch.
    pub(crate) fn into_upgraded(mut self) -> Option<(BackendStream, Bytes)> {
        if self.upload.is_some() {
            return None;
        }
        let conn = *self.conn.take()?;
        Some((conn.io, conn.buf.freeze()))
    }

    /// The response has ended: the connection goes back to the pool if it can carry another
    /// request, and is closed otherwise. `home` is its pool when the caller has it at hand;
    /// otherwise the connection's weak reference finds it, at the cost of a reference taken and
    /// dropped (two atomic operations).
    fn finish(&mut self, home: Option<&Home>) {
        let Some(conn) = self.conn.take() else { return };
        let clean = self.keep_alive && self.upload.is_none() && conn.buf.is_empty();
        self.upload = None;
        if !clean {
            return;
        }
        match home {
            Some(pool) if std::ptr::eq(conn.home.as_ptr(), pool) => pool.put_back(conn.idle()),
            _ => {
                if let Some(pool) = conn.home.upgrade() {
                    pool.put_back(conn.idle());
                }
            }
        }
    }

    /// The next frame, as [`http_body::Body::poll_frame`], for a caller that holds the
    /// connection's pool: a connection that ends its exchange goes back to it directly.
    pub(crate) fn poll_frame_home(
        &mut self,
        cx: &mut Context<'_>,
        home: &Home,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.poll_next(cx, Some(home))
    }

    /// The next frame; a connection whose exchange ends goes back to `home` when given (see
    /// [`Body::finish`]).
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        home: Option<&Home>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(upload) = self.upload.as_mut() {
            match upload.poll_send(cx, conn) {
                Poll::Ready(Ok(())) => self.upload = None,
                // The backend stopped taking the request (it answered early, then closed): its
                // answer is still read whole, and the connection closed after it.
                Poll::Ready(Err(Error::Write(e))) => {
                    tracing::debug!(error = %e, "the backend stopped reading the request body");
                    self.upload = None;
                    self.keep_alive = false;
                }
                // The client's body failed: the backend, waiting for the rest, would never end.
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => {}
            }
        }
        match ready!(conn.poll_decode(cx, &mut self.decode)) {
            Some(Err(e)) => self.fail(e),
            Some(Ok(frame)) => {
                if self.decode == Decode::Done {
                    self.finish(home);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                self.finish(home);
                Poll::Ready(None)
            }
        }
    }

    /// Ends the body with `e`; the connection is closed.
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.upload = None;
        self.decode = Decode::Done;
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.get_mut().poll_next(cx, None)
    }

    fn is_end_stream(&self) -> bool {
        self.decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
