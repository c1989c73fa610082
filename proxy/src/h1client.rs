//! One HTTP/1.1 exchange of the proxy's own upstream client (`upstream::Pools::own_h1`),
//! on a connection it owns: the request head and body written as the body's frames arrive,
//! the response head read meanwhile (a server may answer before the body is complete), and
//! the response body streamed from the connection, which goes back to its pool at the
//! body's end when the exchange left it clean.
//!
//! Why not hyper's client: it hands each request to a task per connection and back, ~3 us of
//! CPU per request on our bench host, and its writes then wake the upstream once per request
//! instead of once per batch (benches/RESULTS.md, "Session of 2026-12-01 20:05"). Here the
//! exchange runs in the request's own future. The wire format is `h1codec`.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::dial::BoxIo;
use crate::error::{BodyError, ProxyBody, ProxyError};
use crate::h1codec::{self, BodyDecoder, BodyFraming, Decoded, RequestFraming, ResponseHead};
use crate::traffic::ConnSlot;

/// Read buffer of a connection.
const READ_BUF: usize = 8 * 1024;

/// Request bytes gathered ahead of the socket before the body is polled again.
const WRITE_AHEAD: usize = 64 * 1024;

/// An upstream HTTP/1.1 connection of our own client.
pub(crate) struct OwnConn {
    io: BoxIo,
    /// Bytes read and not yet consumed (a response head, body bytes).
    buf: BytesMut,
    /// A write failed: the upstream stopped reading, the connection is not reused.
    broken: bool,
    /// Its place under the cluster's `max_connections`, held while it lives.
    _slot: Option<ConnSlot>,
}

impl OwnConn {
    pub(crate) fn new(io: BoxIo, slot: Option<ConnSlot>) -> Self {
        OwnConn {
            io,
            buf: BytesMut::with_capacity(READ_BUF),
            broken: false,
            _slot: slot,
        }
    }

    /// An idle connection has nothing to read: a close (or stray bytes) makes it unusable.
    /// Polled with a no-op waker, so nothing is registered for later.
    pub(crate) fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut byte);
        !self.broken
            && self.buf.is_empty()
            && Pin::new(&mut self.io)
                .poll_read(&mut cx, &mut rb)
                .is_pending()
    }

    /// Reads more into `buf`; `Ok(0)` at the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_BUF);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// How a request with this head and body goes out: the client's `content-length` when it
/// sent one (hyper's server and the `h2` crate hold the body to it), else the body's exact
/// size, else chunked. An empty body has no framing, except `content-length: 0` for the
/// methods that normally carry one (as hyper and curl send it).
pub(crate) fn request_framing(
    method: &Method,
    headers: &HeaderMap,
    body: &ProxyBody,
) -> RequestFraming {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared {
        return RequestFraming::Length(n);
    }
    if body.is_end_stream() {
        return if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            RequestFraming::Length(0)
        } else {
            RequestFraming::None
        };
    }
    match body.size_hint().exact() {
        Some(n) => RequestFraming::Length(n),
        None => RequestFraming::Chunked,
    }
}

/// The request on its way out: the head, then the body's frames framed as chosen, gathered
/// in `out` so a small request leaves in one write.
pub(crate) struct RequestWriter {
    /// `None` once the body ended (or there was none).
    body: Option<ProxyBody>,
    framing: RequestFraming,
    /// Bytes of a `Length` body still to come.
    left: u64,
    out: BytesMut,
    /// The whole request is in `out` (or written).
    ended: bool,
    flushed: bool,
}

/// Why a request could not be written.
pub(crate) enum WriteError {
    /// The client's body failed, or did not match its declared length.
    Body(BodyError),
    /// The upstream connection failed.
    Io(io::Error),
}

impl RequestWriter {
    /// `head` from [`h1codec::encode_request_head`] with `framing`.
    pub(crate) fn new(head: &[u8], body: Option<ProxyBody>, framing: RequestFraming) -> Self {
        let left = match framing {
            RequestFraming::Length(n) => n,
            _ => 0,
        };
        let mut out = BytesMut::with_capacity(head.len().max(512));
        out.extend_from_slice(head);
        // Nothing to send after the head: no framing, or an empty body of length 0.
        let ended = framing == RequestFraming::None
            || (left == 0
                && framing != RequestFraming::Chunked
                && body.as_ref().is_none_or(Body::is_end_stream));
        RequestWriter {
            body: if ended { None } else { body },
            framing,
            left,
            out,
            ended,
            flushed: false,
        }
    }

    fn data(&mut self, data: &[u8]) -> Result<(), WriteError> {
        match self.framing {
            RequestFraming::Chunked => h1codec::encode_chunk(data, &mut self.out),
            RequestFraming::Length(_) | RequestFraming::None => {
                let n = data.len() as u64;
                if n > self.left {
                    return Err(WriteError::Body(
                        "the request body is longer than its content-length".into(),
                    ));
                }
                self.left -= n;
                self.out.extend_from_slice(data);
            }
        }
        Ok(())
    }

    fn end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), WriteError> {
        match self.framing {
            RequestFraming::Chunked => h1codec::encode_last_chunk(trailers, &mut self.out),
            // Trailers have no place in a body framed by its length: dropped, as hyper does.
            RequestFraming::Length(_) | RequestFraming::None if self.left > 0 => {
                return Err(WriteError::Body(
                    "the request body ended before its content-length".into(),
                ))
            }
            RequestFraming::Length(_) | RequestFraming::None => {}
        }
        self.ended = true;
        self.body = None;
        Ok(())
    }

    /// Moves the body's ready frames to the connection. Ready once the whole request is
    /// written and flushed.
    pub(crate) fn poll_send(
        &mut self,
        io: &mut BoxIo,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            while !self.ended && self.out.len() < WRITE_AHEAD {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => self.end(None)?,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => self.data(&data)?,
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                self.end(Some(&trailers))?;
                            }
                        }
                    },
                }
            }
            if !self.out.is_empty() {
                let n =
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.out)).map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.out.advance(n);
                self.flushed = false;
                continue;
            }
            if !self.flushed {
                // A no-op on TCP; an HBONE tunnel's TLS and HTTP/2 framing need it.
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                self.flushed = true;
            }
            // Not ended: the body's waker is registered (it was polled to `Pending`).
            return if self.ended {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
    }
}

/// Why no response head came.
pub(crate) enum HeadError {
    /// Not a byte of a response came: the connection had closed or closed now (on a reused
    /// connection, the keep-alive race). What the upstream did, for the error.
    Silent(BodyError),
    Failed(ProxyError),
}

/// Writes the request and reads the response head. The writer comes back when the body is
/// still going out: the response body keeps sending it ([`OwnBody`]).
pub(crate) async fn exchange(
    conn: &mut OwnConn,
    writer: RequestWriter,
    method: &Method,
    addr: SocketAddr,
    peer: SocketAddr,
) -> Result<(ResponseHead, Option<RequestWriter>), HeadError> {
    let mut writer = Some(writer);
    let mut write_error: Option<io::Error> = None;
    // Anything at all came back (a 1xx counts).
    let mut heard = false;
    let reset = |source: BodyError| ProxyError::UpstreamReset { addr, source };
    let head = poll_fn(|cx| {
        if let Some(w) = writer.as_mut() {
            match w.poll_send(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => writer = None,
                Poll::Ready(Err(WriteError::Body(source))) => {
                    conn.broken = true;
                    return Poll::Ready(Err(HeadError::Failed(ProxyError::DownstreamAborted {
                        peer,
                        source,
                    })));
                }
                // The upstream may still answer (an early 413, say): keep reading.
                Poll::Ready(Err(WriteError::Io(e))) => {
                    conn.broken = true;
                    writer = None;
                    write_error = Some(e);
                }
                Poll::Pending => {}
            }
        }
        loop {
            match h1codec::parse_response_head(&mut conn.buf, method) {
                Ok(Some(h)) if h.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Poll::Ready(Err(HeadError::Failed(ProxyError::UnexpectedUpgrade {
                        addr,
                    })));
                }
                // 100 Continue, 103 Early Hints: not forwarded (as hyper's client).
                Ok(Some(h)) if h.status.is_informational() => heard = true,
                Ok(Some(h)) => return Poll::Ready(Ok(h)),
                Ok(None) => {
                    let got = conn.buf.len();
                    let failed = |e: BodyError| {
                        if got == 0 && !heard {
                            HeadError::Silent(e)
                        } else {
                            HeadError::Failed(reset(e))
                        }
                    };
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            let e: BodyError = match write_error.take() {
                                Some(e) => e.into(),
                                None if got == 0 => {
                                    "the upstream closed the connection before responding".into()
                                }
                                None => "the upstream closed within the response head".into(),
                            };
                            return Poll::Ready(Err(failed(e)));
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Err(failed(e.into()))),
                    }
                }
                Err(e) => {
                    return Poll::Ready(Err(HeadError::Failed(ProxyError::UpstreamProtocol {
                        addr,
                        source: e.into(),
                    })))
                }
            }
        }
    })
    .await?;
    Ok((head, writer))
}

/// Takes a connection back when a response body ends cleanly.
pub(crate) trait GiveBack: Send + Sync + Unpin + 'static {
    fn give_back(self, conn: OwnConn);
}

/// The connection while a response body reads from it, with the rest of the request body
/// when that is still going out.
struct Live {
    conn: OwnConn,
    writer: Option<RequestWriter>,
}

/// A response body read from a connection of our own client; the connection goes back at
/// the body's end when the response allows it and the whole request went out, and is
/// closed if the body is dropped before.
pub(crate) struct OwnBody<G: GiveBack> {
    /// `None` once the body ended or failed. In a `SyncWrapper`: a body must be `Sync`, a
    /// connection is not, and a body only touches it through `&mut self`.
    live: SyncWrapper<Option<Live>>,
    /// `live` is still `Some` (readable through `&self`).
    open: bool,
    decoder: BodyDecoder,
    until_close: bool,
    /// `None`: the connection is not reused.
    give_back: Option<G>,
}

impl<G: GiveBack> OwnBody<G> {
    pub(crate) fn new(
        conn: OwnConn,
        writer: Option<RequestWriter>,
        framing: BodyFraming,
        give_back: Option<G>,
    ) -> Self {
        OwnBody {
            live: SyncWrapper::new(Some(Live { conn, writer })),
            open: true,
            decoder: BodyDecoder::new(framing),
            until_close: framing == BodyFraming::UntilClose,
            give_back,
        }
    }

    /// Ends the body: the connection goes back if `reuse` and nothing is left over.
    fn finish(&mut self, reuse: bool) {
        self.open = false;
        let live = self.live.get_mut().take();
        let give_back = self.give_back.take();
        if let (true, Some(live), Some(g)) = (reuse, live, give_back) {
            // A request body not sent to its end, a failed write, or bytes after the
            // response (an answer nobody asked for): not reused.
            if live.writer.is_none() && !live.conn.broken && live.conn.buf.is_empty() {
                g.give_back(live.conn);
            }
        }
    }
}

impl<G: GiveBack> Drop for OwnBody<G> {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is empty.
        if self.open && self.decoder.is_done() {
            self.finish(true);
        }
    }
}

impl<G: GiveBack> Body for OwnBody<G> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(live) = this.live.get_mut().as_mut() else {
            return Poll::Ready(None);
        };
        // The rest of the request body, while the response streams (full duplex, as
        // hyper's client).
        if let Some(w) = live.writer.as_mut() {
            match w.poll_send(&mut live.conn.io, cx) {
                Poll::Ready(Ok(())) => live.writer = None,
                Poll::Ready(Err(WriteError::Body(e))) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Err(WriteError::Io(_))) => {
                    // The upstream stopped reading; its response may still be whole.
                    live.writer = None;
                    live.conn.broken = true;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(live) = this.live.get_mut().as_mut() else {
                return Poll::Ready(None);
            };
            let conn = &mut live.conn;
            match this.decoder.decode(&mut conn.buf) {
                Err(e) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Decoded::Data(b)) => {
                    if this.decoder.is_done() {
                        this.finish(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.finish(true);
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.finish(true);
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) if this.until_close => {
                        this.finish(false);
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(0)) => {
                        this.finish(false);
                        return Poll::Ready(Some(Err(
                            "the upstream closed the connection within the response body".into(),
                        )));
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        this.finish(false);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.open || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
