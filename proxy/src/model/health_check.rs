//! Active health checking of a cluster's endpoints (Envoy `config.core.v3.HealthCheck`,
//! a cluster's `health_checks`), and an endpoint's own settings for it
//! (`Endpoint.health_check_config`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::route::HeaderValueOption;
use super::{duration_str, opt_duration_str, StringMatcher};

/// One health checker of a cluster: it checks every endpoint of the cluster on its own
/// schedule; a host takes traffic only while every checker of its cluster passes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    /// A check not answered in this long has failed (a network failure).
    #[serde(serialize_with = "duration_str")]
    pub timeout: Duration,
    /// Between checks of a healthy host, once the cluster has had traffic.
    #[serde(serialize_with = "duration_str")]
    pub interval: Duration,
    /// The first check of a host waits up to this long (at random).
    #[serde(serialize_with = "duration_str")]
    pub initial_jitter: Duration,
    /// Up to this much is added to every wait (at random).
    #[serde(serialize_with = "duration_str")]
    pub interval_jitter: Duration,
    /// Up to this percentage of the wait is added to it (at random).
    pub interval_jitter_percent: u32,
    /// Failed checks in a row (network failures, retriable statuses) before a healthy host
    /// is marked unhealthy; an answer that is plainly wrong marks it at once.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row before an unhealthy host is healthy again (a host's very
    /// first check needs one).
    pub healthy_threshold: u32,
    /// Keep the connection between checks (default true).
    pub reuse_connection: bool,
    /// Between checks while the cluster has never had a request (default 60 s).
    #[serde(serialize_with = "duration_str")]
    pub no_traffic_interval: Duration,
    /// Between checks of a host that passes while the cluster has had no request (default:
    /// `no_traffic_interval`).
    #[serde(serialize_with = "opt_duration_str")]
    pub no_traffic_healthy_interval: Option<Duration>,
    /// Between checks of an unhealthy host (default: `interval`).
    #[serde(serialize_with = "duration_str")]
    pub unhealthy_interval: Duration,
    /// After a failed check of a host not yet marked unhealthy (default:
    /// `unhealthy_interval`).
    #[serde(serialize_with = "duration_str")]
    pub unhealthy_edge_interval: Duration,
    /// After a passed check of a host not yet marked healthy (default: `interval`).
    #[serde(serialize_with = "duration_str")]
    pub healthy_edge_interval: Duration,
    /// Log every failed check, not only the one that marks a host unhealthy.
    pub always_log_health_check_failures: bool,
    /// What a check is.
    pub checker: HealthChecker,
}

/// The kind of check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthChecker {
    /// An HTTP request whose answer must have an expected status.
    Http(Box<HttpHealthCheck>),
    /// A TCP connection (and, optionally, bytes sent and bytes expected back).
    Tcp(TcpHealthCheck),
    /// `grpc.health.v1.Health/Check`: the answer must say `SERVING`.
    Grpc(GrpcHealthCheck),
}

/// Envoy `HealthCheck.HttpHealthCheck`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpHealthCheck {
    /// The `Host` of the request; `None`: the cluster's name (or the endpoint's
    /// `hostname`).
    pub host: Option<String>,
    /// The request's path.
    pub path: String,
    /// The request's method (default `GET`; never `CONNECT`).
    pub method: String,
    /// Headers added to the request.
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from the request.
    pub request_headers_to_remove: Vec<String>,
    /// Statuses that pass, as half-open ranges (default: 200 only).
    pub expected_statuses: Vec<(u16, u16)>,
    /// Statuses that fail but count towards `unhealthy_threshold` instead of marking the
    /// host unhealthy at once.
    pub retriable_statuses: Vec<(u16, u16)>,
    /// Byte blocks the response body must contain, in this order (not necessarily next to
    /// each other), within its first `response_buffer_size` bytes.
    pub receive: Vec<Vec<u8>>,
    /// How much of the body `receive` looks at (default 1024; 0: all of it).
    pub response_buffer_size: usize,
    /// Speak HTTP/2 (prior knowledge, or `h2` over TLS) instead of HTTP/1.1.
    pub http2: bool,
    /// The response's `x-envoy-upstream-healthchecked-cluster` must match.
    pub service_name_matcher: Option<StringMatcher>,
}

impl HttpHealthCheck {
    /// Whether `status` passes.
    pub fn expects(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            return status == 200;
        }
        in_ranges(&self.expected_statuses, status)
    }

    /// Whether `status`, not expected, counts towards the threshold only.
    pub fn retriable(&self, status: u16) -> bool {
        in_ranges(&self.retriable_statuses, status)
    }
}

fn in_ranges(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= status && status < hi)
}

/// Envoy `HealthCheck.TcpHealthCheck`: with nothing to send and nothing to receive, a
/// connect-only check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TcpHealthCheck {
    /// Sent after connecting.
    pub send: Vec<u8>,
    /// Byte blocks the answer must contain, in this order.
    pub receive: Vec<Vec<u8>>,
}

/// Envoy `HealthCheck.GrpcHealthCheck`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpcHealthCheck {
    /// The `service` of the `HealthCheckRequest` (empty: the server as a whole).
    pub service_name: String,
    /// The request's `:authority`; `None`: the cluster's name (or the endpoint's
    /// `hostname`).
    pub authority: Option<String>,
    /// Metadata (headers) added to the call.
    pub initial_metadata: Vec<HeaderValueOption>,
}

/// An endpoint's `health_check_config`: where and how it is checked, if not as the
/// cluster says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointHealthCheck {
    /// Check this port instead of the endpoint's.
    pub port: Option<u16>,
    /// Check this address instead of the endpoint's (its port unless `port` is set).
    pub address: Option<SocketAddr>,
    /// The `Host` (HTTP) or `:authority` (gRPC) of its checks, over the cluster's.
    pub hostname: Option<String>,
    /// `disable_active_health_check`: never checked, always passes.
    pub disabled: bool,
}

/// Whether the blocks of `receive` all occur in `data`, in order, each after the end of
/// the one before (Envoy's "fuzzy" payload match).
pub fn payload_matches(receive: &[Vec<u8>], data: &[u8]) -> bool {
    let mut rest = data;
    for block in receive {
        if block.is_empty() {
            continue;
        }
        match rest
            .windows(block.len())
            .position(|w| w == block.as_slice())
        {
            Some(at) => rest = &rest[at + block.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_blocks_in_order_not_necessarily_adjacent() {
        let b = |s: &str| s.as_bytes().to_vec();
        assert!(payload_matches(&[], b""));
        assert!(payload_matches(&[b("pong")], b"xxpongyy"));
        assert!(payload_matches(&[b("po"), b("ng")], b"po--ng"));
        assert!(!payload_matches(&[b("ng"), b("po")], b"po--ng"));
        // A block starts after the end of the one before, no overlap.
        assert!(!payload_matches(&[b("pon"), b("ong")], b"pong"));
        assert!(!payload_matches(&[b("pong")], b"pon"));
    }

    #[test]
    fn statuses() {
        let mut h = HttpHealthCheck {
            host: None,
            path: "/".into(),
            method: "GET".into(),
            request_headers_to_add: vec![],
            request_headers_to_remove: vec![],
            expected_statuses: vec![],
            retriable_statuses: vec![(500, 600)],
            receive: vec![],
            response_buffer_size: 1024,
            http2: false,
            service_name_matcher: None,
        };
        assert!(h.expects(200));
        assert!(!h.expects(201) && !h.expects(204));
        h.expected_statuses = vec![(200, 201), (300, 301)];
        assert!(h.expects(200) && h.expects(300));
        assert!(!h.expects(201) && !h.expects(301));
        assert!(h.retriable(503) && !h.retriable(404));
    }
}
