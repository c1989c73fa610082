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
    slot: Option<ConnSlot>,
    /// Requests sent on it (`max_requests_per_connection`).
    pub(crate) served: u32,
    /// When it was opened (`max_connection_duration`).
    pub(crate) opened: crate::clock::Coarse,
}

impl OwnConn {
    pub(crate) fn new(io: BoxIo, slot: Option<ConnSlot>) -> Self {
        OwnConn {
            io,
            buf: BytesMut::with_capacity(READ_BUF),
            broken: false,
            slot,
            served: 0,
            opened: crate::clock::Coarse::now(),
        }
    }

    /// The stream and its place under the cluster's `max_connections`, for hyper's client
    /// (a request that may take the connection over). Only between exchanges, when nothing
    /// is left unread.
    pub(crate) fn into_parts(self) -> (BoxIo, Option<ConnSlot>) {
        debug_assert!(self.buf.is_empty());
        (self.io, self.slot)
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
        .and_then(|v| h1codec::parse_content_length(v.as_bytes()).ok());
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
    /// `head` from [`h1codec::encode_request_head`] with `framing`; the body's bytes are
    /// gathered after it.
    pub(crate) fn new(head: BytesMut, body: Option<ProxyBody>, framing: RequestFraming) -> Self {
        let left = match framing {
            RequestFraming::Length(n) => n,
            _ => 0,
        };
        let out = head;
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::channel::{Channel, Sender};
    use http_body_util::{BodyExt as _, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Records the connections given back.
    #[derive(Clone, Default)]
    struct Pool(Arc<Mutex<Vec<OwnConn>>>);

    impl GiveBack for Pool {
        fn give_back(self, conn: OwnConn) {
            self.0.lock().unwrap().push(conn);
        }
    }

    impl Pool {
        fn take(&self) -> Option<OwnConn> {
            self.0.lock().unwrap().pop()
        }
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    /// A connection of the client and the upstream's end of it.
    async fn pair() -> (OwnConn, TcpStream, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (OwnConn::new(Box::new(c.unwrap()), None), s.unwrap().0, addr)
    }

    fn full(b: &'static str) -> ProxyBody {
        Full::new(Bytes::from_static(b.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    }

    fn channel() -> (Sender<Bytes, BodyError>, ProxyBody) {
        let (tx, body) = Channel::<Bytes, BodyError>::new(4);
        (tx, body.boxed())
    }

    fn writer(method: &Method, headers: &HeaderMap, body: ProxyBody) -> RequestWriter {
        let framing = request_framing(method, headers, &body);
        let mut head = BytesMut::new();
        h1codec::encode_request_head(method, "/p", None, headers, framing, &mut head);
        RequestWriter::new(head, Some(body), framing)
    }

    fn host() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "svc".parse().unwrap());
        h
    }

    /// Reads from `s` until `until` has arrived; everything read.
    async fn read_until(s: &mut TcpStream, until: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        while !got.windows(until.len()).any(|w| w == until) {
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        got
    }

    async fn collect(body: OwnBody<Pool>) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
        let c = body.collect().await?;
        let trailers = c.trailers().cloned();
        Ok((c.to_bytes().to_vec(), trailers))
    }

    #[tokio::test]
    async fn a_body_of_known_length_follows_its_head_and_the_connection_comes_back() {
        let (mut conn, mut up, addr) = pair().await;
        let mut h = host();
        h.insert(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        let w = writer(&Method::POST, &h, full("hello"));
        let server = tokio::spawn(async move {
            let got = read_until(&mut up, b"hello").await;
            up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            (got, up)
        });
        let (head, rest) = exchange(&mut conn, w, &Method::POST, addr, PEER)
            .await
            .ok()
            .unwrap();
        assert!(rest.is_none(), "the whole request went out first");
        let pool = Pool::default();
        let body = OwnBody::new(conn, rest, head.body, Some(pool.clone()));
        assert_eq!(collect(body).await.unwrap().0, b"ok");
        let (got, _up) = server.await.unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert!(pool.take().unwrap().is_reusable());
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_goes_chunked_with_its_trailers() {
        let (mut conn, mut up, addr) = pair().await;
        let (mut tx, body) = channel();
        let w = writer(&Method::POST, &host(), body);
        let client = tokio::spawn(async move {
            let r = exchange(&mut conn, w, &Method::POST, addr, PEER).await;
            (r.ok().unwrap(), conn)
        });
        tx.send_data(Bytes::from_static(b"abc")).await.unwrap();
        let got = read_until(&mut up, b"abc\r\n").await;
        assert!(String::from_utf8_lossy(&got)
            .contains("transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"));
        tx.send_data(Bytes::from_static(b"defgh")).await.unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-sum", "8".parse().unwrap());
        tx.send_trailers(t).await.unwrap();
        let got = read_until(&mut up, b"x-sum: 8\r\n\r\n").await;
        assert!(String::from_utf8_lossy(&got).starts_with("5\r\ndefgh\r\n0\r\n"));
        up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        let ((head, rest), conn) = client.await.unwrap();
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert!(rest.is_none());
        let pool = Pool::default();
        drop(OwnBody::new(conn, rest, head.body, Some(pool.clone())));
        assert!(
            pool.take().is_some(),
            "an empty response gives the connection back"
        );
    }

    #[tokio::test]
    async fn request_and_response_bodies_stream_both_ways_at_once() {
        let (mut conn, mut up, addr) = pair().await;
        let (mut tx, body) = channel();
        let w = writer(&Method::POST, &host(), body);
        // The upstream answers at once and echoes each chunk as it comes.
        up.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let (head, rest) = exchange(&mut conn, w, &Method::POST, addr, PEER)
            .await
            .ok()
            .unwrap();
        let rest = rest.expect("the body is still open");
        let pool = Pool::default();
        let mut body = OwnBody::new(conn, Some(rest), head.body, Some(pool.clone()));
        for word in ["one", "two"] {
            tx.send_data(Bytes::from(word)).await.unwrap();
            // Only the response body is polled: it sends the request body on.
            let echoing = async {
                let got = read_until(&mut up, word.as_bytes()).await;
                assert!(String::from_utf8_lossy(&got).ends_with(&format!("{word}\r\n")));
                up.write_all(format!("3\r\n{word}\r\n").as_bytes())
                    .await
                    .unwrap();
            };
            // Bounded: without full duplex this would wait forever.
            let both = async { tokio::join!(body.frame(), echoing) };
            let (frame, ()) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
                .await
                .expect("the request body reached the upstream while the response was read");
            assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), word);
        }
        drop(tx);
        let ending = async {
            read_until(&mut up, b"0\r\n\r\n").await;
            up.write_all(b"0\r\n\r\n").await.unwrap();
        };
        let (end, ()) = tokio::join!(body.frame(), ending);
        assert!(end.is_none());
        assert!(pool.take().is_some());
    }

    #[tokio::test]
    async fn an_answer_before_the_body_ended_closes_the_connection_after_it() {
        let (mut conn, mut up, addr) = pair().await;
        let (tx, body) = channel();
        let mut h = host();
        h.insert(http::header::CONTENT_LENGTH, "1000".parse().unwrap());
        let w = writer(&Method::PUT, &h, body);
        let client = tokio::spawn(async move {
            let r = exchange(&mut conn, w, &Method::PUT, addr, PEER).await;
            (r.ok().unwrap(), conn)
        });
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
            .await
            .unwrap();
        let ((head, rest), conn) = client.await.unwrap();
        assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
        let pool = Pool::default();
        let body = OwnBody::new(conn, rest, head.body, Some(pool.clone()));
        assert_eq!(collect(body).await.unwrap().0, b"big");
        assert!(
            pool.take().is_none(),
            "half a request body went out: not reused"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_failing_or_lying_request_body_is_the_downstream_aborting() {
        let (mut conn, mut up, addr) = pair().await;
        let (mut tx, body) = channel();
        let w = writer(&Method::POST, &host(), body);
        tx.send_data(Bytes::from_static(b"x")).await.unwrap();
        tx.abort("client went away".into());
        let r = exchange(&mut conn, w, &Method::POST, addr, PEER).await;
        assert!(matches!(
            r,
            Err(HeadError::Failed(ProxyError::DownstreamAborted { .. }))
        ));
        drop(up.shutdown().await);

        // Longer than its content-length.
        let (mut conn, _up, addr) = pair().await;
        let mut h = host();
        h.insert(http::header::CONTENT_LENGTH, "2".parse().unwrap());
        let w = writer(&Method::POST, &h, full("three"));
        let r = exchange(&mut conn, w, &Method::POST, addr, PEER).await;
        match r {
            Err(HeadError::Failed(ProxyError::DownstreamAborted { source, .. })) => {
                assert!(source.to_string().contains("longer"), "{source}")
            }
            _ => panic!("a body longer than its content-length must fail"),
        }
        assert!(!conn.is_reusable());
    }

    #[tokio::test]
    async fn a_silent_close_is_told_apart_from_a_broken_response() {
        let (mut conn, up, addr) = pair().await;
        drop(up);
        let w = writer(&Method::GET, &host(), full(""));
        assert!(matches!(
            exchange(&mut conn, w, &Method::GET, addr, PEER).await,
            Err(HeadError::Silent(_))
        ));

        // A 100 Continue, then the close: something was heard.
        let (mut conn, mut up, addr) = pair().await;
        up.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        drop(up);
        let w = writer(&Method::GET, &host(), full(""));
        assert!(matches!(
            exchange(&mut conn, w, &Method::GET, addr, PEER).await,
            Err(HeadError::Failed(ProxyError::UpstreamReset { .. }))
        ));

        // A 100 Continue before the final answer is skipped.
        let (mut conn, mut up, addr) = pair().await;
        up.write_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        let w = writer(&Method::GET, &host(), full(""));
        let (head, _) = exchange(&mut conn, w, &Method::GET, addr, PEER)
            .await
            .ok()
            .unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
    }

    #[test]
    fn framing_follows_the_client() {
        let empty = full("");
        assert_eq!(
            request_framing(&Method::GET, &host(), &empty),
            RequestFraming::None
        );
        assert_eq!(
            request_framing(&Method::POST, &host(), &empty),
            RequestFraming::Length(0)
        );
        assert_eq!(
            request_framing(&Method::POST, &host(), &full("abc")),
            RequestFraming::Length(3)
        );
        let mut h = host();
        h.insert(http::header::CONTENT_LENGTH, "7".parse().unwrap());
        assert_eq!(
            request_framing(&Method::POST, &h, &channel().1),
            RequestFraming::Length(7)
        );
        assert_eq!(
            request_framing(&Method::POST, &host(), &channel().1),
            RequestFraming::Chunked
        );
    }
}
