//! Body wrappers for metrics: one that counts the bytes of a request body (and notes
//! its activity and end for the stream's timeouts), one that records a request's golden
//! metrics when its response body ends; and the start of a request body read ahead for a
//! filter ([`CountingBody::read_ahead`]), then sent on as it came.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::error::BodyError;
use crate::golden::{ConnGolden, RequestRecord};
use crate::timeout::{StreamState, StreamTimedOut};

/// Counts the data bytes that pass through `inner` into the request's [`StreamState`],
/// which also learns when they moved and when the body ended.
pub(crate) struct CountingBody<B> {
    inner: B,
    state: Arc<StreamState>,
    /// Frames at the front of `inner` that were counted when they were read ahead.
    counted: usize,
    /// `inner` counts the client's bytes itself, inside what changes them
    /// ([`CountingBody::through`]).
    inside: bool,
}

impl<B> CountingBody<B> {
    pub(crate) fn new(inner: B, state: Arc<StreamState>) -> Self {
        Self {
            inner,
            state,
            counted: 0,
            inside: false,
        }
    }

    /// The body it counts.
    pub(crate) fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl CountingBody<RequestBody> {
    /// Moves the body out, leaving an empty one that counts into the same stream (to be
    /// put back).
    pub(crate) fn take(&mut self) -> Self {
        let empty = CountingBody::new(RequestBody::Empty, self.state.clone());
        std::mem::replace(self, empty)
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.inside {
            return polled;
        }
        if self.counted > 0 {
            if let Poll::Ready(Some(Ok(_))) = &polled {
                self.counted -= 1;
                return polled;
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                match frame.data_ref() {
                    Some(d) => self.state.request_data(d.len()),
                    None => self.state.touch(),
                }
                if self.inner.is_end_stream() {
                    self.state.request_end();
                }
            }
            Poll::Ready(None) => self.state.request_end(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The start of a request body, read ahead ([`CountingBody::read_ahead`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadAhead {
    /// The data read, in order.
    pub(crate) data: Bytes,
    /// The body ended within it (else more may follow).
    pub(crate) whole: bool,
    /// The body's trailers, when it ended with them within it.
    pub(crate) trailers: Option<http::HeaderMap>,
}

impl ReadAhead {
    /// Whether a filter that wants `n` bytes of the body has them here (or all there is).
    pub(crate) fn covers(&self, n: usize) -> bool {
        self.whole || self.data.len() >= n
    }
}

impl CountingBody<RequestBody> {
    /// Reads the body until it ends or `at_least` bytes of data are in, counted as they come
    /// (so the stream's timeouts see them), and puts what was read back in front of the
    /// rest, to be sent on as it came (not counted again).
    pub(crate) async fn read_ahead(&mut self, at_least: usize) -> Result<ReadAhead, BodyError> {
        use http_body_util::BodyExt;
        let mut frames = VecDeque::new();
        let mut data = bytes::BytesMut::new();
        let mut whole = self.is_end_stream();
        let mut trailers = None;
        while !whole && data.len() < at_least {
            match self.frame().await {
                None => whole = true,
                Some(frame) => {
                    let frame = frame?;
                    if let Some(d) = frame.data_ref() {
                        data.extend_from_slice(d);
                    }
                    if let Some(t) = frame.trailers_ref() {
                        trailers = Some(t.clone());
                    }
                    frames.push_back(frame);
                    whole = self.inner.is_end_stream();
                }
            }
        }
        if !frames.is_empty() {
            self.counted = frames.len();
            let rest = std::mem::replace(&mut self.inner, RequestBody::Empty);
            self.inner = RequestBody::Own(Box::pin(Replay { frames, rest }));
        }
        Ok(ReadAhead {
            data: data.freeze(),
            whole,
            trailers,
        })
    }

    /// Replaces the first `read` bytes of the body's data, read ahead, with `data` (the
    /// part an external processor was told and changed, `BUFFERED_PARTIAL`); the rest of
    /// the client's follows as it comes, counted as it does. `data` is not counted.
    pub(crate) fn replace_read(&mut self, data: Bytes, read: usize) {
        let inner = std::mem::replace(&mut self.inner, RequestBody::Empty);
        let rest = RequestBody::Own(Box::pin(Skip { inner, skip: read }));
        self.put_front(data, None, rest);
    }

    /// Replaces the body with `data` and then `trailers` (an external processor's new
    /// body): what is left of the client's is not sent on. Neither is counted: the
    /// request's size is what its client sent.
    pub(crate) fn replace(&mut self, data: Bytes, trailers: Option<http::HeaderMap>) {
        self.put_front(data, trailers, RequestBody::Empty);
    }

    /// Sends the body on through `f` (an external processor told it as it comes,
    /// `STREAMED`): the client's bytes are counted as they are read, before `f` changes
    /// them.
    pub(crate) fn through(&mut self, f: impl FnOnce(CountingBody<RequestBody>) -> RequestBody) {
        let counting = CountingBody {
            inner: std::mem::replace(&mut self.inner, RequestBody::Empty),
            state: self.state.clone(),
            counted: std::mem::take(&mut self.counted),
            inside: self.inside,
        };
        self.inner = f(counting);
        self.inside = true;
    }

    /// The body becomes `data` and `trailers` (not counted), then `rest`.
    fn put_front(&mut self, data: Bytes, trailers: Option<http::HeaderMap>, rest: RequestBody) {
        let mut frames = VecDeque::new();
        if !data.is_empty() {
            frames.push_back(Frame::data(data));
        }
        frames.extend(trailers.map(Frame::trailers));
        self.counted = frames.len();
        self.inner = RequestBody::Own(Box::pin(Replay { frames, rest }));
    }
}

/// The body after its first `skip` bytes of data.
struct Skip {
    inner: RequestBody,
    skip: usize,
}

impl Body for Skip {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if self.skip > 0 => frame,
                other => return other,
            };
            match frame.into_data() {
                Ok(mut d) if d.len() > self.skip => {
                    let _ = d.split_to(std::mem::take(&mut self.skip));
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(d) => self.skip -= d.len(),
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_sub(self.skip as u64));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_sub(self.skip as u64));
        }
        hint
    }
}

/// Frames read ahead, then the rest of the body.
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    rest: RequestBody,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.frames.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let ahead: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + ahead);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}

/// A request body as it comes from the client: hyper's, or one the HTTP/1.1 server of our
/// own ([`crate::h1server`]) reads from the connection, or none.
pub(crate) enum RequestBody {
    Hyper(hyper::body::Incoming),
    Own(Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send + Sync>>),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            RequestBody::Own(b) => b.as_mut().poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Own(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Own(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The request details an access-log line adds to the golden-metric record.
#[derive(Debug, Clone)]
pub(crate) struct AccessInfo {
    pub(crate) start: std::time::SystemTime,
    pub(crate) method: String,
    pub(crate) authority: String,
    pub(crate) path: String,
    pub(crate) downstream: std::net::SocketAddr,
    pub(crate) original_dst: std::net::SocketAddr,
    pub(crate) upstream: Option<std::net::SocketAddr>,
    pub(crate) cluster: Option<Arc<str>>,
    /// Time until the response headers.
    pub(crate) headers_after: std::time::Duration,
    /// `x-request-id` after the connection manager's rules (none without one).
    pub(crate) request_id: Option<String>,
}

impl AccessInfo {
    /// One JSON line on the `myelin::access` target.
    fn log(&self, r: &RequestRecord) {
        let since_epoch = self
            .start
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let line = serde_json::json!({
            "start_time_unix_ms": since_epoch.as_millis() as u64,
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "protocol": r.request_protocol,
            "response_code": r.response_code,
            "grpc_status": r.grpc_status,
            "response_flags": r.response_flags,
            "bytes_received": r.request_bytes,
            "bytes_sent": r.response_bytes,
            "duration_ms": r.duration.as_secs_f64() * 1000.0,
            "response_headers_ms": self.headers_after.as_secs_f64() * 1000.0,
            "request_id": self.request_id,
            "downstream": self.downstream.to_string(),
            "original_dst": self.original_dst.to_string(),
            "upstream": self.upstream.map(|u| u.to_string()),
            "cluster": self.cluster.as_deref(),
            "reporter": r.reporter,
            "source_workload": &*r.source.workload,
            "source_namespace": &*r.source.namespace,
            "source_principal": &*r.source.principal,
            "destination_workload": &*r.destination.workload,
            "destination_namespace": &*r.destination.namespace,
            "destination_service": &*r.destination.service,
            "destination_principal": &*r.destination.principal,
            "connection_security_policy": r.connection_security_policy,
        });
        tracing::info!(target: "myelin::access", "{line}");
    }
}

/// A response body that records its request in the golden metrics once: when it ends,
/// fails, or is dropped (the client went away), with the response size, the gRPC status
/// from the trailers and the time since the request started.
pub(crate) struct MeteredBody<B> {
    inner: B,
    pending: Option<Pending>,
}

struct Pending {
    record: RequestRecord,
    /// What the access log adds to the record; `None`: access log off. Boxed: it is most
    /// of the size of every response body, moved several times per request, for a log
    /// that is off by default.
    access: Option<Box<AccessInfo>>,
    /// Start time and request bytes.
    stream: Arc<StreamState>,
    response_bytes: u64,
    golden: Arc<ConnGolden>,
    /// Record it for the destination too (`reporter="destination"`): pod to pod on this
    /// node, where this proxy is both ends.
    destination_too: bool,
}

impl<B> MeteredBody<B> {
    pub(crate) fn new(
        inner: B,
        record: RequestRecord,
        access: Option<Box<AccessInfo>>,
        stream: Arc<StreamState>,
        golden: Arc<ConnGolden>,
    ) -> Self {
        Self {
            inner,
            pending: Some(Pending {
                record,
                access,
                stream,
                response_bytes: 0,
                golden,
                destination_too: false,
            }),
        }
    }

    /// Records the request for the destination as well as for its source (same labels
    /// otherwise, as both ends are this proxy).
    pub(crate) fn destination_too(mut self, yes: bool) -> Self {
        if let Some(p) = self.pending.as_mut() {
            p.destination_too = yes;
        }
        self
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            let mut r = p.record;
            r.duration = p.stream.start().elapsed();
            r.request_bytes = p.stream.request_bytes();
            r.response_bytes = p.response_bytes;
            p.golden.record_request(&r);
            if p.destination_too {
                let source_side = r.reporter;
                r.reporter = "destination";
                p.golden.record_request(&r);
                r.reporter = source_side;
            }
            if let Some(a) = p.access {
                a.log(&r);
            }
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: Body<Data = Bytes, Error = BodyError> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = self.pending.as_mut() {
                    if let Some(d) = frame.data_ref() {
                        p.response_bytes += d.len() as u64;
                    }
                    if let Some(t) = frame.trailers_ref() {
                        if let Some(s) = crate::retry::grpc_status(t) {
                            p.record.grpc_status = Some(s);
                        }
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(e))) => {
                let flags = match e.downcast_ref::<StreamTimedOut>() {
                    // One of the stream's timeouts ended it after the headers.
                    Some(StreamTimedOut(expired)) => expired.response_flags(),
                    // The response broke off: the client saw a reset, not the status.
                    None => "UPE",
                };
                if let Some(p) = self.pending.as_mut() {
                    p.record.response_flags = flags;
                }
                self.finish();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// A client's body of these frames (the last maybe trailers), as the servers give it.
    fn client_body(frames: Vec<Frame<Bytes>>) -> RequestBody {
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, BodyError>));
        RequestBody::Own(Box::pin(StreamBody::new(stream)))
    }

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn a_body_read_ahead_goes_on_as_it_came_and_is_counted_once() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        for (at_least, want_read, want_whole) in [
            (1, "abc", false),
            (4, "abcdef", false),
            (100, "abcdefghi", true),
        ] {
            let state = Arc::new(StreamState::new(tokio::time::Instant::now(), false));
            let frames = vec![
                data("abc"),
                data("def"),
                data("ghi"),
                Frame::trailers(trailers.clone()),
            ];
            let mut body = CountingBody::new(client_body(frames), state.clone());
            let read = body.read_ahead(at_least).await.unwrap();
            assert_eq!(
                (&read.data[..], read.whole),
                (want_read.as_bytes(), want_whole),
                "at least {at_least}"
            );
            assert_eq!(state.request_bytes(), want_read.len() as u64);
            let all = body.collect().await.unwrap();
            assert_eq!(all.trailers(), Some(&trailers));
            assert_eq!(&all.to_bytes()[..], b"abcdefghi");
            assert_eq!(state.request_bytes(), 9, "each byte counted once");
        }
        // The part read replaced (an external processor's, `BUFFERED_PARTIAL`): the new
        // part, then the client's rest (mid-frame too), each of the client's bytes counted
        // once, the new ones not at all; a second read ahead reads on from the new part.
        for (at_least, read_len) in [(4, 6), (7, 9)] {
            let state = Arc::new(StreamState::new(tokio::time::Instant::now(), false));
            let frames = vec![
                data("abc"),
                data("def"),
                data("ghi"),
                Frame::trailers(trailers.clone()),
            ];
            let mut body = CountingBody::new(client_body(frames), state.clone());
            let read = body.read_ahead(at_least).await.unwrap();
            assert_eq!(read.data.len(), read_len);
            body.replace_read(Bytes::from_static(b"XY"), read_len);
            let again = body.read_ahead(3).await.unwrap();
            let want = &b"XYghi"[..2 + (9 - read_len).min(3)];
            assert_eq!(&again.data[..], want);
            let all = body.collect().await.unwrap();
            assert_eq!(all.trailers(), Some(&trailers));
            let rest = &b"abcdefghi"[read_len..];
            assert_eq!(all.to_bytes(), [&b"XY"[..], rest].concat());
            assert_eq!(state.request_bytes(), 9, "the client's bytes, counted once");
        }
        // Skipping into the middle of a frame.
        let state = Arc::new(StreamState::new(tokio::time::Instant::now(), false));
        let frames = vec![data("abc"), data("def")];
        let mut body = CountingBody::new(client_body(frames), state.clone());
        body.replace_read(Bytes::new(), 4);
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"ef");

        // A body that has ended already reads nothing.
        let state = Arc::new(StreamState::new(tokio::time::Instant::now(), true));
        let mut body = CountingBody::new(RequestBody::Empty, state);
        let read = body.read_ahead(10).await.unwrap();
        assert!(read.whole && read.data.is_empty());
    }

    /// A body sent on through a change (an external processor's, `STREAMED`) counts the
    /// client's bytes, read ahead or not, once, and none of the new ones; a read ahead
    /// after it sees the changed body.
    #[tokio::test]
    async fn a_body_sent_through_a_change_counts_the_clients_bytes() {
        let state = Arc::new(StreamState::new(tokio::time::Instant::now(), false));
        let frames = vec![data("abc"), data("def"), data("ghi")];
        let mut body = CountingBody::new(client_body(frames), state.clone());
        body.read_ahead(1).await.unwrap();
        assert_eq!(state.request_bytes(), 3);
        body.through(|inner| {
            let doubled = inner.map_frame(|f| match f.into_data() {
                Ok(d) => Frame::data([&d[..], &d[..]].concat().into()),
                Err(f) => f,
            });
            RequestBody::Own(Box::pin(doubled))
        });
        let again = body.read_ahead(6).await.unwrap();
        assert_eq!(&again.data[..], b"abcabc");
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcabcdefdefghighi");
        assert_eq!(state.request_bytes(), 9, "the client's bytes, counted once");
    }
}
