//! Errors of the connection path, and the one place they become HTTP responses.
//!
//! Every error knows which side caused it ([`Side`]), the Envoy response flag it maps to
//! (so dashboards built for Envoy read our `response_flags` label the same way), and the
//! status code a client sees. Bodies are short, static and reveal nothing beyond what
//! Envoy itself says.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

use crate::metrics::{ConnectErrorReason, MissReason};

/// The error of a body on its way through the proxy: hyper's, or the proxy's own (a
/// stream timeout after the response started, see [`crate::timeout`]).
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of responses sent downstream (the upstream's body streamed through, or a
/// locally generated one) and of requests sent upstream.
pub(crate) type ProxyBody = BoxBody<Bytes, BodyError>;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client (the captured app).
    Downstream,
    /// The original destination.
    Upstream,
}

/// An error while serving one captured connection or one request on it.
/// Why the connection manager refused a request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderRefusal {
    /// More header fields than `max_headers_count`.
    #[error("{count} header fields, more than {limit}")]
    TooMany {
        /// Fields in the request.
        count: usize,
        /// The limit.
        limit: u32,
    },
    /// A header name with an underscore (`headers_with_underscores_action: REJECT_REQUEST`).
    #[error("a header name with an underscore")]
    Underscore,
    /// No client address in the header the connection manager reads it from
    /// (`original_ip_detection_extensions`' custom header with `reject_with_status`).
    #[error("no client address in the configured header")]
    NoClientAddress {
        /// The status to answer.
        status: u16,
    },
    /// An HTTP/1.0 request where the connection manager does not `accept_http_10`.
    #[error("HTTP/1.0 is not accepted")]
    Http10,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The eBPF side recorded no original destination for this connection.
    #[error(
        "no original destination recorded for connection {peer} -> {local}: is the sock_ops \
         program attached, and is {local} the proxy's capture address?"
    )]
    OrigDstMissing {
        /// The app's address.
        peer: SocketAddr,
        /// The capture address the app was redirected to.
        local: SocketAddr,
    },

    /// Reading the client's first bytes failed.
    #[error("reading the first bytes from {peer} failed: {source}")]
    Sniff {
        /// The app's address.
        peer: SocketAddr,
        /// The read error.
        source: io::Error,
    },

    /// Connecting to the original destination failed.
    #[error("connecting to upstream {addr} failed ({}): {source}; {}", .reason.as_str(), connect_hint(*.reason))]
    UpstreamConnect {
        /// The original destination.
        addr: SocketAddr,
        /// Refused, timed out or other.
        reason: ConnectErrorReason,
        /// The connect error (a synthetic `TimedOut` for our own timeout).
        source: io::Error,
    },

    /// The upstream closed or reset the connection before a whole response arrived.
    #[error("upstream {addr} closed or reset the connection before responding: {source}")]
    UpstreamReset {
        /// The original destination.
        addr: SocketAddr,
        /// hyper's view of it, or our own client's (an I/O error or the early close).
        source: BodyError,
    },

    /// The upstream sent something that is not a valid HTTP/1 response.
    #[error("upstream {addr} sent an invalid HTTP/1 response: {source}")]
    UpstreamProtocol {
        /// The original destination.
        addr: SocketAddr,
        /// hyper's parse error, or our own client's (`h1codec::WireError`).
        source: BodyError,
    },

    /// The upstream answered `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("upstream {addr} switched protocols without being asked to")]
    UnexpectedUpgrade {
        /// The original destination.
        addr: SocketAddr,
    },

    /// The client went away (or its request body failed) while we were forwarding.
    #[error("downstream {peer} aborted the request: {source}")]
    DownstreamAborted {
        /// The app's address.
        peer: SocketAddr,
        /// hyper's view of it, or the request body's own error.
        source: BodyError,
    },

    /// The route's timeout, or the last try's per-try timeout, passed before the response
    /// headers arrived.
    #[error("no response from upstream {addr} within the {which} timeout of {timeout:?}")]
    Timeout {
        /// The upstream of the last attempt.
        addr: SocketAddr,
        /// `route` or `per-try`.
        which: &'static str,
        /// The timeout.
        timeout: Duration,
    },

    /// The inbound policy does not let the source reach this workload of the node
    /// (pod to pod on one node; the HBONE server refuses tunnels itself).
    #[error("the inbound policy does not allow this source to reach {addr} ({})", .reason.as_str())]
    Denied {
        /// The destination pod.
        addr: SocketAddr,
        /// Why.
        reason: crate::local::Refusal,
    },

    /// The HBONE tunnel to a meshed workload on another node could not be opened
    /// (its node unreachable, the mutual TLS refused either way, or the tunnel refused).
    #[error("HBONE tunnel to {addr} failed: {source}")]
    Hbone {
        /// The destination pod.
        addr: SocketAddr,
        /// What went wrong.
        source: crate::hbone::TunnelError,
    },

    /// The TLS handshake with an upstream host (a cluster's upstream TLS) failed: the
    /// server's certificate refused, no common protocol version, a reset.
    #[error("TLS handshake with {addr} failed: {source}")]
    UpstreamTls {
        /// The upstream host.
        addr: SocketAddr,
        /// What went wrong (rustls' error inside).
        source: std::io::Error,
    },

    /// The TLS handshake of a client on a filter chain that terminates TLS failed or did
    /// not finish in time.
    #[error("TLS handshake with client {peer} failed: {source}")]
    DownstreamTls {
        /// The client.
        peer: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },

    /// A circuit breaker of the cluster is full.
    #[error("cluster {cluster:?}: the {breaker} circuit breaker is full")]
    Overflow {
        /// The cluster.
        cluster: String,
        /// `max_requests`, `max_pending_requests` (waiting for a connection that
        /// `max_connections` does not allow yet).
        breaker: &'static str,
    },

    /// The connection manager's stream idle or request timeout passed before the
    /// response started (the route timeout is [`ProxyError::Timeout`]).
    #[error("stream timeout: {0:?}")]
    StreamTimeout(crate::timeout::Expired),

    /// The connection manager refuses the request's path: it cannot be normalized
    /// (`normalize_path`), or it has escaped slashes (`path_with_escaped_slashes_action`
    /// `REJECT_REQUEST`, or `UNESCAPE_AND_REDIRECT` to a gRPC client, which cannot follow a
    /// redirect). Envoy has no response flag for it (its detail is
    /// `path_normalization_failed`).
    #[error("the request's path {path:?} was refused by path normalization")]
    BadPath {
        /// The path as it came.
        path: String,
    },

    /// The connection manager refuses the request's headers: more than `max_headers_count`
    /// (431, Envoy's `too_many_headers`), or a name with an underscore under
    /// `headers_with_underscores_action: REJECT_REQUEST` (400). No response flag, as in
    /// Envoy.
    #[error("the request's headers were refused: {0}")]
    BadHeaders(HeaderRefusal),

    /// The traffic config has nothing for this connection or request.
    #[error("{}: {detail}", .reason.as_str())]
    Unrouted {
        /// Which part of the config is missing.
        reason: MissReason,
        /// What was looked for (listener, route config, cluster, host...).
        detail: String,
    },

    /// Copying bytes of an opaque connection (or an upgraded one) failed.
    #[error("forwarding bytes between {peer} and {addr} failed: {source}")]
    Forward {
        /// The app's address.
        peer: SocketAddr,
        /// The original destination.
        addr: SocketAddr,
        /// The I/O error from either side.
        source: io::Error,
    },
}

fn connect_hint(reason: ConnectErrorReason) -> &'static str {
    match reason {
        ConnectErrorReason::Refused => "is the destination listening on that port?",
        ConnectErrorReason::Timeout => {
            "is the destination up, and is a firewall or network policy dropping the SYN?"
        }
        ConnectErrorReason::Other => "check the node's routes to the destination",
    }
}

impl ProxyError {
    /// Builds the error for a failed connect to `addr`, classifying the reason.
    pub(crate) fn connect(addr: SocketAddr, source: io::Error) -> Self {
        let reason = match source.kind() {
            io::ErrorKind::ConnectionRefused => ConnectErrorReason::Refused,
            io::ErrorKind::TimedOut => ConnectErrorReason::Timeout,
            _ => ConnectErrorReason::Other,
        };
        ProxyError::UpstreamConnect {
            addr,
            reason,
            source,
        }
    }

    /// Builds the error for a connection or request the config cannot route.
    pub(crate) fn unrouted(reason: MissReason, detail: impl Into<String>) -> Self {
        ProxyError::Unrouted {
            reason,
            detail: detail.into(),
        }
    }

    /// Builds the error for our own connect timeout.
    pub(crate) fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Self {
        ProxyError::UpstreamConnect {
            addr,
            reason: ConnectErrorReason::Timeout,
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        }
    }

    /// Classifies an error from sending a request upstream and reading its response.
    pub(crate) fn upstream_http(addr: SocketAddr, peer: SocketAddr, source: hyper::Error) -> Self {
        if source.is_parse() {
            ProxyError::UpstreamProtocol {
                addr,
                source: source.into(),
            }
        } else if source.is_user() || source.is_body_write_aborted() {
            // Our request body is the downstream's body: a user/body error here means
            // reading from the client failed, not the upstream.
            ProxyError::DownstreamAborted {
                peer,
                source: source.into(),
            }
        } else {
            ProxyError::UpstreamReset {
                addr,
                source: source.into(),
            }
        }
    }

    /// Which side caused this error.
    pub(crate) fn side(&self) -> Side {
        match self {
            ProxyError::OrigDstMissing { .. }
            | ProxyError::Sniff { .. }
            | ProxyError::DownstreamAborted { .. }
            | ProxyError::DownstreamTls { .. }
            | ProxyError::Denied { .. }
            | ProxyError::BadPath { .. }
            | ProxyError::BadHeaders(_)
            | ProxyError::StreamTimeout(_) => Side::Downstream,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UnexpectedUpgrade { .. }
            | ProxyError::Unrouted { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::Overflow { .. }
            | ProxyError::Hbone { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::Forward { .. } => Side::Upstream,
        }
    }

    /// The connect failure reason, for `proxy_upstream_connect_errors`.
    pub(crate) fn connect_reason(&self) -> Option<ConnectErrorReason> {
        match self {
            ProxyError::UpstreamConnect { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The Envoy response flag for this error.
    pub(crate) fn response_flags(&self) -> &'static str {
        match self {
            ProxyError::UpstreamConnect { .. }
            | ProxyError::Hbone { .. }
            | ProxyError::UpstreamTls { .. } => "UF",
            ProxyError::UpstreamReset { .. } | ProxyError::Forward { .. } => "UC",
            ProxyError::UpstreamProtocol { .. } | ProxyError::UnexpectedUpgrade { .. } => "UPE",
            ProxyError::Timeout { .. } => "UT",
            ProxyError::Overflow { .. } => "UO",
            // Envoy's RBAC filter: `RBAC` (`UAEX` is ext_authz).
            ProxyError::Denied { .. } => "RBAC",
            ProxyError::BadPath { .. } | ProxyError::BadHeaders(_) => "-",
            ProxyError::StreamTimeout(e) => e.response_flags(),
            ProxyError::Unrouted { reason, .. } => match reason {
                MissReason::NoFilterChain | MissReason::NoRouteConfig | MissReason::NoRoute => "NR",
                MissReason::NoCluster => "NC",
                MissReason::NoHealthyUpstream => "UH",
                MissReason::Dns | MissReason::UpstreamTlsUnavailable => "UF",
                MissReason::DownstreamTlsUnavailable => "-",
            },
            ProxyError::OrigDstMissing { .. }
            | ProxyError::Sniff { .. }
            | ProxyError::DownstreamTls { .. }
            | ProxyError::DownstreamAborted { .. } => "DC",
        }
    }

    /// The status code sent downstream. Envoy answers connect failures, refused or timed
    /// out alike, with 503 (`UF`); failures after connecting with 502.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamConnect { .. }
            | ProxyError::Hbone { .. }
            | ProxyError::UpstreamTls { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // Envoy's `maybeRequestTimeoutCode`: a stream that outlived its duration after the
            // whole request had arrived is the upstream's delay.
            ProxyError::StreamTimeout(crate::timeout::Expired::Duration(_, true)) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::StreamTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Denied { .. } => StatusCode::FORBIDDEN,
            ProxyError::BadPath { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BadHeaders(HeaderRefusal::TooMany { .. }) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::BadHeaders(HeaderRefusal::Underscore) => StatusCode::BAD_REQUEST,
            ProxyError::BadHeaders(HeaderRefusal::NoClientAddress { status }) => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
            }
            ProxyError::BadHeaders(HeaderRefusal::Http10) => StatusCode::UPGRADE_REQUIRED,
            ProxyError::Unrouted { reason, .. } => match reason {
                MissReason::NoFilterChain | MissReason::NoRouteConfig | MissReason::NoRoute => {
                    StatusCode::NOT_FOUND
                }
                MissReason::NoCluster
                | MissReason::NoHealthyUpstream
                | MissReason::Dns
                | MissReason::UpstreamTlsUnavailable
                | MissReason::DownstreamTlsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UnexpectedUpgrade { .. }
            | ProxyError::Forward { .. } => StatusCode::BAD_GATEWAY,
            // The client will most likely never read this.
            ProxyError::OrigDstMissing { .. }
            | ProxyError::Sniff { .. }
            | ProxyError::DownstreamTls { .. }
            | ProxyError::DownstreamAborted { .. } => StatusCode::BAD_REQUEST,
        }
    }

    pub(crate) fn body(&self) -> &'static str {
        match self {
            ProxyError::UpstreamConnect { reason, .. } => match reason {
                ConnectErrorReason::Refused => {
                    "upstream connect error or disconnect/reset before headers. reset reason: connection refused\n"
                }
                ConnectErrorReason::Timeout => {
                    "upstream connect error or disconnect/reset before headers. reset reason: connection timeout\n"
                }
                ConnectErrorReason::Other => {
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n"
                }
            },
            ProxyError::UpstreamReset { .. } | ProxyError::Forward { .. } => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n"
            }
            ProxyError::Hbone { .. } => {
                "upstream connect error or disconnect/reset before headers. reset reason: HBONE tunnel failed\n"
            }
            // Envoy's words for a failed upstream handshake.
            ProxyError::UpstreamTls { .. } => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS handshake failed\n"
            }
            ProxyError::UpstreamProtocol { .. } | ProxyError::UnexpectedUpgrade { .. } => {
                "upstream sent an invalid response\n"
            }
            ProxyError::Timeout { .. } => "upstream request timeout\n",
            // Envoy's RBAC filter says exactly this, without a newline.
            ProxyError::Denied { .. } => "RBAC: access denied",
            // Envoy's local reply for it has no body.
            ProxyError::BadPath { .. } => "",
            // Envoy's HTTP/1 codec answers its protocol errors with the status's text.
            ProxyError::BadHeaders(HeaderRefusal::TooMany { .. }) => {
                "Request Header Fields Too Large"
            }
            ProxyError::BadHeaders(HeaderRefusal::Underscore) => "Bad Request",
            // The extension's local reply has no body.
            ProxyError::BadHeaders(HeaderRefusal::NoClientAddress { .. }) => "",
            ProxyError::BadHeaders(HeaderRefusal::Http10) => "Upgrade Required",
            ProxyError::StreamTimeout(crate::timeout::Expired::Request(_)) => "request timeout\n",
            ProxyError::StreamTimeout(crate::timeout::Expired::Duration(..)) => {
                "downstream duration timeout\n"
            }
            ProxyError::StreamTimeout(_) => "stream timeout\n",
            ProxyError::Overflow { .. } => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow\n"
            }
            ProxyError::Unrouted { reason, .. } => match reason {
                MissReason::NoFilterChain | MissReason::NoRouteConfig | MissReason::NoRoute => "",
                MissReason::NoCluster => "cluster not found\n",
                MissReason::NoHealthyUpstream | MissReason::Dns => "no healthy upstream\n",
                MissReason::UpstreamTlsUnavailable => {
                    "upstream connect error or disconnect/reset before headers. reset reason: \
                     upstream TLS is not available\n"
                }
                // Never an HTTP answer: the connection closes before any request.
                MissReason::DownstreamTlsUnavailable => "",
            },
            ProxyError::OrigDstMissing { .. }
            | ProxyError::Sniff { .. }
            | ProxyError::DownstreamTls { .. }
            | ProxyError::DownstreamAborted { .. } => "downstream request aborted\n",
        }
    }

    /// The gRPC status of this error's reply to a gRPC request: Envoy's mapping of the HTTP
    /// status, except DEADLINE_EXCEEDED for a stream past its duration (a `grpc-timeout`
    /// used up), as Envoy's connection manager says it.
    pub(crate) fn grpc_status(&self) -> u32 {
        match self {
            ProxyError::StreamTimeout(crate::timeout::Expired::Duration(..)) => {
                grpc::DEADLINE_EXCEEDED
            }
            _ => grpc::status_of_http(self.status()),
        }
    }

    /// The response sent downstream for this error; to a gRPC request (`grpc`), a gRPC
    /// local reply ([`grpc_local_reply`]), as Envoy sends its own.
    pub(crate) fn to_response(&self, grpc: bool) -> Response<ProxyBody> {
        if grpc {
            return grpc_local_reply(self.grpc_status(), self.body());
        }
        let body = self.body();
        let mut resp = Response::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        resp
    }
}

/// gRPC status codes a local reply uses.
pub(crate) mod grpc {
    use http::StatusCode;

    pub(crate) const UNKNOWN: u32 = 2;
    pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
    pub(crate) const PERMISSION_DENIED: u32 = 7;
    pub(crate) const UNIMPLEMENTED: u32 = 12;
    pub(crate) const INTERNAL: u32 = 13;
    pub(crate) const UNAVAILABLE: u32 = 14;
    pub(crate) const UNAUTHENTICATED: u32 = 16;

    /// The gRPC status an HTTP status stands for (gRPC's "HTTP to gRPC status code
    /// mapping", as Envoy's `httpToGrpcStatus` has it).
    pub(crate) fn status_of_http(status: StatusCode) -> u32 {
        match status.as_u16() {
            400 => INTERNAL,
            401 => UNAUTHENTICATED,
            403 => PERMISSION_DENIED,
            404 => UNIMPLEMENTED,
            429 | 502 | 503 | 504 => UNAVAILABLE,
            _ => UNKNOWN,
        }
    }
}

/// What `grpc-message` escapes: controls, `%` and non-ASCII (gRPC over HTTP/2).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A local reply to a gRPC request, as Envoy sends one: trailers-only (`200`,
/// `content-type: application/grpc`, `grpc-status`, the reply's text in `grpc-message`, no
/// body), which a gRPC client reads as the call's status where an HTTP error status would
/// only be guessed at. The golden metrics then see the `grpc-status` (Istio's
/// `grpc_response_status`) with `response_code` 200, as Istio reports Envoy's.
pub(crate) fn grpc_local_reply(status: u32, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(status));
    let message = message.trim_end();
    if !message.is_empty() {
        let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
        if let Ok(v) = HeaderValue::try_from(encoded) {
            headers.insert("grpc-message", v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "10.0.0.1:80".parse().unwrap()
    }

    #[test]
    fn connect_errors_map_to_503_uf() {
        for (kind, reason) in [
            (
                io::ErrorKind::ConnectionRefused,
                ConnectErrorReason::Refused,
            ),
            (io::ErrorKind::TimedOut, ConnectErrorReason::Timeout),
            (io::ErrorKind::HostUnreachable, ConnectErrorReason::Other),
        ] {
            let e = ProxyError::connect(addr(), io::Error::from(kind));
            assert_eq!(e.connect_reason(), Some(reason));
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.response_flags(), "UF");
            assert_eq!(e.side(), Side::Upstream);
        }
        let e = ProxyError::connect_timeout(addr(), Duration::from_secs(5));
        assert_eq!(e.connect_reason(), Some(ConnectErrorReason::Timeout));
        assert_eq!(
            e.to_string(),
            "connecting to upstream 10.0.0.1:80 failed (timeout): no answer within 5s; is the \
             destination up, and is a firewall or network policy dropping the SYN?"
        );
        let resp = e.to_response(false);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    /// To a gRPC request the same errors are trailers-only replies, as Envoy sends them.
    #[test]
    fn grpc_requests_get_grpc_local_replies() {
        let cases = [
            (ProxyError::connect_timeout(addr(), Duration::from_secs(5)), "14",
             "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"),
            (ProxyError::Timeout { addr: addr(), which: "route", timeout: Duration::from_secs(1) }, "14",
             "upstream request timeout"),
            (ProxyError::StreamTimeout(crate::timeout::Expired::Duration(Duration::from_secs(1), true)), "4",
             "downstream duration timeout"),
            (ProxyError::StreamTimeout(crate::timeout::Expired::StreamIdle(Duration::from_secs(1))), "2",
             "stream timeout"),
            (ProxyError::Unrouted { reason: MissReason::NoRoute, detail: "route".into() }, "12", ""),
            (ProxyError::Denied { addr: addr(), reason: crate::local::Refusal::Denied }, "7",
             "RBAC: access denied"),
        ];
        for (e, status, message) in cases {
            let resp = e.to_response(true);
            assert_eq!(resp.status(), StatusCode::OK, "{e}");
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/grpc",
                "{e}"
            );
            assert_eq!(resp.headers()["grpc-status"], status, "{e}");
            assert_eq!(
                resp.headers()
                    .get("grpc-message")
                    .map(|v| v.to_str().unwrap())
                    .unwrap_or(""),
                message,
                "{e}"
            );
            assert!(http_body::Body::is_end_stream(resp.body()), "{e}: a body");
        }
        // Non-ASCII and `%` escaped, the rest as it is.
        let resp = grpc_local_reply(13, "50% caf\u{e9}\n");
        assert_eq!(resp.headers()["grpc-message"], "50%25 caf%C3%A9");
    }

    #[test]
    fn other_errors() {
        let e = ProxyError::UnexpectedUpgrade { addr: addr() };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.response_flags(), "UPE");
        let e = ProxyError::OrigDstMissing {
            peer: addr(),
            local: addr(),
        };
        assert_eq!(e.side(), Side::Downstream);
        assert_eq!(e.response_flags(), "DC");
    }
}
