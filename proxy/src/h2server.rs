//! The HTTP/2 server of our own, for the h2c (prior knowledge) connections of apps.
//!
//! Why not the `h2` crate's server (through hyper), which served these connections before:
//! counted per request on the routed path, it cost ~20k instructions more than our
//! HTTP/1.1 server for the same work (RESULTS.md, "h2c requests counted"). Every stream
//! operation there takes the connection's stream-store lock and looks the stream up in a
//! slab, hyper adds a task and a body pipe per stream, and frames wait in linked queues.
//! Here one task owns the connection: the frames are read, the streams' handlers polled
//! (each in its stream's entry, no task each, woken into a ready list) and their responses
//! written by the same code, with the stream table a plain map. HPACK decoding is the `loona-hpack` crate's, encoding ours
//! (`hpack`).
//!
//! What it does, as RFC 9113 asks of a server: the preface and SETTINGS exchange (our
//! SETTINGS unacknowledged for [`SETTINGS_ACK_TIMEOUT`] end the connection), HEADERS
//! with CONTINUATION (one block at a time, bounded), request and response bodies with flow
//! control both ways (a stream's window given back as its body is read, not as it arrives),
//! trailers, RST_STREAM both ways, PING (answered, and sent on a timer with the connection
//! manager's `connection_keepalive`: [`Keepalive`]), GOAWAY (on a drain, the idle timeout, the client's
//! own, and with the error code of a connection error), a cap on concurrent streams
//! (REFUSED_STREAM above it), malformed requests reset with PROTOCOL_ERROR, and the limits
//! a server needs against abuse: a header list size (431), a header block size, control
//! frames the client does not read (the connection closes), and streams the client resets
//! before their responses (the "rapid reset" attack: GOAWAY with ENHANCE_YOUR_CALM).
//! The extended CONNECT protocol (RFC 8441, WebSocket over HTTP/2) when the connection
//! manager allows it (`allow_connect`): `SETTINGS_ENABLE_CONNECT_PROTOCOL` is announced and a
//! CONNECT with `:protocol` (and `:scheme`, `:path`, `:authority`) becomes a request carrying
//! [`ConnectProtocol`]; without the setting `:protocol` is malformed.
//! Not done: server push (a proxy does not push), priorities (ignored, as RFC 9113 allows).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::body::RequestBody;
use crate::error::BodyError;
use crate::lock;
use crate::model::cluster::Http2Keepalive;
use crate::model::listener::Http2Settings;

mod hpack;

/// What a client sends first.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113, section 7).
pub(crate) mod reason {
    pub(crate) const NO_ERROR: u32 = 0x0;
    pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
    pub(crate) const INTERNAL_ERROR: u32 = 0x2;
    pub(crate) const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub(crate) const SETTINGS_TIMEOUT: u32 = 0x4;
    pub(crate) const STREAM_CLOSED: u32 = 0x5;
    pub(crate) const FRAME_SIZE_ERROR: u32 = 0x6;
    pub(crate) const REFUSED_STREAM: u32 = 0x7;
    #[cfg(test)]
    pub(crate) const CANCEL: u32 = 0x8;
    pub(crate) const COMPRESSION_ERROR: u32 = 0x9;
    pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;
}

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// RFC 8441 section 3.
const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// Turns of the connection's loop before it yields to the runtime (see `poll`).
const MAX_TURNS: u32 = 64;

/// The protocol's defaults, before any SETTINGS.
const DEFAULT_WINDOW: i64 = 65_535;
const DEFAULT_MAX_FRAME: usize = 16_384;
const DEFAULT_TABLE_SIZE: usize = 4_096;
const MAX_WINDOW: i64 = (1 << 31) - 1;

/// The limits this server announces and keeps. The stream cap, the windows and the HPACK
/// table come from the connection manager's `http2_protocol_options`
/// ([`Http2Settings`], whose defaults are hyper's server defaults that served these
/// connections before); the rest are Myelin's own bounds.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_concurrent_streams: u32,
    pub(crate) stream_window: u32,
    pub(crate) conn_window: u32,
    /// The HPACK dynamic table the client's encoder may use (`SETTINGS_HEADER_TABLE_SIZE`).
    pub(crate) header_table: u32,
    /// Decoded header list (names + values + 32 per field, RFC 9113 6.5.2); above it the
    /// request is answered 431.
    pub(crate) max_header_list: usize,
    /// Encoded header block across its CONTINUATION frames; above it the connection ends
    /// (a block cannot be skipped without decoding it).
    pub(crate) max_header_block: usize,
    /// Bytes waiting to go out (control frames answered to a client that does not read);
    /// above it the connection ends.
    pub(crate) max_buffered: usize,
    /// Streams the client may reset before their responses, beyond which a connection on
    /// which most streams end that way is closed with ENHANCE_YOUR_CALM.
    pub(crate) premature_resets: u32,
    /// PINGs to the client on a timer (`connection_keepalive`; none without an interval).
    pub(crate) keepalive: Option<Http2Keepalive>,
    /// Extended CONNECT taken (`allow_connect`): `SETTINGS_ENABLE_CONNECT_PROTOCOL` is 1.
    pub(crate) extended_connect: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from(&Http2Settings::default())
    }
}

impl From<&Http2Settings> for Limits {
    fn from(h: &Http2Settings) -> Self {
        Self {
            max_concurrent_streams: h.max_concurrent_streams,
            stream_window: h.initial_stream_window_size,
            conn_window: h.initial_connection_window_size,
            header_table: h.hpack_table_size,
            max_header_list: 16 << 10,
            max_header_block: 64 << 10,
            max_buffered: 1 << 20,
            premature_resets: 100,
            keepalive: h.connection_keepalive,
            extended_connect: h.allow_connect,
        }
    }
}

/// Frames go out once this much is waiting; response bodies are not polled above it.
const WRITE_HIGH: usize = 64 << 10;
/// How much is read at a time.
const READ_CHUNK: usize = 16 << 10;
/// How long a closing connection tries to write its last frames (GOAWAY).
const LINGER: Duration = Duration::from_secs(1);
/// How long the client has to acknowledge our SETTINGS before the connection ends with
/// SETTINGS_TIMEOUT (RFC 9113 6.5.3 leaves "a reasonable amount of time" to us; Envoy and
/// the `h2` crate do not enforce one). Until then the client may, for one, still encode
/// with the default HPACK table we asked it to shrink. A client acknowledges as soon as
/// it reads our SETTINGS, so 10 s is a round trip with a wide margin.
const SETTINGS_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection error: GOAWAY with `code`, then close.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnError {
    pub(crate) code: u32,
    pub(crate) why: &'static str,
}

fn conn_err(code: u32, why: &'static str) -> ConnError {
    ConnError { code, why }
}

/// How the connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The client closed it, or it closed after a GOAWAY with every stream done.
    Closed,
    /// A protocol error: GOAWAY sent with its code.
    Error(ConnError),
    /// Reading or writing failed.
    Io(std::io::Error),
}

/// What the connection's owner tells it: stop taking streams and close when the ones in
/// flight are done (a drain, the idle timeout).
pub(crate) trait Signals {
    /// Ready once the connection should close gracefully.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// Never asks to close.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) struct Never;

#[cfg(any(test, feature = "fuzzing"))]
impl Signals for Never {
    fn poll_close(&mut self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// Serves HTTP/2 on `io` (the client's preface not yet read) with `handle` as the service,
/// until the client closes, a protocol error, or `signals` closes it gracefully.
pub(crate) async fn serve<I, F, B, H, S>(io: I, limits: Limits, handle: H, signals: S) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
    S: Signals,
{
    let mut conn = Connection::new(io, limits, handle, signals);
    let res = poll_fn(|cx| conn.poll(cx)).await;
    let ended = match res {
        Ok(()) => Ended::Closed,
        Err(Failure::Io(e)) => return Ended::Io(e),
        Err(Failure::Conn(e)) => {
            // The caller logs it, with the connection's details.
            conn.goaway(e.code);
            Ended::Error(e)
        }
    };
    // Cancel what is left, then try to get the last frames out.
    conn.abandon();
    let out = std::mem::take(&mut conn.out);
    let _ = tokio::time::timeout(LINGER, async {
        conn.io.write_all(&out).await?;
        conn.io.shutdown().await
    })
    .await;
    ended
}

enum Failure {
    Io(std::io::Error),
    Conn(ConnError),
}

impl From<ConnError> for Failure {
    fn from(e: ConnError) -> Self {
        Failure::Conn(e)
    }
}

/// What a stream's handler and its request body share with the connection. It is the
/// handler's waker too: waking it puts the stream on the connection's ready list.
struct Shared {
    id: u32,
    /// On the ready list (or being polled for the first time): a wake adds nothing.
    ready: AtomicBool,
    /// The request body, when the request has one.
    recv: Mutex<RecvBuf>,
    conn: Arc<ConnShared>,
}

impl std::task::Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            lock(&self.conn.ready).push(self.id);
            self.conn.waker.wake();
        }
    }
}

#[derive(Default)]
struct RecvBuf {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    trailers: Option<HeaderMap>,
    /// The client ended its side (END_STREAM).
    ended: bool,
    /// The client reset the stream, or the connection went away, before the end.
    broken: Option<&'static str>,
    /// The body's reader, waiting for data.
    reader: Option<Waker>,
    /// Read (or dropped unread) and not yet given back to the client.
    released: usize,
    /// The body was dropped: what comes for it is released at once.
    dropped: bool,
    /// Queued in `ConnShared::released`.
    queued: bool,
}

/// What the streams hand the connection: whose windows to give back, whose handlers to
/// poll.
#[derive(Default)]
struct ConnShared {
    waker: AtomicWaker,
    released: Mutex<Vec<u32>>,
    /// Streams whose handlers were woken.
    ready: Mutex<Vec<u32>>,
}

impl Shared {
    fn release(&self, recv: &mut RecvBuf, n: usize) {
        recv.released += n;
        if !recv.queued {
            recv.queued = true;
            lock(&self.conn.released).push(self.id);
            self.conn.waker.wake();
        }
    }
}

/// A request body read from the connection's DATA frames.
struct RecvBody {
    shared: Arc<Shared>,
    /// From `content-length`.
    len: Option<u64>,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let shared = &self.shared;
        let mut recv = lock(&shared.recv);
        if let Some(chunk) = recv.chunks.pop_front() {
            recv.buffered -= chunk.len();
            shared.release(&mut recv, chunk.len());
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(t) = recv.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if recv.ended {
            return Poll::Ready(None);
        }
        if let Some(why) = recv.broken {
            return Poll::Ready(Some(Err(why.into())));
        }
        match &recv.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => recv.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let recv = lock(&self.shared.recv);
        recv.ended && recv.chunks.is_empty() && recv.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut recv = lock(&shared.recv);
        recv.dropped = true;
        let unread = recv.buffered;
        recv.chunks.clear();
        recv.buffered = 0;
        if unread > 0 {
            shared.release(&mut recv, unread);
        }
    }
}

/// A stream in the table.
struct Stream<B, F> {
    shared: Arc<Shared>,
    /// Its handler until it answers; dropped with the stream (a reset stops it).
    handler: Option<Pin<Box<F>>>,
    /// `shared` as the handler's waker.
    waker: Waker,
    /// The client may still send DATA or trailers.
    recv_open: bool,
    /// The request has a body being read (`RecvBody`); else its DATA is refused.
    has_body: bool,
    /// A HEAD request: its response has no body, nor a length worked out here.
    head: bool,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Read and not yet given back on this stream.
    unreleased: usize,
    /// Left of `content-length`.
    remaining: Option<u64>,
    /// What we may still send on this stream.
    send_window: i64,
    send: Reply<B>,
}

enum Reply<B> {
    /// The handler has not answered yet.
    Waiting,
    /// Headers sent; the body goes out as the windows allow.
    Body {
        body: B,
        /// A chunk the windows did not let out whole.
        pending: Option<Bytes>,
        /// Trailers waiting for `pending` to go.
        trailers: Option<HeaderMap>,
        /// The body ended (its end goes out with `pending`'s last byte).
        ended: bool,
    },
    Done,
}

/// The last few streams the client closed, by RST_STREAM or by ending its side once the
/// response had ended: DATA or HEADERS on one of them is a connection error STREAM_CLOSED
/// (RFC 9113 5.1, "closed"). Streams we reset are not kept, since what the client sent
/// before it saw our RST_STREAM must be ignored (5.1); nor are older ones, whose frames are
/// ignored too (the error is a MAY).
#[derive(Default)]
struct ClosedByClient {
    ids: [u32; 8],
    next: usize,
}

impl ClosedByClient {
    fn push(&mut self, id: u32) {
        self.ids[self.next] = id;
        self.next = (self.next + 1) % self.ids.len();
    }

    fn contains(&self, id: u32) -> bool {
        id != 0 && self.ids.contains(&id)
    }
}

struct Connection<I, F, B, H, S> {
    io: I,
    limits: Limits,
    handle: H,
    signals: S,
    read: BytesMut,
    /// The preface has been read.
    preface: bool,
    read_closed: bool,
    out: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    encoder: hpack::Encoder,
    /// A header block whose CONTINUATION frames are still coming: stream, END_STREAM, block.
    continuation: Option<(u32, bool, BytesMut)>,
    streams: HashMap<u32, Stream<B, F>, foldhash::fast::RandomState>,
    /// New streams, whose handlers have not been polled yet.
    fresh: Vec<u32>,
    shared: Arc<ConnShared>,
    last: Last,
    last_stream: u32,
    /// The last streams the client closed (see `ClosedByClient`).
    closed_by_client: ClosedByClient,
    /// The header block being read came in a HEADERS frame whose priority names its own
    /// stream (set by each HEADERS frame).
    depends_on_itself: bool,
    /// The streams we take (not counting those the client opened and reset).
    opened: u64,
    premature_resets: u32,
    /// GOAWAY sent: no new streams, close when the ones in flight are done.
    goaway: bool,
    /// The client sent GOAWAY.
    peer_goaway: bool,
    /// The client acknowledged our SETTINGS.
    settings_acked: bool,
    /// Until it does: when the connection ends (`SETTINGS_ACK_TIMEOUT`).
    settings_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    peer_max_frame: usize,
    peer_initial_window: i64,
    send_window: i64,
    recv_window: i64,
    /// Read and not yet given back on the connection.
    unreleased: usize,
    /// The keepalive PINGs' timer and state, when the connection manager asks for them.
    keepalive: Option<Keepalive>,
    /// Reused by `give_back` and `poll_bodies`.
    scratch_ids: Vec<u32>,
    scratch_ready: Vec<u32>,
    scratch_finished: Vec<(u32, Option<u32>)>,
}

impl<I, F, B, H, S> Connection<I, F, B, H, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
    S: Signals,
{
    fn new(io: I, limits: Limits, handle: H, signals: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // Until the client acknowledges our SETTINGS it may use the default table; a smaller
        // one applies from the acknowledgement (`on_settings`).
        decoder.set_max_allowed_table_size(DEFAULT_TABLE_SIZE.max(limits.header_table as usize));
        let mut conn = Self {
            io,
            handle,
            signals,
            read: BytesMut::with_capacity(READ_CHUNK),
            preface: false,
            read_closed: false,
            out: BytesMut::with_capacity(READ_CHUNK),
            decoder,
            encoder: hpack::Encoder::new(DEFAULT_TABLE_SIZE),
            continuation: None,
            streams: HashMap::default(),
            fresh: Vec::new(),
            shared: Arc::new(ConnShared::default()),
            last: Last::default(),
            last_stream: 0,
            closed_by_client: ClosedByClient::default(),
            depends_on_itself: false,
            opened: 0,
            premature_resets: 0,
            goaway: false,
            peer_goaway: false,
            peer_max_frame: DEFAULT_MAX_FRAME,
            settings_acked: false,
            settings_deadline: Some(Box::pin(tokio::time::sleep(SETTINGS_ACK_TIMEOUT))),
            peer_initial_window: DEFAULT_WINDOW,
            send_window: DEFAULT_WINDOW,
            recv_window: DEFAULT_WINDOW,
            unreleased: 0,
            keepalive: limits.keepalive.and_then(Keepalive::new),
            scratch_ids: Vec::new(),
            scratch_ready: Vec::new(),
            scratch_finished: Vec::new(),
            limits,
        };
        // Our SETTINGS, and the connection window raised to ours.
        let settings = [
            (
                SETTINGS_MAX_CONCURRENT_STREAMS,
                conn.limits.max_concurrent_streams,
            ),
            (SETTINGS_INITIAL_WINDOW_SIZE, conn.limits.stream_window),
            (
                SETTINGS_MAX_HEADER_LIST_SIZE,
                conn.limits.max_header_list as u32,
            ),
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_HEADER_TABLE_SIZE, conn.limits.header_table),
        ];
        // The table size only when it is not the protocol's default, extended CONNECT only
        // when taken.
        let table = conn.limits.header_table as usize != DEFAULT_TABLE_SIZE;
        let connect = conn.limits.extended_connect;
        let n = settings.len() - usize::from(!table);
        head(
            &mut conn.out,
            (n + usize::from(connect)) * 6,
            SETTINGS,
            0,
            0,
        );
        for (id, value) in settings.into_iter().take(n) {
            conn.out.put_u16(id);
            conn.out.put_u32(value);
        }
        if connect {
            conn.out.put_u16(SETTINGS_ENABLE_CONNECT_PROTOCOL);
            conn.out.put_u32(1);
        }
        let raise = i64::from(conn.limits.conn_window) - DEFAULT_WINDOW;
        if raise > 0 {
            window_update(&mut conn.out, 0, raise as u32);
            conn.recv_window += raise;
        }
        conn
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        self.shared.waker.register(cx.waker());
        // Once per wake-up, not per turn of the loop: polled pending, the signals wake the
        // task when they fire (a drain's watch and the idle timer cost ~2k instructions
        // per request when polled every turn).
        if !self.goaway && self.signals.poll_close(cx).is_ready() {
            self.goaway(reason::NO_ERROR);
        }
        if let Some(k) = &mut self.keepalive {
            k.poll(cx, &mut self.out)?;
        }
        if let Some(deadline) = &mut self.settings_deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(conn_err(
                    reason::SETTINGS_TIMEOUT,
                    "no SETTINGS ACK from the client in time",
                )
                .into()));
            }
        }
        // Turns of the loop in one poll: a handler that wakes itself while polled (not
        // through tokio, which defers such wakes) must not keep this task from yielding.
        let mut turns = 0u32;
        loop {
            turns += 1;
            if turns > MAX_TURNS {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut progress = false;
            progress |= self.poll_read(cx)?;
            progress |= self.poll_handlers();
            progress |= self.give_back();
            progress |= self.poll_bodies(cx)?;
            progress |= self.poll_write(cx)?;
            if self.read_closed && self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if (self.goaway || self.peer_goaway) && self.streams.is_empty() && self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Reads and handles frames while there are any.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, Failure> {
        let mut progress = false;
        loop {
            while self.parse_one()? {
                progress = true;
            }
            if self.read_closed || self.out.len() > self.limits.max_buffered {
                if self.out.len() > self.limits.max_buffered {
                    // Answers pile up unread (PING, SETTINGS, resets): a flood.
                    return Err(
                        conn_err(reason::ENHANCE_YOUR_CALM, "too much output unread").into(),
                    );
                }
                return Ok(progress);
            }
            if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
                self.read.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
                Poll::Pending => return Ok(progress),
                Poll::Ready(Err(e)) => return Err(Failure::Io(e)),
                Poll::Ready(Ok(n)) => {
                    if let Some(k) = &mut self.keepalive {
                        k.heard();
                    }
                    if n == 0 {
                        self.read_closed = true;
                        // Nothing more will come for the streams in flight.
                        self.abandon();
                        return Ok(true);
                    }
                    progress = true;
                }
            }
        }
    }

    /// Handles one whole frame from the read buffer, if there is one.
    fn parse_one(&mut self) -> Result<bool, ConnError> {
        if !self.preface {
            if self.read.len() < PREFACE.len() {
                if !PREFACE.starts_with(&self.read) {
                    return Err(conn_err(reason::PROTOCOL_ERROR, "not the HTTP/2 preface"));
                }
                return Ok(false);
            }
            if &self.read[..PREFACE.len()] != PREFACE {
                return Err(conn_err(reason::PROTOCOL_ERROR, "not the HTTP/2 preface"));
            }
            self.read.advance(PREFACE.len());
            self.preface = true;
        }
        if self.read.len() < 9 {
            return Ok(false);
        }
        let len = usize::from(self.read[0]) << 16
            | usize::from(self.read[1]) << 8
            | usize::from(self.read[2]);
        if len > DEFAULT_MAX_FRAME {
            // We never announce a larger SETTINGS_MAX_FRAME_SIZE.
            return Err(conn_err(
                reason::FRAME_SIZE_ERROR,
                "frame larger than 16 KiB",
            ));
        }
        let kind = self.read[3];
        let flags = self.read[4];
        let id = u32::from_be_bytes([self.read[5], self.read[6], self.read[7], self.read[8]])
            & 0x7fff_ffff;
        // What the frame's head alone makes an error is one before its payload is in: a
        // length wrong for the type (RFC 9113 4.2) ends the connection rather than leaving
        // it waiting for bytes that may never come.
        self.check_head(kind, flags, id, len)?;
        if self.read.len() < 9 + len {
            if self.read.capacity() < 9 + len {
                self.read.reserve(9 + len - self.read.len());
            }
            return Ok(false);
        }
        self.read.advance(9);
        let payload = self.read.split_to(len);
        match kind {
            DATA => self.on_data(id, flags, payload)?,
            HEADERS => self.on_headers(id, flags, payload)?,
            PRIORITY => {
                if len != 5 {
                    self.reset(id, reason::FRAME_SIZE_ERROR);
                } else if u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff
                    == id
                {
                    // RFC 9113 5.3.1 (the deprecated scheme's one rule kept): a stream
                    // cannot depend on itself, a stream error PROTOCOL_ERROR.
                    self.reset(id, reason::PROTOCOL_ERROR);
                }
            }
            RST_STREAM => self.on_rst(id)?,
            SETTINGS => self.on_settings(flags, &payload)?,
            PING => {
                if flags & ACK == 0 {
                    head(&mut self.out, 8, PING, ACK, 0);
                    self.out.put_slice(&payload);
                } else if let Some(k) = &mut self.keepalive {
                    k.acked(&payload);
                }
            }
            GOAWAY => {
                // We open no streams: nothing of ours to retry. Finish those in flight.
                self.peer_goaway = true;
            }
            WINDOW_UPDATE => self.on_window_update(id, &payload)?,
            CONTINUATION => self.on_continuation(id, flags, payload)?,
            // Unknown types are ignored (RFC 9113 4.1); PUSH_PROMISE never gets here.
            _ => {}
        }
        Ok(true)
    }

    /// The connection errors a frame's head shows: its stream and length wrong for its
    /// type, or another frame where a header block's CONTINUATION must come (RFC 9113
    /// 6.10). Checked again until the payload is in.
    fn check_head(&self, kind: u8, flags: u8, id: u32, len: usize) -> Result<(), ConnError> {
        if let Some((cid, _, _)) = &self.continuation {
            if kind != CONTINUATION || id != *cid {
                return Err(conn_err(reason::PROTOCOL_ERROR, "expected CONTINUATION"));
            }
        }
        let (on_stream_0, size_ok) = match kind {
            PRIORITY if id == 0 => {
                return Err(conn_err(reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
            }
            RST_STREAM if id == 0 => {
                return Err(conn_err(reason::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
            }
            RST_STREAM => (false, len == 4),
            SETTINGS if flags & ACK != 0 => (true, len == 0),
            SETTINGS => (true, len.is_multiple_of(6)),
            PUSH_PROMISE => {
                return Err(conn_err(
                    reason::PROTOCOL_ERROR,
                    "PUSH_PROMISE from a client",
                ))
            }
            PING => (true, len == 8),
            GOAWAY => (true, len >= 8),
            WINDOW_UPDATE => (false, len == 4),
            _ => return Ok(()),
        };
        if on_stream_0 && id != 0 {
            return Err(conn_err(
                reason::PROTOCOL_ERROR,
                "a connection frame on a stream",
            ));
        }
        if !size_ok {
            return Err(conn_err(
                reason::FRAME_SIZE_ERROR,
                "a frame length wrong for its type",
            ));
        }
        Ok(())
    }

    fn on_settings(&mut self, flags: u8, payload: &[u8]) -> Result<(), ConnError> {
        if flags & ACK != 0 {
            // We send SETTINGS once: from its acknowledgement the client's encoder keeps to
            // our table size (and starts its next block by saying so, RFC 7541 4.2). Ours
            // shrinks now, so a client that does not is caught by a failed decode.
            if !self.settings_acked {
                self.settings_acked = true;
                self.settings_deadline = None;
                let table = self.limits.header_table as usize;
                if table < DEFAULT_TABLE_SIZE {
                    self.decoder.set_max_allowed_table_size(table);
                    self.decoder.set_max_table_size(table);
                }
            }
            return Ok(());
        }
        for s in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match u16::from_be_bytes([s[0], s[1]]) {
                SETTINGS_HEADER_TABLE_SIZE => {
                    // Our encoder's table: at most the default, and announced in the next block.
                    self.encoder.set_max_table_size(value as usize);
                }
                SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(conn_err(reason::PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1"));
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(conn_err(
                            reason::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > MAX_WINDOW {
                            return Err(conn_err(
                                reason::FLOW_CONTROL_ERROR,
                                "a stream window above 2^31-1",
                            ));
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(conn_err(
                            reason::PROTOCOL_ERROR,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                // Advisory, or about streams we would open: nothing to do.
                _ => {}
            }
        }
        head(&mut self.out, 0, SETTINGS, ACK, 0);
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if id == 0 {
            if inc == 0 {
                return Err(conn_err(reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            self.send_window += inc;
            if self.send_window > MAX_WINDOW {
                return Err(conn_err(
                    reason::FLOW_CONTROL_ERROR,
                    "connection window above 2^31-1",
                ));
            }
            return Ok(());
        }
        if id > self.last_stream {
            if id % 2 == 1 {
                return Err(conn_err(
                    reason::PROTOCOL_ERROR,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if inc == 0 {
            self.reset(id, reason::PROTOCOL_ERROR);
            return Ok(());
        }
        s.send_window += inc;
        if s.send_window > MAX_WINDOW {
            self.reset(id, reason::FLOW_CONTROL_ERROR);
        }
        Ok(())
    }

    fn on_rst(&mut self, id: u32) -> Result<(), ConnError> {
        if id > self.last_stream {
            return Err(conn_err(
                reason::PROTOCOL_ERROR,
                "RST_STREAM on an idle stream",
            ));
        }
        if let Some(s) = self.streams.remove(&id) {
            if matches!(s.send, Reply::Waiting) {
                self.premature_resets += 1;
                let total = self.opened;
                if self.premature_resets > self.limits.premature_resets
                    && u64::from(self.premature_resets) * 2 > total
                {
                    return Err(conn_err(
                        reason::ENHANCE_YOUR_CALM,
                        "too many streams reset before their responses",
                    ));
                }
            }
            self.closed_by_client.push(id);
            self.close_stream(s, "the client reset the stream");
        }
        Ok(())
    }

    fn on_data(&mut self, id: u32, flags: u8, mut payload: BytesMut) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_err(reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let flow = payload.len();
        // The whole frame counts against the windows, padding too.
        if flow as i64 > self.recv_window {
            return Err(conn_err(
                reason::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        self.recv_window -= flow as i64;
        strip_padding(flags, &mut payload, false)?;
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_stream {
                return Err(conn_err(reason::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            if self.closed_by_client.contains(id) {
                return Err(conn_err(reason::STREAM_CLOSED, "DATA on a closed stream"));
            }
            // A stream reset or long closed: the data is dropped, its window given back.
            self.unreleased += flow;
            return Ok(());
        };
        if !s.recv_open {
            self.unreleased += flow;
            self.reset(id, reason::STREAM_CLOSED);
            return Ok(());
        }
        if flow as i64 > s.recv_window {
            self.unreleased += flow;
            self.reset(id, reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        s.recv_window -= flow as i64;
        let data = payload.len();
        if let Some(rem) = &mut s.remaining {
            if data as u64 > *rem || (flags & END_STREAM != 0 && data as u64 != *rem) {
                self.unreleased += flow;
                self.reset(id, reason::PROTOCOL_ERROR);
                return Ok(());
            }
            *rem -= data as u64;
        }
        let end = flags & END_STREAM != 0;
        if end {
            s.recv_open = false;
        }
        // Padding is given back at once; the data as the body reads it.
        let padding = flow - data;
        self.unreleased += padding;
        s.unreleased += padding;
        if s.has_body {
            let mut recv = lock(&s.shared.recv);
            if recv.dropped {
                drop(recv);
                self.unreleased += data;
            } else {
                if data > 0 {
                    recv.buffered += data;
                    recv.chunks.push_back(payload.freeze());
                }
                recv.ended |= end;
                if let Some(w) = recv.reader.take() {
                    w.wake();
                }
            }
        } else {
            self.unreleased += data;
        }
        if end {
            self.maybe_finish(id);
        }
        Ok(())
    }

    fn on_headers(&mut self, id: u32, flags: u8, mut payload: BytesMut) -> Result<(), ConnError> {
        if id == 0 || id.is_multiple_of(2) {
            return Err(conn_err(
                reason::PROTOCOL_ERROR,
                "HEADERS on stream 0 or an even stream",
            ));
        }
        let dependency = strip_padding(flags, &mut payload, flags & PRIORITY_FLAG != 0)?;
        self.depends_on_itself = dependency == Some(id);
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS == 0 {
            if payload.len() > self.limits.max_header_block {
                return Err(conn_err(
                    reason::ENHANCE_YOUR_CALM,
                    "header block too large",
                ));
            }
            self.continuation = Some((id, end_stream, payload));
            return Ok(());
        }
        self.on_header_block(id, end_stream, &payload)
    }

    fn on_continuation(&mut self, id: u32, flags: u8, payload: BytesMut) -> Result<(), ConnError> {
        let Some((cid, end_stream, mut block)) = self.continuation.take() else {
            return Err(conn_err(
                reason::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            ));
        };
        debug_assert_eq!(cid, id);
        if block.len() + payload.len() > self.limits.max_header_block {
            return Err(conn_err(
                reason::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        block.extend_from_slice(&payload);
        if flags & END_HEADERS == 0 {
            self.continuation = Some((cid, end_stream, block));
            return Ok(());
        }
        self.on_header_block(id, end_stream, &block)
    }

    /// A whole header block: a new request, or a request's trailers.
    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnError> {
        let decoded = decode_block(
            &mut self.decoder,
            block,
            self.limits.max_header_list,
            &mut self.last,
        )?;
        if std::mem::take(&mut self.depends_on_itself) {
            // RFC 9113 5.3.1 (the deprecated scheme's one rule kept): a stream cannot depend
            // on itself, a stream error PROTOCOL_ERROR.
            self.last_stream = self.last_stream.max(id);
            self.reset(id, reason::PROTOCOL_ERROR);
            return Ok(());
        }
        if id <= self.last_stream {
            // Trailers, or a stream already gone.
            let Some(s) = self.streams.get_mut(&id) else {
                if self.closed_by_client.contains(id) {
                    return Err(conn_err(
                        reason::STREAM_CLOSED,
                        "HEADERS on a closed stream",
                    ));
                }
                if decoded.pseudo {
                    // A request on a stream below the last one opened (RFC 9113 5.1.1):
                    // stream identifiers only grow.
                    return Err(conn_err(
                        reason::PROTOCOL_ERROR,
                        "a new stream below the last one",
                    ));
                }
                // Trailers for a stream we reset (sent before the client saw it), or one
                // closed long ago: ignored.
                return Ok(());
            };
            if !s.recv_open {
                self.reset(id, reason::STREAM_CLOSED);
                return Ok(());
            }
            let trailers = match decoded {
                d if end_stream && d.is_trailers() => d.headers,
                _ => {
                    // Trailers end the stream and carry no pseudo-headers.
                    self.reset(id, reason::PROTOCOL_ERROR);
                    return Ok(());
                }
            };
            if s.remaining.is_some_and(|r| r != 0) {
                self.reset(id, reason::PROTOCOL_ERROR);
                return Ok(());
            }
            s.recv_open = false;
            if s.has_body {
                let mut recv = lock(&s.shared.recv);
                if !recv.dropped {
                    recv.trailers = Some(trailers);
                    recv.ended = true;
                    if let Some(w) = recv.reader.take() {
                        w.wake();
                    }
                }
            }
            self.maybe_finish(id);
            return Ok(());
        }
        self.last_stream = id;
        if self.goaway || self.peer_goaway {
            // Opened after our GOAWAY: ignored (the client knows it was not processed).
            return Ok(());
        }
        if self.streams.len() >= self.limits.max_concurrent_streams as usize {
            self.reset(id, reason::REFUSED_STREAM);
            return Ok(());
        }
        if decoded.too_large {
            self.local_response(id, 431);
            return Ok(());
        }
        let (req, len) = match decoded.into_request(self.limits.extended_connect) {
            Ok(r) => r,
            Err(why) => {
                debug!(stream = id, why, "malformed HTTP/2 request");
                self.reset(id, reason::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        if end_stream && len.is_some_and(|n| n != 0) {
            self.reset(id, reason::PROTOCOL_ERROR);
            return Ok(());
        }
        let shared = Arc::new(Shared {
            id,
            ready: AtomicBool::new(true),
            recv: Mutex::new(RecvBuf::default()),
            conn: self.shared.clone(),
        });
        let body = if end_stream {
            RequestBody::Empty
        } else {
            RequestBody::Own(Box::pin(RecvBody {
                shared: shared.clone(),
                len,
            }))
        };
        let is_head = req.method() == Method::HEAD;
        // The box is allocated before the handler's future is made, so that the future is
        // written straight into it: `Box::pin(f())` makes it on the stack and then copies all
        // of its ~5 KB (its largest state, not the few hundred bytes set at its start) into
        // the box, on every request.
        let handler = Box::into_pin(Box::write(
            Box::new_uninit(),
            (self.handle)(req.map(|()| body)),
        ));
        self.fresh.push(id);
        self.opened += 1;
        self.streams.insert(
            id,
            Stream {
                waker: Waker::from(shared.clone()),
                shared,
                handler: Some(handler),
                recv_open: !end_stream,
                has_body: !end_stream,
                head: is_head,
                recv_window: i64::from(self.limits.stream_window),
                unreleased: 0,
                remaining: len,
                send_window: self.peer_initial_window,
                send: Reply::Waiting,
            },
        );
        Ok(())
    }

    /// Polls the handlers; a response starts out at once.
    fn poll_handlers(&mut self) -> bool {
        // Swapped with a kept vector, as in `give_back`.
        let mut ids = std::mem::take(&mut self.scratch_ready);
        std::mem::swap(&mut *lock(&self.shared.ready), &mut ids);
        ids.append(&mut self.fresh);
        let progress = !ids.is_empty();
        for &id in &ids {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let Some(handler) = s.handler.as_mut() else {
                continue;
            };
            // Cleared before the poll: a wake during it puts the stream back on the list.
            s.shared.ready.store(false, Ordering::Release);
            let Poll::Ready(resp) = handler.as_mut().poll(&mut Context::from_waker(&s.waker))
            else {
                continue;
            };
            s.handler = None;
            let (parts, body) = resp.into_parts();
            let ended = body.is_end_stream();
            // A body of known size gets its `content-length` (as hyper's server gave it;
            // the HTTP/1.1 upstream's is taken out as framing).
            let status = parts.status.as_u16();
            let length = (!self.streams[&id].head
                && status >= 200
                && status != 204
                && status != 304
                && !parts.headers.contains_key(header::CONTENT_LENGTH))
            .then(|| body.size_hint().exact())
            .flatten();
            self.encode_headers(id, Some(parts.status), &parts.headers, length, ended);
            let s = self.streams.get_mut(&id).expect("looked up above");
            if ended {
                s.send = Reply::Done;
                self.maybe_finish(id);
            } else {
                s.send = Reply::Body {
                    body,
                    pending: None,
                    trailers: None,
                    ended: false,
                };
            }
        }
        ids.clear();
        self.scratch_ready = ids;
        progress
    }

    /// Sends WINDOW_UPDATEs for what the request bodies have read.
    fn give_back(&mut self) -> bool {
        // Swapped with a kept vector: taking it would leave the shared one without capacity,
        // and the next body read would allocate again.
        let mut ids = std::mem::take(&mut self.scratch_ids);
        std::mem::swap(&mut *lock(&self.shared.released), &mut ids);
        for id in &ids {
            let Some(s) = self.streams.get_mut(id) else {
                continue;
            };
            let n = {
                let mut recv = lock(&s.shared.recv);
                recv.queued = false;
                std::mem::take(&mut recv.released)
            };
            self.unreleased += n;
            s.unreleased += n;
            if s.recv_open && s.unreleased >= self.limits.stream_window as usize / 2 {
                let inc = std::mem::take(&mut s.unreleased);
                s.recv_window += inc as i64;
                window_update(&mut self.out, *id, inc as u32);
            }
        }
        if self.unreleased >= self.limits.conn_window as usize / 2 {
            let inc = std::mem::take(&mut self.unreleased);
            self.recv_window += inc as i64;
            window_update(&mut self.out, 0, inc as u32);
        }
        let progress = !ids.is_empty();
        ids.clear();
        self.scratch_ids = ids;
        progress
    }

    /// Moves response bodies out as far as the windows and the output buffer allow.
    fn poll_bodies(&mut self, cx: &mut Context<'_>) -> Result<bool, Failure> {
        let mut progress = false;
        // Kept between calls: a vector made here allocated once per response that ended.
        let mut finished = std::mem::take(&mut self.scratch_finished);
        for (&id, s) in self.streams.iter_mut() {
            let Reply::Body {
                body,
                pending,
                trailers,
                ended,
            } = &mut s.send
            else {
                continue;
            };
            loop {
                if self.out.len() >= WRITE_HIGH {
                    break;
                }
                if let Some(chunk) = pending {
                    let room = s
                        .send_window
                        .min(self.send_window)
                        .min(self.peer_max_frame as i64);
                    if room <= 0 {
                        break;
                    }
                    let n = (room as usize).min(chunk.len());
                    let part = chunk.split_to(n);
                    let last = chunk.is_empty();
                    let end = last && *ended && trailers.is_none();
                    head(&mut self.out, n, DATA, if end { END_STREAM } else { 0 }, id);
                    self.out.put_slice(&part);
                    s.send_window -= n as i64;
                    self.send_window -= n as i64;
                    progress = true;
                    if last {
                        *pending = None;
                        if end {
                            finished.push((id, None));
                            break;
                        }
                    }
                    continue;
                }
                if let Some(t) = trailers.take() {
                    encode_block(
                        &mut self.encoder,
                        &mut self.out,
                        self.peer_max_frame,
                        id,
                        None,
                        &t,
                        None,
                        true,
                    );
                    finished.push((id, None));
                    progress = true;
                    break;
                }
                if *ended {
                    head(&mut self.out, 0, DATA, END_STREAM, id);
                    finished.push((id, None));
                    progress = true;
                    break;
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        *ended = true;
                        progress = true;
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        progress = true;
                        match frame.into_data() {
                            Ok(data) => {
                                *ended = body.is_end_stream();
                                if !data.is_empty() {
                                    *pending = Some(data);
                                }
                            }
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    *trailers = Some(t);
                                    *ended = true;
                                }
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        debug!(stream = id, error = %e, "response body failed; resetting the stream");
                        finished.push((id, Some(reason::INTERNAL_ERROR)));
                        progress = true;
                        break;
                    }
                }
            }
        }
        for &(id, error) in &finished {
            match error {
                Some(code) => self.reset(id, code),
                None => {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.send = Reply::Done;
                    }
                    self.maybe_finish(id);
                }
            }
        }
        finished.clear();
        self.scratch_finished = finished;
        Ok(progress)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, Failure> {
        let mut progress = false;
        while !self.out.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(Failure::Io(e)),
                Poll::Ready(Ok(0)) => {
                    return Err(Failure::Io(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    progress = true;
                }
            }
        }
        if self.out.is_empty() && self.out.capacity() > 4 * WRITE_HIGH {
            // A burst grew it: do not keep the memory for an idle connection.
            self.out = BytesMut::with_capacity(READ_CHUNK);
        }
        if progress {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                return Err(Failure::Io(e));
            }
        }
        Ok(progress)
    }

    /// Removes a stream whose both sides are done; one whose response is done but whose
    /// request is still coming is reset with NO_ERROR (RFC 9113 8.1).
    fn maybe_finish(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !matches!(s.send, Reply::Done) {
            return;
        }
        if s.recv_open {
            self.reset(id, reason::NO_ERROR);
            return;
        }
        let s = self.streams.remove(&id).expect("looked up above");
        self.closed_by_client.push(id);
        self.close_stream(s, "stream closed");
    }

    /// RST_STREAM with `code`, and the stream gone.
    fn reset(&mut self, id: u32, code: u32) {
        head(&mut self.out, 4, RST_STREAM, 0, id);
        self.out.put_u32(code);
        if let Some(s) = self.streams.remove(&id) {
            self.close_stream(s, "stream reset");
        }
    }

    /// Gives a removed stream's window back and stops its handler and body.
    fn close_stream(&mut self, mut s: Stream<B, F>, why: &'static str) {
        // A handler still running stops here (before the body's lock below: its request
        // body takes that lock when dropped).
        s.handler = None;
        self.unreleased += s.unreleased;
        if s.has_body {
            let mut recv = lock(&s.shared.recv);
            if !recv.ended {
                recv.broken = Some(why);
            }
            // Whatever is buffered stays readable; its window goes back now, since the
            // stream's accounting ends here.
            self.unreleased += recv.buffered + std::mem::take(&mut recv.released);
            recv.dropped = true;
            if let Some(w) = recv.reader.take() {
                w.wake();
            }
        }
    }

    /// A response made here (431), headers only.
    fn local_response(&mut self, id: u32, status: u16) {
        let status = http::StatusCode::from_u16(status).expect("a valid status");
        self.encode_headers(id, Some(status), &HeaderMap::new(), Some(0), true);
    }

    fn encode_headers(
        &mut self,
        id: u32,
        status: Option<http::StatusCode>,
        headers: &HeaderMap,
        length: Option<u64>,
        end: bool,
    ) {
        encode_block(
            &mut self.encoder,
            &mut self.out,
            self.peer_max_frame,
            id,
            status,
            headers,
            length,
            end,
        );
    }

    /// Drops every stream and its handler (the connection is ending).
    fn abandon(&mut self) {
        self.streams.clear();
        self.fresh.clear();
    }

    /// GOAWAY with the last stream taken, and no new ones.
    fn goaway(&mut self, code: u32) {
        if self.goaway && code == reason::NO_ERROR {
            return;
        }
        self.goaway = true;
        head(&mut self.out, 8, GOAWAY, 0, 0);
        self.out.put_u32(self.last_stream);
        self.out.put_u32(code);
    }
}

/// `connection_keepalive` on the server side, as Envoy does it: a PING every interval (plus
/// up to the jitter at random), counted from the last ACK; the connection aborted (no
/// GOAWAY) when the ACK has not come within the timeout of the PING or of the last bytes
/// the client sent (an ACK may be queued behind other frames). The timer is polled once
/// per wake-up of the connection's task, as the signals are.
struct Keepalive {
    interval: Duration,
    cfg: Http2Keepalive,
    /// The next PING when none is out, else the ACK's deadline.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The payload of the PING out, unanswered.
    out: Option<[u8; 8]>,
    /// When bytes from the client last arrived while a PING was out.
    heard: Option<tokio::time::Instant>,
    sent: u64,
}

impl Keepalive {
    /// `None` without an interval: no PINGs, so nothing to time (as in Envoy).
    fn new(cfg: Http2Keepalive) -> Option<Self> {
        let mut k = Self {
            interval: cfg.interval?,
            cfg,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            out: None,
            heard: None,
            sent: 0,
        };
        k.arm_interval();
        Some(k)
    }

    fn arm_interval(&mut self) {
        let interval = self.interval;
        let jitter = interval.as_nanos() * u128::from(self.cfg.interval_jitter_bp) / 10_000;
        let extra = match u64::try_from(jitter) {
            Ok(0) | Err(_) => 0,
            Ok(j) => fastrand::u64(..j),
        };
        let at = tokio::time::Instant::now() + interval + Duration::from_nanos(extra);
        self.timer.as_mut().reset(at);
    }

    /// Sends a PING when it is time (into `out`), or fails the connection when one went
    /// unanswered for the timeout.
    fn poll(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = tokio::time::Instant::now();
            if self.out.is_some() {
                // The client sent something since: the ACK may be behind it.
                match self.heard.take().map(|t| t + self.cfg.timeout) {
                    Some(deadline) if deadline > now => self.timer.as_mut().reset(deadline),
                    _ => {
                        return Err(Failure::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no PING ACK from the client within the keepalive timeout",
                        )))
                    }
                }
            } else {
                self.sent += 1;
                let payload = self.sent.to_be_bytes();
                head(out, 8, PING, 0, 0);
                out.put_slice(&payload);
                self.out = Some(payload);
                self.heard = None;
                self.timer.as_mut().reset(now + self.cfg.timeout);
            }
        }
        Ok(())
    }

    /// Bytes came from the client (a clock read only while a PING is out).
    fn heard(&mut self) {
        if self.out.is_some() {
            self.heard = Some(tokio::time::Instant::now());
        }
    }

    /// A PING ACK came: ours ends the wait and arms the next PING; any other is ignored.
    fn acked(&mut self, payload: &[u8]) {
        if self.out.as_ref().is_some_and(|p| p[..] == *payload) {
            self.out = None;
            self.heard = None;
            self.arm_interval();
        }
    }
}

fn head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, id: u32) {
    debug_assert!(len < 1 << 24);
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(id);
}

fn window_update(out: &mut BytesMut, id: u32, inc: u32) {
    head(out, 4, WINDOW_UPDATE, 0, id);
    out.put_u32(inc);
}

/// Takes the padding (and a HEADERS frame's priority fields) off a payload; the stream
/// dependency when there are priority fields.
fn strip_padding(
    flags: u8,
    payload: &mut BytesMut,
    priority: bool,
) -> Result<Option<u32>, ConnError> {
    let mut pad = 0;
    let mut dependency = None;
    if flags & PADDED != 0 {
        if payload.is_empty() {
            return Err(conn_err(
                reason::PROTOCOL_ERROR,
                "padded frame without a pad length",
            ));
        }
        pad = usize::from(payload[0]);
        payload.advance(1);
    }
    if priority {
        if payload.len() < 5 {
            return Err(conn_err(
                reason::PROTOCOL_ERROR,
                "HEADERS too short for its priority",
            ));
        }
        dependency = Some(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        payload.advance(5);
    }
    if pad > payload.len() {
        return Err(conn_err(
            reason::PROTOCOL_ERROR,
            "padding longer than the frame",
        ));
    }
    payload.truncate(payload.len() - pad);
    Ok(dependency)
}

/// Encodes a header block as HEADERS and CONTINUATION frames.
#[allow(clippy::too_many_arguments)]
fn encode_block(
    encoder: &mut hpack::Encoder,
    out: &mut BytesMut,
    max_frame: usize,
    id: u32,
    status: Option<http::StatusCode>,
    headers: &HeaderMap,
    length: Option<u64>,
    end_stream: bool,
) {
    // The block is written after a placeholder frame head, then split if too long.
    let start = out.len();
    out.put_bytes(0, 9);
    encoder.begin_block(out);
    if let Some(status) = status {
        encoder.status(out, status);
    }
    for (name, value) in headers {
        if is_connection_specific(name) {
            continue;
        }
        encoder.field(out, name, value);
    }
    if let Some(n) = length {
        let mut digits = itoa::Buffer::new();
        encoder.unindexed(out, hpack::CONTENT_LENGTH, digits.format(n).as_bytes());
    }
    let block_len = out.len() - start - 9;
    let flags = if end_stream { END_STREAM } else { 0 };
    if block_len <= max_frame {
        let mut h = [0u8; 9];
        let mut hb = &mut h[..];
        hb.put_uint(block_len as u64, 3);
        hb.put_u8(HEADERS);
        hb.put_u8(flags | END_HEADERS);
        hb.put_u32(id);
        out[start..start + 9].copy_from_slice(&h);
        return;
    }
    // Rare: re-frame the block as HEADERS + CONTINUATION.
    let block = out.split_off(start + 9);
    out.truncate(start);
    let mut rest = &block[..];
    let mut first = true;
    while first || !rest.is_empty() {
        let n = rest.len().min(max_frame);
        let last = n == rest.len();
        let (kind, f) = if first {
            (HEADERS, flags)
        } else {
            (CONTINUATION, 0)
        };
        head(out, n, kind, f | if last { END_HEADERS } else { 0 }, id);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
    }
}

/// Fields HTTP/2 does not carry (RFC 9113 8.2.2).
fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The last request's authority, path and regular fields, shared with the next when they
/// repeat (a connection's requests mostly do): a reference count instead of a copy, and
/// no second parse and check of a field.
#[derive(Default)]
struct Last {
    authority: Option<Authority>,
    path: Option<PathAndQuery>,
    /// Up to `LAST_FIELDS` (cookies excepted: their crumbs are joined).
    fields: Vec<(HeaderName, HeaderValue)>,
}

const LAST_FIELDS: usize = 16;

impl Last {
    fn field(&self, name: &[u8], value: &[u8]) -> Option<&(HeaderName, HeaderValue)> {
        self.fields
            .iter()
            .find(|(n, v)| v.as_bytes() == value && n.as_str().as_bytes() == name)
    }

    /// Keeps `headers`' fields for the next request.
    fn keep(&mut self, headers: &HeaderMap) {
        self.fields.clear();
        self.fields.extend(
            headers
                .iter()
                .filter(|(n, _)| *n != header::COOKIE)
                .take(LAST_FIELDS)
                .map(|(n, v)| (n.clone(), v.clone())),
        );
    }
}

/// The `:protocol` of an extended CONNECT request (RFC 8441), e.g. `websocket`: the request
/// asks for a tunnel speaking it, as an HTTP/1.1 `Upgrade` header would. In the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectProtocol(Box<str>);

impl ConnectProtocol {
    /// A non-empty token of visible ASCII (the `Upgrade` header's protocol names).
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(value).ok()?;
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())).then(|| Self(s.into()))
    }

    /// The protocol as the client named it.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Default)]
struct Fields {
    method: Option<Method>,
    scheme: Option<Scheme>,
    authority: Option<Authority>,
    path: Option<PathAndQuery>,
    /// `:protocol` (extended CONNECT).
    protocol: Option<ConnectProtocol>,
    /// Any pseudo-header seen.
    pseudo: bool,
    headers: HeaderMap,
    /// Why the request is malformed, if it is.
    malformed: Option<&'static str>,
    /// Above the header list size limit (what was decoded is not kept).
    too_large: bool,
    /// A regular field the last request did not have.
    fresh: bool,
}

impl Fields {
    fn is_trailers(&self) -> bool {
        !self.pseudo && self.malformed.is_none() && !self.too_large
    }

    /// The request, `extended_connect`: whether `:protocol` may come (we announced it).
    fn into_request(
        self,
        extended_connect: bool,
    ) -> Result<(Request<()>, Option<u64>), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        let method = self.method.ok_or("no :method")?;
        let mut parts = http::uri::Parts::default();
        let protocol = self.protocol;
        if protocol.is_some() {
            // RFC 8441 section 4: only on CONNECT, only once the server has said so, and with
            // the pseudo-headers of any other request.
            if !extended_connect {
                return Err(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL");
            }
            if method != Method::CONNECT {
                return Err(":protocol on a method other than CONNECT");
            }
            parts.scheme = Some(self.scheme.ok_or("extended CONNECT without :scheme")?);
            parts.authority = Some(
                self.authority
                    .ok_or("extended CONNECT without :authority")?,
            );
            parts.path_and_query = Some(self.path.ok_or("extended CONNECT without :path")?);
        } else if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() {
                return Err("CONNECT with :scheme or :path");
            }
            parts.authority = Some(self.authority.ok_or("CONNECT without :authority")?);
        } else {
            parts.scheme = Some(self.scheme.ok_or("no :scheme")?);
            let path = self.path.ok_or("no :path")?;
            if path.as_str() == "*" && method != Method::OPTIONS {
                return Err(":path * on a method other than OPTIONS");
            }
            parts.authority = self.authority;
            parts.path_and_query = Some(path);
        }
        if parts.authority.is_none() {
            // An absolute URI needs an authority; the Host field carries it then.
            parts.scheme = None;
        }
        let uri = Uri::from_parts(parts).map_err(|_| "bad request target")?;
        let len = match self.headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                std::str::from_utf8(v.as_bytes())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("bad content-length")?,
            ),
        };
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        if let Some(p) = protocol {
            req.extensions_mut().insert(p);
        }
        Ok((req, len))
    }

    fn field(&mut self, name: &[u8], value: Cow<'_, [u8]>, last: &Last) {
        if self.malformed.is_some() {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.headers.is_empty() {
                self.malformed = Some("pseudo-header after a regular field");
                return;
            }
            self.pseudo = true;
            let twice = match pseudo {
                b"method" => self.method.is_some(),
                b"scheme" => self.scheme.is_some(),
                b"authority" => self.authority.is_some(),
                b"path" => self.path.is_some(),
                b"protocol" => self.protocol.is_some(),
                _ => {
                    self.malformed = Some("unknown pseudo-header");
                    return;
                }
            };
            if twice {
                self.malformed = Some("a pseudo-header twice");
                return;
            }
            let ok = match pseudo {
                b"method" => Method::from_bytes(&value)
                    .map(|m| self.method = Some(m))
                    .is_ok(),
                b"protocol" => ConnectProtocol::parse(&value)
                    .map(|p| self.protocol = Some(p))
                    .is_some(),
                b"scheme" => match &value[..] {
                    b"http" => Some(Scheme::HTTP),
                    b"https" => Some(Scheme::HTTPS),
                    other => Scheme::try_from(other).ok(),
                }
                .map(|s| self.scheme = Some(s))
                .is_some(),
                // A connection's requests mostly repeat the authority, often the path: the
                // last ones are reused (a reference count) rather than copied.
                b"authority" => match &last.authority {
                    Some(a) if a.as_str().as_bytes() == &value[..] => {
                        self.authority = Some(a.clone());
                        true
                    }
                    _ => Authority::from_maybe_shared(Bytes::copy_from_slice(&value))
                        .map(|a| self.authority = Some(a))
                        .is_ok(),
                },
                _ => match &last.path {
                    Some(p) if p.as_str().as_bytes() == &value[..] => {
                        self.path = Some(p.clone());
                        true
                    }
                    _ if value.is_empty() => false,
                    _ => PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(&value))
                        .map(|p| self.path = Some(p))
                        .is_ok(),
                },
            };
            if !ok {
                self.malformed = Some("a bad pseudo-header value");
            }
            return;
        }
        if let Some((n, v)) = last.field(name, &value) {
            // Checked when it first came.
            self.headers.append(n.clone(), v.clone());
            return;
        }
        self.fresh = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            self.malformed = Some("uppercase field name");
            return;
        }
        let Ok(name) = HeaderName::from_bytes(name) else {
            self.malformed = Some("bad field name");
            return;
        };
        if is_connection_specific(&name) {
            self.malformed = Some("connection-specific field");
            return;
        }
        if name == header::TE && &value[..] != b"trailers" {
            self.malformed = Some("te other than trailers");
            return;
        }
        let Ok(value) = HeaderValue::from_bytes(&value) else {
            self.malformed = Some("bad field value");
            return;
        };
        if name == header::COOKIE {
            // Cookie crumbs are joined for HTTP/1.1 upstreams (RFC 9113 8.2.3).
            if let Some(prev) = self.headers.get_mut(header::COOKIE) {
                let mut joined = BytesMut::with_capacity(prev.len() + 2 + value.len());
                joined.put_slice(prev.as_bytes());
                joined.put_slice(b"; ");
                joined.put_slice(value.as_bytes());
                if let Ok(v) = HeaderValue::from_maybe_shared(joined.freeze()) {
                    *prev = v;
                }
                return;
            }
        }
        self.headers.append(name, value);
    }
}

/// Decodes a header block; the HPACK state is kept in step even for a request refused.
fn decode_block(
    decoder: &mut loona_hpack::Decoder<'static>,
    block: &[u8],
    max_list: usize,
    last: &mut Last,
) -> Result<Fields, ConnError> {
    let mut fields = Fields::default();
    let mut size = 0usize;
    decoder
        .decode_with_cb(block, |name, value| {
            size += name.len() + value.len() + 32;
            if size <= max_list {
                fields.field(&name, value, last);
            }
        })
        .map_err(|_| conn_err(reason::COMPRESSION_ERROR, "HPACK decoding failed"))?;
    if size > max_list {
        return Ok(Fields {
            too_large: true,
            ..Fields::default()
        });
    }
    if fields.authority.is_some() {
        last.authority.clone_from(&fields.authority);
    }
    if fields.path.is_some() {
        last.path.clone_from(&fields.path);
    }
    if fields.fresh && fields.pseudo && fields.malformed.is_none() {
        last.keep(&fields.headers);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests;
