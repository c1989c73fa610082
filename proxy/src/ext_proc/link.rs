//! The stream to the processor ([`Link`]), shared by a request's [`super::Exchange`] and
//! the bodies it tells chunk by chunk ([`super::streamed::Streamed`]): messages go out as
//! they are ready, and each answer goes to the side (request or response) it answers, as
//! Envoy's filter keeps one state per direction on one stream. The call itself is sent
//! with the first message (a processor may answer the call's head only with its first
//! answer), from whichever side sends it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::StatusCode;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tokio::sync::mpsc;

use super::{Answered, Failure, ProcessingResponse, CLOSE_WAIT, MAX_MESSAGE, PROCESS_PATH};
use crate::error::ProxyBody;
use crate::filters::Answer;
use crate::model::filter::GrpcService;
use crate::services::{Opened, Opener, Pending};

/// Which half of the exchange a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Request = 0,
    Response = 1,
}

/// One stream to the processor, shared. The stream is half-closed when the last holder
/// lets go (the processor then has [`CLOSE_WAIT`] to end it), or reset by [`Link::reset`].
#[derive(Clone)]
pub(super) struct Link(Arc<Mutex<Shared>>);

/// Where the call is.
enum Call {
    /// Not sent: it goes with the first message.
    Unsent(Opener, GrpcService),
    /// Sent, its answer's head not in yet.
    Opening(Pending<'static, Result<Opened, String>>),
    /// Answering.
    Open {
        body: ProxyBody,
        held: Option<crate::traffic::InFlight>,
    },
    /// Reset or ended.
    Gone,
}

struct Shared {
    call: Call,
    /// The call's body: a message per frame; dropped to half-close.
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    /// What came of the answers' body and is not a whole message yet.
    buf: BytesMut,
    /// Answers read by one side for the other.
    queued: [VecDeque<ProcessingResponse>; 2],
    /// Messages of each side not answered yet.
    asked: [usize; 2],
    /// The stream is over (closed by the processor, failed): every later read says so.
    ended: Option<Failure>,
    /// Dropped without waiting for the processor to end it.
    reset: bool,
    /// Processing is over for the request (what is left goes on unprocessed).
    over: bool,
    /// The answer to the request, decided while its body was told (an
    /// `immediate_response`, a failure): the response phase sends it instead.
    answer: Option<Answer>,
    wakers: Arc<Wakers>,
}

/// The tasks of both sides: the answers' body wakes both (either may read an answer for
/// the other).
#[derive(Default)]
struct Wakers([AtomicWaker; 2]);

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0[0].wake();
        self.0[1].wake();
    }
}

impl Link {
    /// A stream to `service`, sent with the first message through `opener`.
    pub(super) fn new(opener: Opener, service: GrpcService) -> Link {
        Link(Arc::new(Mutex::new(Shared {
            call: Call::Unsent(opener, service),
            tx: None,
            buf: BytesMut::new(),
            queued: Default::default(),
            asked: [0, 0],
            ended: None,
            reset: false,
            over: false,
            answer: None,
            wakers: Arc::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message (`frame`, a gRPC frame) of `side`, sending the call first if it was
    /// not yet.
    pub(super) fn send(&self, side: Side, frame: Bytes) -> Result<(), Failure> {
        let mut s = self.lock();
        if let Some(f) = &s.ended {
            return Err(f.clone());
        }
        if let Call::Unsent(..) = s.call {
            let Call::Unsent(opener, service) = std::mem::replace(&mut s.call, Call::Gone) else {
                unreachable!("matched above")
            };
            let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
            let frames =
                futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|d| d.map(data)));
            match crate::services::grpc_call(
                &service,
                PROCESS_PATH,
                StreamBody::new(frames).boxed(),
            ) {
                Ok(req) => {
                    s.call = Call::Opening(opener(req));
                    s.tx = Some(tx);
                }
                Err(e) => return Err(s.end(Failure::Stream(e))),
            }
        }
        let sent = s.tx.as_ref().map(|tx| tx.send(frame));
        if !matches!(sent, Some(Ok(()))) {
            return Err(s.end(Failure::Stream("the stream is gone".into())));
        }
        s.asked[side as usize] += 1;
        Ok(())
    }

    /// The processor's next answer for `side` (or the answer out of turn that it was
    /// given: the side tells it is not its own).
    pub(super) fn poll_answer(
        &self,
        side: Side,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ProcessingResponse, Failure>> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(a) = s.queued[side as usize].pop_front() {
            return Poll::Ready(Ok(a));
        }
        if let Some(f) = &s.ended {
            return Poll::Ready(Err(f.clone()));
        }
        s.wakers.0[side as usize].register(cx.waker());
        let waker = Waker::from(s.wakers.clone());
        let mut both = Context::from_waker(&waker);
        loop {
            if let Call::Opening(opening) = &mut s.call {
                match opening.as_mut().poll(&mut both) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(s.end(Failure::Stream(e)))),
                    Poll::Ready(Ok(opened)) => match answering(opened) {
                        Ok(call) => s.call = call,
                        Err(f) => return Poll::Ready(Err(s.end(f))),
                    },
                }
            }
            match s.next_message() {
                // More time asked for: ignored (no `max_message_timeout`), as in Envoy.
                Ok(Some(m)) if m.override_message_timeout.is_some() => continue,
                Ok(Some(m)) => {
                    match s.route(&m) {
                        Some(to) if to == side => return Poll::Ready(Ok(m)),
                        Some(to) => {
                            s.queued[to as usize].push_back(m);
                            s.wakers.0[to as usize].wake();
                        }
                        None => {
                            let f = Failure::Spurious("an answer to nothing asked");
                            return Poll::Ready(Err(s.end(f)));
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(f) => return Poll::Ready(Err(s.end(f))),
            }
            let Call::Open { body, .. } = &mut s.call else {
                let f = Failure::Stream("an answer awaited on a stream not sent".into());
                return Poll::Ready(Err(s.end(f)));
            };
            match Pin::new(body).poll_frame(&mut both) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => s.buf.extend_from_slice(&d),
                    Err(frame) => {
                        let status = frame
                            .trailers_ref()
                            .and_then(|t| t.get("grpc-status"))
                            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
                        let f = match status {
                            Some(0) => Failure::Closed,
                            Some(code) => Failure::Stream(format!("grpc-status {code}")),
                            None => Failure::Stream("trailers without grpc-status".into()),
                        };
                        return Poll::Ready(Err(s.end(f)));
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(s.end(Failure::Stream(e.to_string()))))
                }
                Poll::Ready(None) => {
                    let f = Failure::Stream("the stream ended without a status".into());
                    return Poll::Ready(Err(s.end(f)));
                }
            }
        }
    }

    /// [`Link::poll_answer`] as a future.
    pub(super) async fn answer(&self, side: Side) -> Result<ProcessingResponse, Failure> {
        std::future::poll_fn(|cx| self.poll_answer(side, cx)).await
    }

    /// Drops the stream at once (a failed or late one): every holder learns it failed.
    pub(super) fn reset(&self) {
        let mut s = self.lock();
        s.reset = true;
        s.over = true;
        s.tx = None;
        s.call = Call::Gone;
        if s.ended.is_none() {
            s.end(Failure::Stream("reset".into()));
        }
    }

    /// Processing is over after `f`: the stream is reset, unless the processor ended it.
    pub(super) fn give_up(&self, f: &Failure) {
        if *f != Failure::Closed {
            self.reset();
        }
        self.set_over();
    }

    /// Processing is over for the request: what is left goes on unprocessed.
    pub(super) fn set_over(&self) {
        self.lock().over = true;
    }

    pub(super) fn is_over(&self) -> bool {
        self.lock().over
    }

    /// Keeps the answer to the request decided while its body was told.
    pub(super) fn put_answer(&self, answer: Answer) {
        let mut s = self.lock();
        s.over = true;
        s.answer = Some(answer);
    }

    /// The answer to the request decided while its body was told, if any.
    pub(super) fn take_answer(&self) -> Option<Answer> {
        self.lock().answer.take()
    }
}

impl Shared {
    /// The stream is over with `f`: both sides learn it.
    fn end(&mut self, f: Failure) -> Failure {
        self.ended = Some(f.clone());
        self.wakers.wake_by_ref();
        f
    }

    /// The next whole answer in `buf`.
    fn next_message(&mut self) -> Result<Option<ProcessingResponse>, Failure> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Failure::Stream("a compressed message".into()));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(Failure::Stream(format!("a message of {len} bytes")));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let message = self.buf.split_to(len).freeze();
        ProcessingResponse::decode(message)
            .map(Some)
            .map_err(|e| Failure::Stream(format!("an undecodable answer: {e}")))
    }

    /// The side an answer goes to: the one it answers by its kind, when that side asked
    /// something; else (an `immediate_response`, an answer of the wrong kind) the side
    /// waiting, the response's first (the later phase). `None`: nobody asked.
    fn route(&mut self, m: &ProcessingResponse) -> Option<Side> {
        let kind = match &m.response {
            Some(
                Answered::RequestHeaders(_)
                | Answered::RequestBody(_)
                | Answered::RequestTrailers(_),
            ) => Some(Side::Request),
            Some(
                Answered::ResponseHeaders(_)
                | Answered::ResponseBody(_)
                | Answered::ResponseTrailers(_),
            ) => Some(Side::Response),
            _ => None,
        };
        let asked = |side: Side| self.asked[side as usize] > 0;
        let to = match kind {
            Some(side) if asked(side) => side,
            _ if asked(Side::Response) => Side::Response,
            _ if asked(Side::Request) => Side::Request,
            _ => return None,
        };
        self.asked[to as usize] -= 1;
        Some(to)
    }
}

impl Drop for Shared {
    /// Half-closes the stream (the last message was sent) and leaves the processor
    /// [`CLOSE_WAIT`] to end it, unless it was reset or is over already.
    fn drop(&mut self) {
        self.tx = None;
        let Call::Open { mut body, held } = std::mem::replace(&mut self.call, Call::Gone) else {
            return;
        };
        if self.reset || self.ended.is_some() || body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
            drop(held);
        });
    }
}

/// A message to the processor as a frame of the call's body.
fn data(message: Bytes) -> Result<Frame<Bytes>, crate::error::BodyError> {
    Ok(Frame::data(message))
}

/// The opened call, answering; or why not.
fn answering(opened: Opened) -> Result<Call, Failure> {
    let (parts, body) = opened.response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(Failure::Stream(format!("HTTP status {}", parts.status)));
    }
    // A trailers-only answer: the call failed (or ended) before any message.
    if let Some(code) = parts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
    {
        return Err(match code {
            0 => Failure::Closed,
            code => Failure::Stream(format!("grpc-status {code}")),
        });
    }
    Ok(Call::Open {
        body,
        held: opened.held,
    })
}
