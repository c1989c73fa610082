//! The HTTP/1.1 server of our own for a downstream connection's plain requests: HTTP/1.1,
//! no body, no upgrade, no `CONNECT`, no `Expect` — what most keep-alive traffic is. The
//! first request that is anything else (or a head that does not parse) hands the
//! connection, with every byte read and not yet served, to hyper's server for the rest of
//! its life ([`Ended::Handover`]); hyper answers it as it always did.
//!
//! Why not hyper's server for these too: its dispatcher, the request and response types it
//! builds and its encoder cost ~2.6 us of CPU per request on our bench host over parsing
//! with `httparse` and writing the head straight out (benches/RESULTS.md, "Session of
//! 2026-12-01 20:05"), the largest share of hyper left on an HTTP/1.1 request's path now
//! that the upstream client is our own (`h1client`).
//!
//! One request at a time, as hyper's HTTP/1 server runs them: pipelined requests wait in
//! the read buffer and are answered in order. The client's half close is seen at the next
//! head (hyper's `half_close(true)`). Between requests the connection closes on a drain or
//! its idle timeout; a request in flight during a drain is answered with
//! `connection: close`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::body::RequestBody;
use crate::drain;
use crate::error::{BodyError, ProxyBody};
use crate::h1codec::{self, ResponseFraming, Unserved};
use crate::http::HttpConn;

/// Read buffer of a connection.
const READ_BUF: usize = 8 * 1024;

/// A request head not complete within this many bytes goes to hyper (which answers 431
/// past its own limit).
const MAX_HEAD: usize = 64 * 1024;

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
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = BytesMut::new();
    loop {
        let (req, keep_alive) = loop {
            match h1codec::parse_request_head(&mut buf) {
                Ok(Some(parsed)) => break parsed,
                Err(Unserved(why)) => {
                    debug!(peer = %conn.peer(), why, "handing the connection to hyper's server");
                    return Ended::Handover(buf.freeze(), io);
                }
                Ok(None) if buf.len() >= MAX_HEAD => {
                    return Ended::Handover(buf.freeze(), io);
                }
                Ok(None) => {}
            }
            let between = buf.is_empty();
            if buf.capacity() - buf.len() < READ_BUF / 4 {
                buf.reserve(READ_BUF);
            }
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => r,
                () = drain.signaled(), if between => return Ended::Closed,
                () = crate::http::idle(conn), if between => {
                    debug!(peer = %conn.peer(), "closing an idle downstream HTTP/1 connection");
                    return Ended::Closed;
                }
            };
            match read {
                Ok(0) => return Ended::Closed,
                Ok(_) => {}
                Err(e) => {
                    debug!(peer = %conn.peer(), error = %e, "downstream read failed");
                    return Ended::Closed;
                }
            }
        };
        let head = req.method() == Method::HEAD;
        let resp = conn.clone().handle(req.map(|()| RequestBody::Empty)).await;
        let keep_alive = keep_alive && !drain.is_signaled();
        if let Err(e) = write_response(&mut io, &mut out, resp, head, !keep_alive).await {
            debug!(peer = %conn.peer(), error = %e, "downstream response failed");
            return Ended::Closed;
        }
        if !keep_alive {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Writes `resp` to `io`: the head and the body as its frames arrive, gathered while more
/// are ready. An error (the body's, or the client's socket) leaves the response cut short:
/// the connection must close.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    resp: Response<ProxyBody>,
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
    }
    io.flush().await?;
    Ok(())
}
