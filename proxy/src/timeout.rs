//! The timeouts of an HTTP stream and connection, with Envoy's meaning:
//!
//! - route `timeout`: from the end of the downstream request until the upstream response
//!   is complete (headers *and* body): 504 `UT` before the response headers, a reset
//!   after them;
//! - HCM `stream_idle_timeout` (default 5 min): no bytes either way on a stream for that
//!   long: 408 `SI`, or a reset once the response has started;
//! - HCM `request_timeout` (off by default): the whole request must have been received
//!   by then: 408, or a reset;
//! - HCM `common_http_protocol_options.idle_timeout` (default 1 h): a downstream
//!   connection with no stream in flight for that long is closed (HTTP/2 with GOAWAY);
//! - HCM `common_http_protocol_options.max_stream_duration` and route
//!   `max_stream_duration` (off by default): the whole stream, from its start, must be
//!   done by then: 408, or 504 once the request was complete, a reset after the response
//!   started; a gRPC request's `grpc-timeout` can set it (`grpc_timeout_header_max`), and
//!   with the deprecated route `max_grpc_timeout` sets the route timeout ([`limits`]);
//! - TCP proxy `idle_timeout` (default 1 h): see [`IdleStream`].
//!
//! All of them are checked lazily: bodies only note the time of their last frame, and one
//! timer per stream ([`Alarm`]; until the response, the connection's [`StreamTimer`])
//! wakes at or before the earliest candidate deadline and re-checks, so a busy stream
//! costs a clock read per frame, not a timer reset. Times are tokio's [`Instant`]s, so
//! tests can run them on a paused clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::{BodyError, ProxyBody};
use crate::lock;
use crate::model::listener::{
    HttpConnectionManager, DEFAULT_IDLE_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT,
};
use crate::model::route::StreamLimit;

/// "Not yet" in the microsecond fields below.
const NEVER: u64 = u64::MAX;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(NEVER - 1)
}

/// The connection-manager timeouts of a downstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HcmTimeouts {
    /// `request_timeout`.
    pub(crate) request: Option<Duration>,
    /// `stream_idle_timeout`.
    pub(crate) stream_idle: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout`.
    pub(crate) idle: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration`.
    pub(crate) max_stream: Option<Duration>,
    /// `request_headers_timeout`: a request head begun must be whole within it.
    pub(crate) request_headers: Option<Duration>,
}

impl Default for HcmTimeouts {
    /// Envoy's defaults, also used for HTTP passed through without a listener.
    fn default() -> Self {
        Self {
            request: None,
            stream_idle: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            max_stream: None,
            request_headers: None,
        }
    }
}

impl From<&HttpConnectionManager> for HcmTimeouts {
    fn from(h: &HttpConnectionManager) -> Self {
        Self {
            request: h.request_timeout,
            stream_idle: h.stream_idle_timeout,
            idle: h.idle_timeout,
            max_stream: h.max_stream_duration,
            request_headers: h.request_headers_timeout,
        }
    }
}

/// What one request's bodies share: its request bytes, when it last moved, and when the
/// downstream request ended (microseconds since `start`).
#[derive(Debug)]
pub(crate) struct StreamState {
    start: Instant,
    request_bytes: AtomicU64,
    last_activity: AtomicU64,
    request_done: AtomicU64,
}

impl StreamState {
    pub(crate) fn new(start: Instant, request_done: bool) -> Self {
        Self {
            start,
            request_bytes: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            request_done: AtomicU64::new(if request_done { 0 } else { NEVER }),
        }
    }

    fn since_start(&self) -> u64 {
        micros(self.start.elapsed())
    }

    /// Bytes moved on the stream now.
    pub(crate) fn touch(&self) {
        self.last_activity
            .store(self.since_start(), Ordering::Relaxed);
    }

    /// `n` request body bytes went upstream.
    pub(crate) fn request_data(&self, n: usize) {
        self.request_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    /// The downstream request has been received completely.
    pub(crate) fn request_end(&self) {
        let _ = self.request_done.compare_exchange(
            NEVER,
            self.since_start(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn request_bytes(&self) -> u64 {
        self.request_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn start(&self) -> Instant {
        self.start
    }
}

/// Which timeout passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The route's `timeout`.
    Route(Duration),
    /// The connection manager's `stream_idle_timeout`.
    StreamIdle(Duration),
    /// The connection manager's `request_timeout`.
    Request(Duration),
    /// The stream's `max_stream_duration` (the route's or the connection manager's, or a
    /// `grpc-timeout`), and whether the request had been received whole.
    Duration(Duration, bool),
}

impl Expired {
    /// The Envoy response flag.
    pub(crate) fn response_flags(self) -> &'static str {
        match self {
            Expired::Route(_) => "UT",
            Expired::StreamIdle(_) => "SI",
            // Envoy sets no flag for the request timeout (its detail is
            // `request_overall_timeout`).
            Expired::Request(_) => "-",
            // Nor for the stream duration (`max_duration_timeout`).
            Expired::Duration(..) => "-",
        }
    }
}

/// A stream ended by one of its timeouts after the response had started (its body then
/// fails, which resets an HTTP/2 stream or closes an HTTP/1 connection).
#[derive(Debug, thiserror::Error)]
#[error("stream timed out: {0:?}")]
pub(crate) struct StreamTimedOut(pub(crate) Expired);

/// The deadlines that apply to one stream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Deadlines {
    pub(crate) route: Option<Duration>,
    pub(crate) stream_idle: Option<Duration>,
    pub(crate) request: Option<Duration>,
    /// From the stream's start; zero: expired at once (a `grpc-timeout` used up).
    pub(crate) duration: Option<Duration>,
}

impl Deadlines {
    /// The route's `timeout`, its `idle_timeout` (replacing the connection manager's
    /// stream idle timeout; zero: none), and the connection manager's own.
    pub(crate) fn new(
        route: Option<Duration>,
        route_idle: Option<Duration>,
        hcm: &HcmTimeouts,
    ) -> Self {
        Self {
            route,
            stream_idle: match route_idle {
                None => hcm.stream_idle,
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
            request: hcm.request,
            duration: hcm.max_stream,
        }
    }

    pub(crate) fn any(&self) -> bool {
        self.route.is_some()
            || self.stream_idle.is_some()
            || self.request.is_some()
            || self.duration.is_some()
    }

    /// The timeout that has passed at `now`, else when to look again (`None`: never).
    fn check(&self, s: &StreamState, now: Instant) -> Result<Option<Instant>, Expired> {
        let elapsed = micros(now.saturating_duration_since(s.start));
        let done = s.request_done.load(Ordering::Relaxed);
        let mut next = NEVER;
        if let Some(t) = self.request {
            if done == NEVER {
                let at = micros(t);
                if elapsed >= at {
                    return Err(Expired::Request(t));
                }
                next = next.min(at);
            }
        }
        if let Some(t) = self.stream_idle {
            let at = s
                .last_activity
                .load(Ordering::Relaxed)
                .saturating_add(micros(t));
            if elapsed >= at {
                return Err(Expired::StreamIdle(t));
            }
            next = next.min(at);
        }
        if let Some(t) = self.duration {
            let at = micros(t);
            if elapsed >= at {
                return Err(Expired::Duration(t, done != NEVER));
            }
            next = next.min(at);
        }
        if let Some(t) = self.route {
            // Runs from the end of the request; until then, look again in `t`.
            let at = if done == NEVER {
                elapsed.saturating_add(micros(t))
            } else {
                let at = done.saturating_add(micros(t));
                if elapsed >= at {
                    return Err(Expired::Route(t));
                }
                at
            };
            next = next.min(at);
        }
        Ok((next != NEVER).then(|| s.start + Duration::from_micros(next)))
    }
}

/// What a route's [`StreamLimit`] makes of one request's timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The route timeout.
    pub(crate) route: Option<Duration>,
    /// The stream's duration bound.
    pub(crate) duration: Option<Duration>,
    /// The `grpc-timeout` to send upstream instead of the client's (`max_grpc_timeout`).
    pub(crate) upstream_grpc_timeout: Option<Duration>,
}

/// A request's timeouts on a route with a [`StreamLimit`], as Envoy computes them: the
/// route's `timeout`, the connection manager's `max_stream`, whether the request is gRPC
/// and its `grpc-timeout` (parsed; `None` when absent or malformed), and the retry
/// policy's per-try timeout (for the `grpc-timeout` sent upstream).
pub(crate) fn limits(
    limit: &StreamLimit,
    timeout: Option<Duration>,
    max_stream: Option<Duration>,
    grpc: bool,
    grpc_timeout: Option<Duration>,
    per_try: Option<Duration>,
) -> Limits {
    match *limit {
        // The connection manager's `refreshDurationTimeout`: the route timeout is off.
        StreamLimit::Duration {
            max,
            grpc_header_max,
            grpc_header_offset,
        } => {
            let duration = match (grpc_timeout, grpc_header_max) {
                (Some(header), Some(cap)) => {
                    let mut t = if !cap.is_zero() && header > cap {
                        cap
                    } else {
                        header
                    };
                    if let Some(offset) = grpc_header_offset.filter(|_| !t.is_zero()) {
                        // An offset that uses the whole timeout up leaves none.
                        t = t.saturating_sub(offset);
                    }
                    Some(t)
                }
                _ => match max {
                    Some(m) if m.is_zero() => None,
                    Some(m) => Some(m),
                    None => max_stream,
                },
            };
            Limits {
                route: None,
                duration,
                upstream_grpc_timeout: None,
            }
        }
        // The router's `finalTimeout` for a gRPC request: its own timeout, without one
        // none (zero), less the offset when that leaves some, capped.
        StreamLimit::GrpcTimeout { max, offset } if grpc => {
            let mut t = grpc_timeout.unwrap_or_default();
            if let Some(o) = offset.filter(|o| *o < t) {
                t -= o;
            }
            if !max.is_zero() && (t.is_zero() || t > max) {
                t = max;
            }
            let route = (!t.is_zero()).then_some(t);
            // What the upstream is told: the per-try timeout when it is shorter.
            let expected = match (per_try, route) {
                (Some(p), Some(r)) => Some(p.min(r)),
                (p, r) => p.or(r),
            };
            Limits {
                route,
                duration: max_stream,
                upstream_grpc_timeout: expected,
            }
        }
        StreamLimit::GrpcTimeout { .. } => Limits {
            route: timeout,
            duration: max_stream,
            upstream_grpc_timeout: None,
        },
    }
}

/// A `grpc-timeout` header's value (gRPC over HTTP/2: at most 8 digits and a unit of
/// `H`, `M`, `S`, `m`, `u` or `n`); sub-millisecond remainders round up, as Envoy's do.
pub(crate) fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let ms = match unit {
        b'H' => n * 3_600_000,
        b'M' => n * 60_000,
        b'S' => n * 1_000,
        b'm' => n,
        b'u' => n.div_ceil(1_000),
        b'n' => n.div_ceil(1_000_000),
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// `d` as a `grpc-timeout` value: in milliseconds, or the first larger unit whose value
/// fits the 8 digits.
pub(crate) fn grpc_timeout_value(d: Duration) -> http::HeaderValue {
    const MAX: u64 = 99_999_999;
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let text = if ms <= MAX {
        format!("{ms}m")
    } else if ms / 1_000 <= MAX {
        format!("{}S", ms.div_ceil(1_000))
    } else if ms / 60_000 <= MAX {
        format!("{}M", ms.div_ceil(60_000))
    } else {
        format!("{}H", (ms.div_ceil(3_600_000)).min(MAX))
    };
    http::HeaderValue::try_from(text).expect("digits and a letter")
}

/// A connection's timers for the deadlines of its streams before their responses, kept
/// from one stream to the next: a timer made per request was an allocation, a registration
/// in tokio's timer wheel and a removal (a lock each) on every request. A deadline left
/// armed by an earlier stream that is earlier than this one's only wakes the stream to
/// look again (deadlines are checked lazily, see the module docs), so on a keep-alive
/// connection a timer is re-armed about once per route timeout, not once per request.
/// HTTP/2's concurrent streams each take one of the connection's timers; up to
/// [`KEPT_TIMERS`] are kept for the next streams, more are dropped.
#[derive(Default)]
pub(crate) struct StreamTimer(std::sync::Mutex<Vec<Timer>>);

/// The most timers a connection keeps between its streams.
const KEPT_TIMERS: usize = 32;

impl std::fmt::Debug for StreamTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTimer").finish_non_exhaustive()
    }
}

impl StreamTimer {
    /// Runs `work` until it is done or one of `deadlines` passes on `s`, on one of the
    /// connection's timers (or a new one when concurrent streams hold them all).
    pub(crate) async fn race<T>(
        &self,
        deadlines: Deadlines,
        s: &StreamState,
        mut work: Pin<&mut impl Future<Output = T>>,
    ) -> Result<T, Expired> {
        let mut alarm = Alarm::new(lock(&self.0).pop());
        let result = std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(done));
            }
            alarm.poll(&deadlines, s, cx).map(Err)
        })
        .await;
        if let Some(t) = alarm.timer {
            let mut kept = lock(&self.0);
            if kept.len() < KEPT_TIMERS {
                kept.push(t);
            }
        }
        result
    }
}

/// Wakes a stream when one of its deadlines may have passed. A stream's deadlines only
/// move later (activity, the request's end), so a timer armed earlier than needed is left
/// as it is: it wakes the stream to look again. The clock is read only when its timer
/// fires, not at every poll: the first poll arms the timer as if it were the stream's
/// start, which is never later than its deadlines really are (one that has passed
/// already fires the timer at once, and the look after it reads the clock).
struct Alarm {
    /// Made at the first wait, or lent by the connection ([`StreamTimer`]).
    timer: Option<Timer>,
    /// `timer` fires at or before this stream's earliest deadline.
    armed: bool,
}

impl Alarm {
    fn new(timer: Option<Timer>) -> Self {
        Self {
            timer,
            armed: false,
        }
    }

    /// `Ready` with the deadline that has passed; else the task is woken when one may.
    fn poll(
        &mut self,
        deadlines: &Deadlines,
        s: &StreamState,
        cx: &mut Context<'_>,
    ) -> Poll<Expired> {
        if self.armed && self.timer.as_mut().is_some_and(|t| t.poll(cx).is_pending()) {
            return Poll::Pending;
        }
        loop {
            let now = if self.armed { Instant::now() } else { s.start };
            match deadlines.check(s, now) {
                Err(e) => return Poll::Ready(e),
                Ok(None) => return Poll::Pending,
                Ok(Some(at)) => {
                    let t = self.timer.get_or_insert_with(|| Timer::new(at));
                    if t.is_elapsed() || t.deadline() > at {
                        t.reset(at);
                    }
                    self.armed = true;
                    if t.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// A tokio timer for a future that is polled at every event of its task (a stream's
/// deadlines, a connection's idle timeout): it gives tokio the task's waker only when that
/// changes. `Sleep::poll` swaps the waker in the timer's slot at every poll, a clone and a
/// drop of the waker (two atomic reference counts) and a handshake on the slot, and these
/// timers were polled several times per request (benches/RESULTS.md, 2026-12-07 12:05).
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer wakes when it fires, as last given to it.
    waker: Option<Waker>,
}

impl Timer {
    pub(crate) fn new(at: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            waker: None,
        }
    }

    /// `Ready` once the deadline has passed; else the task behind `cx` is woken when it does.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Still registered with a waker that wakes this task: the timer wakes it when it
            // fires, and then reads as elapsed.
            return if self.sleep.is_elapsed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        let polled = self.sleep.as_mut().poll(cx);
        self.waker = polled.is_pending().then(|| cx.waker().clone());
        polled
    }

    pub(crate) fn is_elapsed(&self) -> bool {
        self.sleep.is_elapsed()
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Sets a new deadline; the next poll gives the timer the task's waker again.
    pub(crate) fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.waker = None;
    }
}

/// Counts the streams in flight on a downstream connection and since when it has had
/// none, for the connection idle timeout. One word holds both, so that the clock is read
/// only when the last stream ends (not at the end of each of HTTP/2's concurrent streams)
/// and the count and the time are never seen apart.
#[derive(Debug)]
pub(crate) struct ConnActivity {
    base: Instant,
    /// The streams in flight (above `COUNT_SHIFT`) and the milliseconds from `base` to the
    /// end of the last one (below).
    state: AtomicU64,
}

const COUNT_SHIFT: u32 = 40;
const SINCE_MASK: u64 = (1 << COUNT_SHIFT) - 1;

impl Default for ConnActivity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            state: AtomicU64::new(0),
        }
    }
}

impl ConnActivity {
    /// A stream starts; it ends when the guard drops.
    pub(crate) fn enter(self: &Arc<Self>) -> ActiveStream {
        self.state.fetch_add(1 << COUNT_SHIFT, Ordering::Relaxed);
        ActiveStream(self.clone())
    }

    /// Resolves once the connection has had no stream for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let mut timer = Timer::new(Instant::now() + timeout);
        loop {
            std::future::poll_fn(|cx| timer.poll(cx)).await;
            let state = self.state.load(Ordering::Acquire);
            if state >> COUNT_SHIFT == 0 {
                let since = self.base + Duration::from_millis(state & SINCE_MASK);
                if since.elapsed() >= timeout {
                    return;
                }
                timer.reset(since + timeout);
            } else {
                timer.reset(Instant::now() + timeout);
            }
        }
    }
}

/// One stream in flight on a connection.
#[derive(Debug)]
pub(crate) struct ActiveStream(Arc<ConnActivity>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        let c = &self.0;
        let mut state = c.state.load(Ordering::Relaxed);
        loop {
            let next = if state >> COUNT_SHIFT == 1 {
                // The last one: the connection is idle from now.
                (c.base.elapsed().as_millis() as u64).min(SINCE_MASK)
            } else {
                state - (1 << COUNT_SHIFT)
            };
            match c
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }
}

/// A response body under its stream's deadlines: each frame counts as activity; while it
/// waits for the upstream, a timeout that passes fails the body with [`StreamTimedOut`].
/// Holds its connection's [`ActiveStream`] until it ends.
pub(crate) struct TimedBody {
    inner: ProxyBody,
    timers: Option<Timers>,
    _active: Option<ActiveStream>,
}

struct Timers {
    deadlines: Deadlines,
    state: Arc<StreamState>,
    alarm: Alarm,
}

impl TimedBody {
    pub(crate) fn new(
        inner: ProxyBody,
        deadlines: Deadlines,
        state: Arc<StreamState>,
        active: Option<ActiveStream>,
    ) -> Self {
        Self {
            inner,
            timers: deadlines.any().then_some(Timers {
                deadlines,
                state,
                alarm: Alarm::new(None),
            }),
            _active: active,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some(t) = this.timers.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    // The last frame (most responses have one): the body's deadlines end
                    // with it, so no clock is read to note its activity.
                    this.timers = None;
                } else {
                    t.state.touch();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.timers = None;
                Poll::Ready(other)
            }
            Poll::Pending => {
                let e = ready!(t.alarm.poll(&t.deadlines, &t.state, cx));
                this.timers = None;
                Poll::Ready(Some(Err(Box::new(StreamTimedOut(e)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that notes when bytes last moved through it, for the TCP proxy's
/// `idle_timeout`; [`IdleStream::idle_for`] resolves once none have for that long.
#[derive(Debug)]
pub(crate) struct IdleStream<T> {
    inner: T,
    clock: Arc<IdleClock>,
    read: u64,
    written: u64,
}

/// When bytes last moved, in microseconds since `base`.
#[derive(Debug)]
pub(crate) struct IdleClock {
    base: Instant,
    last: AtomicU64,
}

impl IdleClock {
    fn touch(&self) {
        self.last
            .store(micros(self.base.elapsed()), Ordering::Relaxed);
    }

    /// Resolves once no bytes have moved for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let mut timer: Option<Timer> = None;
        loop {
            let at = self.base + Duration::from_micros(self.last.load(Ordering::Relaxed)) + timeout;
            if Instant::now() >= at {
                return;
            }
            let t = match &mut timer {
                Some(t) => {
                    t.reset(at);
                    t
                }
                None => timer.insert(Timer::new(at)),
            };
            std::future::poll_fn(|cx| t.poll(cx)).await;
        }
    }
}

impl<T> IdleStream<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            clock: Arc::new(IdleClock {
                base: Instant::now(),
                last: AtomicU64::new(0),
            }),
            read: 0,
            written: 0,
        }
    }

    /// Bytes read from and written to the stream so far.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (self.read, self.written)
    }

    pub(crate) fn clock(&self) -> Arc<IdleClock> {
        self.clock.clone()
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.clock.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.written += n as u64;
                self.clock.touch();
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.written += n as u64;
                self.clock.touch();
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grpc_timeouts_parse_and_print_as_grpc_says() {
        for (text, ms) in [
            ("1H", Some(3_600_000)),
            ("2M", Some(120_000)),
            ("3S", Some(3_000)),
            ("250m", Some(250)),
            ("1500u", Some(2)),
            ("1n", Some(1)),
            ("0m", Some(0)),
            ("99999999S", Some(99_999_999_000)),
            ("123456789m", None),
            ("10", None),
            ("m", None),
            ("-5m", None),
            ("5s", None),
            ("", None),
        ] {
            assert_eq!(
                parse_grpc_timeout(text.as_bytes()),
                ms.map(Duration::from_millis),
                "{text}"
            );
        }
        for (ms, text) in [
            (250, "250m"),
            (99_999_999, "99999999m"),
            (100_000_000, "100000S"),
            (100_000_001, "100001S"),
        ] {
            assert_eq!(grpc_timeout_value(Duration::from_millis(ms)), text);
        }
    }

    /// Envoy's router (`finalTimeout`) and connection manager (`refreshDurationTimeout`),
    /// case by case: (limit, gRPC, its `grpc-timeout`, per-try) -> (route, duration,
    /// upstream `grpc-timeout`). The route's `timeout` is 15 s, the connection manager's
    /// `max_stream_duration` 20 s.
    #[test]
    fn stream_limits_follow_envoy() {
        let s = |n: u64| Some(Duration::from_secs(n));
        let m = |n: u64| Some(Duration::from_millis(n));
        let dur = |max, grpc_header_max, grpc_header_offset| StreamLimit::Duration {
            max,
            grpc_header_max,
            grpc_header_offset,
        };
        let grpc = |max: u64, offset| StreamLimit::GrpcTimeout {
            max: Duration::from_millis(max),
            offset,
        };
        type Case = (StreamLimit, bool, Option<Duration>, Option<Duration>);
        type Want = (Option<Duration>, Option<Duration>, Option<Duration>);
        let cases: [(&str, Case, Want); 13] = [
            (
                "duration: no route timeout, the route's bound",
                (dur(s(5), None, None), false, None, None),
                (None, s(5), None),
            ),
            (
                "duration zero: no bound at all",
                (dur(Some(Duration::ZERO), None, None), false, None, None),
                (None, None, None),
            ),
            (
                "duration unset: the connection manager's",
                (dur(None, None, None), false, None, None),
                (None, s(20), None),
            ),
            (
                "header without header max: ignored",
                (dur(s(5), None, None), true, m(300), None),
                (None, s(5), None),
            ),
            (
                "header max: the header",
                (dur(s(5), s(30), None), true, m(300), None),
                (None, m(300), None),
            ),
            (
                "header above the max: capped",
                (dur(None, s(1), None), true, s(3), None),
                (None, s(1), None),
            ),
            (
                "header max zero: not capped",
                (dur(None, Some(Duration::ZERO), None), true, s(100), None),
                (None, s(100), None),
            ),
            (
                "offset taken off",
                (dur(None, s(30), m(50)), true, m(300), None),
                (None, m(250), None),
            ),
            (
                "offset beyond the header: expired at once",
                (dur(None, s(30), m(500)), true, m(300), None),
                (None, Some(Duration::ZERO), None),
            ),
            (
                "legacy: the header, told upstream",
                (grpc(0, None), true, m(300), None),
                (m(300), s(20), m(300)),
            ),
            (
                "legacy without header: no timeout",
                (grpc(0, None), true, None, None),
                (None, s(20), None),
            ),
            (
                "legacy: capped, offset, per-try told",
                (grpc(2000, m(100)), true, s(5), m(700)),
                (m(2000), s(20), m(700)),
            ),
            (
                "legacy, not gRPC: the route timeout",
                (grpc(2000, None), false, m(300), None),
                (s(15), s(20), None),
            ),
        ];
        for (name, (limit, is_grpc, header, per_try), (route, duration, upstream)) in cases {
            assert_eq!(
                limits(&limit, s(15), s(20), is_grpc, header, per_try),
                Limits {
                    route,
                    duration,
                    upstream_grpc_timeout: upstream
                },
                "{name}"
            );
        }
    }

    #[test]
    fn stream_duration_runs_from_the_start() {
        let start = Instant::now();
        let d = Deadlines {
            duration: Some(100 * MS),
            ..Deadlines::default()
        };
        let coming = state_at(start, false);
        assert_eq!(
            d.check(&coming, start + 40 * MS),
            Ok(Some(start + 100 * MS))
        );
        assert_eq!(
            d.check(&coming, start + 100 * MS),
            Err(Expired::Duration(100 * MS, false))
        );
        // Received whole: the same bound, now the upstream's delay (504).
        let whole = state_at(start, true);
        assert_eq!(
            d.check(&whole, start + 150 * MS),
            Err(Expired::Duration(100 * MS, true))
        );
    }

    fn state_at(start: Instant, done: bool) -> StreamState {
        StreamState::new(start, done)
    }

    #[test]
    fn route_timeout_runs_from_the_end_of_the_request() {
        let start = Instant::now();
        let s = state_at(start, false);
        let d = Deadlines {
            route: Some(100 * MS),
            ..Deadlines::default()
        };
        // Request still coming at 150 ms: not expired, look again 100 ms later.
        assert_eq!(d.check(&s, start + 150 * MS), Ok(Some(start + 250 * MS)));
        s.request_done.store(micros(120 * MS), Ordering::Relaxed);
        assert_eq!(d.check(&s, start + 150 * MS), Ok(Some(start + 220 * MS)));
        assert_eq!(d.check(&s, start + 220 * MS), Err(Expired::Route(100 * MS)));
    }

    #[test]
    fn stream_idle_follows_the_last_activity() {
        let start = Instant::now();
        let s = state_at(start, true);
        let d = Deadlines {
            stream_idle: Some(50 * MS),
            ..Deadlines::default()
        };
        assert_eq!(d.check(&s, start + 10 * MS), Ok(Some(start + 50 * MS)));
        s.last_activity.store(micros(40 * MS), Ordering::Relaxed);
        assert_eq!(d.check(&s, start + 60 * MS), Ok(Some(start + 90 * MS)));
        assert_eq!(
            d.check(&s, start + 90 * MS),
            Err(Expired::StreamIdle(50 * MS))
        );
    }

    #[test]
    fn request_timeout_only_while_the_request_is_incomplete() {
        let start = Instant::now();
        let s = state_at(start, false);
        let d = Deadlines {
            request: Some(30 * MS),
            ..Deadlines::default()
        };
        assert_eq!(d.check(&s, start + 30 * MS), Err(Expired::Request(30 * MS)));
        s.request_end();
        assert_eq!(d.check(&s, start + 30 * MS), Ok(None));
        assert!(!Deadlines::default().any());
    }

    #[tokio::test(start_paused = true)]
    async fn connection_idle_waits_for_the_last_stream() {
        let c = Arc::new(ConnActivity::default());
        // Dropping `last` after `busy` (the connection kept for 30 s meanwhile): idle
        // resolves 10 s (plus at most one timer round) after that drop.
        let idle_after = |busy: Vec<ActiveStream>, last: ActiveStream| {
            let c = c.clone();
            async move {
                let idle = c.idle_for(Duration::from_secs(10));
                tokio::pin!(idle);
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(busy);
                assert!(tokio::time::timeout(Duration::from_secs(30), idle.as_mut())
                    .await
                    .is_err());
                drop(last);
                let before = tokio::time::Instant::now();
                idle.await;
                let waited = before.elapsed();
                assert!(
                    waited >= Duration::from_secs(10) && waited < Duration::from_secs(21),
                    "{waited:?}"
                );
            }
        };
        // A stream in flight keeps the connection.
        idle_after(Vec::new(), c.enter()).await;
        // Two streams: the end of the first leaves the connection busy; idle is counted
        // from the end of the second.
        idle_after(vec![c.enter()], c.enter()).await;
    }

    /// One timer for a connection's streams, whatever deadline the last one left armed:
    /// an earlier one only wakes the next stream to look again, a later one is moved in.
    #[tokio::test(start_paused = true)]
    async fn a_connection_s_timer_serves_stream_after_stream() {
        let timer = StreamTimer::default();
        let route = |secs| Deadlines {
            route: Some(Duration::from_secs(secs)),
            ..Deadlines::default()
        };
        // Times a stream that never answers until its deadline passes.
        let expires_after = |d: Deadlines| {
            let timer = &timer;
            async move {
                let start = Instant::now();
                let s = StreamState::new(start, true);
                let work = std::pin::pin!(std::future::pending::<()>());
                let got = timer.race(d, &s, work).await;
                (got, start.elapsed())
            }
        };
        // A stream answered in time leaves the timer armed at its 1 s deadline.
        let s = StreamState::new(Instant::now(), true);
        let work = std::pin::pin!(tokio::time::sleep(Duration::from_millis(100)));
        assert_eq!(timer.race(route(1), &s, work).await, Ok(()));
        assert_eq!(lock(&timer.0).len(), 1);
        // The next stream's 5 s are not cut short by the 1 s left armed...
        let (got, took) = expires_after(route(5)).await;
        assert_eq!(got, Err(Expired::Route(Duration::from_secs(5))));
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_millis(5100),
            "{took:?}"
        );
        // ...nor a 2 s deadline delayed by a later one left armed (30 s, by a stream
        // answered in time).
        let s = StreamState::new(Instant::now(), true);
        let work = std::pin::pin!(tokio::time::sleep(Duration::from_millis(100)));
        assert_eq!(timer.race(route(30), &s, work).await, Ok(()));
        let (got, took) = expires_after(route(2)).await;
        assert_eq!(got, Err(Expired::Route(Duration::from_secs(2))));
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        // Concurrent streams: the second makes its own timer, and both keep their time.
        let (a, b) = tokio::join!(expires_after(route(3)), expires_after(route(1)));
        assert_eq!(
            (a.0, b.0),
            (
                Err(Expired::Route(Duration::from_secs(3))),
                Err(Expired::Route(Duration::from_secs(1)))
            )
        );
        assert!(
            a.1 < Duration::from_millis(3100) && b.1 < Duration::from_millis(1100),
            "{a:?} {b:?}"
        );
        // Both timers are kept, and the next concurrent pair takes them instead of new ones.
        assert_eq!(lock(&timer.0).len(), 2);
        let (a, b) = tokio::join!(expires_after(route(2)), expires_after(route(1)));
        assert_eq!(
            (a.0, b.0),
            (
                Err(Expired::Route(Duration::from_secs(2))),
                Err(Expired::Route(Duration::from_secs(1)))
            )
        );
        assert_eq!(lock(&timer.0).len(), 2);
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(c: &Arc<Count>) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_polled_again_wakes_the_last_task_that_polled_it() {
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut timer = Timer::new(Instant::now() + Duration::from_secs(1));
        // Polled again and again by the same task (its waker kept, not given again).
        for _ in 0..3 {
            assert!(timer.poll(&mut Context::from_waker(&wa)).is_pending());
        }
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(woken(&a), 1);
        assert!(timer.poll(&mut Context::from_waker(&wa)).is_ready());

        // Reset, then polled by another task: that one is woken, not the first.
        timer.reset(Instant::now() + Duration::from_secs(1));
        assert!(timer.poll(&mut Context::from_waker(&wa)).is_pending());
        assert!(timer.poll(&mut Context::from_waker(&wb)).is_pending());
        assert!(timer.poll(&mut Context::from_waker(&wb)).is_pending());
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert!(timer.poll(&mut Context::from_waker(&wb)).is_pending());
        assert_eq!((woken(&a), woken(&b)), (1, 0));
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!((woken(&a), woken(&b)), (1, 1));
        assert!(timer.poll(&mut Context::from_waker(&wb)).is_ready());

        // A deadline already passed: ready at the first poll, nothing kept.
        timer.reset(Instant::now());
        assert!(timer.poll(&mut Context::from_waker(&wa)).is_ready());
        assert!(timer.waker.is_none());
    }

    /// The first wait arms the timer without reading the clock (as if at the stream's
    /// start): a deadline that has passed by then still expires at once, and one that has
    /// not keeps its time.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_passed_before_the_first_wait_expires_at_once() {
        let timer = StreamTimer::default();
        let route = Deadlines {
            route: Some(Duration::from_secs(1)),
            ..Deadlines::default()
        };
        let s = StreamState::new(Instant::now(), true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let waited = Instant::now();
        let work = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(
            timer.race(route, &s, work).await,
            Err(Expired::Route(Duration::from_secs(1)))
        );
        assert!(
            waited.elapsed() < Duration::from_millis(5),
            "{:?}",
            waited.elapsed()
        );
        // Started 0.5 s ago with 1 s to go: 0.5 s more, not 1 s.
        let s = StreamState::new(Instant::now(), true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let waited = Instant::now();
        let work = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(
            timer.race(route, &s, work).await,
            Err(Expired::Route(Duration::from_secs(1)))
        );
        let took = waited.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(600),
            "{took:?}"
        );
    }
}
