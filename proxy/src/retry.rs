//! Retries with Envoy's semantics: which outcomes are retriable (`retry_on`), the fully
//! jittered exponential backoff, and a request body that can be sent again.
//!
//! The body is forwarded as it arrives (a streaming upload or a bidirectional gRPC call is
//! never held back) while a copy is kept, up to the limit Envoy's router keeps for retries
//! ([`replay_limit`]: the route's `per_request_buffer_limit_bytes` under the listener's
//! `per_connection_buffer_limit_bytes`, 1 MiB by default). A retry sends the copy, then
//! continues with what the client has not sent yet. A request whose body outgrows the
//! limit is not retried, as in Envoy.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::lock;
use crate::model::route::RetryPolicy;

/// The `grpc-status` of response headers or trailers, if it is a number.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    // A constant name: looking a header up by `&str` parses the name every time.
    const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// How much of a request's body is kept for retries: the route's (else its virtual
/// host's) `per_request_buffer_limit_bytes` when smaller than the connection manager's
/// buffer limit (`conn`, bytes), as Envoy's router takes it.
pub(crate) fn replay_limit(conn: usize, route: Option<u32>) -> usize {
    route.map_or(conn, |r| conn.min(r as usize))
}

/// Envoy's default backoff base interval (the max is 10x the base).
pub(crate) const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Response headers arrived with this status (and, for gRPC, this `grpc-status` in
    /// the headers: a trailers-only response).
    Response {
        status: StatusCode,
        grpc_status: Option<u32>,
    },
    /// The connect failed.
    ConnectFailure,
    /// The upstream reset or closed before the response headers.
    Reset,
    /// HTTP/2 `REFUSED_STREAM`: the request was not processed.
    RefusedStream,
    /// No response headers within the per-try timeout.
    PerTryTimeout,
}

impl Outcome {
    /// The outcome of an attempt's error.
    pub(crate) fn of_error(e: &ProxyError) -> Option<Outcome> {
        match e {
            ProxyError::UpstreamConnect { .. }
            | ProxyError::Hbone { .. }
            | ProxyError::UpstreamTls { .. } => Some(Outcome::ConnectFailure),
            ProxyError::UpstreamReset { source, .. } => Some(if is_refused_stream(&**source) {
                Outcome::RefusedStream
            } else {
                Outcome::Reset
            }),
            _ => None,
        }
    }

    /// The outcome of response headers.
    pub(crate) fn of_response(status: StatusCode, headers: &HeaderMap) -> Outcome {
        Outcome::Response {
            status,
            grpc_status: grpc_status(headers),
        }
    }
}

fn is_refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// Whether `policy` retries `outcome` (Envoy's `x-envoy-retry-on` /
/// `x-envoy-retry-grpc-on` conditions).
pub(crate) fn is_retriable(policy: &RetryPolicy, outcome: Outcome) -> bool {
    policy
        .retry_on
        .iter()
        .any(|cond| matches(cond, policy, outcome))
}

fn matches(cond: &str, policy: &RetryPolicy, outcome: Outcome) -> bool {
    use Outcome::*;
    let grpc = |code: u32| matches!(outcome, Response { grpc_status: Some(c), .. } if c == code);
    match cond {
        "5xx" => match outcome {
            Response { status, .. } => status.is_server_error(),
            ConnectFailure | Reset | RefusedStream | PerTryTimeout => true,
        },
        // Envoy retries every upstream reset (a failed connect and a refused stream
        // included) under `5xx`, `gateway-error` and `reset` alike
        // (`RetryStateImpl::wouldRetryFromReset`).
        "gateway-error" => match outcome {
            Response { status, .. } => matches!(status.as_u16(), 502..=504),
            ConnectFailure | Reset | RefusedStream | PerTryTimeout => true,
        },
        "reset" => !matches!(outcome, Response { .. }),
        "connect-failure" => outcome == ConnectFailure,
        // Nothing reached the upstream: a failed connect, or a stream it refused.
        "reset-before-request" => matches!(outcome, ConnectFailure | RefusedStream),
        // Envoy's own rate limiting and HTTP/3 do not exist here: never true.
        "envoy-ratelimited" | "http3-post-connect-failure" => false,
        "refused-stream" => outcome == RefusedStream,
        "retriable-4xx" => {
            matches!(outcome, Response { status, .. } if status == StatusCode::CONFLICT)
        }
        "retriable-status-codes" => matches!(
            outcome,
            Response { status, .. } if policy.retriable_status_codes.contains(&status.as_u16())
        ),
        "cancelled" => grpc(1),
        "deadline-exceeded" => grpc(4),
        "resource-exhausted" => grpc(8),
        "internal" => grpc(13),
        "unavailable" => grpc(14),
        _ => false,
    }
}

/// The wait before retry number `retry` (0-based): uniformly random in
/// `[0, min(max, base * 2^retry)]` (Envoy's fully jittered exponential backoff).
pub(crate) fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let (base, max) = match &policy.back_off {
        Some(b) => (b.base_interval, b.max_interval),
        None => (DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10),
    };
    let ceiling = base
        .checked_mul(1u32 << retry.min(20))
        .unwrap_or(max)
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// The shared state of a replayable body.
struct Shared<B> {
    /// Frames seen so far (data and trailers), in order.
    frames: Vec<Frame<Bytes>>,
    /// Bytes of data in `frames`.
    bytes: usize,
    /// The client's body, from where the copy ends.
    rest: Option<B>,
    /// The client's body ended: `frames` is all of it.
    ended: bool,
    /// More than `limit` passed: the copy is incomplete, no replay.
    overflowed: bool,
    /// The most bytes of data kept.
    limit: usize,
}

/// The request body of one attempt: first what earlier attempts already read, then the
/// client's body.
pub(crate) struct ReplayBody<B = Incoming> {
    shared: Arc<Mutex<Shared<B>>>,
    /// How many of the shared frames this attempt has sent.
    next: usize,
}

impl<B: Body> ReplayBody<B> {
    /// The first attempt's body, of which up to `limit` bytes are kept for the next.
    pub(crate) fn new(body: B, limit: usize) -> Self {
        let ended = body.is_end_stream();
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                frames: Vec::new(),
                bytes: 0,
                rest: Some(body),
                ended,
                overflowed: false,
                limit,
            })),
            next: 0,
        }
    }

    /// The body of the next attempt, if the copy still allows a replay.
    pub(crate) fn replay(&self) -> Option<ReplayBody<B>> {
        if lock(&self.shared).overflowed {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            next: 0,
        })
    }
}

/// A frame's copy (`Frame` is not `Clone`; its data is a cheap `Bytes` clone).
fn copy_frame(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match frame.data_ref() {
        Some(d) => Frame::data(d.clone()),
        None => Frame::trailers(frame.trailers_ref().cloned().unwrap_or_default()),
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let mut shared = lock(&this.shared);
        if let Some(frame) = shared.frames.get(this.next) {
            let copy = copy_frame(frame);
            this.next += 1;
            return Poll::Ready(Some(Ok(copy)));
        }
        if shared.ended {
            return Poll::Ready(None);
        }
        let Some(rest) = shared.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if !shared.overflowed {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    if shared.bytes.saturating_add(len) > shared.limit {
                        // Too big to replay: stop copying and free what was kept.
                        shared.overflowed = true;
                        shared.frames.clear();
                    } else {
                        shared.bytes += len;
                        shared.frames.push(copy_frame(&frame));
                        this.next = shared.frames.len();
                    }
                }
                if shared.rest.as_ref().is_some_and(|r| r.is_end_stream()) {
                    shared.ended = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                shared.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The client's body failed: nothing can be replayed after this.
                shared.overflowed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.ended && self.next >= shared.frames.len()
    }

    fn size_hint(&self) -> SizeHint {
        let shared = lock(&self.shared);
        match &shared.rest {
            Some(rest) if self.next == 0 && shared.frames.is_empty() => rest.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::RetryBackOff;

    fn policy(on: &[&str]) -> RetryPolicy {
        RetryPolicy {
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            num_retries: 1,
            per_try_timeout: None,
            retriable_status_codes: vec![418],
            retry_previous_hosts: false,
            back_off: None,
        }
    }

    fn resp(code: u16) -> Outcome {
        Outcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            grpc_status: None,
        }
    }

    fn grpc(code: u32) -> Outcome {
        Outcome::Response {
            status: StatusCode::OK,
            grpc_status: Some(code),
        }
    }

    #[test]
    fn retry_on_table() {
        use Outcome::*;
        let cases: &[(&str, Outcome, bool)] = &[
            ("5xx", resp(500), true),
            ("5xx", resp(503), true),
            ("5xx", resp(404), false),
            ("5xx", ConnectFailure, true),
            ("5xx", Reset, true),
            ("5xx", PerTryTimeout, true),
            ("gateway-error", resp(500), false),
            ("gateway-error", resp(502), true),
            ("gateway-error", resp(504), true),
            ("gateway-error", PerTryTimeout, true),
            ("gateway-error", ConnectFailure, true),
            ("gateway-error", RefusedStream, true),
            ("reset", Reset, true),
            ("reset", ConnectFailure, true),
            ("reset", RefusedStream, true),
            ("reset", resp(503), false),
            ("connect-failure", ConnectFailure, true),
            ("connect-failure", Reset, false),
            ("reset-before-request", ConnectFailure, true),
            ("reset-before-request", RefusedStream, true),
            ("reset-before-request", Reset, false),
            ("refused-stream", RefusedStream, true),
            ("refused-stream", Reset, false),
            ("retriable-4xx", resp(409), true),
            ("retriable-4xx", resp(400), false),
            ("retriable-status-codes", resp(418), true),
            ("retriable-status-codes", resp(419), false),
            ("cancelled", grpc(1), true),
            ("deadline-exceeded", grpc(4), true),
            ("resource-exhausted", grpc(8), true),
            ("internal", grpc(13), true),
            ("unavailable", grpc(14), true),
            ("unavailable", grpc(13), false),
            ("unavailable", resp(503), false),
            ("nonsense", resp(503), false),
        ];
        for (cond, outcome, want) in cases {
            assert_eq!(
                is_retriable(&policy(&[cond]), *outcome),
                *want,
                "{cond} {outcome:?}"
            );
        }
        assert!(is_retriable(
            &policy(&["connect-failure", "5xx"]),
            resp(500)
        ));
    }

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>;

    /// A body that yields `chunks`, then trailers.
    fn body(chunks: &[&'static str]) -> http_body_util::StreamBody<tokio_stream::Iter<Frames>> {
        let mut frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        frames.push(Ok(Frame::trailers(t)));
        http_body_util::StreamBody::new(tokio_stream::iter(frames))
    }

    async fn drain<B: Body<Data = Bytes> + Unpin>(mut b: B) -> (String, bool)
    where
        B::Error: std::fmt::Debug,
    {
        use http_body_util::BodyExt;
        let mut data = String::new();
        let mut trailers = false;
        while let Some(f) = b.frame().await {
            let f = f.unwrap();
            if let Some(d) = f.data_ref() {
                data.push_str(std::str::from_utf8(d).unwrap());
            } else {
                trailers = true;
            }
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn replay_sends_the_same_body_again() {
        let first = ReplayBody::new(body(&["a", "bc", "def"]), 6);
        let second = first.replay().unwrap();
        assert_eq!(drain(first).await, ("abcdef".into(), true));
        assert_eq!(drain(second).await, ("abcdef".into(), true));
    }

    #[tokio::test]
    async fn a_partly_sent_body_continues_from_the_client() {
        use http_body_util::BodyExt;
        let mut first = ReplayBody::new(body(&["a", "b", "c"]), 1024);
        // The first attempt failed after one frame.
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "a");
        let second = first.replay().unwrap();
        drop(first);
        assert_eq!(drain(second).await, ("abc".into(), true));
    }

    #[tokio::test]
    async fn an_oversized_body_is_not_replayed() {
        const LIMIT: usize = 64 * 1024;
        let big: &'static str = Box::leak("x".repeat(LIMIT).into_boxed_str());
        let first = ReplayBody::new(body(&[big, "y"]), LIMIT);
        assert!(first.replay().is_some(), "nothing read yet");
        let (data, _) = drain(first.replay().unwrap()).await;
        assert_eq!(data.len(), LIMIT + 1);
        assert!(first.replay().is_none());
        // A limit of 0 keeps no byte (a route's `per_request_buffer_limit_bytes: 0`), and
        // "no limit" (a listener's 0) keeps everything.
        let none = ReplayBody::new(body(&["a"]), 0);
        drain(none.replay().unwrap()).await;
        assert!(none.replay().is_none());
        let all = ReplayBody::new(body(&[big, big]), usize::MAX);
        drain(all.replay().unwrap()).await;
        assert_eq!(drain(all.replay().unwrap()).await.0.len(), 2 * LIMIT);
    }

    #[test]
    fn the_route_limit_applies_under_the_listener_limit() {
        assert_eq!(replay_limit(1 << 20, None), 1 << 20);
        assert_eq!(replay_limit(1 << 20, Some(4096)), 4096);
        assert_eq!(replay_limit(4096, Some(1 << 20)), 4096);
        assert_eq!(replay_limit(usize::MAX, Some(0)), 0);
        assert_eq!(replay_limit(usize::MAX, None), usize::MAX);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut p = policy(&["5xx"]);
        for retry in 0..6 {
            let ceiling = (DEFAULT_BASE_INTERVAL * (1 << retry)).min(DEFAULT_BASE_INTERVAL * 10);
            let samples: Vec<Duration> = (0..200).map(|_| backoff(&p, retry)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "retry {retry}");
            // Jittered: not all the same.
            assert!(samples.iter().any(|d| *d != samples[0]), "retry {retry}");
        }
        p.back_off = Some(RetryBackOff {
            base_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(15),
        });
        assert!((0..100).all(|_| backoff(&p, 5) <= Duration::from_millis(15)));
    }
}
