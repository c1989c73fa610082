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
    let mut body = BytesMut::with_capacity(5 + message.encoded_len());
    body.put_u8(0);
    body.put_u32(message.encoded_len() as u32);
    message
        .encode(&mut body)
        .map_err(|e| format!("encoding the request: {e}"))?;
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{path}", service.authority))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)))
        .body(body.freeze())
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
}
