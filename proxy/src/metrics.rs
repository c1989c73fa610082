//! Prometheus metrics of the proxy.
//!
//! Registered into whatever (sub-)registry the caller passes; the agent passes
//! `registry.sub_registry_with_prefix("myelin")`, so names come out as
//! `myelin_proxy_*`. Counters get the `_total` suffix from `prometheus-client`,
//! durations are in seconds.
//!
//! | name (after the caller's prefix)               | type      | labels |
//! |------------------------------------------------|-----------|--------|
//! | `proxy_connections_opened_total`               | counter   | `protocol` |
//! | `proxy_connections_closed_total`               | counter   | `protocol` |
//! | `proxy_protocol_detect_duration_seconds`       | histogram | `protocol` |
//! | `proxy_orig_dst_missing_total`                 | counter   | |
//! | `proxy_upstream_connect_errors_total`          | counter   | `protocol`, `reason` |
//! | `proxy_requests_total`                         | counter   | `source_workload`, `source_namespace`, `response_code`, `response_flags` |
//! | `proxy_request_duration_seconds`               | histogram | same as `proxy_requests_total` |
//! | `proxy_tcp_bytes_total`                        | counter   | `direction`, `source_workload`, `source_namespace` |
//! | `proxy_config_misses_total`                    | counter   | `reason` |
//! | `proxy_listener_bind_errors_total`             | counter   | |
//! | `proxy_retries_total`                          | counter   | |
//! | `proxy_retry_overflow_total`                   | counter   | |
//! | `proxy_request_overflow_total`                 | counter   | |
//! | `proxy_pending_overflow_total`                 | counter   | |
//! | `proxy_faults_injected_total`                  | counter   | `kind` (`delay`, `abort`) |
//! | `proxy_fault_overflow_total`                   | counter   | |
//! | `proxy_cors_origins_total`                     | counter   | `origin` (`valid`, `invalid`) |
//! | `proxy_mirrored_requests_total`                | counter   | `outcome` (`answered`, `failed`, `skipped`) |
//! | `proxy_downstream_tls_handshake_errors_total`  | counter   | `reason` (`failed`, `timeout`) |
//! | `proxy_headers_with_underscores_total`         | counter   | `action` (`dropped`, `rejected`) |
//! | `proxy_request_head_timeouts_total`            | counter   | `timeout` (`request_headers`, `request`, `stream_idle`) |
//! | `proxy_local_rate_limit_total`                 | counter   | `stat_prefix`, `outcome` (`ok`, `limited_not_enforced`, `enforced`) |
//! | `proxy_api_key_auth_total`                     | counter   | `outcome` (`allowed`, `unauthorized`, `forbidden`) |
//! | `proxy_jwt_authn_total`                        | counter   | `outcome` (`allowed`, `denied`, `cors_preflight_bypassed`) |
//! | `proxy_rate_limit_service_total`               | counter   | `stat_prefix`, `outcome` (`ok`, `over_limit`, `over_limit_not_enforced`, `error_allowed`, `error_denied`) |
//! | `proxy_ext_authz_total`                        | counter   | `stat_prefix`, `outcome` (`ok`, `denied`, `error`, `failure_mode_allowed`, `invalid`, `disabled`) |
//! | `proxy_ext_proc_total`                         | counter   | `stat_prefix`, `outcome` (`continue`, `immediate_response`, `immediate_response_ignored`, `closed`, `spurious`, `rejected_mutation`, `invalid`, `timeout`, `error`, `failure_mode_allowed`) |
//! | `proxy_compressor_total`                       | counter   | `encoding` (`gzip`, `br`, `zstd`), `outcome` (`compressed`, `not_compressed`) |
//! | `proxy_proxy_protocol_total`                   | counter   | `stat_prefix`, `version` (`v1`, `v2`, `none`), `outcome` (`found`, `not_found_allowed`, `disallowed`, `invalid`, `timeout`, `closed`) |

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use crate::detect::Protocol;

/// Label value for a connection whose source IP is not a known local workload.
pub const UNKNOWN: &str = "unknown";

/// Labels of the per-connection counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// Detected protocol: `http1` or `opaque`.
    pub protocol: Protocol,
}

/// Why an upstream connect failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ConnectErrorReason {
    /// The destination answered with a reset (nothing listening).
    Refused,
    /// No answer within `connect_timeout`.
    Timeout,
    /// Anything else (unreachable, no route, out of ports...).
    Other,
}

impl ConnectErrorReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectErrorReason::Refused => "refused",
            ConnectErrorReason::Timeout => "timeout",
            ConnectErrorReason::Other => "other",
        }
    }
}

impl EncodeLabelValue for ConnectErrorReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of `proxy_faults_injected`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// `delay` or `abort`.
    pub kind: &'static str,
}

/// Labels of `proxy_cors_origins`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CorsLabels {
    /// `valid` (allowed by the route's CORS policy) or `invalid`.
    pub origin: &'static str,
}

/// Labels of `proxy_request_head_timeouts`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeadTimeoutLabels {
    /// The connection manager timeout: `request_headers`, `request` or `stream_idle`.
    pub timeout: &'static str,
}

/// Labels of `proxy_headers_with_underscores`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnderscoreLabels {
    /// `dropped` (per header field) or `rejected` (per request).
    pub action: &'static str,
}

/// Labels of `proxy_compressor`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompressorLabels {
    /// The encoding of the filter that would compress: `gzip`, `br`, `zstd`.
    pub encoding: &'static str,
    /// `compressed` or `not_compressed`.
    pub outcome: &'static str,
}

/// Labels of `proxy_local_rate_limit`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// The filter config's `stat_prefix`.
    pub stat_prefix: StatPrefix,
    /// `ok`, `limited_not_enforced` or `enforced`.
    pub outcome: &'static str,
}

/// `proxy_ext_proc` of one filter ([`ProxyMetrics::ext_proc_counter`]).
#[derive(Clone)]
pub(crate) struct ExtProcCounter {
    family: Family<RateLimitLabels, Counter>,
    stat_prefix: Arc<str>,
}

impl ExtProcCounter {
    /// A message and what came of it.
    pub(crate) fn inc(&self, outcome: &'static str) {
        self.family
            .get_or_create(&RateLimitLabels {
                stat_prefix: StatPrefix(self.stat_prefix.clone()),
                outcome,
            })
            .inc();
    }
}

/// Labels of `proxy_proxy_protocol`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyProtocolLabels {
    /// The listener filter's `stat_prefix`.
    pub stat_prefix: StatPrefix,
    /// `v1`, `v2`, or `none` (no header, or not known which).
    pub version: &'static str,
    /// `found`, `not_found_allowed`, `disallowed`, `invalid`, `timeout` or `closed`.
    pub outcome: &'static str,
}

/// A `stat_prefix` shared with its config (a label lookup clones no string).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct StatPrefix(pub Arc<str>);

impl EncodeLabelValue for StatPrefix {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, &self.0)
    }
}

/// Labels of `proxy_downstream_tls_handshake_errors`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeErrorLabels {
    /// `timeout` or `failed`.
    pub reason: &'static str,
}

/// Labels of `proxy_health_checks` (result: `success`, `failure`, `network_failure`) and
/// `proxy_health_check_transitions` (result: `healthy`, `unhealthy`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthCheckLabels {
    /// The cluster.
    pub cluster: String,
    /// What the check came to, or what the host became.
    pub result: &'static str,
}

/// Labels of `proxy_basic_auth`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BasicAuthLabels {
    /// `allowed`, or why not: `no_credential`, `invalid_scheme`, `invalid_format`,
    /// `invalid_credential`.
    pub outcome: &'static str,
}

/// Labels of `proxy_rbac`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RbacLabels {
    /// `http` (the HTTP filter, per request) or `network` (the network filter, per
    /// connection).
    pub filter: &'static str,
    /// `allowed`, `denied`, `shadow_allowed`, `shadow_denied`.
    pub result: &'static str,
}

/// Labels of `proxy_health_check_requests`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthCheckRequestLabels {
    /// `healthy` (answered 200), `unhealthy` (answered 503), `passed_through`.
    pub result: &'static str,
}

/// Labels of `proxy_csrf`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CsrfLabels {
    /// `valid`, `invalid` or `missing_source_origin`.
    pub outcome: &'static str,
}

/// Labels of `proxy_jwt_authn`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwtLabels {
    /// `allowed`, `denied` or `cors_preflight_bypassed`.
    pub outcome: &'static str,
}

/// Labels of `proxy_api_key_auth`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiKeyLabels {
    /// `allowed`, `unauthorized` or `forbidden`.
    pub outcome: &'static str,
}

/// Labels of `proxy_mirrored_requests`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// `answered`, `failed` or `skipped`.
    pub outcome: &'static str,
}

/// Labels of `proxy_upstream_connect_errors`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectErrorLabels {
    /// Protocol of the downstream connection.
    pub protocol: Protocol,
    /// Why the connect failed.
    pub reason: ConnectErrorReason,
}

/// Labels of the per-request metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Source workload name, or `unknown`.
    pub source_workload: Arc<str>,
    /// Source workload namespace, or `unknown`.
    pub source_namespace: Arc<str>,
    /// HTTP status code sent downstream.
    pub response_code: u16,
    /// Envoy-style response flags: `-` (none), `UF` (upstream connect failure),
    /// `UC` (upstream connection terminated), `UPE` (upstream protocol error),
    /// `DC` (downstream connection terminated).
    pub response_flags: &'static str,
}

/// Direction of bytes on an opaque connection, seen from the downstream (the client).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the client sent (read from the downstream socket).
    Sent,
    /// Bytes the client received (written to the downstream socket).
    Received,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        let s = match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        };
        fmt::Write::write_str(encoder, s)
    }
}

/// Labels of `proxy_tcp_bytes`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpBytesLabels {
    /// `sent` or `received`, from the downstream's point of view.
    pub direction: Direction,
    /// Source workload name, or `unknown`.
    pub source_workload: Arc<str>,
    /// Source workload namespace, or `unknown`.
    pub source_namespace: Arc<str>,
}

/// Why the traffic config could not serve a connection or request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum MissReason {
    /// The listener has no filter chain for the connection (and no default chain).
    NoFilterChain,
    /// The RDS route configuration the listener names has not arrived.
    NoRouteConfig,
    /// No virtual host or route matches the request.
    NoRoute,
    /// The route or TCP proxy names a cluster that does not exist.
    NoCluster,
    /// The cluster has no routable endpoint.
    NoHealthyUpstream,
    /// A DNS endpoint did not resolve.
    Dns,
    /// The cluster's upstream TLS cannot be set up (an SDS Secret not delivered, a bad
    /// certificate): fail closed rather than send plaintext.
    UpstreamTlsUnavailable,
    /// The filter chain's downstream TLS cannot be set up: the connection is closed.
    DownstreamTlsUnavailable,
}

impl MissReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MissReason::NoFilterChain => "no_filter_chain",
            MissReason::NoRouteConfig => "no_route_config",
            MissReason::NoRoute => "no_route",
            MissReason::NoCluster => "no_cluster",
            MissReason::NoHealthyUpstream => "no_healthy_upstream",
            MissReason::Dns => "dns",
            MissReason::UpstreamTlsUnavailable => "upstream_tls_unavailable",
            MissReason::DownstreamTlsUnavailable => "downstream_tls_unavailable",
        }
    }
}

impl EncodeLabelValue for MissReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of `proxy_config_misses`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MissLabels {
    /// Why.
    pub reason: MissReason,
}

/// The registry in the classic Prometheus text format (0.0.4, `text/plain; version=0.0.4`).
///
/// `prometheus-client` writes OpenMetrics only; `promtool check metrics` (2.42, Debian's)
/// and older scrapers read the classic format, in which a counter's `# HELP`/`# TYPE`
/// carry the sample name (`x_total`), and `# UNIT` and `# EOF` do not exist. The two
/// differ in nothing else for the metric types used here (counters, gauges, histograms),
/// so rewriting those lines is the whole conversion.
pub fn prometheus_text(registry: &Registry) -> String {
    let mut open = String::new();
    prometheus_client::encoding::text::encode(&mut open, registry)
        .expect("writing to a String cannot fail");
    openmetrics_to_classic(&open)
}

fn openmetrics_to_classic(open: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_owned());
            }
        }
    }
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// All proxy metrics. Cheap to share (`Arc`); every field is internally synchronised.
#[derive(Debug)]
pub struct ProxyMetrics {
    pub(crate) connections_opened: Family<ProtocolLabels, Counter>,
    pub(crate) connections_closed: Family<ProtocolLabels, Counter>,
    pub(crate) protocol_detect_duration: HistogramFamily<ProtocolLabels>,
    pub(crate) orig_dst_missing: Counter,
    pub(crate) upstream_connect_errors: Family<ConnectErrorLabels, Counter>,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) request_duration: HistogramFamily<RequestLabels>,
    pub(crate) tcp_bytes: Family<TcpBytesLabels, Counter>,
    pub(crate) config_misses: Family<MissLabels, Counter>,
    pub(crate) listener_bind_errors: Counter,
    pub(crate) retries: Counter,
    pub(crate) retry_overflow: Counter,
    pub(crate) request_overflow: Counter,
    pub(crate) pending_overflow: Counter,
    pub(crate) faults_injected: Family<FaultLabels, Counter>,
    pub(crate) fault_overflow: Counter,
    pub(crate) cors_origins: Family<CorsLabels, Counter>,
    pub(crate) mirrored_requests: Family<MirrorLabels, Counter>,
    pub(crate) downstream_tls_handshake_errors: Family<HandshakeErrorLabels, Counter>,
    pub(crate) health_checks: Family<HealthCheckLabels, Counter>,
    pub(crate) basic_auth: Family<BasicAuthLabels, Counter>,
    pub(crate) csrf: Family<CsrfLabels, Counter>,
    pub(crate) jwt_authn: Family<JwtLabels, Counter>,
    pub(crate) api_key_auth: Family<ApiKeyLabels, Counter>,
    pub(crate) rbac: Family<RbacLabels, Counter>,
    pub(crate) health_check_requests: Family<HealthCheckRequestLabels, Counter>,
    pub(crate) health_check_transitions: Family<HealthCheckLabels, Counter>,
    pub(crate) local_rate_limit: Family<RateLimitLabels, Counter>,
    pub(crate) rate_limit_service: Family<RateLimitLabels, Counter>,
    pub(crate) ext_authz: Family<RateLimitLabels, Counter>,
    pub(crate) ext_proc: Family<RateLimitLabels, Counter>,
    pub(crate) compressor: Family<CompressorLabels, Counter>,
    pub(crate) proxy_protocol: Family<ProxyProtocolLabels, Counter>,
    pub(crate) headers_with_underscores: Family<UnderscoreLabels, Counter>,
    pub(crate) head_timeouts: Family<HeadTimeoutLabels, Counter>,
    /// Same-node connections and requests refused by the inbound policy.
    pub(crate) local_refused: Family<crate::local::RefusalLabels, Counter>,
}

fn detect_buckets() -> Histogram {
    // 50 us .. ~0.2 s: detection is either immediate or bounded by the sniff timeout.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 13))
}

fn request_buckets() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry` (names relative to its prefix).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            protocol_detect_duration: Family::new_with_constructor(detect_buckets),
            orig_dst_missing: Counter::default(),
            upstream_connect_errors: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            tcp_bytes: Family::default(),
            config_misses: Family::default(),
            listener_bind_errors: Counter::default(),
            retries: Counter::default(),
            retry_overflow: Counter::default(),
            request_overflow: Counter::default(),
            pending_overflow: Counter::default(),
            faults_injected: Family::default(),
            fault_overflow: Counter::default(),
            cors_origins: Family::default(),
            mirrored_requests: Family::default(),
            downstream_tls_handshake_errors: Family::default(),
            health_checks: Family::default(),
            basic_auth: Family::default(),
            csrf: Family::default(),
            jwt_authn: Family::default(),
            api_key_auth: Family::default(),
            rbac: Family::default(),
            health_check_requests: Family::default(),
            health_check_transitions: Family::default(),
            local_rate_limit: Family::default(),
            rate_limit_service: Family::default(),
            ext_authz: Family::default(),
            ext_proc: Family::default(),
            compressor: Family::default(),
            proxy_protocol: Family::default(),
            headers_with_underscores: Family::default(),
            head_timeouts: Family::default(),
            local_refused: Family::default(),
        };
        registry.register(
            "proxy_connections_opened",
            "Captured connections accepted, by detected protocol",
            m.connections_opened.clone(),
        );
        registry.register(
            "proxy_connections_closed",
            "Captured connections closed, by detected protocol",
            m.connections_closed.clone(),
        );
        registry.register_with_unit(
            "proxy_protocol_detect_duration",
            "Time spent sniffing the protocol of a captured connection",
            Unit::Seconds,
            m.protocol_detect_duration.clone(),
        );
        registry.register(
            "proxy_orig_dst_missing",
            "Captured connections closed because no original destination was recorded for them",
            m.orig_dst_missing.clone(),
        );
        registry.register(
            "proxy_upstream_connect_errors",
            "Failed connects to the original destination, by protocol and reason",
            m.upstream_connect_errors.clone(),
        );
        registry.register(
            "proxy_requests",
            "HTTP requests, by source workload, response code and response flags",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "proxy_request_duration",
            "Time from receiving an HTTP request to sending the response headers",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        registry.register(
            "proxy_tcp_bytes",
            "Bytes forwarded on opaque TCP connections, by direction as seen from the client",
            m.tcp_bytes.clone(),
        );
        registry.register(
            "proxy_config_misses",
            "Connections and requests the traffic config could not route, by reason",
            m.config_misses.clone(),
        );
        registry.register(
            "proxy_listener_bind_errors",
            "Listeners with bind_to_port whose address could not be bound",
            m.listener_bind_errors.clone(),
        );
        registry.register(
            "proxy_retries",
            "HTTP request attempts that were retries",
            m.retries.clone(),
        );
        registry.register(
            "proxy_retry_overflow",
            "Retries not made because the cluster's max_retries circuit breaker was full",
            m.retry_overflow.clone(),
        );
        registry.register(
            "proxy_request_overflow",
            "Requests answered 503 UO because the cluster's max_requests circuit breaker was full",
            m.request_overflow.clone(),
        );
        registry.register(
            "proxy_pending_overflow",
            "Requests answered 503 UO because they would have waited for a connection \
             (max_connections) beyond the cluster's max_pending_requests",
            m.pending_overflow.clone(),
        );
        registry.register(
            "proxy_faults_injected",
            "Faults injected by the HTTP fault filter (envoy.filters.http.fault), by kind",
            m.faults_injected.clone(),
        );
        registry.register(
            "proxy_fault_overflow",
            "Faults not injected because the fault filter had max_active_faults in progress",
            m.fault_overflow.clone(),
        );
        registry.register(
            "proxy_cors_origins",
            "Requests with an Origin seen by the CORS filter (envoy.filters.http.cors), by \
             whether the route's policy allows the origin",
            m.cors_origins.clone(),
        );
        registry.register(
            "proxy_mirrored_requests",
            "Copies of requests sent by routes' request_mirror_policies, by outcome: answered, \
             failed (no whole answer, or the copy was cut because it could not keep up with \
             the request's body), skipped (no cluster, no endpoint at once, or the mirror \
             cluster's max_requests)",
            m.mirrored_requests.clone(),
        );
        registry.register(
            "proxy_downstream_tls_handshake_errors",
            "TLS handshakes of listeners' filter chains that failed (a refused or missing \
             client certificate, no common version or protocol, not TLS) or did not finish in \
             time, by reason: failed, timeout",
            m.downstream_tls_handshake_errors.clone(),
        );
        registry.register(
            "proxy_basic_auth",
            "Requests checked by the basic auth filter (envoy.filters.http.basic_auth), by \
             outcome: allowed, or answered 401 for no_credential, invalid_scheme, \
             invalid_format, invalid_credential",
            m.basic_auth.clone(),
        );
        registry.register(
            "proxy_csrf",
            "Requests that change state checked by the CSRF filter (envoy.filters.http.csrf), \
             by outcome: valid, invalid (another origin), missing_source_origin (no Origin \
             or Referer); enforced ones answered 403",
            m.csrf.clone(),
        );
        registry.register(
            "proxy_jwt_authn",
            "Requests checked by the JWT authentication filter (envoy.filters.http.jwt_authn) \
             under a requirement, by outcome: allowed, denied (answered 401 or 403), \
             cors_preflight_bypassed",
            m.jwt_authn.clone(),
        );
        registry.register(
            "proxy_api_key_auth",
            "Requests checked by the API key auth filter (envoy.filters.http.api_key_auth), by \
             outcome: allowed, unauthorized (no key or an unknown one, answered 401), \
             forbidden (a client not allowed on the route, answered 403)",
            m.api_key_auth.clone(),
        );
        registry.register(
            "proxy_rbac",
            "Requests (filter=http) and connections (filter=network) checked by RBAC filters \
             (envoy.filters.http.rbac, envoy.filters.network.rbac), by result: allowed, \
             denied (refused: 403 or a closed connection), and shadow_allowed, shadow_denied \
             for the shadow rules, which only count",
            m.rbac.clone(),
        );
        registry.register(
            "proxy_health_check_requests",
            "Health checks of the proxy itself seen by the health check HTTP filter \
             (envoy.filters.http.health_check), by result: healthy (answered 200), unhealthy \
             (answered 503: a watched cluster has too few healthy hosts), passed_through",
            m.health_check_requests.clone(),
        );
        registry.register(
            "proxy_health_checks",
            "Active health checks of clusters' endpoints, by cluster and result: success, \
             failure (an answer that fails the check), network_failure (no connection, a \
             reset, no answer within the timeout)",
            m.health_checks.clone(),
        );
        registry.register(
            "proxy_health_check_transitions",
            "Endpoints that a cluster's health checker started to pass (healthy) or to fail \
             (unhealthy), by cluster",
            m.health_check_transitions.clone(),
        );
        registry.register(
            "proxy_local_rate_limit",
            "Requests checked by the local rate limit filter \
             (envoy.filters.http.local_ratelimit), by the filter config's stat_prefix and \
             outcome: ok (a token taken), limited_not_enforced (none left, the request went \
             on), enforced (none left, answered 429 RL)",
            m.local_rate_limit.clone(),
        );
        registry.register(
            "proxy_rate_limit_service",
            "Requests checked by the global rate limit filter (envoy.filters.http.ratelimit), \
             by the filter config's stat_prefix and outcome: ok, over_limit (answered 429 \
             RL), over_limit_not_enforced (the request went on), error_allowed (no answer \
             from the service, the request went on), error_denied (no answer, answered \
             status_on_error RLSE)",
            m.rate_limit_service.clone(),
        );
        registry.register(
            "proxy_ext_authz",
            "Requests checked by the external authorization filter \
             (envoy.filters.http.ext_authz), by the filter config's stat_prefix and outcome: \
             ok, denied (answered with the service's denial, UAEX), error (no usable answer, \
             answered status_on_error UAEX), failure_mode_allowed (no usable answer, the \
             request went on), invalid (an answer with invalid mutations, answered 500 UAEX), \
             disabled (not checked: filter_enabled or its metadata said no)",
            m.ext_authz.clone(),
        );
        registry.register(
            "proxy_ext_proc",
            "Messages of the external processing filter (envoy.filters.http.ext_proc) and \
             what came of them, by the filter config's stat_prefix and outcome: continue (the \
             processor's changes applied), immediate_response (the processor answered the \
             request), immediate_response_ignored (disable_immediate_response), closed (the \
             processor ended the stream: processing over), spurious (an answer out of turn: \
             processing over), rejected_mutation (one header change the mutation rules \
             refused), invalid (changes that are not valid HTTP: 500), timeout (no answer \
             within message_timeout: 504), error (the stream failed: 500), \
             failure_mode_allowed (after a timeout or error, the request went on)",
            m.ext_proc.clone(),
        );
        registry.register(
            "proxy_proxy_protocol",
            "Connections to listeners with the PROXY protocol filter \
             (envoy.filters.listener.proxy_protocol), by the filter's stat_prefix, the header's \
             version and outcome: found (served as the header says), not_found_allowed (no \
             header, served as it is), disallowed (a version the listener does not take: \
             closed), invalid (closed), timeout (no whole header within \
             listener_filters_timeout: closed, or served as it is with \
             continue_on_listener_filters_timeout), closed (the client left first)",
            m.proxy_protocol.clone(),
        );
        registry.register(
            "proxy_compressor",
            "Responses a compressor filter (envoy.filters.http.compressor) found compressible, \
             by the encoding of the filter that would compress them and outcome: compressed, \
             not_compressed (the client does not accept the encoding, or no body)",
            m.compressor.clone(),
        );
        registry.register(
            "proxy_headers_with_underscores",
            "Request header fields with an underscore in their name dropped, and requests \
             refused for one, by the connection manager's headers_with_underscores_action",
            m.headers_with_underscores.clone(),
        );
        registry.register(
            "proxy_request_head_timeouts",
            "HTTP/1.1 connections closed because a request head begun did not come whole in \
             time, by the connection manager timeout that ended it",
            m.head_timeouts.clone(),
        );
        registry.register(
            "proxy_local_refused",
            "Pod-to-pod connections (opaque) and requests (HTTP) on this node refused by the \
             inbound policy (myelin.mtls.inbound_allow), by reason: denied (the source's \
             identity is not allowed; the HBONE server counts its own as \
             myelin_hbone_refused_total{reason=\"denied\"}), no_identity (the source is not \
             a workload)",
            m.local_refused.clone(),
        );
        m
    }

    pub(crate) fn local_refused(&self, reason: crate::local::Refusal) {
        self.local_refused
            .get_or_create(&crate::local::RefusalLabels { reason })
            .inc();
    }

    /// Same-node connections and requests refused so far for `reason` (`denied`,
    /// `no_identity`).
    pub fn local_refused_count(&self, reason: &str) -> u64 {
        [
            crate::local::Refusal::Denied,
            crate::local::Refusal::NoIdentity,
        ]
        .into_iter()
        .find(|r| r.as_str() == reason)
        .map_or(0, |reason| {
            self.local_refused
                .get_or_create(&crate::local::RefusalLabels { reason })
                .get()
        })
    }

    /// A fault injected (`delay` or `abort`).
    pub(crate) fn fault_injected(&self, kind: &'static str) {
        self.faults_injected
            .get_or_create(&FaultLabels { kind })
            .inc();
    }

    /// A request with an `Origin` the CORS filter checked.
    pub(crate) fn cors_origin(&self, valid: bool) {
        let origin = if valid { "valid" } else { "invalid" };
        self.cors_origins
            .get_or_create(&CorsLabels { origin })
            .inc();
    }

    /// A request head that did not come whole before `timeout`.
    pub(crate) fn head_timeout(&self, timeout: &'static str) {
        self.head_timeouts
            .get_or_create(&HeadTimeoutLabels { timeout })
            .inc();
    }

    /// A header field with an underscore dropped, or a request refused for one.
    pub(crate) fn headers_with_underscores(&self, action: &'static str) {
        self.headers_with_underscores
            .get_or_create(&UnderscoreLabels { action })
            .inc();
    }

    /// A request the local rate limit filter checked.
    pub(crate) fn local_rate_limit(&self, stat_prefix: &Arc<str>, outcome: &'static str) {
        self.local_rate_limit
            .get_or_create(&RateLimitLabels {
                stat_prefix: StatPrefix(stat_prefix.clone()),
                outcome,
            })
            .inc();
    }

    /// A request checked by the global rate limit filter.
    pub(crate) fn rate_limit_service(&self, stat_prefix: &Arc<str>, outcome: &'static str) {
        self.rate_limit_service
            .get_or_create(&RateLimitLabels {
                stat_prefix: StatPrefix(stat_prefix.clone()),
                outcome,
            })
            .inc();
    }

    /// A compressible response, compressed or not.
    pub(crate) fn compressor(&self, encoding: &'static str, outcome: &'static str) {
        self.compressor
            .get_or_create(&CompressorLabels { encoding, outcome })
            .inc();
    }

    /// A connection the PROXY protocol listener filter read.
    pub(crate) fn proxy_protocol(
        &self,
        stat_prefix: &Arc<str>,
        version: Option<crate::model::proxy_protocol::ProxyProtocolVersion>,
        outcome: &'static str,
    ) {
        self.proxy_protocol
            .get_or_create(&ProxyProtocolLabels {
                stat_prefix: StatPrefix(stat_prefix.clone()),
                version: version.map_or("none", |v| v.as_str()),
                outcome,
            })
            .inc();
    }

    /// A request the external authorization filter checked (or was off for).
    pub(crate) fn ext_authz(&self, stat_prefix: &Arc<str>, outcome: &'static str) {
        self.ext_authz
            .get_or_create(&RateLimitLabels {
                stat_prefix: StatPrefix(stat_prefix.clone()),
                outcome,
            })
            .inc();
    }

    /// A message of the external processing filter and what came of it.
    pub(crate) fn ext_proc(&self, stat_prefix: &Arc<str>, outcome: &'static str) {
        self.ext_proc_counter(stat_prefix).inc(outcome);
    }

    /// The counter of an external processing filter, for a body it tells chunk by chunk
    /// (which outlives the filter chain's run).
    pub(crate) fn ext_proc_counter(&self, stat_prefix: &Arc<str>) -> ExtProcCounter {
        ExtProcCounter {
            family: self.ext_proc.clone(),
            stat_prefix: stat_prefix.clone(),
        }
    }

    /// A request checked by the JWT filter under a requirement.
    pub(crate) fn jwt_authn(&self, outcome: &'static str) {
        self.jwt_authn.get_or_create(&JwtLabels { outcome }).inc();
    }

    /// A request checked by the API key auth filter.
    pub(crate) fn api_key_auth(&self, outcome: &'static str) {
        self.api_key_auth
            .get_or_create(&ApiKeyLabels { outcome })
            .inc();
    }

    /// A request checked by the CSRF filter.
    pub(crate) fn csrf(&self, outcome: &'static str) {
        self.csrf.get_or_create(&CsrfLabels { outcome }).inc();
    }

    /// A request or connection checked by an RBAC filter (`filter`: `http`, `network`).
    pub(crate) fn rbac(&self, filter: &'static str, result: &'static str) {
        self.rbac
            .get_or_create(&RbacLabels { filter, result })
            .inc();
    }

    /// A health check of the proxy seen by the health check filter.
    pub(crate) fn health_check_request(&self, result: &'static str) {
        self.health_check_requests
            .get_or_create(&HealthCheckRequestLabels { result })
            .inc();
    }

    /// A request checked by the basic auth filter.
    pub(crate) fn basic_auth(&self, outcome: &'static str) {
        self.basic_auth
            .get_or_create(&BasicAuthLabels { outcome })
            .inc();
    }

    /// A request copy for a mirror: `answered`, `failed` or `skipped`.
    pub(crate) fn downstream_tls_failed(&self, reason: &'static str) {
        self.downstream_tls_handshake_errors
            .get_or_create(&HandshakeErrorLabels { reason })
            .inc();
    }

    pub(crate) fn mirrored(&self, outcome: &'static str) {
        self.mirrored_requests
            .get_or_create(&MirrorLabels { outcome })
            .inc();
    }

    pub(crate) fn config_miss(&self, reason: MissReason) {
        self.config_misses
            .get_or_create(&MissLabels { reason })
            .inc();
    }

    /// Metrics registered nowhere: for tests and tools that do not export.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    pub(crate) fn connect_error(&self, protocol: Protocol, reason: ConnectErrorReason) {
        self.upstream_connect_errors
            .get_or_create(&ConnectErrorLabels { protocol, reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn classic_text_format() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2\n# HELP a_d Durations.\n# TYPE a_d_seconds histogram\n# UNIT a_d_seconds seconds\na_d_seconds_sum 1.0\n# EOF\n";
        assert_eq!(
            openmetrics_to_classic(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n# HELP a_d Durations.\n# TYPE a_d_seconds histogram\na_d_seconds_sum 1.0\n"
        );
    }

    #[test]
    fn names_and_labels() {
        let mut registry = Registry::default();
        let m = ProxyMetrics::new(registry.sub_registry_with_prefix("myelin"));
        m.connections_opened
            .get_or_create(&ProtocolLabels {
                protocol: Protocol::Http1,
            })
            .inc();
        m.connect_error(Protocol::Opaque, ConnectErrorReason::Refused);
        m.requests
            .get_or_create(&RequestLabels {
                source_workload: "a".into(),
                source_namespace: "ns".into(),
                response_code: 503,
                response_flags: "UF",
            })
            .inc();
        m.tcp_bytes
            .get_or_create(&TcpBytesLabels {
                direction: Direction::Received,
                source_workload: UNKNOWN.into(),
                source_namespace: UNKNOWN.into(),
            })
            .inc_by(7);
        m.orig_dst_missing.inc();
        m.protocol_detect_duration
            .get_or_create(&ProtocolLabels {
                protocol: Protocol::Opaque,
            })
            .observe(0.1);
        m.request_duration
            .get_or_create(&RequestLabels {
                source_workload: "a".into(),
                source_namespace: "ns".into(),
                response_code: 200,
                response_flags: "-",
            })
            .observe(0.002);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        for want in [
            "myelin_proxy_connections_opened_total{protocol=\"http1\"} 1",
            "myelin_proxy_upstream_connect_errors_total{protocol=\"opaque\",reason=\"refused\"} 1",
            "myelin_proxy_requests_total{source_workload=\"a\",source_namespace=\"ns\",response_code=\"503\",response_flags=\"UF\"} 1",
            "myelin_proxy_tcp_bytes_total{direction=\"received\",source_workload=\"unknown\",source_namespace=\"unknown\"} 7",
            "myelin_proxy_orig_dst_missing_total 1",
            "# TYPE myelin_proxy_protocol_detect_duration_seconds histogram",
            "# TYPE myelin_proxy_request_duration_seconds histogram",
            "myelin_proxy_protocol_detect_duration_seconds_count{protocol=\"opaque\"} 1",
            "myelin_proxy_request_duration_seconds_bucket{le=\"0.002\",source_workload=\"a\",source_namespace=\"ns\",response_code=\"200\",response_flags=\"-\"} 1",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }
}
