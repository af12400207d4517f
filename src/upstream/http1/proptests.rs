//! Property tests of the HTTP/1.1 codec, on bytes alone: whatever the backend sends never panics
//! it; a chunked body weir encodes decodes to the same data and trailers; an answer split into
//! reads anywhere parses as it does whole; and response heads parse as httparse, the reference,
//! reads them. Each property runs [`CASES`] cases (a fixed number, so CI stays bounded).

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::codec::*;

/// Cases per property.
const CASES: u32 = 512;

/// A head and body framing to decode with, as a response's would be.
fn decodes() -> impl Strategy<Value = Decode> {
    prop_oneof![
        (0u64..4096).prop_map(Decode::Length),
        Just(Decode::Chunked(Chunk::Size)),
        Just(Decode::Eof),
    ]
}

/// Runs the decoder over `buf` until it needs more bytes, ends or fails; the data and trailers
/// it gave, and how it stopped.
fn decode_all(
    buf: &mut BytesMut,
    decode: &mut Decode,
) -> (Vec<u8>, Option<HeaderMap>, Result<bool, Error>) {
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        match decode_body(buf, decode) {
            Ok(Decoded::Frame(f)) => match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Ok(Decoded::End) => return (data, trailers, Ok(true)),
            Ok(Decoded::More) => return (data, trailers, Ok(false)),
            Err(e) => return (data, trailers, Err(e)),
        }
    }
}

/// Bytes that look like HTTP some of the time: fragments of real heads and chunked bodies,
/// mutated, mixed with noise.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop_oneof![
        Just(b"HTTP/1.1 200 OK\r\n".to_vec()),
        Just(b"HTTP/1.0 404 Not Found\r\n".to_vec()),
        Just(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        Just(b"content-length: 5\r\n".to_vec()),
        Just(b"Content-Length: 1, 1\r\n".to_vec()),
        Just(b"transfer-encoding: chunked\r\n".to_vec()),
        Just(b"Transfer-Encoding: gzip, chunked\r\n".to_vec()),
        Just(b"connection: close\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"5\r\nhello\r\n".to_vec()),
        Just(b"0\r\nx-t: 1\r\n\r\n".to_vec()),
        Just(b"ffffffffffffffffff\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(pieces, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Whatever the backend sends, parsing its head and decoding a body from it returns a result:
    /// it never panics, and never claims more bytes than it had.
    #[test]
    fn no_bytes_panic_the_parser(bytes in prop_oneof![http_ish(), prop::collection::vec(any::<u8>(), 0..512)],
                                 to_head in any::<bool>(),
                                 decode in decodes()) {
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        let _ = parse_head(&mut buf, to_head, false, &mut HeaderMap::new());
        prop_assert!(buf.len() <= before);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decode = decode;
        let (data, _, _) = decode_all(&mut buf, &mut decode);
        prop_assert!(data.len() <= bytes.len());
        let _ = end_of_stream(&mut decode);
    }

    /// A chunked body as weir writes it (any chunks, any trailers) decodes to the same data and
    /// trailers, wherever the bytes are split between reads.
    #[test]
    fn chunked_bodies_round_trip(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
                                 trailers in prop::collection::btree_map("x-[a-z]{1,8}", "[a-zA-Z0-9 ]{0,12}", 0..3),
                                 split in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for c in &chunks {
            put_chunk(&mut wire, c);
        }
        let mut sent = HeaderMap::new();
        for (k, v) in &trailers {
            sent.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v.trim()).unwrap());
        }
        put_last_chunk(&mut wire, Some(&sent));
        let wire = wire.freeze();
        let cut = split.index(wire.len() + 1);
        let mut decode = Decode::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(&wire[..cut]);
        let (mut data, mut got, first) = decode_all(&mut buf, &mut decode);
        prop_assert!(first.is_ok(), "{first:?}");
        if !matches!(first, Ok(true)) {
            buf.extend_from_slice(&wire[cut..]);
            let (more, t, end) = decode_all(&mut buf, &mut decode);
            data.extend(more);
            got = got.or(t);
            prop_assert!(matches!(end, Ok(true)), "{end:?}");
        }
        prop_assert_eq!(data, chunks.concat());
        prop_assert_eq!(got.unwrap_or_default(), sent);
        prop_assert!(buf.is_empty());
    }

    /// A whole answer (head, then a Content-Length or chunked body) parses the same whether it
    /// arrives in one read or split into three at any two points.
    #[test]
    fn any_split_of_an_answer_parses_the_same(body in prop::collection::vec(any::<u8>(), 0..200),
                                              chunked in any::<bool>(),
                                              a in any::<prop::sample::Index>(),
                                              b in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a: 1\r\n"[..]);
        if chunked {
            wire.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for c in body.chunks(37) {
                put_chunk(&mut wire, c);
            }
            put_last_chunk(&mut wire, None);
        } else {
            wire.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            wire.extend_from_slice(&body);
        }
        let wire = wire.freeze();
        let whole = read_in_pieces(&wire, &[]);
        let (x, y) = (a.index(wire.len() + 1), b.index(wire.len() + 1));
        let split = read_in_pieces(&wire, &[x.min(y), x.max(y)]);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole, Some((200, body)));
    }

    /// Response heads parse as httparse reads them: the same status, the same fields in the same
    /// order, and the same verdict on whether the head is complete.
    #[test]
    fn heads_parse_as_httparse_reads_them(code in 200u16..600,
                                          fields in prop::collection::vec(("[a-zA-Z][a-zA-Z0-9-]{0,15}", "[ -~]{0,24}"), 0..10),
                                          cut in any::<prop::sample::Index>()) {
        let mut raw = format!("HTTP/1.1 {code} Whatever\r\n");
        for (n, v) in &fields {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let raw = &raw.as_bytes()[..cut.index(raw.len() + 1)];
        let mut reference = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut reference);
        let expected = response.parse(raw);
        let mut buf = BytesMut::from(raw);
        let ours = parse_head(&mut buf, true, false, &mut HeaderMap::new());
        match (expected, ours) {
            (Ok(httparse::Status::Complete(_)), Ok(Parsed::Final(head))) => {
                prop_assert_eq!(Some(head.status.as_u16()), response.code);
                let theirs: Vec<(String, Vec<u8>)> = response.headers.iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
                let ours: Vec<(String, Vec<u8>)> = head.headers.iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect();
                prop_assert_eq!(ours, theirs);
            }
            // A head whose fields frame no valid body (a bad Content-Length): refused by weir
            // alone, with httparse content with the syntax.
            (Ok(httparse::Status::Complete(_)), Err(Error::Invalid(_))) => {}
            (Ok(httparse::Status::Partial), Ok(Parsed::Partial)) => {}
            (Err(_), Err(_)) => {}
            (e, o) => prop_assert!(false, "httparse {e:?}, weir {o:?}"),
        }
    }
}

/// Parses `wire` as a response, handed over in reads that end at each of `cuts`: the status and
/// the body, or `None` when it does not parse.
fn read_in_pieces(wire: &Bytes, cuts: &[usize]) -> Option<(u16, Vec<u8>)> {
    let mut ends: Vec<usize> = cuts.to_vec();
    ends.push(wire.len());
    let mut buf = BytesMut::new();
    let mut from = 0;
    let mut head = None;
    let mut body = Vec::new();
    for end in ends {
        buf.extend_from_slice(&wire[from..end]);
        from = end;
        if head.is_none() {
            match parse_head(&mut buf, false, false, &mut HeaderMap::new()).ok()? {
                Parsed::Final(h) => head = Some(h),
                Parsed::Interim | Parsed::Partial => continue,
            }
        }
        let h = head.as_mut()?;
        let (data, _, end) = decode_all(&mut buf, &mut h.decode);
        body.extend(data);
        if end.ok()? {
            return Some((h.status.as_u16(), body));
        }
    }
    None
}
