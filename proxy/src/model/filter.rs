//! The HTTP filters a connection manager runs before its router (Envoy `http_filters`):
//! fault injection (`envoy.filters.http.fault`), CORS (`envoy.filters.http.cors`), local
//! rate limiting (`envoy.filters.http.local_ratelimit`), basic auth
//! (`envoy.filters.http.basic_auth`), JWT authentication (`envoy.filters.http.jwt_authn`,
//! settings in [`super::jwt`]), CSRF (`envoy.filters.http.csrf`), RBAC
//! (`envoy.filters.http.rbac`, settings in [`super::rbac`]), health checks
//! (`envoy.filters.http.health_check`) and stateful sessions
//! (`envoy.filters.http.stateful_session`), and their per-route settings
//! (`typed_per_filter_config` of a route, a virtual host or a route table).
//!
//! A filter's per-route settings are found by the filter's name in the connection manager,
//! as in Envoy; the most specific level that has an entry wins (route, then virtual host,
//! then route table). CORS policies merge field by field across the levels, as Envoy's
//! CORS filter does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use super::listener::HeaderText;
use super::opt_duration_str;
use super::rbac::RbacConfig;
use super::route::{HeaderMatcher, HeaderValueOption, RateLimitEntry};
use super::types::StringMatcher;

/// The filters before the router, in the connection manager's order. Empty for most
/// connection managers: then a request pays one length check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct HttpFilters(pub Vec<HttpFilter>);

impl HttpFilters {
    /// Whether there is no filter before the router.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One filter of a connection manager.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpFilter {
    /// Its name in the connection manager: the key of its per-route settings.
    pub name: String,
    /// `disabled`: off unless a route's settings turn it on.
    pub disabled: bool,
    /// What it is.
    pub kind: FilterKind,
}

/// The filters Myelin has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// Fault injection with the filter's own settings (used where no route has any) and
    /// the count of its faults in progress (`max_active_faults`).
    Fault {
        /// The settings of the filter itself.
        policy: Arc<FaultPolicy>,
        /// Faults of this filter in progress.
        active: ActiveFaults,
    },
    /// CORS: policies come from the routes only.
    Cors,
    /// Local rate limiting with the filter's own settings (used where no route has any).
    LocalRateLimit(Arc<RateLimitPolicy>),
    /// Global rate limiting (`envoy.filters.http.ratelimit`): a rate limit service decides.
    RateLimit(Arc<GlobalRateLimitPolicy>),
    /// External authorization (`envoy.filters.http.ext_authz`): a service decides.
    ExtAuthz(Arc<super::ext_authz::ExtAuthzPolicy>),
    /// External processing (`envoy.filters.http.ext_proc`): a service is told the request's
    /// and the response's headers and may change them.
    ExtProc(Arc<super::ext_proc::ExtProcPolicy>),
    /// Response compression (`envoy.filters.http.compressor`) with one library.
    Compressor(Arc<CompressorPolicy>),
    /// JWT authentication (`envoy.filters.http.jwt_authn`, settings in [`super::jwt`]).
    Jwt(Arc<super::jwt::JwtConfig>),
    /// API key authentication (`envoy.filters.http.api_key_auth`) with the filter's keys.
    ApiKeyAuth(Arc<ApiKeyAuthPolicy>),
    /// HTTP Basic authentication (`envoy.filters.http.basic_auth`) with the filter's users
    /// (a route's replace them).
    BasicAuth(Arc<BasicAuthPolicy>),
    /// Cross-site request forgery checks (`envoy.filters.http.csrf`) with the filter's
    /// policy (a route's replaces it).
    Csrf(Arc<CsrfPolicy>),
    /// Role-based access control (`envoy.filters.http.rbac`) with the filter's settings (a
    /// route's replace them).
    Rbac(Arc<RbacConfig>),
    /// Health checks of the proxy itself (`envoy.filters.http.health_check`): run before
    /// the route is chosen, so no per-route settings.
    HealthCheck(Arc<HealthCheckFilter>),
    /// Session affinity (`envoy.filters.http.stateful_session`) with the filter's session
    /// state (`None`: none, the filter does nothing unless a route gives one).
    StatefulSession(Option<Arc<SessionPolicy>>),
}

/// A stateful session (`StatefulSession`): where a request says its session's host is,
/// and how the response tells the client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionPolicy {
    /// Where the host's address is kept.
    pub state: SessionState,
    /// `strict`: a request whose host is gone (or unhealthy) is answered 503 instead of
    /// being balanced anew.
    pub strict: bool,
}

/// Where a session's host is kept (base64 of its `ip:port`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// `envoy.http.stateful_session.cookie` (`CookieBasedSessionState`): a cookie, set
    /// when the response's host is not the one the request named.
    Cookie {
        /// The cookie's name.
        name: String,
        /// Its `Path` attribute (none when empty).
        path: String,
        /// Its `Max-Age` (none: a session cookie).
        #[serde(serialize_with = "opt_duration_str")]
        ttl: Option<Duration>,
        /// More attributes, `name` or `name=value`.
        attributes: Vec<(String, String)>,
    },
    /// `envoy.http.stateful_session.header` (`HeaderBasedSessionState`): a request header,
    /// and the same header in the response when the host changed.
    Header {
        /// The header's name (lower case).
        name: String,
    },
}

/// The health check filter's settings (`HealthCheck`): a request whose headers all match
/// is a health check of the proxy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckFilter {
    /// `pass_through_mode`: health checks are routed like any request; otherwise the
    /// filter answers them.
    pub pass_through: bool,
    /// What makes a request a health check (all of them; none: every request).
    pub headers: Vec<HeaderMatcher>,
    /// `cluster_min_healthy_percentages`: a health check is answered 200 only while each
    /// cluster has at least this percentage of its hosts healthy (truncated to an
    /// integer, as Envoy does), else 503.
    pub cluster_min_healthy: Vec<(String, f64)>,
}

/// The faults of one fault filter in progress, shared by every request through it (a new
/// listener config starts a new count, as a new Envoy filter config does).
#[derive(Debug, Clone, Default)]
pub struct ActiveFaults(pub Arc<AtomicU32>);

impl ActiveFaults {
    /// Faults in progress now.
    pub fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

// A counter is not configuration: two filters with the same settings are the same config.
impl PartialEq for ActiveFaults {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Serialize for ActiveFaults {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.now())
    }
}

/// Per-route settings of filters, by filter name.
pub type FilterSettings = BTreeMap<String, FilterSetting>;

/// One filter's settings at one level (`typed_per_filter_config` entry).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterSetting {
    /// The filter is off here (`FilterConfig.disabled`); `false` turns a filter that is
    /// disabled in the connection manager on.
    pub disabled: bool,
    /// The settings (`None`: only `disabled` was given).
    pub policy: Option<FilterPolicy>,
}

/// A filter's per-route settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterPolicy {
    /// `envoy.extensions.filters.http.fault.v3.HTTPFault`: replaces the filter's own.
    Fault(Arc<FaultPolicy>),
    /// `envoy.extensions.filters.http.cors.v3.CorsPolicy`.
    Cors(Arc<CorsPolicy>),
    /// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`: replaces the
    /// filter's own, with a bucket of its own.
    LocalRateLimit(Arc<RateLimitPolicy>),
    /// `envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute`: what a route's
    /// requests send to the rate limit service.
    RateLimit(Arc<GlobalRateLimitRoute>),
    /// `envoy.extensions.filters.http.compressor.v3.CompressorPerRoute`: response
    /// compression off or on, and whether `Accept-Encoding` goes upstream.
    Compressor(Arc<CompressorRoute>),
    /// `envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute`: off, or the
    /// check's `context_extensions`.
    ExtAuthz(Arc<super::ext_authz::ExtAuthzRoute>),
    /// `envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute`: off, or overrides.
    ExtProc(Arc<super::ext_proc::ExtProcRoute>),
    /// `envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig`: off, or a named
    /// requirement in place of the filter's `rules`.
    Jwt(Arc<super::jwt::JwtRoute>),
    /// `envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute`.
    ApiKeyAuth(Arc<ApiKeyAuthRoute>),
    /// `envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute`: the users, in place
    /// of the filter's.
    BasicAuth(Arc<BasicAuthUsers>),
    /// `envoy.extensions.filters.http.csrf.v3.CsrfPolicy`: replaces the filter's own.
    Csrf(Arc<CsrfPolicy>),
    /// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute`: replaces the filter's
    /// settings (without `rbac`, with nothing: the filter enforces nothing on the route).
    Rbac(Arc<RbacConfig>),
    /// `envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute`: the
    /// route's session, in place of the filter's (`None`: `disabled`, no session here).
    StatefulSession(Option<Arc<SessionPolicy>>),
}

/// The CSRF filter's policy (`CsrfPolicy`): for requests that change state (`POST`,
/// `PUT`, `DELETE`, `PATCH`), the origin they come from (`Origin`, else `Referer`) must be
/// the host they go to, or one of `additional_origins`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CsrfPolicy {
    /// The share of requests checked and refused when they fail (`filter_enabled`).
    pub filter_enabled: Fraction,
    /// The share of requests checked and only counted (`shadow_enabled`).
    pub shadow_enabled: Option<Fraction>,
    /// Other origins allowed, matched against the source's `host[:port]`.
    pub additional_origins: Vec<StringMatcher>,
}

/// The basic auth filter's settings (`BasicAuth`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BasicAuthPolicy {
    /// Who may pass.
    pub users: Arc<BasicAuthUsers>,
    /// `forward_username_header`: the authenticated user's name goes upstream in it.
    pub forward_username_header: Option<String>,
    /// `authentication_header`: credentials are read from it instead of `Authorization`.
    pub authentication_header: Option<String>,
}

/// API key authentication (`ApiKeyAuth`): the keys and the clients they name, where a
/// request carries its key, and what goes upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeyAuthPolicy {
    /// `credentials`.
    pub keys: ApiKeys,
    /// `key_sources`, tried in order.
    pub sources: Vec<ApiKeySource>,
    /// `forwarding`.
    pub forwarding: ApiKeyForwarding,
}

/// A route's `ApiKeyAuthPerRoute`: its keys and sources in place of the filter's when it
/// has any, its `forwarding` in place of the filter's always (as Envoy's code reads it),
/// and which clients may pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeyAuthRoute {
    /// `credentials` (empty: the filter's).
    pub keys: ApiKeys,
    /// `key_sources` (empty: the filter's).
    pub sources: Vec<ApiKeySource>,
    /// `allowed_clients` (empty: any client with a known key).
    pub allowed_clients: Vec<String>,
    /// `forwarding`.
    pub forwarding: ApiKeyForwarding,
}

/// Keys and the client each names. Shown by client only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(pub BTreeMap<String, String>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.values()).finish()
    }
}

impl Serialize for ApiKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values())
    }
}

/// Where a request's API key is (`KeySource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeySource {
    /// A header's first value (after `Bearer `, if it starts so).
    Header(String),
    /// A query parameter's first value, percent-decoded.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// `Forwarding`: the client's name upstream, the key hidden.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApiKeyForwarding {
    /// `header`: the client's name in it.
    pub header: Option<String>,
    /// `hide_credentials`: every source's key removed from the request.
    pub hide_credentials: bool,
}

/// Users of an htpasswd file (`{SHA}` entries only, as Envoy takes them): each name with
/// the base64 of its password's SHA-1. Shown by name only.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuthUsers(pub BTreeMap<String, String>);

impl std::fmt::Debug for BasicAuthUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl BasicAuthUsers {
    /// Whether `user` is listed with `password` (compared by the base64 of its SHA-1, as
    /// htpasswd `{SHA}` entries are).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        use base64::Engine;
        let Some(want) = self.0.get(user) else {
            return false;
        };
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
        let got = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        // Constant time: the comparison should not tell how much of a guess was right.
        subtle::ConstantTimeEq::ct_eq(got.as_bytes(), want.as_bytes()).into()
    }
}

impl Serialize for BasicAuthUsers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.keys())
    }
}

/// A fraction of requests (`type.v3.FractionalPercent`): `numerator` out of `denominator`
/// (100, 10,000 or 1,000,000), at most all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fraction {
    /// Requests chosen per `denominator`.
    pub numerator: u32,
    /// 100, 10,000 or 1,000,000.
    pub denominator: u32,
}

impl Fraction {
    /// None of them (an unset `percentage` of a fault, as in Envoy).
    pub const NONE: Fraction = Fraction {
        numerator: 0,
        denominator: 100,
    };
    /// All of them.
    pub const ALL: Fraction = Fraction {
        numerator: 100,
        denominator: 100,
    };

    /// Whether a request whose roll (uniform in `0..u32::MAX`) is `roll` is chosen.
    pub fn chooses(&self, roll: u32) -> bool {
        if self.numerator >= self.denominator {
            return true;
        }
        // Envoy draws `random % denominator < numerator`.
        roll % self.denominator < self.numerator
    }

    /// The same denominator with at most `numerator` (a header's percentage is capped by
    /// the configured one).
    pub fn capped(self, numerator: u32) -> Fraction {
        Fraction {
            numerator: numerator.min(self.numerator),
            ..self
        }
    }
}

/// Fault injection settings (`HTTPFault`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultPolicy {
    /// Delay before the request goes on.
    pub delay: Option<FaultDelay>,
    /// Answer instead of forwarding (after the delay, if both happen).
    pub abort: Option<FaultAbort>,
    /// Only requests routed to this cluster (`upstream_cluster`).
    pub upstream_cluster: Option<String>,
    /// Only requests whose headers match all of these.
    pub headers: Vec<HeaderMatcher>,
    /// Only requests whose `x-envoy-downstream-service-node` is one of these.
    pub downstream_nodes: Vec<String>,
    /// No new fault while this many of the filter's faults are in progress.
    pub max_active_faults: Option<u32>,
}

/// A fault delay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultDelay {
    /// How long.
    pub duration: DelaySource,
    /// Of which requests.
    pub percentage: Fraction,
}

/// Where a delay's length comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelaySource {
    /// `fixed_delay`.
    Fixed(#[serde(serialize_with = "duration")] Duration),
    /// `header_delay`: the request's `x-envoy-fault-delay-request` (milliseconds), its
    /// share capped by `x-envoy-fault-delay-request-percentage`.
    Header,
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    opt_duration_str(&Some(*d), s)
}

/// A fault abort.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultAbort {
    /// The answer.
    pub status: AbortStatus,
    /// Of which requests.
    pub percentage: Fraction,
}

/// What an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortStatus {
    /// This HTTP status (200-599).
    Http(u16),
    /// This gRPC status (in a `200`, as Envoy does).
    Grpc(u32),
    /// `header_abort`: the request's `x-envoy-fault-abort-request` (an HTTP status) or
    /// `x-envoy-fault-abort-grpc-request` (a gRPC status), its share capped by
    /// `x-envoy-fault-abort-request-percentage`.
    Header,
}

/// A CORS policy (`envoy.extensions.filters.http.cors.v3.CorsPolicy`, or the deprecated
/// `cors` of a virtual host or route action). Unset fields are taken from the less specific
/// levels.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CorsPolicy {
    /// Origins allowed (any matcher; one that matches `*` allows all).
    pub allow_origin: Vec<StringMatcher>,
    /// `access-control-allow-methods` of preflight answers (`*`: the requested method).
    pub allow_methods: Option<HeaderText>,
    /// `access-control-allow-headers` of preflight answers (`*`: the requested headers).
    pub allow_headers: Option<HeaderText>,
    /// `access-control-expose-headers` of answers to allowed origins.
    pub expose_headers: Option<HeaderText>,
    /// `access-control-max-age` of preflight answers.
    pub max_age: Option<HeaderText>,
    /// `access-control-allow-credentials: true`.
    pub allow_credentials: Option<bool>,
    /// `access-control-allow-private-network: true` to preflights that ask for it.
    pub allow_private_network_access: Option<bool>,
    /// Preflights from origins not allowed go upstream (Envoy's default) instead of being
    /// answered without `access-control-allow-origin`.
    pub forward_not_matching_preflights: Option<bool>,
    /// Share of requests the policy is enforced on (`filter_enabled`); `None`: all.
    pub filter_enabled: Option<Fraction>,
    /// Share of requests whose origin is only checked and counted (`shadow_enabled`).
    pub shadow_enabled: Option<Fraction>,
}

/// Local rate limiting (`LocalRateLimit`): a token bucket per filter config (per route
/// config when a route has one), shared by every connection, or one per connection.
#[derive(Debug, PartialEq, Serialize)]
pub struct RateLimitPolicy {
    /// `stat_prefix`: the label of its counters.
    pub stat_prefix: Arc<str>,
    /// The status of a limited request's answer (429 unless set to 400 or above).
    pub status: u16,
    /// The bucket (`None`: nothing is limited, a filter whose routes bring the limits).
    pub bucket: Option<TokenBucket>,
    /// Share of requests checked (`filter_enabled`; unset: none, as in Envoy).
    pub filter_enabled: Fraction,
    /// Share of the checked requests a limit is enforced on (`filter_enforced`; unset:
    /// none); the others are counted and go on.
    pub filter_enforced: Fraction,
    /// Added to limited requests that go on (not enforced).
    pub request_headers_to_add_when_not_enforced: Vec<HeaderValueOption>,
    /// Added to the answers of limited requests.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// A bucket per downstream connection instead of one for all.
    pub per_connection: bool,
    /// `x-ratelimit-limit`, `-remaining` and `-reset` on responses (`DRAFT_VERSION_03`).
    pub x_ratelimit_headers: bool,
    /// gRPC clients get `RESOURCE_EXHAUSTED` instead of `UNAVAILABLE`.
    pub grpc_resource_exhausted: bool,
    /// `descriptors`: buckets of their own for the requests whose route `rate_limits`
    /// (of this `stage`) give exactly these entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<DescriptorLimit>,
    /// The filter's own `rate_limits`: when set, the request's descriptors come from
    /// these, not from its route and virtual host (nor by `stage`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitEntry>,
    /// `stage`: the route `rate_limits` entries read.
    pub stage: u32,
    /// `vh_rate_limits`: whether the virtual host's `rate_limits` count too.
    pub vh_rate_limits: VhRateLimits,
    /// `always_consume_default_token_bucket` (default true): the filter's own bucket is
    /// taken from even when a descriptor's was.
    pub always_consume_default: bool,
}

/// Global rate limiting (`envoy.extensions.filters.http.ratelimit.v3.RateLimit`): the
/// descriptors of a request (from its route's `rate_limits` of this `stage`) go to a rate
/// limit service, which answers whether the request is over a limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlobalRateLimitPolicy {
    /// `domain`: the namespace of the service's limits.
    pub domain: String,
    /// `stage`: the route `rate_limits` entries read.
    pub stage: u32,
    /// `request_type`: which requests are checked, by `x-envoy-internal`.
    pub request_type: RequestType,
    /// The service and how to reach it (`rate_limit_service`).
    pub service: GrpcService,
    /// How long the service may take to answer (`timeout`, default 20 ms); a late answer
    /// is an error.
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    /// Share of the requests the service failed to answer for that are answered
    /// `status_on_error` (`failure_mode_deny`: all; `failure_mode_deny_percent` when
    /// set); the others go on.
    pub failure_mode_deny: Fraction,
    /// The status of an answer to a request over a limit (`rate_limited_status`; 429
    /// unless 400 or above).
    pub status: u16,
    /// The status of an answer when the service failed (`status_on_error`; 500 unless
    /// 100 to 511).
    pub status_on_error: u16,
    /// gRPC clients over a limit get `RESOURCE_EXHAUSTED` instead of `UNAVAILABLE`.
    pub grpc_resource_exhausted: bool,
    /// `x-ratelimit-limit`, `-remaining` and `-reset` from the service's descriptor
    /// statuses (`DRAFT_VERSION_03`).
    pub x_ratelimit_headers: bool,
    /// `x-envoy-ratelimited: true` on answers to requests over a limit (unless
    /// `disable_x_envoy_ratelimited_header`).
    pub x_envoy_ratelimited: bool,
    /// Added to the answers of requests over a limit.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// `stat_prefix`: a label of its counters.
    pub stat_prefix: Arc<str>,
    /// Share of requests checked (`filter_enabled`; unset: all).
    pub filter_enabled: Fraction,
    /// Share of the requests over a limit that are answered (`filter_enforced`; unset:
    /// all); the others go on.
    pub filter_enforced: Fraction,
    /// The filter's own `rate_limits`: when set, the request's descriptors come from
    /// these, not from its route and virtual host (nor by `stage`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitEntry>,
}

/// A route's settings for the global rate limit filter (`RateLimitPerRoute`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlobalRateLimitRoute {
    /// `vh_rate_limits`: whether the virtual host's `rate_limits` count too.
    pub vh_rate_limits: VhRateLimits,
    /// `rate_limits`: when set, in place of the route's (and the virtual host's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitEntry>,
    /// `domain`: in place of the filter's, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// Which requests a global rate limit filter checks (`request_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestType {
    /// `both` (the default).
    Both,
    /// `internal`: those with `x-envoy-internal: true`.
    Internal,
    /// `external`: the others.
    External,
}

/// Response compression (`envoy.extensions.filters.http.compressor.v3.Compressor`): the
/// responses it compresses and with what (see [`crate`]'s `compress` module for the rules).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompressorPolicy {
    /// `compressor_library`.
    pub library: CompressionLibrary,
    /// Response compression on (`response_direction_config.common_config.enabled`'s
    /// default value; unset: on).
    pub enabled: bool,
    /// Responses shorter than this (by `Content-Length`) are not compressed
    /// (`min_content_length`, default 30).
    pub min_content_length: u32,
    /// The content types compressed (`content_type`; unset: Envoy's list of text, script,
    /// JSON, XML, SVG and gRPC-Web types), lower case.
    pub content_types: Vec<String>,
    /// A response with an `ETag` is not compressed (`disable_on_etag_header`).
    pub disable_on_etag: bool,
    /// `Accept-Encoding` is removed from the request (`remove_accept_encoding_header`).
    pub remove_accept_encoding: bool,
    /// Preferred over other encodings the client accepts as much (`choose_first`).
    pub choose_first: bool,
    /// Responses with these statuses are not compressed (`uncompressible_response_codes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uncompressible_statuses: Vec<u16>,
    /// A strong `ETag` is made weak (`W/`) instead of dropped (`weaken_etag_on_compress`).
    pub weaken_etag: bool,
}

/// A compression library and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionLibrary {
    /// `envoy.compression.gzip.compressor` (`Content-Encoding: gzip`).
    Gzip {
        /// zlib's level, 0 to 9.
        level: u32,
    },
    /// `envoy.compression.brotli.compressor` (`br`).
    Brotli {
        /// `quality`, 0 to 11.
        quality: u32,
        /// `window_bits` (`lgwin`), 10 to 24.
        window_bits: u32,
        /// `input_block_bits` (`lgblock`), 16 to 24.
        input_block_bits: u32,
        /// `encoder_mode` as brotli numbers it: 0 generic, 1 text, 2 font.
        mode: u32,
        /// `disable_literal_context_modeling`.
        disable_literal_context_modeling: bool,
        /// `chunk_size`: the encoder's buffer.
        chunk_size: u32,
    },
    /// `envoy.compression.zstd.compressor` (`zstd`).
    Zstd {
        /// `compression_level` (0: zstd's default, 3).
        level: i32,
        /// `enable_checksum`.
        checksum: bool,
        /// `strategy`, as zstd numbers it (0: its default).
        strategy: u32,
    },
}

/// A route's settings for a compressor filter (`CompressorPerRoute`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompressorRoute {
    /// `disabled` (`Some(false)`) or `overrides.response_direction_config` (`Some(true)`):
    /// response compression off or on here; `None`: the filter's.
    pub enabled: Option<bool>,
    /// `overrides.response_direction_config.remove_accept_encoding_header`.
    pub remove_accept_encoding: Option<bool>,
}

/// A service a filter calls over gRPC (`config.core.v3.GrpcService` with `envoy_grpc`): a
/// cluster, the `:authority` of the calls and their extra headers. The rate limit
/// service, an external authorization service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrpcService {
    /// `cluster_name`.
    pub cluster: String,
    /// `authority` (default: the cluster's name).
    pub authority: String,
    /// `initial_metadata`: headers of each call.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<(String, String)>,
}

/// A bucket for the requests of one descriptor (`LocalRateLimitDescriptor`).
#[derive(Debug, Serialize)]
pub struct DescriptorLimit {
    /// The descriptor's entries (key, value), in order.
    pub entries: Vec<(String, String)>,
    /// Its bucket.
    pub bucket: TokenBucket,
}

// Config equality, as for the filter's own bucket.
impl PartialEq for DescriptorLimit {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.bucket == other.bucket
    }
}

/// `vh_rate_limits` of a rate limit filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VhRateLimits {
    /// `OVERRIDE`: the virtual host's when the route has none.
    #[default]
    Override,
    /// `INCLUDE`: the route's and the virtual host's.
    Include,
    /// `IGNORE`: the route's only.
    Ignore,
}

/// A token bucket (`type.v3.TokenBucket`): starts full; every `fill_interval`,
/// `tokens_per_fill` more, up to `max_tokens`. A request takes one token.
#[derive(Debug, Serialize)]
pub struct TokenBucket {
    /// Capacity, and the tokens at the start.
    pub max_tokens: u32,
    /// Tokens added per fill.
    pub tokens_per_fill: u32,
    /// Time between fills (at least 50 ms, as in Envoy).
    #[serde(serialize_with = "duration")]
    pub fill_interval: Duration,
    /// The tokens now, for every connection (a per-connection bucket keeps its own).
    #[serde(skip)]
    pub shared: Mutex<BucketState>,
}

// The tokens left are not configuration.
impl PartialEq for TokenBucket {
    fn eq(&self, o: &Self) -> bool {
        (self.max_tokens, self.tokens_per_fill, self.fill_interval)
            == (o.max_tokens, o.tokens_per_fill, o.fill_interval)
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval,
            shared: Mutex::new(BucketState {
                tokens: max_tokens,
                next_fill: Instant::now() + fill_interval,
            }),
        }
    }

    /// A full bucket's state at `now`.
    pub fn full(&self, now: Instant) -> BucketState {
        BucketState {
            tokens: self.max_tokens,
            next_fill: now + self.fill_interval,
        }
    }

    /// Takes a token from `state` at `now`, after the fills due: what is left.
    pub fn take(&self, state: &mut BucketState, now: Instant) -> Taken {
        if now >= state.next_fill {
            let interval = self.fill_interval.as_nanos().max(1);
            let fills = 1 + (now - state.next_fill).as_nanos() / interval;
            let added = u128::from(self.tokens_per_fill).saturating_mul(fills);
            state.tokens = u128::from(state.tokens)
                .saturating_add(added)
                .min(u128::from(self.max_tokens)) as u32;
            // Whole intervals only: fills stay on the bucket's own beat.
            state.next_fill += self.fill_interval * u32::try_from(fills).unwrap_or(u32::MAX);
        }
        let allowed = state.tokens > 0;
        if allowed {
            state.tokens -= 1;
        }
        Taken {
            allowed,
            remaining: state.tokens,
            reset: state.next_fill.saturating_duration_since(now),
        }
    }
}

/// A bucket's tokens and when the next fill is due.
#[derive(Debug, Clone, Copy)]
pub struct BucketState {
    /// Tokens in it.
    pub tokens: u32,
    /// The next fill.
    pub next_fill: Instant,
}

/// What [`TokenBucket::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// A token was there.
    pub allowed: bool,
    /// Tokens left.
    pub remaining: u32,
    /// Time to the next fill.
    pub reset: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_fills_on_its_beat_up_to_its_size() {
        let b = TokenBucket::new(3, 2, Duration::from_millis(100));
        let t0 = Instant::now();
        let mut s = b.full(t0);
        let taken: Vec<bool> = (0..4).map(|_| b.take(&mut s, t0).allowed).collect();
        assert_eq!(taken, [true, true, true, false]);
        // One fill: 2 tokens.
        let t1 = t0 + Duration::from_millis(150);
        let r = b.take(&mut s, t1);
        assert_eq!((r.allowed, r.remaining), (true, 1));
        assert_eq!(r.reset, Duration::from_millis(50));
        // Many fills: capped at 3, and the next fill stays on the 100 ms beat.
        let t2 = t0 + Duration::from_millis(1_050);
        let r = b.take(&mut s, t2);
        assert_eq!((r.allowed, r.remaining), (true, 2));
        assert_eq!(r.reset, Duration::from_millis(50));
    }

    #[test]
    fn an_empty_bucket_limits_everything() {
        let b = TokenBucket::new(0, 1, Duration::from_secs(1));
        let t0 = Instant::now();
        let mut s = b.full(t0);
        assert!(!b.take(&mut s, t0).allowed);
        assert!(!b.take(&mut s, t0 + Duration::from_secs(5)).allowed);
    }
}
