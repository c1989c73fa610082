//! The calls filters make to services behind clusters of their own (a rate limit service,
//! an authorization service, a JWKS server): a request sent through the connection's own
//! upstream pools, so the service's cluster gets its balancing, health, TLS and circuit
//! breakers like any other. [`Services`] is implemented by `HttpConn`, and by stand-ins in
//! unit tests. The framing of a unary gRPC call and its answer are here too
//! ([`grpc_request`], [`Reply::grpc_message`]): the filters write and read their own
//! messages.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};

use crate::error::ProxyBody;
use crate::model::filter::GrpcService;

/// What an exchange with a cluster brought back, whole.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Reply {
    /// The one message of a unary gRPC answer: its status read (from the trailers, or the
    /// headers of a trailers-only answer) and its frame taken off; `Err`: why there is no
    /// message (an error status with its `grpc-message`).
    pub(crate) fn grpc_message(self) -> Result<Bytes, String> {
        if self.status != StatusCode::OK {
            return Err(format!("HTTP status {}", self.status.as_u16()));
        }
        let status = self
            .trailers
            .as_ref()
            .and_then(grpc_status)
            .or_else(|| grpc_status(&self.headers))
            .ok_or("no grpc-status")?;
        if status != 0 {
            let message = self
                .trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .or_else(|| self.headers.get("grpc-message"))
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(format!("grpc-status {status} {message}")
                .trim_end()
                .to_owned());
        }
        let mut body = self.body;
        if body.len() < 5 {
            return Err("no response message".into());
        }
        let compressed = body.get_u8();
        let len = body.get_u32() as usize;
        if compressed != 0 {
            return Err("a compressed response message (none was accepted)".into());
        }
        if body.len() != len {
            return Err(format!(
                "a response message of {len} bytes framed in {}",
                body.len()
            ));
        }
        Ok(body)
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A unary gRPC call of `path` (`/package.Service/Method`) to `service` with `message`,
/// due within `timeout` (`grpc-timeout`, in whole milliseconds), with the service's
/// `initial_metadata`.
pub(crate) fn grpc_request(
    service: &GrpcService,
    path: &str,
    message: &impl prost::Message,
    timeout: Duration,
) -> Result<Request<Bytes>, String> {
    let mut req = grpc_call(service, path, grpc_frame(message))?;
    let timeout = format!("{}m", timeout.as_millis().max(1));
    if let Ok(v) = HeaderValue::from_str(&timeout) {
        req.headers_mut().insert("grpc-timeout", v);
    }
    Ok(req)
}

/// A gRPC call of `path` to `service` with `body` (one framed message, or a stream of
/// them), with the service's `initial_metadata` and no deadline.
pub(crate) fn grpc_call<B>(
    service: &GrpcService,
    path: &str,
    body: B,
) -> Result<Request<B>, String> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{path}", service.authority))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body)
        .map_err(|e| format!("the service's authority {:?}: {e}", service.authority))?;
    for (name, value) in &service.metadata {
        // Names and values were checked with the config.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    Ok(req)
}

/// `message` in gRPC's length-prefixed framing (not compressed).
pub(crate) fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let mut body = BytesMut::with_capacity(5 + message.encoded_len());
    body.put_u8(0);
    body.put_u32(message.encoded_len() as u32);
    // Cannot fail: the buffer has room for the whole message.
    let _ = message.encode(&mut body);
    body.freeze()
}

/// `config.core.v3.HeaderValue`, as the services' messages carry headers.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HeaderValueProto {
    #[prost(string, tag = "1")]
    pub(crate) key: String,
    #[prost(string, tag = "2")]
    pub(crate) value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) raw_value: Vec<u8>,
}

/// `config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HeaderMapProto {
    #[prost(message, repeated, tag = "1")]
    pub(crate) headers: Vec<HeaderValueProto>,
}

/// `config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HeaderValueOptionProto {
    #[prost(message, optional, tag = "1")]
    pub(crate) header: Option<HeaderValueProto>,
    /// The deprecated `append` (a `BoolValue`).
    #[prost(message, optional, tag = "2")]
    pub(crate) append: Option<BoolValue>,
    /// `HeaderAppendAction`: 0 append-or-add, 1 add-if-absent, 2 overwrite-or-add, 3
    /// overwrite-if-exists.
    #[prost(int32, tag = "3")]
    pub(crate) append_action: i32,
}

/// `google.protobuf.BoolValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BoolValue {
    #[prost(bool, tag = "1")]
    pub(crate) value: bool,
}

/// What a header change of an answer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Replaces the header's values, or adds it.
    Set,
    /// Adds one more value.
    Add,
    /// Joins the value to the existing one with `,`, or adds it (the deprecated
    /// `append: true`).
    Join,
    /// Adds it when absent.
    AddIfAbsent,
    /// Replaces it when present.
    OverwriteIfExists,
}

/// One header change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edit {
    pub(crate) name: HeaderName,
    pub(crate) value: HeaderValue,
    pub(crate) action: Action,
}

/// Applies `edits` to `headers`, in order.
pub(crate) fn apply(headers: &mut HeaderMap, edits: &[Edit]) {
    for e in edits {
        let (name, value) = (e.name.clone(), e.value.clone());
        match e.action {
            Action::Set => {
                headers.insert(name, value);
            }
            Action::Add => {
                headers.append(name, value);
            }
            Action::Join => match headers.get(&name) {
                Some(old) => {
                    let mut joined = old.as_bytes().to_vec();
                    joined.push(b',');
                    joined.extend_from_slice(value.as_bytes());
                    if let Ok(v) = HeaderValue::from_bytes(&joined) {
                        headers.insert(name, v);
                    }
                }
                None => {
                    headers.insert(name, value);
                }
            },
            Action::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            Action::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// One header change of an answer; `Ok(None)` when it is skipped (not valid HTTP, or a
/// pseudo-header, without `validate_mutations`), `Err` when it is not valid and must
/// not be.
pub(crate) fn edit_of(
    option: HeaderValueOptionProto,
    validate: bool,
) -> Result<Option<Edit>, String> {
    let h = option.header.unwrap_or_default();
    let raw = if h.raw_value.is_empty() {
        h.value.into_bytes()
    } else {
        h.raw_value
    };
    let action = match (&option.append, option.append_action) {
        (Some(BoolValue { value: true }), _) => Action::Join,
        (Some(BoolValue { value: false }), _) => Action::Set,
        (None, 0) => Action::Add,
        (None, 1) => Action::AddIfAbsent,
        (None, 2) => Action::Set,
        (None, 3) => Action::OverwriteIfExists,
        (None, other) => {
            if validate {
                return Err(format!("append_action {other}"));
            }
            Action::Set
        }
    };
    let parsed = (
        HeaderName::from_bytes(h.key.as_bytes()),
        HeaderValue::from_bytes(&raw),
    );
    match parsed {
        (Ok(name), Ok(value)) => Ok(Some(Edit {
            name,
            value,
            action,
        })),
        _ if validate => Err(format!("the header {:?}", h.key)),
        _ => Ok(None),
    }
}

/// A boxed future borrowing its caller.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a filter reaches a service's cluster: the connection's pools in the proxy
/// (`HttpConn`), a stand-in in unit tests.
pub(crate) trait Services: Sync {
    /// Sends `req` to an endpoint of `cluster` and reads the whole answer: over HTTP/2
    /// when `grpc` (whatever the cluster says), else as the cluster speaks.
    fn send<'a>(
        &'a self,
        cluster: &'a str,
        req: Request<Bytes>,
        grpc: bool,
    ) -> Pending<'a, Result<Reply, String>>;

    /// Sends `req` like [`Services::send`] from a task of its own, its answer read and
    /// dropped, given up after `timeout`.
    fn send_detached(&self, cluster: &str, req: Request<Bytes>, timeout: Duration);

    /// Makes ready to open a stream to an endpoint of `cluster` over HTTP/2 (a gRPC call
    /// whose messages go and come while it lasts): the endpoint is picked (under the
    /// cluster's `max_requests`) now, the call is sent when its first message is ready
    /// ([`Opener`]).
    fn open<'a>(&'a self, cluster: &'a str) -> Pending<'a, Result<Opener, String>>;
}

/// Sends a stream's call (its body sent as it is written) and returns the answer's head as
/// soon as it comes, its body read by the caller. It owns what it needs, so a body that is
/// being sent on (a request's, told chunk by chunk) can open its stream as it is polled.
pub(crate) type Opener =
    Box<dyn FnOnce(Request<ProxyBody>) -> Pending<'static, Result<Opened, String>> + Send + Sync>;

/// A stream [`Services::open`] opened.
pub(crate) struct Opened {
    /// The answer's head and its body, still coming.
    pub(crate) response: http::Response<ProxyBody>,
    /// The cluster's count of requests in flight, held while the stream lasts.
    pub(crate) held: Option<crate::traffic::InFlight>,
}
