//! Upstream clusters (Envoy `config.cluster.v3.Cluster`): how endpoints are found, how
//! one is picked, and how connections to them are made.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::endpoint::ClusterLoadAssignment;
use super::health_check::HealthCheck;
use super::listener::{TlsAlgorithms, TlsVersion};
use super::proxy_protocol::UpstreamProxyProtocol;
use super::secret::{TlsCertificate, ValidationContext};
use super::types::MetadataValue;
use super::{duration_str, opt_duration_str};

/// Envoy's default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    /// The CDS resource name.
    pub name: String,
    /// How endpoints are found.
    pub discovery: Discovery,
    /// How an endpoint is picked.
    pub lb_policy: LbPolicy,
    /// Locality-weighted balancing (`common_lb_config.locality_weighted_lb_config`, or a
    /// typed policy's `locality_lb_config`): at each priority a locality is picked first,
    /// by its `load_balancing_weight` scaled by its health, then an endpoint in it by
    /// `lb_policy`. Off: the localities' endpoints are balanced as one set (weights
    /// ignored), as in Envoy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub locality_weighted: bool,
    /// Upstream TCP connect timeout (Envoy default 5 s).
    #[serde(serialize_with = "duration_str")]
    pub connect_timeout: Duration,
    /// Limits per routing priority (`DEFAULT` always present, Envoy's defaults if unset).
    pub circuit_breakers: Vec<Thresholds>,
    /// Passive health checking; `None`: off.
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checking: every checker checks every endpoint; a host takes traffic
    /// while all of them pass it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    /// `ignore_health_on_host_removal`: an endpoint EDS removes is gone at once. Off
    /// (Envoy's default), with health checks, a removed endpoint that still passes them
    /// keeps taking traffic until it fails one (discovery may be wrong; health checks
    /// are taken to be right).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_health_on_host_removal: bool,
    /// TLS to the upstream; `None`: plain TCP.
    pub tls: Option<UpstreamTls>,
    /// The PROXY protocol header its upstream connections open with (the transport socket
    /// `envoy.transport_sockets.upstream_proxy_protocol`, around `tls` or plain TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Arc<UpstreamProxyProtocol>>,
    /// `transport_socket_matches`: an endpoint whose `envoy.transport_socket_match`
    /// metadata holds every key and value of a match's criteria gets that match's transport
    /// socket (the first such), others get `tls`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transport_socket_matches: Vec<TransportSocketMatch>,
    /// `upstream_http_protocol_options`: the SNI of upstream TLS from each request's host.
    #[serde(skip_serializing_if = "AutoSni::is_off")]
    pub auto_sni: AutoSni,
    /// The HTTP protocol spoken upstream.
    pub protocol: UpstreamProtocol,
    /// Endpoints given inline (STATIC, STRICT_DNS, LOGICAL_DNS).
    pub load_assignment: Option<ClusterLoadAssignment>,
    /// Address families for DNS clusters.
    pub dns_lookup_family: DnsLookupFamily,
    /// How often DNS clusters re-resolve; `None`: Envoy's default (5 s).
    #[serde(serialize_with = "opt_duration_str")]
    pub dns_refresh_rate: Option<Duration>,
    /// TCP keepalive on upstream connections (`upstream_connection_options.tcp_keepalive`);
    /// `None`: off.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// How long its upstream HTTP connections live (`common_http_protocol_options` of
    /// the cluster's `HttpProtocolOptions`).
    pub connection_life: ConnectionLife,
}

/// Limits on the life of a cluster's upstream HTTP connections (Istio's DestinationRule
/// `connectionPool.http.idleTimeout`, `maxRequestsPerConnection` and
/// `connectionPool.tcp.maxConnectionDuration`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionLife {
    /// `idle_timeout`: a connection without requests this long is closed. `None`: Myelin's
    /// default (Envoy's 1 h for HTTP/2; 30 s for HTTP/1.1, where servers close idle
    /// connections themselves after a few seconds to a minute); zero: never.
    #[serde(serialize_with = "opt_duration_str")]
    pub idle_timeout: Option<Duration>,
    /// `max_requests_per_connection`: a connection that served this many requests takes no
    /// more (HTTP/1.1: closed after its last response; HTTP/2: no new streams, closed when
    /// its streams end). `None`: unbounded.
    pub max_requests_per_connection: Option<u32>,
    /// `max_connection_duration`: a connection this old takes no new request (closed as
    /// above). `None`: unbounded.
    #[serde(serialize_with = "opt_duration_str")]
    pub max_connection_duration: Option<Duration>,
}

/// Kernel TCP keepalive settings; `None` fields keep the kernel's defaults (as in Envoy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped.
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    #[serde(serialize_with = "opt_duration_str")]
    pub time: Option<Duration>,
    /// Time between probes.
    #[serde(serialize_with = "opt_duration_str")]
    pub interval: Option<Duration>,
}

/// HTTP/2 PING keepalive (`connection_keepalive`), of a cluster's connections or of a
/// connection manager's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Http2Keepalive {
    /// How often to PING, busy or idle; `None`: never (then `timeout` has nothing to
    /// time).
    #[serde(serialize_with = "opt_duration_str")]
    pub interval: Option<Duration>,
    /// How long to wait for the PING ACK before closing the connection. Any frame from the
    /// peer restarts the wait (the ACK may be queued behind it), as in Envoy.
    #[serde(serialize_with = "duration_str")]
    pub timeout: Duration,
    /// Up to this much is added at random to each interval, in hundredths of a percent of
    /// it (`interval_jitter`; Envoy's default 15 % = 1500). Applied to the downstream PINGs;
    /// hyper's client PINGs at the plain interval.
    pub interval_jitter_bp: u16,
}

impl Http2Keepalive {
    /// Envoy's default `interval_jitter`: 15 %.
    pub const DEFAULT_JITTER_BP: u16 = 1500;
}

/// Cluster discovery type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// Endpoints are the `load_assignment` addresses.
    Static,
    /// Endpoints come over EDS under `service_name` (the cluster name when `None`).
    Eds {
        /// EDS resource name, if not the cluster name.
        service_name: Option<String>,
    },
    /// Every address each `load_assignment` host name resolves to.
    StrictDns,
    /// The first address the (single) host name resolves to, re-resolved per connection.
    LogicalDns,
    /// The connection's original destination.
    OriginalDst,
}

impl Discovery {
    /// The EDS resource name to subscribe to for cluster `cluster_name`, if EDS.
    pub fn eds_service_name<'a>(&'a self, cluster_name: &'a str) -> Option<&'a str> {
        match self {
            Self::Eds { service_name } => Some(service_name.as_deref().unwrap_or(cluster_name)),
            _ => None,
        }
    }
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Weighted round robin (default).
    RoundRobin,
    /// Power of two choices by active requests.
    LeastRequest,
    /// Uniformly random.
    Random,
    /// Consistent hashing on a ring (route hash policies).
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
}

/// Routing priority of a circuit-breaker threshold set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingPriority {
    /// Normal traffic.
    Default,
    /// High-priority routes.
    High,
}

/// Circuit-breaker limits (Envoy defaults 1024, 1024, 1024, 3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Which priority.
    pub priority: RoutingPriority,
    /// Upstream connections.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
    /// When set, replaces `max_retries`: retries in flight may be this share of the
    /// requests in flight, but at least its `min_retry_concurrency`.
    pub retry_budget: Option<RetryBudget>,
}

/// Envoy's `retry_budget`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryBudget {
    /// Percent of active requests that may be retries (default 20).
    pub budget_percent: f64,
    /// Retries always allowed in flight (default 3).
    pub min_retry_concurrency: u32,
}

impl Thresholds {
    /// Envoy's defaults for `priority`.
    pub fn envoy_default(priority: RoutingPriority) -> Self {
        Self {
            priority,
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// Passive ejection of failing hosts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection (default 5).
    pub consecutive_5xx: u32,
    /// Consecutive gateway failures (502, 503, 504, connect errors) before ejection
    /// (default 5).
    pub consecutive_gateway_failure: u32,
    /// Percentage chance a `consecutive_5xx` ejection is enforced (default 100).
    pub enforcing_consecutive_5xx: u32,
    /// Percentage for gateway-failure ejections (default 0, as in Envoy).
    pub enforcing_consecutive_gateway_failure: u32,
    /// Sweep interval (default 10 s).
    #[serde(serialize_with = "duration_str")]
    pub interval: Duration,
    /// Base ejection time, multiplied by the number of ejections (default 30 s).
    #[serde(serialize_with = "duration_str")]
    pub base_ejection_time: Duration,
    /// Cap on the ejection time (default 300 s).
    #[serde(serialize_with = "duration_str")]
    pub max_ejection_time: Duration,
    /// At most this percentage of hosts ejected (default 10).
    pub max_ejection_percent: u32,
    /// Success-rate ejection, every `interval`: among the hosts with at least
    /// `success_rate_request_volume` requests in it (when there are at least
    /// `success_rate_minimum_hosts` of them), one whose success rate is below the mean by
    /// more than `success_rate_stdev_factor / 1000` standard deviations is ejected with
    /// this percentage chance (default 100, Envoy's: on unless set to 0).
    pub enforcing_success_rate: u32,
    /// Default 5.
    pub success_rate_minimum_hosts: u32,
    /// Default 100.
    pub success_rate_request_volume: u32,
    /// Default 1900 (1.9 standard deviations).
    pub success_rate_stdev_factor: u32,
    /// Failure-percentage ejection, every `interval`: a host with at least
    /// `failure_percentage_request_volume` requests in it (when there are at least
    /// `failure_percentage_minimum_hosts` of them) whose failures are at least this
    /// percentage of them (default 85) is ejected with `enforcing_failure_percentage`
    /// chance (default 0: off, as in Envoy).
    pub failure_percentage_threshold: u32,
    /// Default 0.
    pub enforcing_failure_percentage: u32,
    /// Default 5.
    pub failure_percentage_minimum_hosts: u32,
    /// Default 50.
    pub failure_percentage_request_volume: u32,
    /// `split_external_local_origin_errors`: failures the proxy sees itself (connect
    /// failures, resets, timeouts) are counted apart from the upstream's 5xx answers, with
    /// their own thresholds below; off (Envoy's default): they count as gateway failures.
    pub split_external_local_origin_errors: bool,
    /// With the split: consecutive local-origin failures before ejection (default 5).
    pub consecutive_local_origin_failure: u32,
    /// With the split: its chance of being enforced, in percent (default 100).
    pub enforcing_consecutive_local_origin_failure: u32,
    /// With the split: success-rate ejection over local-origin events (default 100).
    pub enforcing_local_origin_success_rate: u32,
    /// With the split: failure-percentage ejection over local-origin events (default 0).
    pub enforcing_failure_percentage_local_origin: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            enforcing_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_local_origin_success_rate: 100,
            enforcing_failure_percentage_local_origin: 0,
        }
    }
}

/// A cluster's `upstream_http_protocol_options` (Istio sets them for TLS origination
/// without an SNI of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AutoSni {
    /// `auto_sni`: a new TLS connection's SNI is the request's host (`:authority`, or the
    /// `header`), without its port; none when that is an IP address.
    pub sni: bool,
    /// `auto_san_validation`: the server's certificate must name that host.
    pub san_validation: bool,
    /// `override_auto_sni_header`: the header to take the host from instead.
    pub header: Option<String>,
}

impl AutoSni {
    /// Whether it asks for nothing.
    pub fn is_off(&self) -> bool {
        !self.sni && !self.san_validation
    }
}

/// One of a cluster's `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransportSocketMatch {
    /// Its name (for logs and `/config_dump`).
    pub name: String,
    /// The metadata an endpoint must have (every key, equal values); empty: every endpoint.
    pub criteria: BTreeMap<String, MetadataValue>,
    /// Its transport socket: TLS, or `None` for plain TCP (`raw_buffer`).
    pub tls: Option<UpstreamTls>,
    /// Its PROXY protocol header (see [`Cluster::proxy_protocol`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Arc<UpstreamProxyProtocol>>,
}

/// The endpoint metadata namespace transport socket matches look at.
pub const TRANSPORT_SOCKET_MATCH_METADATA: &str = "envoy.transport_socket_match";

impl Cluster {
    /// Which transport socket an endpoint with `metadata` gets: `0` the cluster's own,
    /// `i + 1` match `i`.
    pub fn socket_for(
        &self,
        metadata: &BTreeMap<String, BTreeMap<String, MetadataValue>>,
    ) -> usize {
        if self.transport_socket_matches.is_empty() {
            return 0;
        }
        let empty = BTreeMap::new();
        let md = metadata
            .get(TRANSPORT_SOCKET_MATCH_METADATA)
            .unwrap_or(&empty);
        self.transport_socket_matches
            .iter()
            .position(|m| m.criteria.iter().all(|(k, v)| md.get(k) == Some(v)))
            .map_or(0, |i| i + 1)
    }

    /// The TLS of transport socket `socket` ([`Cluster::socket_for`]).
    pub fn tls_of(&self, socket: usize) -> Option<&UpstreamTls> {
        match socket {
            0 => self.tls.as_ref(),
            i => self.transport_socket_matches.get(i - 1)?.tls.as_ref(),
        }
    }

    /// The PROXY protocol header of transport socket `socket` ([`Cluster::socket_for`]).
    pub fn proxy_protocol_of(&self, socket: usize) -> Option<&Arc<UpstreamProxyProtocol>> {
        match socket {
            0 => self.proxy_protocol.as_ref(),
            i => self
                .transport_socket_matches
                .get(i - 1)?
                .proxy_protocol
                .as_ref(),
        }
    }
}

/// TLS to upstream hosts (`envoy.transport_sockets.tls` `UpstreamTlsContext`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTls {
    /// SNI to send; `None`: none.
    pub sni: Option<String>,
    /// ALPN protocols to offer.
    pub alpn_protocols: Vec<String>,
    /// Client certificates to present.
    pub certificates: Vec<CertificateSource>,
    /// How the server's certificate is verified; `None`: not verified (as in Envoy).
    pub validation: Option<ValidationSource>,
    /// `auto_sni_san_validation`: the server's certificate must name the SNI sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auto_sni_san_validation: bool,
    /// `tls_params.tls_minimum_protocol_version` (`None`: TLS 1.2, Envoy's client default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    /// `tls_params.tls_maximum_protocol_version` (`None`: TLS 1.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsVersion>,
    /// `tls_params` cipher suites, curves and signature algorithms.
    #[serde(skip_serializing_if = "TlsAlgorithms::is_default")]
    pub algorithms: TlsAlgorithms,
}

/// The SDS Secret names a TLS context uses (certificates, then the validation context).
pub fn sds_names<'a>(
    certificates: &'a [CertificateSource],
    validation: Option<&'a ValidationSource>,
) -> impl Iterator<Item = &'a str> {
    let certs = certificates.iter().filter_map(|c| match c {
        CertificateSource::Sds(n) => Some(n.as_str()),
        CertificateSource::Inline(_) => None,
    });
    let validation = match validation {
        Some(ValidationSource::Sds(n) | ValidationSource::Combined { sds: n, .. }) => {
            Some(n.as_str())
        }
        Some(ValidationSource::Inline(_)) | None => None,
    };
    certs.chain(validation)
}

/// A client certificate, inline or by SDS name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// Given inline.
    Inline(TlsCertificate),
    /// An SDS secret of this name.
    Sds(String),
}

/// A validation context, inline or by SDS name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationSource {
    /// Given inline.
    Inline(ValidationContext),
    /// An SDS secret of this name.
    Sds(String),
    /// An SDS secret merged with inline defaults (`combined_validation_context`).
    Combined {
        /// The inline part.
        default: ValidationContext,
        /// The SDS secret's name.
        sds: String,
    },
}

/// HTTP protocol towards the upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 (prior knowledge, or ALPN over TLS).
    Http2(Http2Options),
    /// Whatever the downstream used.
    UseDownstream(Http2Options),
    /// `auto_config`: over TLS, HTTP/2 when ALPN picks `h2`, else HTTP/1.1 (offered both,
    /// learned per endpoint on its first connection); without TLS, HTTP/1.1, as Envoy.
    Auto(Http2Options),
}

/// HTTP/2 settings Myelin applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Http2Options {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; `None`: the default.
    pub max_concurrent_streams: Option<u32>,
    /// Initial stream window; `None`: the default.
    pub initial_stream_window_size: Option<u32>,
    /// Initial connection window; `None`: the default.
    pub initial_connection_window_size: Option<u32>,
    /// PING keepalive; `None`: off.
    pub connection_keepalive: Option<Http2Keepalive>,
    /// `allow_connect`: upgrades (WebSocket) go to these upstreams as extended CONNECT
    /// (RFC 8441).
    pub allow_connect: bool,
}

/// Address families for DNS resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsLookupFamily {
    /// IPv6 if any, else IPv4 (Envoy's `AUTO`).
    Auto,
    /// IPv4 only.
    V4Only,
    /// IPv6 only.
    V6Only,
    /// IPv4 preferred, IPv6 fallback.
    V4Preferred,
    /// Both.
    All,
}
