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
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version, request};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::body::{RequestBody, RequestBodyError};
use crate::client::{SetFields, Shared};

/// Response heads (and trailer sections) larger than this are refused: 64 KiB, as nginx's
/// largest default header buffers.
const MAX_HEAD: usize = 64 * 1024;
/// As many header fields as hyper accepts by default.
const MAX_HEADERS: usize = 100;
/// How much room a read asks for at first; it doubles, up to `READ_MAX`, while reads fill it.
const READ_CHUNK: usize = 8 * 1024;
const READ_MAX: usize = 256 * 1024;
/// Buffers larger than this are let go when the connection goes back to the pool.
const IDLE_KEEP: usize = 16 * 1024;
/// Upload bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// Why an exchange with the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing to the backend: {0}")]
    Write(#[source] io::Error),
    #[error("reading from the backend: {0}")]
    Read(#[source] io::Error),
    #[error("the backend closed the connection without answering")]
    Unanswered,
    #[error("the backend closed the connection before the end of the response")]
    Incomplete,
    #[error("the backend's response is not valid HTTP/1.1: {0}")]
    Invalid(&'static str),
    #[error("the backend's response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("forwarding the request body")]
    RequestBody(#[source] RequestBodyError),
    #[error("the request body does not match its announced length")]
    RequestBodyLength,
}

impl Error {
    /// The backend broke HTTP (as opposed to failing or closing mid-exchange).
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Invalid(_) | Error::HeadTooLarge)
    }
}

impl From<httparse::Error> for Error {
    fn from(e: httparse::Error) -> Self {
        Error::Invalid(match e {
            httparse::Error::TooManyHeaders => "more than 100 header fields",
            httparse::Error::Status => "invalid status line",
            httparse::Error::Version => "invalid version",
            _ => "invalid header field",
        })
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
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read from the backend and not yet handed on.
    buf: BytesMut,
    /// Bytes to write: the request head, then upload bytes with their framing.
    out: BytesMut,
    /// Room the next read asks for.
    read_size: usize,
    /// The pool the connection returns to when an exchange ends cleanly.
    home: Weak<Shared>,
}

impl Conn {
    /// Boxed: a connection passes from the pool to a request, into its response body and back
    /// on every exchange, and the box moves as one pointer.
    pub(crate) fn new(io: TcpStream, home: Weak<Shared>) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            read_size: READ_CHUNK,
            home,
        })
    }

    /// Readies the connection to wait in the pool: buffers a large exchange grew are let go.
    fn idle(mut self: Box<Self>) -> Box<Conn> {
        if self.buf.capacity() > IDLE_KEEP {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > IDLE_KEEP {
            self.out = BytesMut::new();
        }
        self.read_size = READ_CHUNK;
        self
    }

    /// Whether an idle connection can carry a request: the backend has neither closed it nor
    /// sent anything unasked. Costs no system call unless the socket was signalled readable.
    pub(crate) fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
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

    /// Reads the final response head, skipping interim (1xx) ones.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        to_head: bool,
        spare: &mut HeaderMap,
    ) -> Poll<Result<Head, Error>> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, to_head, spare)? {
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

    /// The next part of the response body, as `decode` frames it.
    fn poll_decode(
        &mut self,
        cx: &mut Context<'_>,
        decode: &mut Decode,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match decode {
                Decode::Done => return Poll::Ready(None),
                Decode::Length(0) => *decode = Decode::Done,
                Decode::Length(left) | Decode::Chunked(Chunk::Data(left))
                    if !self.buf.is_empty() =>
                {
                    let n = (*left).min(self.buf.len() as u64);
                    *left -= n;
                    let data = self.buf.split_to(n as usize).freeze();
                    if let Decode::Chunked(c @ Chunk::Data(0)) = decode {
                        *c = Chunk::DataEnd;
                    } else if *decode == Decode::Length(0) {
                        *decode = Decode::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::Eof if !self.buf.is_empty() => {
                    let data = self.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::Chunked(Chunk::Size) => {
                    if let Some(size) = chunk_size(&mut self.buf)? {
                        *decode = Decode::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                        continue;
                    }
                }
                Decode::Chunked(Chunk::DataEnd) => {
                    if self.buf.starts_with(b"\r\n") {
                        self.buf.advance(2);
                        *decode = Decode::Chunked(Chunk::Size);
                        continue;
                    }
                    if self.buf.len() >= 2 || self.buf.first().is_some_and(|b| *b != b'\r') {
                        return Poll::Ready(Some(Err(Error::Invalid(
                            "chunk not followed by CRLF",
                        ))));
                    }
                }
                Decode::Chunked(Chunk::Trailers) => {
                    if let Some(trailers) = trailer_section(&mut self.buf)? {
                        *decode = Decode::Done;
                        if trailers.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                Decode::Length(_) | Decode::Chunked(Chunk::Data(_)) | Decode::Eof => {}
            }
            // Nothing decodable is buffered: read more.
            if ready!(self.poll_fill(cx))? == 0 {
                if *decode == Decode::Eof {
                    *decode = Decode::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Error::Incomplete)));
            }
        }
    }
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// `Content-Length`: the bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Neither: the body ends when the backend closes the connection.
    Eof,
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A final response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    decode: Decode,
    /// The backend lets the connection carry another request.
    keep_alive: bool,
}

enum Parsed {
    Final(Head),
    Interim,
    Partial,
}

/// Parses a response head at the start of `buf`, taking it out of `buf` when complete. Names and
/// values are copied out: a value that shared the read buffer would cost two atomic operations
/// (its reference taken and dropped) and keep the buffer from being reused until hyper has written
/// it, where a copy of a few bytes costs less.
///
/// The fields go into `spare`'s map, emptied, when the head is final: the request's own, no longer
/// needed once its answer has come. hyper keeps a response's map to parse the connection's next
/// request into, so one map serves every exchange of a connection without being allocated anew.
fn parse_head(buf: &mut BytesMut, to_head: bool, spare: &mut HeaderMap) -> Result<Parsed, Error> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    )? {
        httparse::Status::Partial => return Ok(Parsed::Partial),
        httparse::Status::Complete(len) => len,
    };
    let code = res.code.unwrap_or(0);
    if (100..200).contains(&code) {
        buf.advance(len);
        if code == 101 {
            return Err(Error::Invalid("protocol switch that was not asked for"));
        }
        return Ok(Parsed::Interim);
    }
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("invalid status code"))?;
    let mut headers = std::mem::take(spare);
    headers.clear();
    headers.reserve(res.headers.len());
    let mut seen = Seen::default();
    for h in &*res.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Error::Invalid("invalid header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| Error::Invalid("invalid header value"))?;
        seen.note(&name, &value);
        headers.append(name, value);
    }
    buf.advance(len);
    let (decode, delimited) = body_framing(status, to_head, &headers, seen)?;
    let keep_alive = delimited && keeps_alive(version, &headers, seen);
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        decode,
        keep_alive,
    }))
}

/// Which of the fields that frame a response a head carries, noted while it is parsed: most
/// heads have neither `Transfer-Encoding` nor `Connection`, and a look-up that finds nothing
/// still hashes the name and probes the map. Content-Length is read as it goes by.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    transfer_encoding: bool,
    /// The length all Content-Length fields agree on, or the first thing wrong with them.
    content_length: Option<Result<u64, &'static str>>,
    connection: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        // Standard names compare as small integers.
        if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONTENT_LENGTH {
            self.content_length = Some(match self.content_length {
                Some(Err(e)) => Err(e),
                prior => content_length(prior.and_then(Result::ok), value.as_bytes()),
            });
        } else if name == header::CONNECTION {
            self.connection = true;
        }
    }
}

/// One Content-Length field (a list of equal lengths, at worst) checked against the length
/// the ones before it gave.
fn content_length(prior: Option<u64>, value: &[u8]) -> Result<u64, &'static str> {
    let mut length = prior;
    for part in value.split(|b| *b == b',') {
        let n = parse_decimal(part.trim_ascii()).ok_or("invalid Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        length = Some(n);
    }
    // `split` yields at least one part, so a length was parsed.
    length.ok_or("invalid Content-Length")
}

/// How the body of a response is delimited, and whether its end leaves the connection usable.
fn body_framing(
    status: StatusCode,
    to_head: bool,
    headers: &HeaderMap,
    seen: Seen,
) -> Result<(Decode, bool), Error> {
    if to_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Decode::Length(0), true));
    }
    let last_te = || {
        headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
    };
    if let Some(te) = seen.transfer_encoding.then(last_te).flatten() {
        let chunked = te
            .as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // With a Content-Length too, the connection must close after (RFC 9112 §6.3).
        let alone = seen.content_length.is_none();
        return Ok(if chunked {
            (Decode::Chunked(Chunk::Size), alone)
        } else {
            (Decode::Eof, false)
        });
    }
    Ok(match seen.content_length {
        Some(Ok(n)) => (Decode::Length(n), true),
        Some(Err(e)) => return Err(Error::Invalid(e)),
        None => (Decode::Eof, false),
    })
}

fn keeps_alive(version: Version, headers: &HeaderMap, seen: Seen) -> bool {
    if version == Version::HTTP_10 {
        seen.connection && has_token(headers, header::CONNECTION, b"keep-alive")
    } else {
        !seen.connection || !has_token(headers, header::CONNECTION, b"close")
    }
}

/// Whether the comma-separated list in the `name` fields holds `token` (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &[u8]) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
    })
}

/// Takes a chunk-size line (with any extensions) off `buf` and returns the size, or `None` when
/// the line is not complete yet.
fn chunk_size(buf: &mut BytesMut) -> Result<Option<u64>, Error> {
    match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete((len, size))) => {
            buf.advance(len);
            Ok(Some(size))
        }
        Ok(httparse::Status::Partial) if buf.len() > 1024 => {
            Err(Error::Invalid("chunk-size line too long"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(Error::Invalid("invalid chunk size")),
    }
}

/// Takes the trailer section that ends a chunked body off `buf`: `None` while incomplete.
fn trailer_section(buf: &mut BytesMut) -> Result<Option<HeaderMap>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(buf, &mut fields)? {
        httparse::Status::Partial if buf.len() >= MAX_HEAD => Err(Error::HeadTooLarge),
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete((len, fields)) => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| Error::Invalid("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| Error::Invalid("invalid trailer value"))?;
                trailers.append(name, value);
            }
            buf.advance(len);
            Ok(Some(trailers))
        }
    }
}

/// How the request body is delimited on the way to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: the head alone, as the client's headers describe it.
    None,
    Length(u64),
    Chunked,
}

/// The request on its way out: the head, then the body with its framing.
struct Upload {
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

impl Upload {
    /// Writes the head and as much of the body as is ready; `Ready(Ok)` once all is written.
    fn poll_send(&mut self, cx: &mut Context<'_>, conn: &mut Conn) -> Poll<Result<(), Error>> {
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
                put_hex_line(out, data.len());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
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
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.into_iter().flatten() {
                    put_field(out, name, value);
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            Framing::Length(n) if self.taken != n => Err(Error::RequestBodyLength),
            _ => Ok(()),
        }
    }
}

fn put_hex_line(out: &mut BytesMut, n: usize) {
    use std::fmt::Write as _;
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{n:X}\r\n");
}

fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head into `out`: the request's own fields, except those `set` replaces,
/// then `set`'s with its copy of the first Host field, then the body's framing.
fn encode_head(out: &mut BytesMut, parts: &request::Parts, set: SetFields<'_>, framing: Framing) {
    out.clear();
    out.reserve(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = None;
    for (name, value) in &parts.headers {
        if name == header::HOST && host.is_none() {
            host = Some(value);
        }
        if (framing != Framing::None && name == header::CONTENT_LENGTH) || set.replaces(name) {
            continue;
        }
        put_field(out, name, value);
    }
    for (name, value) in set.fields {
        put_field(out, name, value);
    }
    if let (Some(name), Some(host)) = (set.copy_of_host, host) {
        put_field(out, name, host);
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a request may be sent again after the backend closed the connection without a word:
/// the method is idempotent (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends a request on `conn`, its head with `set`'s fields, and returns the response once its
/// head has arrived. `pooled` says the connection was idle in the pool (a retry on another one is
/// then worth it). The response's fields take the place of the request's in `parts`, whose map
/// they reuse: `parts` keeps its fields until the answer's head is complete, for a retry.
pub(crate) async fn send(
    mut conn: Box<Conn>,
    parts: &mut request::Parts,
    set: SetFields<'_>,
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
    let mut upload = Upload {
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
        match ready!(conn.poll_head(cx, to_head, &mut parts.headers)) {
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
    conn: Option<Box<Conn>>,
    /// The rest of the request, when the backend answered before it was all sent.
    upload: Option<Upload>,
    decode: Decode,
    keep_alive: bool,
}

impl Body {
    /// The response has ended: the connection goes back to the pool if it can carry another
    /// request, and is closed otherwise. `home` is its pool when the caller has it at hand;
    /// otherwise the connection's weak reference finds it, at the cost of a reference taken and
    /// dropped (two atomic operations).
    fn finish(&mut self, home: Option<&Shared>) {
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
        home: &Shared,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.poll_next(cx, Some(home))
    }

    /// The next frame; a connection whose exchange ends goes back to `home` when given (see
    /// [`Body::finish`]).
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        home: Option<&Shared>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// No fields set.
    const NONE: SetFields<'static> = SetFields {
        fields: &[],
        copy_of_host: None,
    };

    fn head(raw: &str) -> Result<Parsed, Error> {
        parse_head(&mut BytesMut::from(raw), false, &mut HeaderMap::new())
    }

    fn final_head(raw: &str) -> Head {
        match head(raw) {
            Ok(Parsed::Final(h)) => h,
            _ => panic!("not a final head: {raw:?}"),
        }
    }

    #[test]
    fn a_final_head_reuses_the_request_map_and_nothing_of_its_fields() {
        let mut request = HeaderMap::new();
        request.insert("authorization", HeaderValue::from_static("secret"));
        request.append("x-a", HeaderValue::from_static("request"));
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: b\r\n");
        // Neither an interim nor an unfinished head takes the map: a retry still needs it.
        assert!(matches!(
            parse_head(&mut buf, false, &mut request),
            Ok(Parsed::Interim)
        ));
        assert!(matches!(
            parse_head(&mut buf, false, &mut request),
            Ok(Parsed::Partial)
        ));
        assert_eq!(request.len(), 2);
        buf.extend_from_slice(b"content-length: 0\r\n\r\n");
        let Ok(Parsed::Final(head)) = parse_head(&mut buf, false, &mut request) else {
            panic!("not a final head");
        };
        assert!(request.is_empty());
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.headers["x-a"], "b");
        assert!(!head.headers.contains_key("authorization"));
    }

    #[test]
    fn response_heads_and_their_framing() {
        let h = final_head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello");
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(h.decode, Decode::Length(5));
        assert!(h.keep_alive);

        let h = final_head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.decode, Decode::Chunked(Chunk::Size));

        let h = final_head("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(h.decode, Decode::Eof);
        assert!(!h.keep_alive);

        let h = final_head("HTTP/1.1 200 OK\r\nconnection: x, Close\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive);

        let h =
            final_head("HTTP/1.0 200 OK\r\ncontent-length: 2\r\nConnection: Keep-Alive\r\n\r\n");
        assert_eq!(h.decode, Decode::Length(2));
        assert!(h.keep_alive);

        // Chunked wins over a Content-Length, and the connection is not used again.
        let h = final_head(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!(h.decode, Decode::Chunked(Chunk::Size));
        assert!(!h.keep_alive);

        assert!(matches!(
            head("HTTP/1.1 100 Continue\r\n\r\n"),
            Ok(Parsed::Interim)
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\ncontent-le"),
            Ok(Parsed::Partial)
        ));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n").is_err());
        // Equal lengths in several fields are one length; different ones are an error.
        let h = final_head("HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 4, 4\r\n\r\n");
        assert_eq!(h.decode, Decode::Length(4));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n").is_err());
        // A chunked body does not depend on the Content-Length, even a broken one.
        let h = final_head(
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!(h.decode, Decode::Chunked(Chunk::Size));
        // A head of many fields, all kept.
        let many: String = (0..40).map(|i| format!("x-{i}: v{i}\r\n")).collect();
        let h = final_head(&format!(
            "HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n"
        ));
        assert_eq!(h.headers.len(), 41);
        assert_eq!(h.headers["x-39"], "v39");
        assert_eq!(h.decode, Decode::Length(0));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        assert!(head("this is not HTTP\r\n\r\n").is_err());
    }

    #[test]
    fn chunk_size_lines() {
        let mut buf = BytesMut::from("1a;ext=1\r\nrest");
        assert_eq!(chunk_size(&mut buf).ok().flatten(), Some(26));
        assert_eq!(&buf[..], b"rest");
        assert!(matches!(chunk_size(&mut BytesMut::from("1a")), Ok(None)));
        assert!(chunk_size(&mut BytesMut::from("xyz\r\n")).is_err());
        assert!(chunk_size(&mut BytesMut::from("11111111111111111\r\n")).is_err());
    }

    #[test]
    fn request_heads() {
        let (parts, ()) = http::Request::post("/a?b")
            .header("host", "x")
            .header("content-length", "9")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = BytesMut::new();
        encode_head(&mut out, &parts, NONE, Framing::Chunked);
        assert_eq!(
            &out[..],
            b"POST /a?b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        encode_head(&mut out, &parts, NONE, Framing::None);
        assert_eq!(
            &out[..],
            b"POST /a?b HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\n"
        );
    }

    #[test]
    fn set_fields_replace_the_requests_own() {
        static X_A: HeaderName = HeaderName::from_static("x-a");
        static X_H: HeaderName = HeaderName::from_static("x-h");
        let (parts, ()) = http::Request::get("/")
            .header("x-a", "1")
            .header("host", "x")
            .header("x-a", "2")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = BytesMut::new();
        let set = [
            (&X_A, Cow::Owned(HeaderValue::from_static("3"))),
            (&header::VIA, Cow::Owned(HeaderValue::from_static("w"))),
        ];
        let set = SetFields {
            fields: &set,
            copy_of_host: Some(&X_H),
        };
        encode_head(&mut out, &parts, set, Framing::None);
        assert_eq!(
            &out[..],
            b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 3\r\nvia: w\r\nx-h: x\r\n\r\n"
        );
        // With no Host field, no copy of it, and the request's own field of that name stays.
        let (parts, ()) = http::Request::get("/")
            .header("x-h", "mine")
            .body(())
            .unwrap()
            .into_parts();
        encode_head(&mut out, &parts, NONE, Framing::None);
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\nx-h: mine\r\n\r\n");
    }

    /// Decodes `raw` (a body framed as `decode` says) with its first `split` bytes already
    /// buffered and the rest arriving from a real socket, which then closes.
    async fn decode_split(
        raw: &'static [u8],
        split: usize,
        decode: Decode,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&raw[split..]).await.unwrap();
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap(), Weak::new());
        conn.buf.extend_from_slice(&raw[..split]);
        let mut decode = decode;
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = poll_fn(|cx| conn.poll_decode(cx, &mut decode)).await {
            match frame?.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        peer.await.unwrap();
        Ok((data, trailers))
    }

    #[tokio::test]
    async fn bodies_decode_whatever_way_they_are_split() {
        const CHUNKED: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..=CHUNKED.len() {
            let (data, trailers) = decode_split(CHUNKED, split, Decode::Chunked(Chunk::Size))
                .await
                .unwrap();
            assert_eq!(data, b"hello world", "split at {split}");
            assert_eq!(trailers.unwrap()["x-t"], "1", "split at {split}");
        }
        const PLAIN: &[u8] = b"0123456789";
        for split in 0..=PLAIN.len() {
            let got = decode_split(PLAIN, split, Decode::Length(10))
                .await
                .unwrap();
            assert_eq!(got.0, PLAIN, "split at {split}");
            let got = decode_split(PLAIN, split, Decode::Eof).await.unwrap();
            assert_eq!(got.0, PLAIN, "split at {split}");
        }
        // Cut short: the body is incomplete, not ended.
        assert!(matches!(
            decode_split(PLAIN, 0, Decode::Length(11)).await,
            Err(Error::Incomplete)
        ));
        assert!(matches!(
            decode_split(b"5\r\nhel", 0, Decode::Chunked(Chunk::Size)).await,
            Err(Error::Incomplete)
        ));
        assert!(matches!(
            decode_split(b"5\r\nhelloXX", 0, Decode::Chunked(Chunk::Size)).await,
            Err(Error::Invalid(_))
        ));
    }
}
