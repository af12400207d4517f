//! The HTTP/1.1 wire format of weir's backend client, on bytes alone: request heads written,
//! response heads and bodies (Content-Length, chunked with trailers, close-delimited) parsed, and
//! the rules that say how a body is framed and whether a connection may be reused (RFC 9112).
//! Nothing here does I/O: `conn` reads and writes, and calls these.

use std::io;
use std::mem::MaybeUninit;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version, request};
use http_body::Frame;

use crate::error::RequestBodyError;
use crate::http::{SetFields, has_token};

/// Response heads (and trailer sections) larger than this are refused: 64 KiB, as nginx's
/// largest default header buffers.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// As many header fields as hyper accepts by default.
pub(crate) const MAX_HEADERS: usize = 100;

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

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// `Content-Length`: the bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Neither: the body ends when the backend closes the connection.
    Eof,
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A final response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) decode: Decode,
    /// The backend lets the connection carry another request.
    pub(crate) keep_alive: bool,
}

#[derive(Debug)]
pub(crate) enum Parsed {
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
///
/// `upgrade`: the request asked to switch protocols, so a 101 is its final answer (a head with no
/// body, after which the connection is the backend's end of a tunnel); otherwise a 101 is an
/// error.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    to_head: bool,
    upgrade: bool,
    spare: &mut HeaderMap,
) -> Result<Parsed, Error> {
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
    let switched = code == 101;
    if (100..200).contains(&code) && !(switched && upgrade) {
        buf.advance(len);
        if switched {
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
    // After a 101 the connection carries the new protocol: no body, and no next exchange.
    let (decode, delimited) = if switched {
        (Decode::Done, false)
    } else {
        body_framing(status, to_head, &headers, seen)?
    };
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
pub(crate) fn chunk_size(buf: &mut BytesMut) -> Result<Option<u64>, Error> {
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
pub(crate) fn trailer_section(buf: &mut BytesMut) -> Result<Option<HeaderMap>, Error> {
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
pub(crate) enum Framing {
    /// No body: the head alone, as the client's headers describe it.
    None,
    Length(u64),
    Chunked,
}

/// What [`decode_body`] found in the buffer.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A piece of the body: data, or the trailers that end it.
    Frame(Frame<Bytes>),
    /// The body has ended.
    End,
    /// Nothing decodable is buffered: read more.
    More,
}

/// Takes the next piece of a response body, framed as `decode` says, off the start of `buf`.
pub(crate) fn decode_body(buf: &mut BytesMut, decode: &mut Decode) -> Result<Decoded, Error> {
    loop {
        match decode {
            Decode::Done => return Ok(Decoded::End),
            Decode::Length(0) => {
                *decode = Decode::Done;
                continue;
            }
            Decode::Length(left) | Decode::Chunked(Chunk::Data(left)) if !buf.is_empty() => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                let data = buf.split_to(n as usize).freeze();
                if let Decode::Chunked(c @ Chunk::Data(0)) = decode {
                    *c = Chunk::DataEnd;
                } else if *decode == Decode::Length(0) {
                    *decode = Decode::Done;
                }
                return Ok(Decoded::Frame(Frame::data(data)));
            }
            Decode::Eof if !buf.is_empty() => {
                return Ok(Decoded::Frame(Frame::data(buf.split().freeze())));
            }
            Decode::Chunked(Chunk::Size) => {
                if let Some(size) = chunk_size(buf)? {
                    *decode = Decode::Chunked(match size {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    });
                    continue;
                }
            }
            Decode::Chunked(Chunk::DataEnd) => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *decode = Decode::Chunked(Chunk::Size);
                    continue;
                }
                if buf.len() >= 2 || buf.first().is_some_and(|b| *b != b'\r') {
                    return Err(Error::Invalid("chunk not followed by CRLF"));
                }
            }
            Decode::Chunked(Chunk::Trailers) => {
                if let Some(trailers) = trailer_section(buf)? {
                    *decode = Decode::Done;
                    if trailers.is_empty() {
                        return Ok(Decoded::End);
                    }
                    return Ok(Decoded::Frame(Frame::trailers(trailers)));
                }
            }
            Decode::Length(_) | Decode::Chunked(Chunk::Data(_)) | Decode::Eof => {}
        }
        return Ok(Decoded::More);
    }
}

/// The backend closed the stream with the body framed as `decode` says: its end when the body
/// is delimited by the close, and an incomplete body otherwise.
pub(crate) fn end_of_stream(decode: &mut Decode) -> Result<(), Error> {
    if *decode == Decode::Eof {
        *decode = Decode::Done;
        Ok(())
    } else {
        Err(Error::Incomplete)
    }
}

fn put_hex_line(out: &mut BytesMut, n: usize) {
    use std::fmt::Write as _;
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{n:X}\r\n");
}

/// One chunk of a chunked body: its size line, its data, CRLF.
pub(crate) fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    put_hex_line(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk, the trailer fields if any, the empty line.
pub(crate) fn put_last_chunk(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head into `out`: the request's own fields, except those `set` replaces,
/// then `set`'s with its copy of the first Host field, then the body's framing.
pub(crate) fn encode_head(
    out: &mut BytesMut,
    parts: &request::Parts,
    set: SetFields<'_>,
    framing: Framing,
) {
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
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
