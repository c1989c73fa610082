//! A body told to the processor chunk by chunk as it comes (`STREAMED`), as Envoy's
//! `ProcessorState` does in its `StreamedBodyCallback` state: each chunk is sent at once
//! (while the chunks told and not answered stay under the buffer limit; past it the body
//! is not read on, so the sender is held back), and goes on, as its answer's
//! `body_mutation` leaves it, when its answer comes, in order. The body's end is told with
//! the last chunk (`end_of_stream`, an empty one when the end came apart from the data);
//! trailers are not told and follow the last answered chunk.
//!
//! Header changes in the answers are ignored (the head went on after its own answer). A
//! late answer (`message_timeout` for each chunk), a failed stream or invalid answer ends
//! the body with an error: the request's answer is then the failure's (`500`, `504`),
//! kept on the [`Link`] for the response phase; a response's is cut short, its head gone.
//! With `failure_mode_allow`, after a clean close by the processor or an answer out of
//! turn, what is left goes on unprocessed. An `immediate_response` answers the request
//! (a response's is cut short, as Envoy resets a stream whose headers went).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use super::link::{Link, Side};
use super::{body_of, Answered, Failure, HttpBody, Phase, ProcessingRequest};
use crate::error::BodyError;
use crate::metrics::ExtProcCounter;
use crate::model::ext_proc::ExtProcPolicy;

/// What a streamed body needs of its filter.
pub(crate) struct Streaming {
    pub(super) link: Link,
    pub(super) side: Side,
    pub(super) policy: Arc<ExtProcPolicy>,
    pub(super) counter: ExtProcCounter,
    pub(super) grpc: bool,
    pub(super) limit: usize,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("side", &self.side)
            .finish()
    }
}

impl Streaming {
    /// `inner`, told to the processor as it is read.
    pub(crate) fn body<B>(self, inner: B) -> Streamed<B> {
        Streamed {
            inner,
            link: Some(self.link),
            side: self.side,
            policy: self.policy,
            counter: self.counter,
            grpc: self.grpc,
            limit: self.limit.max(1),
            told: VecDeque::new(),
            told_bytes: 0,
            deadline: None,
            read_all: false,
            trailers: None,
            through: false,
            failed: false,
        }
    }
}

/// A body whose chunks go on as the processor answers them ([`Streaming::body`]).
pub(crate) struct Streamed<B> {
    inner: B,
    /// `None` once nothing more is told (the stream let go).
    link: Option<Link>,
    side: Side,
    policy: Arc<ExtProcPolicy>,
    counter: ExtProcCounter,
    grpc: bool,
    limit: usize,
    /// Chunks told and not answered yet, in order: the data, whether it ended the body,
    /// when it was told.
    told: VecDeque<(Bytes, bool, Instant)>,
    told_bytes: usize,
    /// When the oldest chunk told is late.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The inner body's end was read (and told).
    read_all: bool,
    trailers: Option<HeaderMap>,
    /// Processing is over: what was told and what is left go on unchanged.
    through: bool,
    /// Ended with an error.
    failed: bool,
}

/// What an answer comes to.
enum Step {
    /// The chunk answered, as it goes on.
    Chunk(Bytes),
    /// Processing is over.
    Through,
    /// The body fails (its request answered, when it is one).
    Fail,
}

impl<B: Body<Data = Bytes, Error = BodyError> + Unpin> Streamed<B> {
    /// Tells `data` (`end`: the body ends with it). It is kept until its answer comes
    /// (or goes on unchanged if processing ends first, even when it could not be told).
    fn tell(&mut self, data: Bytes, end: bool) -> Result<(), Failure> {
        let body = HttpBody {
            body: data.clone(),
            end_of_stream: end,
        };
        self.told_bytes += data.len();
        self.told.push_back((data, end, Instant::now()));
        self.read_all |= end;
        if self.told.len() == 1 {
            self.deadline = None;
        }
        let phase = match self.side {
            Side::Request => Phase::RequestBody(body),
            Side::Response => Phase::ResponseBody(body),
        };
        let frame = crate::services::grpc_frame(&ProcessingRequest {
            request: Some(phase),
        });
        match &self.link {
            Some(link) => link.send(self.side, frame),
            None => Ok(()),
        }
    }

    /// What the answer to the oldest chunk told comes to.
    fn answered(&mut self, answer: super::ProcessingResponse) -> Step {
        let common = match (answer.response, self.side) {
            (Some(Answered::RequestBody(b)), Side::Request)
            | (Some(Answered::ResponseBody(b)), Side::Response) => b.response.unwrap_or_default(),
            (Some(Answered::ImmediateResponse(r)), _) => {
                let link = self.link.take();
                if self.policy.disable_immediate_response {
                    self.counter.inc("immediate_response_ignored");
                    if let Some(link) = link {
                        link.set_over();
                    }
                    return Step::Through;
                }
                let count = |outcome| self.counter.inc(outcome);
                let answer = super::immediate_answer(&self.policy, r, self.grpc, &count);
                if let (Some(link), Side::Request) = (link, self.side) {
                    link.put_answer(answer);
                }
                return Step::Fail;
            }
            (None, _) => return self.failure(Failure::Spurious("an empty answer")),
            (Some(_), _) => {
                return self.failure(Failure::Spurious("an answer to what was not sent"))
            }
        };
        if !(0..=1).contains(&common.status) {
            return self.failure(Failure::Invalid(format!("status {}", common.status)));
        }
        let new = match common.body_mutation.map(body_of).transpose() {
            Ok(new) => new.flatten(),
            Err(f) => return self.failure(f),
        };
        self.counter.inc("continue");
        let (data, _, _) = self.told.pop_front().expect("an answer to a chunk told");
        self.told_bytes -= data.len();
        self.deadline = None;
        Step::Chunk(new.unwrap_or(data))
    }

    /// What a failure comes to: processing over (`failure_mode_allow`, a clean close, an
    /// answer out of turn) or the body failed, the request's answer kept.
    fn failure(&mut self, f: Failure) -> Step {
        let Some(link) = self.link.take() else {
            return Step::Through;
        };
        link.give_up(&f);
        let count = |outcome| self.counter.inc(outcome);
        match super::failure_status(&self.policy, f, &count) {
            None => Step::Through,
            Some(status) => {
                if self.side == Side::Request {
                    link.put_answer(super::error_answer(status, self.grpc));
                }
                Step::Fail
            }
        }
    }

    /// Whether the oldest chunk's answer is late (its timer set as it becomes the oldest).
    fn late(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((_, _, told)) = self.told.front() else {
            return false;
        };
        let at = *told + self.policy.message_timeout;
        let sleep = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl<B: Body<Data = Bytes, Error = BodyError> + Unpin> Body for Streamed<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if this.through {
                if let Some((data, ..)) = this.told.pop_front() {
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    continue;
                }
                if let Some(t) = this.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                if this.read_all {
                    return Poll::Ready(None);
                }
                return Pin::new(&mut this.inner).poll_frame(cx);
            }
            // Read and tell while what was told and not answered stays under the limit.
            let mut told = Ok(());
            while told.is_ok() && !this.read_all && this.told_bytes < this.limit {
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            let end = this.inner.is_end_stream();
                            if !data.is_empty() || end {
                                told = this.tell(data, end);
                            }
                        }
                        Err(frame) => {
                            // Trailers end the body: the last chunk told said more
                            // follows; they go on after it, untold.
                            this.trailers = frame.into_trailers().ok();
                            this.read_all = true;
                        }
                    },
                    Poll::Ready(Some(Err(e))) => {
                        // The sender's failure: the stream goes with this body.
                        this.failed = true;
                        if let Some(link) = this.link.take() {
                            link.reset();
                        }
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) => told = this.tell(Bytes::new(), true),
                    Poll::Pending => break,
                }
            }
            if let Err(f) = told {
                match this.failure(f) {
                    Step::Fail => {
                        this.failed = true;
                        return Poll::Ready(Some(Err("external processing failed".into())));
                    }
                    _ => {
                        this.through = true;
                        continue;
                    }
                }
            }
            if this.told.is_empty() {
                if !this.read_all {
                    // Waiting for the sender (its waker is set).
                    return Poll::Pending;
                }
                // All answered: nothing more is told.
                this.link = None;
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(link) = this.link.clone() else {
                this.through = true;
                continue;
            };
            let step = match link.poll_answer(this.side, cx) {
                Poll::Ready(Ok(answer)) => this.answered(answer),
                Poll::Ready(Err(f)) => this.failure(f),
                Poll::Pending if this.late(cx) => this.failure(Failure::Timeout),
                Poll::Pending => return Poll::Pending,
            };
            match step {
                Step::Chunk(data) if data.is_empty() => continue,
                Step::Chunk(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Step::Through => this.through = true,
                Step::Fail => {
                    this.failed = true;
                    return Poll::Ready(Some(Err("external processing failed".into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.read_all && self.told.is_empty() && self.trailers.is_none())
    }
}
