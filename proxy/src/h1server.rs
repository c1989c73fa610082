//! The HTTP/1.1 server of our own for downstream connections: HTTP/1.1 requests with no
//! body or one framed by `content-length` or `transfer-encoding: chunked`, without an
//! upgrade, `CONNECT` or an `Expect` but `100-continue` — nearly all keep-alive traffic.
//! The first request that is anything else (or a head that does not parse) hands the
//! connection, with every byte read and not yet served, to hyper's server for the rest of
//! its life
//! ([`Ended::Handover`]); hyper answers it as it always did.
//!
//! Why not hyper's server for these too: its dispatcher, the request and response types it
//! builds and its encoder cost ~2.6 us of CPU per request on our bench host over parsing
//! with `httparse` and writing the head straight out (benches/RESULTS.md, "Session of
//! 2026-12-01 20:05"), the largest share of hyper left on an HTTP/1.1 request's path now
//! that the upstream client is our own (`h1client`).
//!
//! One request at a time, as hyper's HTTP/1 server runs them: pipelined requests wait in
//! the read buffer and are answered in order. A request body is read from the connection
//! by the request itself ([`ConnBody`], full duplex with the response); a body not read to
//! its end closes the connection after the response. A client that sent
//! `Expect: 100-continue` gets `100 Continue` when its body is first wanted, as from
//! hyper's server (not when the request is answered without it). The client's half close
//! is seen at the next head (hyper's `half_close(true)`). Between requests the connection closes on
//! a drain or its idle timeout; a request in flight during a drain is answered with
//! `connection: close`. A head begun is bounded by the connection manager's
//! `request_headers_timeout` (closed, nothing said), `request_timeout` and
//! `stream_idle_timeout` (408), counted from its first byte as Envoy's stream timers are.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::body::RequestBody;
use crate::drain;
use crate::error::BodyError;
use crate::h1codec::{self, BodyDecoder, BodyFraming, Decoded, ResponseFraming, Unserved};
use crate::http::{HttpConn, ServedBody};
use crate::lock;

/// Read buffer of a connection.
const READ_BUF: usize = 8 * 1024;

/// How long a connection refused with [`TOO_LARGE`] reads what the client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// What a request head larger than the connection manager's `max_request_headers_kb` gets
/// (Envoy's local reply for it has no body), before the connection is closed.
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What a request whose head did not come whole within `request_timeout` or
/// `stream_idle_timeout` gets, before the connection is closed (Envoy's local reply).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 16\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest timeout\n";

/// Which connection manager timeout ended a request head that did not come whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadTimeout {
    /// `request_headers_timeout`: the connection is closed, nothing answered (Envoy's).
    RequestHeaders,
    /// `request_timeout`: 408.
    Request,
    /// `stream_idle_timeout`: nothing came for that long; 408.
    StreamIdle,
}

impl HeadTimeout {
    fn as_str(self) -> &'static str {
        match self {
            HeadTimeout::RequestHeaders => "request_headers",
            HeadTimeout::Request => "request",
            HeadTimeout::StreamIdle => "stream_idle",
        }
    }
}

/// The first of the timeouts that bound a head whose first byte came at `first` and latest
/// at `last`.
fn head_deadline(
    t: &crate::timeout::HcmTimeouts,
    first: Instant,
    last: Instant,
) -> Option<(Instant, HeadTimeout)> {
    [
        t.request_headers
            .map(|d| (first + d, HeadTimeout::RequestHeaders)),
        t.request.map(|d| (first + d, HeadTimeout::Request)),
        t.stream_idle.map(|d| (last + d, HeadTimeout::StreamIdle)),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(at, _)| *at)
}

/// Sleeps until `at`; forever when there is none (a timer only when there is one).
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Response bytes gathered before they are written while the body has more ready.
const WRITE_AHEAD: usize = 64 * 1024;

/// Data frames at least this large are written from their own buffer, not copied.
const WRITE_DIRECT: usize = 16 * 1024;

/// How [`serve`] left the connection.
pub(crate) enum Ended<I> {
    /// Closed (by the client, a drain, the idle timeout, or an error).
    Closed,
    /// A request this server does not serve: the bytes read and not served, and the
    /// connection, for hyper.
    Handover(Bytes, I),
}

/// Serves the plain HTTP/1.1 requests of a downstream connection until it closes or a
/// request needs hyper.
pub(crate) async fn serve<I>(mut io: I, conn: &Arc<HttpConn>, drain: &drain::Watch) -> Ended<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = BytesMut::new();
    // Made once for the connection, polled only between requests: made per request, each
    // registered a timer and a drain waiter and took them out again (two locks apiece).
    // The idle timer looks at the connection's activity when it fires, so a timer armed
    // long before still closes the connection only after `idle_timeout` without a request.
    let mut drained = std::pin::pin!(drain.signaled());
    let mut idle = std::pin::pin!(crate::http::idle(conn));
    let limit = conn.max_request_headers();
    loop {
        // When this head was first seen partial, and when its latest bytes came.
        let mut begun: Option<(Instant, Instant)> = None;
        let head = loop {
            let before = buf.len();
            let too_large = match h1codec::parse_request_head(&mut buf) {
                Ok(Some(head)) if before - buf.len() <= limit => break head,
                Ok(Some(_)) => true,
                Err(Unserved(why)) => {
                    debug!(peer = %conn.peer(), why, "handing the connection to hyper's server");
                    return Ended::Handover(buf.freeze(), io);
                }
                Ok(None) => buf.len() > limit,
            };
            if too_large {
                debug!(peer = %conn.peer(), limit, "request head too large: 431");
                let _ = io.write_all(TOO_LARGE).await;
                let _ = io.shutdown().await;
                // A lingering close: what the client is still sending is read and dropped
                // for a moment, so that closing on unread bytes (a reset) does not destroy
                // the answer before the client has read it.
                let mut sink = [0u8; 8192];
                let _ = tokio::time::timeout(LINGER, async {
                    while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                return Ended::Closed;
            }
            let between = buf.is_empty();
            if buf.capacity() - buf.len() < READ_BUF / 4 {
                buf.reserve(READ_BUF);
            }
            // A head begun is bounded by the connection manager's timeouts, as Envoy's
            // stream is from its first byte (a head that came whole never gets here).
            if !between && begun.is_none() {
                // The head is not whole: its time counts from now (a head that comes whole
                // in one read, nearly all, never reads the clock).
                let now = Instant::now();
                begun = Some((now, now));
            }
            let deadline = match begun {
                Some((first, last)) if !between => head_deadline(conn.timeouts(), first, last),
                _ => None,
            };
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => r,
                () = &mut drained, if between => return Ended::Closed,
                () = &mut idle, if between => {
                    debug!(peer = %conn.peer(), "closing an idle downstream HTTP/1 connection");
                    return Ended::Closed;
                }
                () = until(deadline.map(|(at, _)| at)) => {
                    let expired = deadline.map_or(HeadTimeout::RequestHeaders, |(_, e)| e);
                    debug!(peer = %conn.peer(), timeout = expired.as_str(), "request head timed out");
                    conn.metrics().head_timeout(expired.as_str());
                    if expired != HeadTimeout::RequestHeaders {
                        let _ = io.write_all(REQUEST_TIMEOUT).await;
                    }
                    let _ = io.shutdown().await;
                    return Ended::Closed;
                }
            };
            match read {
                Ok(0) => return Ended::Closed,
                Ok(_) => {
                    if let Some((first, _)) = begun {
                        begun = Some((first, Instant::now()));
                    }
                }
                Err(e) => {
                    debug!(peer = %conn.peer(), error = %e, "downstream read failed");
                    return Ended::Closed;
                }
            }
        };
        let is_head = head.req.method() == Method::HEAD;
        if head.body == BodyFraming::Empty {
            let resp = conn.handle(head.req.map(|()| RequestBody::Empty)).await;
            let keep_alive = head.keep_alive && !drain.is_signaled();
            if let Err(e) = write_response(&mut io, &mut out, resp, is_head, !keep_alive).await {
                debug!(peer = %conn.peer(), error = %e, "downstream response failed");
                return Ended::Closed;
            }
            if !keep_alive {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
            continue;
        }
        // A body: its reads and the response's writes may overlap (an upstream may answer
        // before the body ends, or echo it as it comes), so the connection is split for
        // the request, and the body gives the read side back at its end.
        let (read, mut write) = tokio::io::split(io);
        let back = Arc::new(Mutex::new(None));
        let wanted = head.expect_continue.then(|| Arc::new(Notify::new()));
        let body = ConnBody {
            read: SyncWrapper::new(Some((read, std::mem::take(&mut buf)))),
            open: true,
            decoder: BodyDecoder::new(head.body),
            back: back.clone(),
            wanted: wanted.clone(),
        };
        let req = head.req.map(|()| RequestBody::Own(Box::pin(body)));
        let handled = conn.handle(req);
        let resp = match wanted {
            None => handled.await,
            Some(wanted) => {
                let mut handled = std::pin::pin!(handled);
                tokio::select! {
                    biased;
                    resp = &mut handled => resp,
                    () = wanted.notified() => {
                        // Before any response byte: the response is written only after
                        // `handled` is done. A failed write fails the response's too.
                        let _ = write.write_all(CONTINUE).await;
                        handled.await
                    }
                }
            }
        };
        let keep_alive = head.keep_alive && !drain.is_signaled();
        // The body is the request's until the response has ended: only then is it known
        // whether it was read to its end.
        let written = write_response(&mut write, &mut out, resp, is_head, !keep_alive).await;
        let returned = lock(&back).take();
        match (written, returned) {
            (Ok(()), Some((read, rest))) if keep_alive => {
                io = read.unsplit(write);
                buf = rest;
            }
            (Ok(()), _) => {
                // Closing, or a body not read to its end: what is left of it cannot be
                // told from the next request.
                let _ = write.shutdown().await;
                return Ended::Closed;
            }
            (Err(e), _) => {
                debug!(peer = %conn.peer(), error = %e, "downstream response failed");
                return Ended::Closed;
            }
        }
    }
}

/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The connection's read side and the bytes read ahead, lent to a request body.
type ReadSide<I> = (ReadHalf<I>, BytesMut);

/// A request body read from the client's connection; at its end the read side goes back
/// to [`serve`] for the next request. Dropped before its end (the upstream answered
/// without reading all of it), the read side is dropped too and the connection closes
/// after the response.
struct ConnBody<I> {
    /// `SyncWrapper`: the body must be `Sync` and is only ever used through `&mut`.
    read: SyncWrapper<Option<ReadSide<I>>>,
    /// `read` is still here (the body has neither ended nor failed).
    open: bool,
    decoder: BodyDecoder,
    back: Arc<Mutex<Option<ReadSide<I>>>>,
    /// The client waits for `100 Continue`: told to [`serve`] at the first poll.
    wanted: Option<Arc<Notify>>,
}

impl<I> ConnBody<I> {
    fn give_back(&mut self) {
        self.open = false;
        if let Some(side) = self.read.get_mut().take() {
            *lock(&self.back) = Some(side);
        }
    }

    fn fail(&mut self, e: impl Into<BodyError>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.open = false;
        *self.read.get_mut() = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl<I: AsyncRead> Body for ConnBody<I> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(wanted) = this.wanted.take() {
            wanted.notify_one();
        }
        loop {
            let Some((read, buf)) = this.read.get_mut().as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Ok(Decoded::End) => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            if buf.capacity() - buf.len() < READ_BUF / 4 {
                buf.reserve(READ_BUF);
            }
            match ready!(tokio_util::io::poll_read_buf(Pin::new(read), cx, buf)) {
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed before the end of its request body",
                    ))
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
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

/// Writes `resp` to `io`: the head and the body as its frames arrive, gathered while more
/// are ready. An error (the body's, or the client's socket) leaves the response cut short:
/// the connection must close.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    resp: Response<ServedBody>,
    head: bool,
    close: bool,
) -> Result<(), BodyError> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let framing = if head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        ResponseFraming::None
    } else if let Some(n) = body.size_hint().exact() {
        ResponseFraming::Length(n)
    } else if let Some(n) = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| h1codec::parse_content_length(v.as_bytes()).ok())
    {
        ResponseFraming::Length(n)
    } else {
        ResponseFraming::Chunked
    };
    out.clear();
    h1codec::encode_response_head(status, &parts.headers, framing, close, out);
    if framing == ResponseFraming::None {
        drop(body);
        return flush(io, out).await;
    }
    let mut left = match framing {
        ResponseFraming::Length(n) => n,
        _ => 0,
    };
    let mut trailers_sent = false;
    loop {
        // A frame, or `None` for "nothing ready now": write what is gathered meanwhile.
        let polled = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let frame = match polled {
            None => {
                flush(io, out).await?;
                continue;
            }
            Some(None) => break,
            Some(Some(frame)) => frame?,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), ResponseFraming::Chunked) = (frame.into_trailers(), framing) {
                    h1codec::encode_last_chunk(Some(&trailers), out);
                    trailers_sent = true;
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        if framing == ResponseFraming::Chunked {
            h1codec::chunk_header(data.len(), out);
        } else {
            left = left
                .checked_sub(data.len() as u64)
                .ok_or_else(|| io::Error::other("response body longer than its content-length"))?;
        }
        if data.len() >= WRITE_DIRECT {
            flush(io, out).await?;
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == ResponseFraming::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_AHEAD {
            flush(io, out).await?;
        }
    }
    if left != 0 {
        return Err(io::Error::other("response body shorter than its content-length").into());
    }
    if framing == ResponseFraming::Chunked && !trailers_sent {
        h1codec::encode_last_chunk(None, out);
    }
    drop(body);
    flush(io, out).await
}

async fn flush<I: AsyncWrite + Unpin>(io: &mut I, out: &mut BytesMut) -> Result<(), BodyError> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
        // A connection keeps at most this much between responses.
        if out.capacity() > WRITE_AHEAD {
            *out = BytesMut::new();
        }
    }
    io.flush().await?;
    Ok(())
}
