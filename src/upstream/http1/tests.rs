//! Tests of the HTTP/1.1 client side: the codec on byte strings, and body decoding over a real
//! socket however the bytes are split between reads.

use std::borrow::Cow;
use std::future::poll_fn;
use std::sync::Weak;

use bytes::BytesMut;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::net::TcpStream;

use super::codec::*;
use super::conn::BackendConn;
use crate::http::SetFields;
use crate::upstream::stream::BackendStream;

/// No fields set.
const NONE: SetFields<'static> = SetFields {
    fields: &[],
    copy_of_host: None,
};

fn head(raw: &str) -> Result<Parsed, Error> {
    parse_head(
        &mut BytesMut::from(raw),
        false,
        false,
        &mut HeaderMap::new(),
    )
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
        parse_head(&mut buf, false, false, &mut request),
        Ok(Parsed::Interim)
    ));
    assert!(matches!(
        parse_head(&mut buf, false, false, &mut request),
        Ok(Parsed::Partial)
    ));
    assert_eq!(request.len(), 2);
    buf.extend_from_slice(b"content-length: 0\r\n\r\n");
    let Ok(Parsed::Final(head)) = parse_head(&mut buf, false, false, &mut request) else {
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

    let h = final_head("HTTP/1.0 200 OK\r\ncontent-length: 2\r\nConnection: Keep-Alive\r\n\r\n");
    assert_eq!(h.decode, Decode::Length(2));
    assert!(h.keep_alive);

    // Chunked wins over a Content-Length, and the connection is not used again.
    let h =
        final_head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
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
    let h =
        final_head("HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n");
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
    let mut conn = BackendConn::new(
        BackendStream::Tcp(TcpStream::connect(addr).await.unwrap()),
        Weak::new(),
    );
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

#[test]
fn a_101_is_final_only_when_the_request_asked_to_upgrade() {
    let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x01\x02hi";
    assert!(matches!(head(raw), Err(Error::Invalid(_))));
    let mut buf = BytesMut::from(raw);
    let Ok(Parsed::Final(h)) = parse_head(&mut buf, false, true, &mut HeaderMap::new()) else {
        panic!("a 101 asked for is the final answer");
    };
    assert_eq!(h.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(h.headers[header::UPGRADE], "websocket");
    // No body, no next exchange, and what followed the head is the new protocol's.
    assert!(h.decode == Decode::Done && !h.keep_alive);
    assert_eq!(&buf[..], b"\x01\x02hi");
    // Another interim answer before it is still skipped.
    let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\n");
    let parsed = parse_head(&mut buf, false, true, &mut HeaderMap::new());
    assert!(matches!(parsed, Ok(Parsed::Interim)));
}
