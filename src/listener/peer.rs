//! A plain-TCP client connection's socket, shared between the HTTP server that reads and writes
//! it and the requests that watch it for the client hanging up.
//!
//! A client that goes away cancels its request, queued or in flight. hyper's HTTP/1 server can
//! notice that itself: with half-closes refused (its default) it reads the socket while a request
//! is in progress, and an end of stream fails the connection, which drops the request. That read
//! costs a full trip through hyper's read path for every request, and it makes hyper allocate a
//! new read buffer for every request: the request's head still shares the old one (its cost is
//! in BENCHMARKS.md, "Design measurements").
//!
//! So on plain TCP, hyper allows half-closes and never reads while a request is in progress, and
//! the request watches instead ([`Hangup`]): when it has nothing else to do it asks the socket
//! for read readiness, which costs nothing until the client sends something. What it sends next
//! is an end of stream or an error (gone: the request is dropped, as hyper would have), or data:
//! the rest of a body hyper has not read yet, or a pipelined request, which hyper reads later;
//! the watch then pauses until hyper has read what is there, as hyper's own watch stops while
//! its buffer holds bytes.
//!
//! The readiness wakes the connection's task, which is the request's task too: hyper's HTTP/1
//! server polls the request's future and its response body on the connection's task, so the
//! watch and hyper's own reads share one waker. TLS connections keep hyper's watch: a client's
//! `close_notify` is data to the socket, and only the TLS layer can tell it from a request.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The client's socket, read and written through `&TcpStream`, so that requests can hold it too.
pub struct PeerSocket(Arc<TcpStream>);

impl PeerSocket {
    pub fn new(stream: TcpStream) -> PeerSocket {
        PeerSocket(Arc::new(stream))
    }

    /// The socket, for a request's [`Hangup`] watch.
    pub fn share(&self) -> Arc<TcpStream> {
        Arc::clone(&self.0)
    }
}

/// One transfer `op` on `stream` once it is ready, as tokio's own `TcpStream` does it: a transfer
/// shorter than `wanted` has emptied the receive queue (or filled the send queue), so the
/// readiness is cleared then, and the next transfer waits for the next event instead of asking
/// the kernel for a `WouldBlock`. (`try_io` clears it when its closure says `WouldBlock`; the
/// count is kept aside.)
fn transfer(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    wanted: usize,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        if interest.is_readable() {
            ready!(stream.poll_read_ready(cx))?;
        } else {
            ready!(stream.poll_write_ready(cx))?;
        }
        let mut done = 0;
        let result = stream.try_io(interest, || {
            done = op()?;
            if done > 0 && done < wanted {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(done)
            }
        });
        match result {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if done > 0 {
                    return Poll::Ready(Ok(done));
                }
                // Readiness was stale, and is cleared: wait for the next event.
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for PeerSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &*self.0;
        let wanted = buf.remaining();
        transfer(stream, cx, Interest::READABLE, wanted, || {
            stream.try_read_buf(buf)
        })
        .map_ok(drop)
    }
}

impl AsyncWrite for PeerSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &*self.0;
        transfer(stream, cx, Interest::WRITABLE, data.len(), || {
            stream.try_write(data)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &*self.0;
        let wanted = bufs.iter().map(|b| b.len()).sum();
        transfer(stream, cx, Interest::WRITABLE, wanted, || {
            stream.try_write_vectored(bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// One request's watch for its client hanging up; see the module docs.
#[derive(Debug, Default)]
pub struct Hangup {
    /// The client sent data the server has not read yet: nothing to learn from the socket until
    /// the server has read it (its readiness is then cleared). Atomic only so that a request's
    /// future can watch through a shared borrow; it is used on one task (relaxed: plain moves).
    paused: AtomicBool,
}

impl Hangup {
    /// Whether the client has hung up. If it cannot tell yet, `cx` is woken when it may.
    pub fn poll_gone(&self, socket: &TcpStream, cx: &mut Context<'_>) -> bool {
        match socket.poll_read_ready(cx) {
            Poll::Pending => {
                self.paused.store(false, Ordering::Relaxed);
                false
            }
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) if self.paused.load(Ordering::Relaxed) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [MaybeUninit::uninit()];
                match socket.poll_peek(cx, &mut ReadBuf::uninit(&mut byte)) {
                    // The readiness was stale: cleared, and `cx` registered.
                    Poll::Pending => false,
                    Poll::Ready(Ok(0) | Err(_)) => true,
                    Poll::Ready(Ok(_)) => {
                        self.paused.store(true, Ordering::Relaxed);
                        false
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair on loopback: the client's end and the server's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    async fn gone(hangup: &Hangup, socket: &TcpStream) -> bool {
        poll_fn(|cx| Poll::Ready(hangup.poll_gone(socket, cx))).await
    }

    fn bounded<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(Duration::from_secs(10), f)
    }

    #[tokio::test]
    async fn a_short_read_waits_for_the_next_bytes_and_the_end_of_stream_reads_empty() {
        let (mut client, server) = pair().await;
        let mut peer = PeerSocket::new(server);
        client.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 16];
        let n = bounded(peer.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"abc");
        // The short read cleared the readiness: the next read waits for the next event.
        let writer = tokio::spawn(async move {
            client.write_all(b"def").await.unwrap();
            client
        });
        let n = bounded(peer.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"def");
        drop(writer.await.unwrap());
        assert_eq!(bounded(peer.read(&mut buf)).await.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn writes_larger_than_the_send_queue_arrive_whole_and_shutdown_ends_the_stream() {
        let (mut client, server) = pair().await;
        // Small queues on both sides, so that writes are cut short.
        socket2::SockRef::from(&server)
            .set_send_buffer_size(64 << 10)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(64 << 10)
            .unwrap();
        let mut peer = PeerSocket::new(server);
        let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // Vectored and plain writes, cut short whenever the send queue is full; after a short
        // write the next one waits for the queue to drain.
        let (first, second) = data.split_at(data.len() / 2);
        let mut first = first;
        let mut writes = 0;
        while !first.is_empty() {
            let n = bounded(peer.write_vectored(&[io::IoSlice::new(first)]))
                .await
                .unwrap()
                .unwrap();
            first = &first[n..];
            writes += 1;
        }
        assert!(
            writes > 1,
            "half the data went out in one write: nothing was cut short"
        );
        bounded(peer.write_all(second)).await.unwrap().unwrap();
        peer.shutdown().await.unwrap();
        assert!(bounded(reader).await.unwrap().unwrap() == expected);
    }

    #[tokio::test]
    async fn a_hang_up_is_seen_and_bytes_not_yet_read_pause_the_watch() {
        let (mut client, server) = pair().await;
        let hangup = Hangup::default();
        assert!(!gone(&hangup, &server).await);

        // Bytes the server has not read (a pipelined request): not a hang-up.
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        bounded(server.readable()).await.unwrap().unwrap();
        assert!(!gone(&hangup, &server).await);
        assert!(hangup.paused.load(Ordering::Relaxed));
        // Read by the server, they resume it.
        let mut buf = [0u8; 64];
        assert_eq!(server.try_read(&mut buf).unwrap(), 16);
        assert!(server.try_read(&mut buf).is_err());
        assert!(!gone(&hangup, &server).await);
        assert!(!hangup.paused.load(Ordering::Relaxed));

        // The end of the stream is a hang-up.
        drop(client);
        bounded(server.readable()).await.unwrap().unwrap();
        assert!(gone(&hangup, &server).await);
    }

    #[tokio::test]
    async fn a_reset_is_a_hang_up() {
        let (client, server) = pair().await;
        // Closed with unread bytes on its side, the client's socket sends a reset.
        server.try_write(b"unread").unwrap();
        bounded(client.readable()).await.unwrap().unwrap();
        drop(client);
        bounded(server.readable()).await.unwrap().unwrap();
        assert!(gone(&Hangup::default(), &server).await);
    }
}
