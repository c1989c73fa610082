//! Small I/O adapters on the connection path.
//!
//! - [`Rewind`] replays the bytes protocol detection already read, then reads from the
//!   socket. Written by hand: hyper 0.14 had one but it is private in hyper 1.x and
//!   hyper-util does not export one; the adapter is ~40 lines and a crate for it (or
//!   `pin-project` to support `!Unpin` streams, which we never have) is not worth a
//!   dependency.
//! - [`Counted`] adds the bytes read and written to two counters as they happen, so a
//!   long-lived connection shows up in the metrics while it runs, and a connection
//!   that ends in an error is still counted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream with some already-read bytes put back in front of it.
#[derive(Debug)]
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `prefix` is returned by reads before anything from `inner`.
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// The put-back bytes not read yet (all of them right after detection).
    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The underlying stream (for socket options); reads through it skip the prefix.
    pub(crate) fn inner(&self) -> &T {
        &self.inner
    }

    /// The put-back bytes not read yet, and the stream.
    pub(crate) fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that counts the bytes read from and written to it.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    inner: T,
    read: Counter,
    written: Counter,
    /// A second pair counting the same bytes (the destination side of a same-node
    /// connection, whose two ends this proxy reports).
    also: Option<Box<(Counter, Counter)>>,
}

impl<T> Counted<T> {
    /// Bytes read from `inner` go to `read`, bytes written to `written`.
    pub(crate) fn new(inner: T, read: Counter, written: Counter) -> Self {
        Self {
            inner,
            read,
            written,
            also: None,
        }
    }

    /// Counts the same bytes into `read` and `written` too.
    pub(crate) fn also(mut self, read: Counter, written: Counter) -> Self {
        self.also = Some(Box::new((read, written)));
        self
    }

    /// The wrapped stream.
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
            if let Some(also) = &self.also {
                also.0.inc_by(n as u64);
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.written.inc_by(n as u64);
            if let Some(also) = &self.also {
                also.1.inc_by(n as u64);
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.written.inc_by(n as u64);
            if let Some(also) = &self.also {
                also.1.inc_by(n as u64);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_replays_prefix_then_inner() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), server);
        // A tiny buffer forces the prefix to be split across reads.
        let mut small = [0u8; 3];
        r.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"lo world");
    }

    #[tokio::test]
    async fn counted_counts_both_ways() {
        let (mut a, b) = tokio::io::duplex(64);
        let (read, written) = (Counter::default(), Counter::default());
        let mut c = Counted::new(b, read.clone(), written.clone());
        a.write_all(b"12345").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        c.write_all(b"abc").await.unwrap();
        assert_eq!(read.get(), 5);
        assert_eq!(written.get(), 3);
        let (read2, written2) = (Counter::default(), Counter::default());
        let mut c = c.also(read2.clone(), written2.clone());
        a.write_all(b"12").await.unwrap();
        c.read_exact(&mut buf[..2]).await.unwrap();
        c.write_all(b"d").await.unwrap();
        assert_eq!((read.get(), written.get()), (7, 4));
        assert_eq!((read2.get(), written2.get()), (2, 1));
    }
}
