//! External processing (`envoy.filters.http.ext_proc`): a service of the operator's
//! (`envoy.service.ext_proc.v3.ExternalProcessor/Process`, one bidirectional gRPC stream
//! per request) is told the request's headers, from the filter chain ([`crate::filters`]),
//! and its response's headers, when the response comes ([`crate::http`]), as Envoy's filter
//! (`ext_proc.cc`, `processor_state.cc`, `mutation_utils.cc`) does:
//!
//! - each message waits for the processor's answer to it, at most `message_timeout`;
//!   a head whose body is buffered is held, with its changes, until the body's answer;
//! - a `CommonResponse` changes the headers (`header_mutation`: removals, then `set_headers`
//!   with their append actions), each change checked against `mutation_rules` (a
//!   disallowed one skipped and counted, or with `disallow_is_error` a `500`); a request's
//!   `:path` and a response's `:status` may change, other `:`-headers are not Myelin's to
//!   set and count as disallowed; `clear_route_cache` (and `route_cache_action`) chooses
//!   the route again;
//! - an `immediate_response` answers the request (its status, 200 when below 200, headers,
//!   body, and `grpc_status` for gRPC clients) unless `disable_immediate_response`;
//! - the processor closing the stream (`grpc-status` 0) ends processing for the request,
//!   which goes on unchanged; an answer out of turn does too (counted `spurious`);
//! - an unusable stream (not opened, failed) is a `500`, a late answer a `504`, or with
//!   `failure_mode_allow` the request goes on and the stream is dropped.
//!
//! Bodies are held, at most the connection manager's buffer limit (the listener's
//! `per_connection_buffer_limit_bytes`), and sent after their head: whole (`BUFFERED`), or
//! up to the limit with the rest following untold (`BUFFERED_PARTIAL`, their
//! `content-length` removed); or told chunk by chunk as they go on, after the head went
//! (`STREAMED`, [`streamed`]). The head is told at once and a request's body read ahead only
//! after its answer (so an answer to the head, an `immediate_response` say, does not wait
//! for the body), through the filter chain (where what an external authorization filter
//! before read is reused); a response's is collected here. The answer may replace the body
//! (`body_mutation`) and change the head, still held; a new body must match the head's
//! `content-length` (Envoy checks it, it does not rewrite it). A body told without its head
//! loses its `content-length`. `CONTINUE_AND_REPLACE` to a head replaces the body with the
//! answer's, unsent. Trailers are never sent (the converter takes only `SKIP`).
//!
//! The stream ([`link`]) goes through the connection's own pools ([`crate::services`]) and
//! is half-closed after the last message; the processor then has a few seconds to end it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;

use crate::body::ReadAhead;
use crate::error::{BodyError, ProxyBody};
use crate::filters::Answer;
use crate::metrics::ProxyMetrics;
use crate::model::ext_proc::{
    headers_sent, BodyMode, ExtProcPolicy, ExtProcRoute, ProcessingMode, RouteCache,
};
use crate::model::filter::GrpcService;
use crate::services::{
    apply, edit_of, Edit, HeaderMapProto, HeaderValueOptionProto, HeaderValueProto, Services,
};
use crate::traffic::router::RequestHead;

mod link;
mod streamed;

use link::{Link, Side};
pub(crate) use streamed::Streaming;

const PROCESS_PATH: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";
/// How long a half-closed stream is left to the processor to end (Envoy's
/// `deferred_close_timeout` default).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The largest answer taken from the processor (gRPC's default receive limit).
const MAX_MESSAGE: usize = 4 << 20;

// The messages of `envoy/service/ext_proc/v3/external_processor.proto` the proxy writes
// and reads, with their tags there; declared here for the reason `crate::ext_authz` gives.
// The integration test's processor uses `xds-api`'s.

/// `ProcessingRequest`.
#[derive(Clone, PartialEq, Message)]
struct ProcessingRequest {
    #[prost(oneof = "Phase", tags = "2, 3, 4, 5")]
    request: Option<Phase>,
}

/// The part of `ProcessingRequest.request` Myelin sends.
#[derive(Clone, PartialEq, prost::Oneof)]
enum Phase {
    #[prost(message, tag = "2")]
    RequestHeaders(HttpHeaders),
    #[prost(message, tag = "3")]
    ResponseHeaders(HttpHeaders),
    #[prost(message, tag = "4")]
    RequestBody(HttpBody),
    #[prost(message, tag = "5")]
    ResponseBody(HttpBody),
}

/// `HttpBody`.
#[derive(Clone, PartialEq, Message)]
struct HttpBody {
    #[prost(bytes = "bytes", tag = "1")]
    body: Bytes,
    #[prost(bool, tag = "2")]
    end_of_stream: bool,
}

/// `HttpHeaders`.
#[derive(Clone, PartialEq, Message)]
struct HttpHeaders {
    #[prost(message, optional, tag = "1")]
    headers: Option<HeaderMapProto>,
    #[prost(bool, tag = "3")]
    end_of_stream: bool,
}

/// `ProcessingResponse` (`dynamic_metadata` is not read).
#[derive(Clone, PartialEq, Message)]
struct ProcessingResponse {
    #[prost(oneof = "Answered", tags = "1, 2, 3, 4, 5, 6, 7")]
    response: Option<Answered>,
    #[prost(message, optional, tag = "9")]
    mode_override: Option<ModeOverride>,
    /// `override_message_timeout`: the processor asks for more time. Myelin takes no
    /// `max_message_timeout`, and Envoy ignores such a message without one: so does the
    /// [`link::Link`] (its `Duration` is not read).
    #[prost(message, optional, tag = "10")]
    override_message_timeout: Option<NotRead>,
}

/// `extensions.filters.http.ext_proc.v3.ProcessingMode`, as `mode_override` carries it.
#[derive(Clone, PartialEq, Message)]
struct ModeOverride {
    #[prost(int32, tag = "1")]
    request_header_mode: i32,
    #[prost(int32, tag = "2")]
    response_header_mode: i32,
    #[prost(int32, tag = "3")]
    request_body_mode: i32,
    #[prost(int32, tag = "4")]
    response_body_mode: i32,
    #[prost(int32, tag = "5")]
    request_trailer_mode: i32,
    #[prost(int32, tag = "6")]
    response_trailer_mode: i32,
}

/// A message whose presence alone matters (its fields are skipped).
#[derive(Clone, PartialEq, Message)]
struct NotRead {}

/// `ProcessingResponse.response`: the trailer answers are only told apart (they answer
/// nothing Myelin sends).
#[derive(Clone, PartialEq, prost::Oneof)]
enum Answered {
    #[prost(message, tag = "1")]
    RequestHeaders(HeadersResponse),
    #[prost(message, tag = "2")]
    ResponseHeaders(HeadersResponse),
    #[prost(message, tag = "3")]
    RequestBody(HeadersResponse),
    #[prost(message, tag = "4")]
    ResponseBody(HeadersResponse),
    #[prost(bytes = "bytes", tag = "5")]
    RequestTrailers(Bytes),
    #[prost(bytes = "bytes", tag = "6")]
    ResponseTrailers(Bytes),
    #[prost(message, tag = "7")]
    ImmediateResponse(ImmediateResponse),
}

/// `HeadersResponse`, and `BodyResponse` (the same message: one `CommonResponse`, tag 1).
#[derive(Clone, PartialEq, Message)]
struct HeadersResponse {
    #[prost(message, optional, tag = "1")]
    response: Option<CommonResponse>,
}

/// `CommonResponse` (`trailers` is not read: Envoy does not either).
#[derive(Clone, PartialEq, Message)]
struct CommonResponse {
    /// `CONTINUE` (0) or `CONTINUE_AND_REPLACE` (1).
    #[prost(int32, tag = "1")]
    status: i32,
    #[prost(message, optional, tag = "2")]
    header_mutation: Option<HeaderMutation>,
    #[prost(message, optional, tag = "3")]
    body_mutation: Option<BodyMutation>,
    #[prost(bool, tag = "5")]
    clear_route_cache: bool,
}

/// `BodyMutation`.
#[derive(Clone, PartialEq, Message)]
struct BodyMutation {
    #[prost(oneof = "Mutation", tags = "1, 2, 3")]
    mutation: Option<Mutation>,
}

/// `BodyMutation.mutation` (`streamed_response` only told apart: it answers
/// `FULL_DUPLEX_STREAMED` bodies, which Myelin does not send).
#[derive(Clone, PartialEq, prost::Oneof)]
enum Mutation {
    #[prost(bytes = "bytes", tag = "1")]
    Body(Bytes),
    #[prost(bool, tag = "2")]
    ClearBody(bool),
    #[prost(bytes = "bytes", tag = "3")]
    StreamedResponse(Bytes),
}

/// `HeaderMutation`.
#[derive(Clone, PartialEq, Message)]
struct HeaderMutation {
    #[prost(message, repeated, tag = "1")]
    set_headers: Vec<HeaderValueOptionProto>,
    #[prost(string, repeated, tag = "2")]
    remove_headers: Vec<String>,
}

/// `ImmediateResponse`.
#[derive(Clone, PartialEq, Message)]
struct ImmediateResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<HttpStatus>,
    #[prost(message, optional, tag = "2")]
    headers: Option<HeaderMutation>,
    #[prost(bytes = "bytes", tag = "3")]
    body: Bytes,
    #[prost(message, optional, tag = "4")]
    grpc_status: Option<GrpcStatus>,
    #[prost(string, tag = "5")]
    details: String,
}

/// `type.v3.HttpStatus`.
#[derive(Clone, PartialEq, Message)]
struct HttpStatus {
    #[prost(int32, tag = "1")]
    code: i32,
}

/// `GrpcStatus`.
#[derive(Clone, PartialEq, Message)]
struct GrpcStatus {
    #[prost(uint32, tag = "1")]
    status: u32,
}

/// Header changes the processor asked for, checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Headers removed (first).
    remove: Vec<HeaderName>,
    /// Then these changes, in order.
    set: Vec<Edit>,
    /// A new `:path` (requests) or `:status` (responses).
    pseudo: Option<HeaderValue>,
    /// Then `content-length` goes (the body is told alone, or replaced).
    drop_length: bool,
}

impl Changes {
    /// Only `content-length` removed.
    fn without_length() -> Changes {
        Changes {
            drop_length: true,
            ..Changes::default()
        }
    }

    /// Applies the changes to `headers` (not the pseudo-header's).
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        apply(headers, &self.set);
        if self.drop_length {
            headers.remove(header::CONTENT_LENGTH);
        }
    }

    /// Applies the changes to a response, its `:status` too.
    fn apply_to(&self, resp: &mut Response<ProxyBody>) {
        self.apply(resp.headers_mut());
        let status = self.pseudo.as_ref();
        if let Some(s) = status.and_then(|v| StatusCode::from_bytes(v.as_bytes()).ok()) {
            *resp.status_mut() = s;
        }
    }

    /// The new `:path`, when the processor set one.
    pub(crate) fn path(&self) -> Option<&str> {
        self.pseudo.as_ref()?.to_str().ok()
    }
}

/// Why an exchange with the processor went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No answer within `message_timeout`.
    Timeout,
    /// The stream could not be opened, or failed.
    Stream(String),
    /// The processor ended the stream cleanly: processing is over, nothing failed.
    Closed,
    /// An answer to something not asked (or not now).
    Spurious(&'static str),
    /// Changes that are not valid HTTP, or disallowed with `disallow_is_error`.
    Invalid(String),
}

/// A request's processing by one filter: its settings, and the stream once open.
pub(crate) struct Exchange {
    policy: Arc<ExtProcPolicy>,
    service: GrpcService,
    mode: ProcessingMode,
    /// The stream, once a message needs it.
    link: Option<Link>,
    /// The request's body is told as it goes on (`STREAMED`): the response phase comes
    /// even when it tells nothing, for an answer decided meanwhile.
    streaming: bool,
    /// Processing is over for this request (closed by the processor, or failed and let
    /// through).
    over: bool,
    /// The most bytes of a body held for the processor (the connection manager's buffer
    /// limit).
    limit: usize,
}

/// What processing the request came to.
pub(crate) enum Processed {
    /// Go on, with these changes.
    Continue(Continued),
    /// Answer the request with this.
    Answer(Answer),
}

/// What the processor changed in a request that goes on.
#[derive(Debug, Default)]
pub(crate) struct Continued {
    /// The header changes of each answer, in order.
    pub(crate) changes: Vec<Changes>,
    /// The route is to be chosen again.
    pub(crate) reroute: bool,
    /// The request's new body (it had its length removed or checked).
    pub(crate) body: Option<Bytes>,
    /// `Some(n)`: the new body replaces only the first `n` bytes of the client's, which
    /// were told (`BUFFERED_PARTIAL`); the rest follows as it comes.
    pub(crate) replaces: Option<usize>,
    /// The body is told as it goes on (`STREAMED`): the request's body is to go through
    /// [`Streaming::body`].
    pub(crate) streamed: Option<Streaming>,
}

/// A checked answer to a head or a body.
struct Reply {
    changes: Changes,
    clear_route_cache: bool,
    /// `CONTINUE_AND_REPLACE` to a head: no body is sent to the processor.
    replaced: bool,
    /// The new body (`body_mutation`).
    body: Option<Bytes>,
}

impl Exchange {
    /// The exchange of a filter with `policy` on a route with `route`'s settings; `None`
    /// when the route turns the filter off.
    pub(crate) fn new(
        policy: &Arc<ExtProcPolicy>,
        route: Option<&ExtProcRoute>,
        limit: usize,
    ) -> Option<Exchange> {
        let (mut mode, mut service) = (policy.mode, policy.service.clone());
        match route {
            Some(ExtProcRoute::Disabled) => return None,
            Some(ExtProcRoute::Overrides {
                mode: m,
                service: s,
                metadata,
            }) => {
                if let Some(m) = m {
                    mode = *m;
                }
                if let Some(s) = s {
                    service = s.clone();
                }
                for (name, value) in metadata {
                    service.metadata.retain(|(n, _)| n != name);
                    service.metadata.push((name.clone(), value.clone()));
                }
            }
            None => {}
        }
        Some(Exchange {
            policy: policy.clone(),
            service,
            mode,
            link: None,
            streaming: false,
            over: false,
            limit,
        })
    }

    /// Whether the response is to be processed (its headers or its body).
    pub(crate) fn wants_response(&self) -> bool {
        self.streaming
            || (!self.over && (self.mode.response_headers || self.mode.response_body.sent()))
    }

    /// Processes the request: its headers (when the mode sends them) at once, then its body
    /// when the mode buffers it, read with `read` (asked for the limit and a byte, to tell
    /// a body over the limit; in part, the limit) only after the head's answer, as Envoy's filter holds the
    /// body only from its `decodeData`; `read` is `None` when the request has no body to
    /// read (CONNECT, an upgrade). A failure to read the body is the client's.
    pub(crate) async fn request<F, Fut>(
        &mut self,
        services: &dyn Services,
        head: &RequestHead<'_>,
        read: Option<F>,
        end_of_stream: bool,
        grpc: bool,
        metrics: &ProxyMetrics,
    ) -> Result<Processed, BodyError>
    where
        F: FnOnce(usize) -> Fut,
        Fut: std::future::Future<Output = Result<ReadAhead, BodyError>>,
    {
        let mut processed = Continued::default();
        let has_body = !end_of_stream && read.is_some();
        let (told_head, mut replaced) = (self.mode.request_headers, false);
        if told_head {
            let pseudo = [
                (":authority", head.authority.as_bytes()),
                (":path", head.path.as_bytes()),
                (":method", head.method.as_bytes()),
                (":scheme", head.scheme.as_bytes()),
            ];
            let headers = self.told(pseudo.into_iter(), head.headers);
            let message = Phase::RequestHeaders(HttpHeaders {
                headers: Some(headers),
                end_of_stream,
            });
            let answer = match self.ask(services, Side::Request, message).await {
                Ok((Answered::RequestHeaders(h), mode)) => {
                    self.override_mode(mode, metrics);
                    self.headers_answer(h, ":path", metrics)
                }
                Ok((Answered::ImmediateResponse(r), _)) => {
                    return Ok(self.immediate(r, grpc, metrics))
                }
                Ok(_) => Err(Failure::Spurious("an answer to what was not sent")),
                Err(f) => Err(f),
            };
            match answer {
                Ok(a) => {
                    metrics.ext_proc(&self.policy.stat_prefix, "continue");
                    processed.reroute = self.reroute(a.clear_route_cache);
                    processed.changes.push(a.changes);
                    processed.body = a.body;
                    replaced = a.replaced;
                }
                Err(f) => return Ok(self.request_failed(f, processed, grpc, metrics)),
            }
        }
        // The mode as the head's answer left it.
        let partial = self.mode.request_body == BodyMode::BufferedPartial;
        let streamed = self.mode.request_body == BodyMode::Streamed;
        let send_body = self.mode.request_body.sent() && has_body && !replaced;
        if send_body && (self.mode.request_body.told_in_part() || !told_head) {
            // A body told alone, in part or in chunks may change: its length goes (before
            // the head's answer's changes, as in Envoy, where that answer may set it again).
            processed.changes.insert(0, Changes::without_length());
        }
        if send_body && streamed {
            // Told as it goes on: the head goes now.
            let link = match self.linked(services).await {
                Ok(link) => link,
                Err(f) => return Ok(self.request_failed(f, processed, grpc, metrics)),
            };
            processed.streamed = Some(self.streaming(link, Side::Request, grpc, metrics));
            self.streaming = true;
            return Ok(Processed::Continue(processed));
        }
        if let (true, Some(read)) = (send_body, read) {
            // The whole body, and a byte more to tell one over the limit; in part, up to
            // the limit.
            let wanted = if partial {
                self.limit
            } else {
                self.limit.saturating_add(1)
            };
            let read = match read(wanted).await {
                Ok(read) => read,
                Err(e) => {
                    self.close();
                    return Err(e);
                }
            };
            if !partial && (!read.whole || read.data.len() > self.limit) {
                metrics.ext_proc(&self.policy.stat_prefix, "body_too_large");
                self.close();
                let resp = crate::http::text_response(413, "Payload Too Large".into());
                let resp = crate::http::for_grpc(resp, "Payload Too Large", grpc);
                let resp = crate::local_reply::mark(resp, 413, "Payload Too Large", None);
                return Ok(Processed::Answer((resp, "-")));
            }
            let message = Phase::RequestBody(HttpBody {
                body: read.data.clone(),
                end_of_stream: read.whole && read.trailers.is_none(),
            });
            // The head was told and is held still, whatever an override says of heads now.
            let held = told_head;
            let answer = match self.ask(services, Side::Request, message).await {
                Ok((Answered::RequestBody(b), _)) => self.body_answer(b, ":path", held, metrics),
                Ok((Answered::ImmediateResponse(r), _)) => {
                    return Ok(self.immediate(r, grpc, metrics))
                }
                Ok(_) => Err(Failure::Spurious("an answer to what was not sent")),
                Err(f) => Err(f),
            };
            let answer = answer.and_then(|a| {
                if let Some(body) = &a.body {
                    let changes = processed.changes.iter().chain([&a.changes]);
                    length_matches(head.headers, changes, body)?;
                }
                Ok(a)
            });
            match answer {
                Ok(a) => {
                    metrics.ext_proc(&self.policy.stat_prefix, "continue");
                    processed.reroute |= self.reroute(a.clear_route_cache);
                    processed.changes.push(a.changes);
                    if a.body.is_some() && !read.whole {
                        processed.replaces = Some(read.data.len());
                    }
                    processed.body = a.body.or(processed.body);
                }
                Err(f) => return Ok(self.request_failed(f, processed, grpc, metrics)),
            }
        }
        if !self.wants_response() {
            self.close();
        }
        Ok(Processed::Continue(processed))
    }

    /// The processor's `mode_override` in its answer to a head, taken with
    /// `allow_mode_override` (else ignored, as in Envoy): the mode for the rest of the
    /// request and its response. One Myelin cannot follow (trailers sent,
    /// `FULL_DUPLEX_STREAMED`, an unknown value) is ignored whole.
    fn override_mode(&mut self, m: Option<ModeOverride>, metrics: &ProxyMetrics) {
        let Some(m) = m.filter(|_| self.policy.allow_mode_override) else {
            return;
        };
        let (header, body) = (headers_sent, BodyMode::from_proto);
        let skipped = |v: i32| matches!(v, 0 | 2);
        let mode = (
            header(m.request_header_mode),
            header(m.response_header_mode),
            body(m.request_body_mode),
            body(m.response_body_mode),
        );
        let outcome = match mode {
            (
                Some(request_headers),
                Some(response_headers),
                Some(request_body),
                Some(response_body),
            ) if skipped(m.request_trailer_mode) && skipped(m.response_trailer_mode) => {
                self.mode = ProcessingMode {
                    request_headers,
                    response_headers,
                    request_body,
                    response_body,
                };
                "mode_override"
            }
            _ => "mode_override_ignored",
        };
        metrics.ext_proc(&self.policy.stat_prefix, outcome);
    }

    /// Whether the route is to be chosen again after an answer that did or did not ask
    /// for it (`clear_route_cache`), as `route_cache_action` says.
    fn reroute(&self, clear: bool) -> bool {
        match self.policy.route_cache {
            RouteCache::Default => clear,
            RouteCache::Clear => true,
            RouteCache::Retain => false,
        }
    }

    /// The request after a failure: answered, or on unprocessed (what the processor
    /// changed before the failure goes: Envoy applies each answer as it comes).
    fn request_failed(
        &mut self,
        f: Failure,
        processed: Continued,
        grpc: bool,
        metrics: &ProxyMetrics,
    ) -> Processed {
        match self.failed(f, metrics) {
            Some(status) => Processed::Answer(error_answer(status, grpc)),
            None => Processed::Continue(processed),
        }
    }

    /// Processes the response: `resp` changed (its headers, then its body when the mode
    /// buffers it), or replaced by the processor's answer or an error's.
    /// Returns the response flags of an answer decided while the request's body was told
    /// (`STREAMED`: an `immediate_response`, a failure), which replaces `resp`.
    pub(crate) async fn response(
        mut self,
        services: &dyn Services,
        resp: &mut Response<ProxyBody>,
        grpc: bool,
        metrics: &ProxyMetrics,
    ) -> Option<&'static str> {
        if let Some(link) = &self.link {
            if let Some((answer, flags)) = link.take_answer() {
                *resp = answer;
                self.close();
                return Some(flags);
            }
            self.over |= link.is_over();
        }
        let wanted = self.mode.response_headers || self.mode.response_body.sent();
        if !self.over && wanted {
            if let Err(f) = self.process_response(services, resp, grpc, metrics).await {
                if let Some(status) = self.failed(f, metrics) {
                    *resp = error_answer(status, grpc).0;
                }
            }
        }
        self.close();
        None
    }

    /// [`Exchange::response`] until a failure.
    async fn process_response(
        &mut self,
        services: &dyn Services,
        resp: &mut Response<ProxyBody>,
        grpc: bool,
        metrics: &ProxyMetrics,
    ) -> Result<(), Failure> {
        let has_body = !resp.body().is_end_stream();
        let (told_head, mut replaced) = (self.mode.response_headers, false);
        if told_head {
            let status = resp.status();
            let pseudo = [(":status", status.as_str().as_bytes())];
            let headers = self.told(pseudo.into_iter(), resp.headers());
            let message = Phase::ResponseHeaders(HttpHeaders {
                headers: Some(headers),
                end_of_stream: resp.body().is_end_stream(),
            });
            let a = match self.ask(services, Side::Response, message).await? {
                (Answered::ResponseHeaders(h), mode) => {
                    self.override_mode(mode, metrics);
                    self.headers_answer(h, ":status", metrics)?
                }
                (Answered::ImmediateResponse(r), _) => {
                    if let Processed::Answer((answer, _)) = self.immediate(r, grpc, metrics) {
                        *resp = answer;
                    }
                    return Ok(());
                }
                _ => return Err(Failure::Spurious("an answer to what was not sent")),
            };
            metrics.ext_proc(&self.policy.stat_prefix, "continue");
            if has_body && self.mode.response_body.told_in_part() {
                // As for the request: a body told in part or in chunks loses its length,
                // once the head is told (its answer may set it again).
                resp.headers_mut().remove(header::CONTENT_LENGTH);
            }
            a.changes.apply_to(resp);
            if let Some(body) = a.body {
                *resp.body_mut() = frames_body(body, None);
            }
            replaced = a.replaced;
        } else if has_body && self.mode.response_body.sent() {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        // The mode as the head's answer left it.
        let partial = self.mode.response_body == BodyMode::BufferedPartial;
        let streamed = self.mode.response_body == BodyMode::Streamed;
        let send_body = self.mode.response_body.sent() && has_body && !replaced;
        if !send_body {
            return Ok(());
        }
        if streamed {
            let link = self.linked(services).await?;
            let streaming = self.streaming(link, Side::Response, grpc, metrics);
            let body = std::mem::replace(resp.body_mut(), frames_body(Bytes::new(), None));
            *resp.body_mut() = streaming.body(body).boxed();
            return Ok(());
        }
        let ReadAhead {
            data,
            trailers,
            whole,
        } = match buffer(resp.body_mut(), self.limit, partial).await {
            Ok(Some(held)) => held,
            Ok(None) => {
                metrics.ext_proc(&self.policy.stat_prefix, "body_too_large");
                *resp = error_answer(500, grpc).0;
                return Ok(());
            }
            Err(e) => {
                // The upstream's body failed while held: the client learns it as a reset.
                *resp.body_mut() = error_body(e);
                return Ok(());
            }
        };
        let message = Phase::ResponseBody(HttpBody {
            body: data.clone(),
            end_of_stream: whole && trailers.is_none(),
        });
        let held = told_head;
        let answer = match self.ask(services, Side::Response, message).await {
            Ok((Answered::ResponseBody(b), _)) => {
                self.body_answer(b, ":status", held, metrics).and_then(|a| {
                    if let Some(body) = &a.body {
                        length_matches(resp.headers(), [&a.changes], body)?;
                    }
                    Ok(a)
                })
            }
            Ok((Answered::ImmediateResponse(r), _)) => {
                if let Processed::Answer((answer, _)) = self.immediate(r, grpc, metrics) {
                    *resp = answer;
                }
                return Ok(());
            }
            Ok(_) => Err(Failure::Spurious("an answer to what was not sent")),
            Err(f) => Err(f),
        };
        let a = match answer {
            Ok(a) => a,
            Err(f) => {
                // The body goes on as it came if the failure lets the response through.
                put_back(resp.body_mut(), data, trailers, whole);
                return Err(f);
            }
        };
        metrics.ext_proc(&self.policy.stat_prefix, "continue");
        a.changes.apply_to(resp);
        put_back(resp.body_mut(), a.body.unwrap_or(data), trailers, whole);
        Ok(())
    }

    /// The headers the processor is told: the pseudo-headers and `headers`, as
    /// `forward_rules` allow, values as raw bytes (Envoy's `send_header_raw_value`).
    fn told<'h>(
        &self,
        pseudo: impl Iterator<Item = (&'h str, &'h [u8])>,
        headers: &'h HeaderMap,
    ) -> HeaderMapProto {
        let fields = pseudo.chain(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        HeaderMapProto {
            headers: fields
                .filter(|(name, _)| self.policy.forward.forwards(name))
                .map(|(name, value)| HeaderValueProto {
                    key: name.to_owned(),
                    value: String::new(),
                    raw_value: value.to_vec(),
                })
                .collect(),
        }
    }

    /// Sends `message` of `side` (the stream opened with it first) and waits for the
    /// answer.
    async fn ask(
        &mut self,
        services: &dyn Services,
        side: Side,
        message: Phase,
    ) -> Result<(Answered, Option<ModeOverride>), Failure> {
        let frame = crate::services::grpc_frame(&ProcessingRequest {
            request: Some(message),
        });
        let timeout = self.policy.message_timeout;
        let exchange = async {
            let link = match &self.link {
                Some(link) => link.clone(),
                None => self.link_to(services).await?,
            };
            link.send(side, frame)?;
            link.answer(side).await
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Failure::Timeout)??;
        let mode = answer.mode_override;
        let answered = answer
            .response
            .ok_or(Failure::Spurious("an empty answer"))?;
        Ok((answered, mode))
    }

    /// The stream, made ready (an endpoint of the processor's cluster picked) if it was
    /// not, within `message_timeout`: a body told chunk by chunk sends its call with the
    /// first chunk.
    async fn linked(&mut self, services: &dyn Services) -> Result<Link, Failure> {
        if let Some(link) = &self.link {
            return Ok(link.clone());
        }
        tokio::time::timeout(self.policy.message_timeout, self.link_to(services))
            .await
            .map_err(|_| Failure::Timeout)?
    }

    /// A new stream to the processor, the call sent with its first message.
    async fn link_to(&mut self, services: &dyn Services) -> Result<Link, Failure> {
        let opener = services
            .open(&self.service.cluster)
            .await
            .map_err(Failure::Stream)?;
        let link = Link::new(opener, self.service.clone());
        self.link = Some(link.clone());
        Ok(link)
    }

    /// What a body told chunk by chunk on `side` needs.
    fn streaming(&self, link: Link, side: Side, grpc: bool, metrics: &ProxyMetrics) -> Streaming {
        Streaming {
            link,
            side,
            policy: self.policy.clone(),
            counter: metrics.ext_proc_counter(&self.policy.stat_prefix),
            grpc,
            limit: self.limit,
        }
    }

    /// The checked changes of an answer to a head; with `CONTINUE_AND_REPLACE` its body
    /// is the processor's (when it sends one) and is not sent to it.
    fn headers_answer(
        &self,
        h: HeadersResponse,
        pseudo: &str,
        metrics: &ProxyMetrics,
    ) -> Result<Reply, Failure> {
        let common = h.response.unwrap_or_default();
        let mut changes = self.changes(common.header_mutation, pseudo, metrics)?;
        let (replaced, body) = match common.status {
            0 => (false, None),
            1 => {
                let body = common.body_mutation.map(body_of).transpose()?.flatten();
                // The new body's length is not the old one's (Envoy removes it too).
                changes.drop_length |= body.is_some();
                (true, body)
            }
            other => return Err(Failure::Invalid(format!("status {other}"))),
        };
        Ok(Reply {
            changes,
            clear_route_cache: common.clear_route_cache,
            replaced,
            body,
        })
    }

    /// The checked changes of an answer to a buffered body: header changes only when the
    /// headers were told and are still held (`held`; Envoy ignores them otherwise),
    /// `CONTINUE_AND_REPLACE` read as `CONTINUE` (as Envoy's `handleBufferedBodyCallback`).
    fn body_answer(
        &self,
        b: HeadersResponse,
        pseudo: &str,
        held: bool,
        metrics: &ProxyMetrics,
    ) -> Result<Reply, Failure> {
        let common = b.response.unwrap_or_default();
        if !(0..=1).contains(&common.status) {
            return Err(Failure::Invalid(format!("status {}", common.status)));
        }
        let changes = match held {
            true => self.changes(common.header_mutation, pseudo, metrics)?,
            false => Changes::default(),
        };
        Ok(Reply {
            changes,
            clear_route_cache: common.clear_route_cache,
            replaced: false,
            body: common.body_mutation.map(body_of).transpose()?.flatten(),
        })
    }

    /// The checked changes of a `HeaderMutation` ([`changes_of`]).
    fn changes(
        &self,
        mutation: Option<HeaderMutation>,
        pseudo: &str,
        metrics: &ProxyMetrics,
    ) -> Result<Changes, Failure> {
        let count = |outcome| metrics.ext_proc(&self.policy.stat_prefix, outcome);
        changes_of(&self.policy, mutation, pseudo, &count)
    }

    /// The processor's `immediate_response`, as the answer (or ignored with
    /// `disable_immediate_response`: processing stops).
    fn immediate(&mut self, r: ImmediateResponse, grpc: bool, metrics: &ProxyMetrics) -> Processed {
        let count = |outcome| metrics.ext_proc(&self.policy.stat_prefix, outcome);
        let answer = if self.policy.disable_immediate_response {
            count("immediate_response_ignored");
            Processed::Continue(Continued::default())
        } else {
            Processed::Answer(immediate_answer(&self.policy, r, grpc, &count))
        };
        self.close();
        answer
    }

    /// What a failure comes to ([`failure_status`]); the stream is reset unless the
    /// processor ended it, and processing is over.
    fn failed(&mut self, f: Failure, metrics: &ProxyMetrics) -> Option<u16> {
        self.over = true;
        if let Some(link) = self.link.take() {
            link.give_up(&f);
        }
        let count = |outcome| metrics.ext_proc(&self.policy.stat_prefix, outcome);
        failure_status(&self.policy, f, &count)
    }

    /// Ends the exchange: its hold of the stream let go (half-closed when no body told
    /// chunk by chunk holds it; the processor ends it).
    fn close(&mut self) {
        self.over = true;
        self.link = None;
    }
}

/// The processor's `immediate_response` as the answer to the request (its status, below
/// 200: 200; its headers checked by the rules, a refused change skipped).
fn immediate_answer(
    policy: &ExtProcPolicy,
    r: ImmediateResponse,
    grpc: bool,
    count: &dyn Fn(&'static str),
) -> Answer {
    count("immediate_response");
    let status = r
        .status
        .map(|s| s.code)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (200..=999).contains(c))
        .unwrap_or(200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let mut resp = if text.is_empty() {
        crate::http::local_response(status, text.clone())
    } else {
        crate::http::text_response(status, text.clone())
    };
    // Header changes the rules refuse are skipped here: the answer goes out anyway.
    if let Ok(changes) = changes_of(policy, r.headers, "", count) {
        changes.apply(resp.headers_mut());
    }
    let named = r.grpc_status.map(|g| g.status);
    if let Some(g) = named {
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from(g));
    }
    let resp = crate::http::for_grpc(resp, &text, grpc);
    (crate::local_reply::mark(resp, status, &text, named), "-")
}

/// What a failure comes to: `Some` status of the answer, or `None` when the request goes
/// on without the processor (a clean close, an answer out of turn, `failure_mode_allow`).
fn failure_status(policy: &ExtProcPolicy, f: Failure, count: &dyn Fn(&'static str)) -> Option<u16> {
    let answer = match f {
        Failure::Closed => {
            count("closed");
            None
        }
        Failure::Spurious(what) => {
            tracing::debug!(target: "myelin::ext_proc", what, "processing stopped");
            count("spurious");
            None
        }
        Failure::Invalid(what) => {
            tracing::debug!(target: "myelin::ext_proc", %what, "invalid changes");
            count("invalid");
            Some(500)
        }
        Failure::Timeout => {
            count("timeout");
            Some(504)
        }
        Failure::Stream(why) => {
            tracing::debug!(target: "myelin::ext_proc", %why, "stream failed");
            count("error");
            Some(500)
        }
    };
    if answer.is_some() && policy.failure_mode_allow {
        count("failure_mode_allowed");
        return None;
    }
    answer
}

/// The checked changes of a `HeaderMutation`; `pseudo` is the one `:`-header that may
/// change here (`:path` of a request, `:status` of a response).
fn changes_of(
    policy: &ExtProcPolicy,
    mutation: Option<HeaderMutation>,
    pseudo: &str,
    count: &dyn Fn(&'static str),
) -> Result<Changes, Failure> {
    let mut changes = Changes::default();
    let Some(mutation) = mutation else {
        return Ok(changes);
    };
    let rules = &policy.rules;
    let refused = |what: String| -> Result<(), Failure> {
        count("rejected_mutation");
        if rules.disallow_is_error {
            Err(Failure::Invalid(what))
        } else {
            Ok(())
        }
    };
    for name in mutation.remove_headers {
        let name = name.to_ascii_lowercase();
        // `:`-headers and `host` are never removed (Envoy's `isRemovableHeader`).
        if name.starts_with(':') || name == "host" || !rules.allows(&name) {
            refused(format!("removing {name}"))?;
            continue;
        }
        let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
            return Err(Failure::Invalid(format!("removing {name:?}")));
        };
        changes.remove.push(n);
    }
    for option in mutation.set_headers {
        let name = option
            .header
            .as_ref()
            .map(|h| h.key.to_ascii_lowercase())
            .unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        if let Some(h) = &option.header {
            if !h.value.is_empty() && !h.raw_value.is_empty() {
                return Err(Failure::Invalid(format!(
                    "{name}: both value and raw_value"
                )));
            }
        }
        if !rules.allows(&name) {
            refused(format!("setting {name}"))?;
            continue;
        }
        if name.starts_with(':') {
            let h = option.header.unwrap_or_default();
            let raw = if h.raw_value.is_empty() {
                h.value.into_bytes()
            } else {
                h.raw_value
            };
            let valid = HeaderValue::from_bytes(&raw).ok().filter(|v| {
                if pseudo == ":status" {
                    StatusCode::from_bytes(v.as_bytes()).is_ok_and(|s| s.as_u16() >= 200)
                } else {
                    v.as_bytes().starts_with(b"/")
                }
            });
            match valid {
                Some(v) if name == pseudo => changes.pseudo = Some(v),
                Some(_) => refused(format!("setting {name}"))?,
                None => return Err(Failure::Invalid(format!("{name}: {raw:?}"))),
            }
            continue;
        }
        match edit_of(option, true) {
            Ok(Some(edit)) => changes.set.push(edit),
            Ok(None) => {}
            Err(e) => return Err(Failure::Invalid(e)),
        }
    }
    Ok(changes)
}

/// A `body_mutation`: the new body (`None`: the body stays).
fn body_of(m: BodyMutation) -> Result<Option<Bytes>, Failure> {
    match m.mutation {
        None | Some(Mutation::ClearBody(false)) => Ok(None),
        Some(Mutation::Body(body)) => Ok(Some(body)),
        Some(Mutation::ClearBody(true)) => Ok(Some(Bytes::new())),
        Some(Mutation::StreamedResponse(_)) => Err(Failure::Invalid(
            "a full-duplex answer (streamed_response)".into(),
        )),
    }
}

/// A new body must have the length the head gives it once `changes` are made to `head`,
/// if it gives one (Envoy checks it rather than changing it; the processor may change the
/// length in the same answer).
fn length_matches<'c>(
    head: &HeaderMap,
    changes: impl IntoIterator<Item = &'c Changes>,
    body: &Bytes,
) -> Result<(), Failure> {
    // Only the length matters: the changes are made to it alone.
    let mut changed = HeaderMap::new();
    if let Some(length) = head.get(header::CONTENT_LENGTH) {
        changed.insert(header::CONTENT_LENGTH, length.clone());
    }
    for c in changes {
        c.apply(&mut changed);
    }
    let Some(length) = changed.get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let length = length.to_str().ok().and_then(|l| l.parse::<u64>().ok());
    if length != Some(body.len() as u64) {
        return Err(Failure::Invalid(format!(
            "content-length {length:?} with a new body of {} bytes",
            body.len()
        )));
    }
    Ok(())
}

/// Reads `body` whole, or `None` when it is longer than `limit`; with `partial`, until it
/// ends or `limit` bytes are in, the rest left in `body` (`whole` false).
async fn buffer(
    body: &mut ProxyBody,
    limit: usize,
    partial: bool,
) -> Result<Option<ReadAhead>, BodyError> {
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(d) => {
                data.extend_from_slice(&d);
                if partial && data.len() >= limit && !body.is_end_stream() {
                    return Ok(Some(ReadAhead {
                        data: data.freeze(),
                        trailers: None,
                        whole: false,
                    }));
                }
                if !partial && data.len() > limit {
                    return Ok(None);
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Ok(Some(ReadAhead {
                        data: data.freeze(),
                        trailers: Some(trailers),
                        whole: true,
                    }));
                }
            }
        }
    }
    Ok(Some(ReadAhead {
        data: data.freeze(),
        trailers: None,
        whole: true,
    }))
}

/// Puts `data` (and `trailers`) back as `body`, in front of what is left of it unless the
/// body ended there (`whole`).
fn put_back(body: &mut ProxyBody, data: Bytes, trailers: Option<HeaderMap>, whole: bool) {
    if whole {
        *body = frames_body(data, trailers);
        return;
    }
    let rest = std::mem::replace(body, frames_body(Bytes::new(), None));
    let first = (!data.is_empty()).then(|| Ok(http_body::Frame::data(data)));
    let rest = http_body_util::BodyStream::new(rest);
    let frames = futures_util::StreamExt::chain(futures_util::stream::iter(first), rest);
    *body = StreamBody::new(frames).boxed();
}

/// A body of `data` then `trailers`.
fn frames_body(data: Bytes, trailers: Option<HeaderMap>) -> ProxyBody {
    let data = (!data.is_empty()).then(|| http_body::Frame::data(data));
    let frames = data
        .into_iter()
        .chain(trailers.map(http_body::Frame::trailers));
    StreamBody::new(futures_util::stream::iter(frames.map(Ok))).boxed()
}

/// A body that fails with `e` at once.
fn error_body(e: BodyError) -> ProxyBody {
    StreamBody::new(futures_util::stream::iter([Err(e)])).boxed()
}

/// The answer to a request the processor failed for (empty, as Envoy's local reply).
fn error_answer(status: u16, grpc: bool) -> Answer {
    let resp = crate::http::local_response(status, String::new());
    let resp = crate::http::for_grpc(resp, "", grpc);
    (crate::local_reply::mark(resp, status, "", None), "-")
}

#[cfg(test)]
mod tests;
