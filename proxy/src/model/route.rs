//! HTTP routes (Envoy `config.route.v3.RouteConfiguration`): virtual hosts chosen by
//! `:authority`, then the first route whose match holds, then its action.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::filter::{CorsPolicy, FilterSettings};
use super::listener::WeightedCluster;
use super::types::{Regex, StringMatcher};
use super::{duration_str, opt_duration_str};

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A route table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfiguration {
    /// The RDS resource name.
    pub name: String,
    /// Virtual hosts; the most specific domain match wins (exact, then longest suffix
    /// wildcard, then longest prefix wildcard, then `*`).
    pub virtual_hosts: Vec<VirtualHost>,
    /// Header changes for every route of the table.
    pub headers: HeaderMutation,
    /// Per-route settings of HTTP filters for every route of the table.
    #[serde(skip_serializing_if = "FilterSettings::is_empty")]
    pub filters: FilterSettings,
    /// Mirrors of the requests of routes whose virtual host and action have none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPolicy>,
    /// `ignore_port_in_host_matching`: a virtual host is chosen by the request's host
    /// without its port (the domains are compared as written).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_port_in_host_matching: bool,
}

/// A virtual host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualHost {
    /// Name (for logs and metrics).
    pub name: String,
    /// Host names this virtual host serves.
    pub domains: Vec<DomainMatch>,
    /// Routes, tried in order.
    pub routes: Vec<Route>,
    /// Retry policy for routes that have none of their own.
    pub retry_policy: Option<RetryPolicy>,
    /// Header changes for every route of the host.
    pub headers: HeaderMutation,
    /// Per-route settings of HTTP filters for every route of the host.
    #[serde(skip_serializing_if = "FilterSettings::is_empty")]
    pub filters: FilterSettings,
    /// The deprecated `cors` field: used when no level has CORS filter settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Arc<CorsPolicy>>,
    /// Mirrors of the requests of routes whose action has none (replacing the table's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPolicy>,
    /// `per_request_buffer_limit_bytes` of routes that have none: the most of a request's
    /// body kept for retries (under the listener's buffer limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_limit: Option<u32>,
    /// `include_request_attempt_count` (Istio sets it on every virtual host): each upstream
    /// request carries `x-envoy-attempt-count` (1 for the first try).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub attempt_count_in_request: bool,
    /// `include_attempt_count_in_response`: the response carries the count of tries made.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub attempt_count_in_response: bool,
    /// `rate_limits`: the descriptors of the virtual host's requests, for the rate limit
    /// filters (see [`RouteAction::rate_limits`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitEntry>,
}

/// One `rate_limits` entry (`config.route.v3.RateLimit`): a descriptor built from its
/// actions in order, or none when an action has nothing for the request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitEntry {
    /// `stage`: only filters of this stage read it.
    pub stage: u32,
    /// The descriptor's entries, in order.
    pub actions: Vec<RateLimitAction>,
    /// `hits_addend`: what each request counts for.
    #[serde(skip_serializing_if = "Hits::is_one")]
    pub hits: Hits,
    /// `apply_on_stream_done`: the descriptor is sent to the rate limit service once the
    /// response is made, not before the request goes on (global rate limits only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_stream_done: bool,
}

/// What a request counts for in a rate limit (`RateLimit.hits_addend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hits {
    /// Unset: one hit (the service's default; no `hits_addend` in the descriptor).
    #[default]
    One,
    /// `number`.
    Number(u64),
    /// A `format` of dynamic metadata only (`%DYNAMIC_METADATA(...)%`, as Envoy Gateway
    /// writes a response cost): Myelin has no dynamic metadata, so it never gives a number
    /// and, as in Envoy, the entry makes no descriptor.
    Never,
}

impl Hits {
    fn is_one(&self) -> bool {
        *self == Hits::One
    }
}

/// What a descriptor entry is made of (`RateLimit.Action`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    /// `destination_cluster`: (`destination_cluster`, the cluster the route chose).
    DestinationCluster,
    /// `request_headers`: (`descriptor_key`, the header's first value); without the header
    /// no descriptor, or no entry with `skip_if_absent`.
    RequestHeaders {
        /// The header (lower case).
        header: String,
        /// The entry's key.
        key: String,
        /// `skip_if_absent`.
        skip_if_absent: bool,
    },
    /// `remote_address`: (`remote_address`, the client's address as the connection
    /// manager worked it out).
    RemoteAddress,
    /// `masked_remote_address`: (`masked_remote_address`, the client's network in CIDR
    /// form) with these prefix lengths.
    MaskedRemoteAddress {
        /// `v4_prefix_mask_len` (default 32).
        v4: u8,
        /// `v6_prefix_mask_len` (default 128).
        v6: u8,
    },
    /// `remote_address_match`: (`descriptor_key`, or `remote_address_match`; the value)
    /// when the client's address is in `ranges` (or is not, with `invert`), else the
    /// `default` value, else no descriptor.
    RemoteAddressMatch {
        /// The entry's key.
        key: String,
        /// The entry's value on a match.
        value: String,
        /// `address_matcher.ranges`.
        ranges: Vec<super::listener::CidrRange>,
        /// `address_matcher.invert_match`.
        invert: bool,
        /// `default_value`: the entry's value when the address does not match.
        #[serde(skip_serializing_if = "Option::is_none")]
        default: Option<String>,
    },
    /// `generic_key`: (`descriptor_key`, or `generic_key`; the value).
    GenericKey {
        /// The entry's key.
        key: String,
        /// The entry's value.
        value: String,
    },
    /// `header_value_match`: (`descriptor_key`, or `header_match`; the value) when the
    /// headers match (or do not, with `expect_match: false`); else no descriptor.
    HeaderValueMatch {
        /// The entry's key.
        key: String,
        /// The entry's value.
        value: String,
        /// `expect_match`.
        expect_match: bool,
        /// All must match.
        headers: Vec<HeaderMatcher>,
    },
}

/// A domain pattern of a virtual host (port included when given, as in Envoy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainMatch {
    /// `example.com` (compared case-insensitively).
    Exact(String),
    /// `*.example.com` or `*-bar.example.com`: the host ends with this (the `*` part
    /// must match at least one character). Stored without the `*`.
    Suffix(String),
    /// `example.*`: the host starts with this. Stored without the `*`.
    Prefix(String),
    /// `*`.
    Any,
}

impl DomainMatch {
    /// Parses an Envoy domain pattern. `None` for patterns Envoy rejects (empty, a `*`
    /// in the middle, or wildcards on both ends).
    pub fn parse(domain: &str) -> Option<Self> {
        let d = domain.to_ascii_lowercase();
        if d == "*" {
            return Some(Self::Any);
        }
        if d.is_empty() || d.matches('*').count() > 1 {
            return None;
        }
        if let Some(rest) = d.strip_prefix('*') {
            return Some(Self::Suffix(rest.to_owned()));
        }
        if let Some(rest) = d.strip_suffix('*') {
            return Some(Self::Prefix(rest.to_owned()));
        }
        if d.contains('*') {
            return None;
        }
        Some(Self::Exact(d))
    }

    /// Whether `host` (the `:authority`) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        match self {
            Self::Exact(d) => host == *d,
            Self::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            Self::Prefix(p) => host.len() > p.len() && host.starts_with(p.as_str()),
            Self::Any => true,
        }
    }
}

/// A route: a match and what to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// Name (may be empty).
    pub name: String,
    /// Which requests this route takes.
    #[serde(rename = "match")]
    pub route_match: RouteMatch,
    /// What to do with them.
    pub action: Action,
    /// Header changes for this route.
    pub headers: HeaderMutation,
    /// Per-route settings of HTTP filters.
    #[serde(skip_serializing_if = "FilterSettings::is_empty")]
    pub filters: FilterSettings,
    /// The deprecated `cors` of the route action: used when no level has CORS filter
    /// settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Arc<CorsPolicy>>,
    /// `per_request_buffer_limit_bytes`: the most of a request's body kept for retries,
    /// under the listener's buffer limit (Envoy's router takes the smaller); `None`: the
    /// virtual host's, else only the listener's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_limit: Option<u32>,
}

/// Request criteria; all must hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteMatch {
    /// The path criterion.
    pub path: PathMatch,
    /// Compare the path case-sensitively (Envoy default true; regexes are always
    /// case-sensitive unless written otherwise).
    pub case_sensitive: bool,
    /// Header criteria.
    pub headers: Vec<HeaderMatcher>,
    /// Query parameter criteria.
    pub query_parameters: Vec<QueryParameterMatcher>,
}

/// How the path (without the query) is matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// Starts with this.
    Prefix(String),
    /// Equals this.
    Path(String),
    /// The whole path matches this regex.
    SafeRegex(Regex),
    /// Equals this or starts with this followed by `/` (or `?`, `#`).
    PathSeparatedPrefix(String),
    /// `connect_matcher`: a `CONNECT` request (not an extended CONNECT, which has a path),
    /// and nothing else. A `CONNECT` has no path, so the other forms never match it (as in
    /// Envoy, where this is the only way to route one).
    Connect,
}

/// A header criterion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderMatcher {
    /// Header name (lower case).
    pub name: String,
    /// What must hold of its value.
    pub rule: HeaderRule,
    /// Negate the result.
    pub invert: bool,
    /// A missing header counts as an empty value instead of not matching.
    pub treat_missing_as_empty: bool,
}

/// What a header matcher checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderRule {
    /// The value matches.
    Value(StringMatcher),
    /// The header is present (`true`) or absent (`false`).
    Present(bool),
}

/// A query parameter criterion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryParameterMatcher {
    /// Parameter name.
    pub name: String,
    /// What must hold of it.
    pub rule: QueryParameterRule,
}

/// What a query parameter matcher checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryParameterRule {
    /// The value matches.
    Value(StringMatcher),
    /// The parameter is present.
    Present,
}

/// What a route does.
// Built once per config; nearly every route is `Route`, so boxing it would only add a hop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Forward upstream.
    Route(RouteAction),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    DirectResponse(DirectResponse),
}

/// Forwarding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteAction {
    /// Where to.
    pub cluster: ClusterSpecifier,
    /// Whole-request timeout; `None`: disabled (`0s` in Envoy). Default 15 s.
    #[serde(serialize_with = "opt_duration_str")]
    pub timeout: Option<Duration>,
    /// `idle_timeout`: replaces the connection manager's `stream_idle_timeout` once the
    /// request is routed here; zero: no idle timeout; `None`: the connection manager's.
    #[serde(
        serialize_with = "opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Retries (overrides the virtual host's).
    pub retry_policy: Option<RetryPolicy>,
    /// Replace the matched path prefix with this.
    pub prefix_rewrite: Option<String>,
    /// Rewrite the path with a regex substitution.
    pub regex_rewrite: Option<RegexRewrite>,
    /// Rewrite the `Host`/`:authority` header.
    pub host_rewrite: Option<HostRewrite>,
    /// How ring-hash and Maglev clusters hash the request (first policy with a value
    /// wins when `terminal`, else the values are combined).
    pub hash_policy: Vec<HashPolicy>,
    /// The route's own say on upgrades (`upgrade_configs`): a listed type is allowed or
    /// refused here whatever the connection manager says; an unlisted one is the
    /// connection manager's to decide (Envoy's table in "HTTP upgrades").
    pub upgrades: Vec<RouteUpgrade>,
    /// `max_stream_duration`, or the deprecated `max_grpc_timeout`: how the route bounds a
    /// request's time beyond (or instead of) `timeout`.
    pub stream_limit: Option<StreamLimit>,
    /// Copies of the request sent to other clusters, their answers ignored
    /// (`request_mirror_policies`; Istio's VirtualService `mirror`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPolicy>,
    /// `rate_limits`: the descriptors of the route's requests, which a local rate limit
    /// filter's `descriptors` match (the virtual host's are used too as its
    /// `vh_rate_limits` says).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitEntry>,
}

/// A mirror of a route's requests (`RouteAction.RequestMirrorPolicy`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MirrorPolicy {
    /// The cluster the copies go to.
    pub cluster: MirrorCluster,
    /// The share of requests copied (`runtime_fraction`'s default value); `None`: all.
    pub fraction: Option<super::filter::Fraction>,
    /// Keep the authority as it is (`disable_shadow_host_suffix_append`); else `-shadow`
    /// is appended to its host, as Envoy does, so the copy's receiver can tell it apart.
    pub keep_host: bool,
}

/// Where a mirror's cluster comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorCluster {
    /// `cluster`.
    Named(String),
    /// `cluster_header`: the cluster named by this request header (lowercase); a request
    /// without it, or naming no cluster, is not mirrored.
    FromHeader(String),
}

/// A route's bound on a request's time other than its `timeout`, as Envoy computes it
/// (router's `finalTimeout`, connection manager's `refreshDurationTimeout`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum StreamLimit {
    /// `max_stream_duration` (Envoy's newer timeouts): with it the route's `timeout` does
    /// not apply; the stream's whole duration, from its start, is bounded instead.
    Duration {
        /// `max_stream_duration`: `None` unset (the connection manager's
        /// `common_http_protocol_options.max_stream_duration` holds), zero: no bound.
        #[serde(serialize_with = "opt_duration_str")]
        max: Option<Duration>,
        /// `grpc_timeout_header_max`: when set, a request's `grpc-timeout` header is its
        /// bound, capped at this (zero: not capped).
        #[serde(serialize_with = "opt_duration_str")]
        grpc_header_max: Option<Duration>,
        /// `grpc_timeout_header_offset`: taken off the header's value.
        #[serde(serialize_with = "opt_duration_str")]
        grpc_header_offset: Option<Duration>,
    },
    /// `max_grpc_timeout` (deprecated): a gRPC request's route timeout is its
    /// `grpc-timeout` (none: no timeout) less `grpc_timeout_offset`, capped at `max` (zero:
    /// not capped); the upstream is sent the timeout it gets.
    GrpcTimeout {
        #[serde(serialize_with = "duration_str")]
        max: Duration,
        #[serde(serialize_with = "opt_duration_str")]
        offset: Option<Duration>,
    },
}

/// One of a route's `upgrade_configs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteUpgrade {
    /// The upgrade's type, lowercase (`websocket`, `connect`).
    pub upgrade_type: String,
    /// `enabled` (default true).
    pub enabled: bool,
    /// `connect_config` (type `connect` only): the `CONNECT` is answered here and its
    /// payload sent to the upstream as raw TCP instead of the request being passed on.
    pub terminate: bool,
}

impl RouteAction {
    /// Whether this route answers a `CONNECT` itself and tunnels its payload to the
    /// upstream as raw TCP (`connect_config`).
    pub fn terminates_connect(&self) -> bool {
        self.upgrades
            .iter()
            .any(|u| u.upgrade_type == "connect" && u.enabled && u.terminate)
    }

    /// Whether an upgrade of `kind` (lowercase) may pass on this route, given the types
    /// its connection manager allows.
    pub fn allows_upgrade(&self, kind: &str, hcm_allows: &[String]) -> bool {
        match self.upgrades.iter().find(|u| u.upgrade_type == kind) {
            Some(u) => u.enabled,
            None => hcm_allows.iter().any(|t| t == kind),
        }
    }
}

/// The upstream cluster(s) of a route.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterSpecifier {
    /// One cluster.
    Cluster(String),
    /// Picked per request by weight.
    WeightedClusters(Vec<WeightedCluster>),
}

/// A regex path rewrite: every match of `pattern` replaced with `substitution`
/// (capture groups written `$1`, translated from Envoy's `\1`).
/// One element of a route's `hash_policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashPolicy {
    /// What is hashed.
    pub key: HashKey,
    /// Stop at this policy when it produced a value.
    pub terminal: bool,
}

/// What a hash policy hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// A request header's value.
    Header(String),
    /// An existing cookie's value (generating cookies is not supported).
    Cookie(String),
    /// A query parameter's value.
    QueryParameter(String),
    /// The client's IP address.
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegexRewrite {
    /// What to replace.
    pub pattern: Regex,
    /// With what.
    pub substitution: String,
}

/// A host rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRewrite {
    /// To this literal value.
    Literal(String),
    /// To the upstream host's name (for DNS clusters) or address.
    Auto,
}

/// Retries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Conditions (`5xx`, `gateway-error`, `reset`, `connect-failure`,
    /// `retriable-4xx`, `refused-stream`, `retriable-status-codes`, gRPC ones, ...).
    pub retry_on: Vec<String>,
    /// How many retries at most (Envoy default 1).
    pub num_retries: u32,
    /// Timeout of each try; `None`: the route timeout.
    #[serde(serialize_with = "opt_duration_str")]
    pub per_try_timeout: Option<Duration>,
    /// Status codes retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Avoid hosts already tried (`envoy.retry_host_predicates.previous_hosts`).
    pub retry_previous_hosts: bool,
    /// Back-off between tries; `None`: Envoy's default (25 ms base, 10x max).
    pub back_off: Option<RetryBackOff>,
}

/// Exponential back-off with jitter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryBackOff {
    /// First interval.
    #[serde(serialize_with = "duration_str")]
    pub base_interval: Duration,
    /// Cap (default 10 x base).
    #[serde(serialize_with = "duration_str")]
    pub max_interval: Duration,
}

/// A redirect response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Redirect {
    /// New scheme (`https_redirect` gives `https`).
    pub scheme: Option<String>,
    /// New host.
    pub host: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path.
    pub path: Option<PathRedirect>,
    /// 301, 302, 303, 307 or 308 (Envoy default 301).
    pub response_code: u16,
    /// Drop the query string.
    pub strip_query: bool,
}

/// The path part of a redirect.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRedirect {
    /// Replace the whole path.
    Path(String),
    /// Replace the matched prefix.
    Prefix(String),
    /// Substitute every match of a regex in the path (the query is kept).
    Regex(RegexRewrite),
}

/// A direct response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body, if any (inline only).
    pub body: Option<String>,
}

/// Header additions and removals (request and response).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderMutation {
    /// Added to the request upstream.
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Removed from the request upstream.
    pub request_headers_to_remove: Vec<String>,
    /// Added to the response downstream.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Removed from the response downstream.
    pub response_headers_to_remove: Vec<String>,
}

impl HeaderMutation {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A header to add and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderValueOption {
    /// Header name (lower case).
    pub name: String,
    /// Value.
    pub value: String,
    /// What to do when the header exists.
    pub append_action: AppendAction,
    /// Add the header even when `value` is empty.
    pub keep_empty_value: bool,
}

/// Envoy `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendAction {
    /// Add another value (default).
    AppendIfExistsOrAdd,
    /// Add only if absent.
    AddIfAbsent,
    /// Replace existing values, or add.
    OverwriteIfExistsOrAdd,
    /// Replace existing values; add nothing if absent.
    OverwriteIfExists,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let cases = [
            ("example.com", "EXAMPLE.com", true),
            ("example.com", "www.example.com", false),
            ("*.example.com", "www.example.com", true),
            ("*.example.com", ".example.com", false),
            ("*-bar.example.com", "foo-bar.example.com", true),
            ("example.*", "example.org", true),
            ("example.*", "example.", false),
            ("*", "anything", true),
            ("example.com:8080", "example.com:8080", true),
        ];
        for (pattern, host, want) in cases {
            let m = DomainMatch::parse(pattern).unwrap();
            assert_eq!(m.matches(host), want, "{pattern} vs {host}");
        }
        for bad in ["", "a*b", "*a*", "*.*"] {
            assert_eq!(DomainMatch::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serializes() {
        let r = Route {
            name: "r".into(),
            route_match: RouteMatch {
                path: PathMatch::Prefix("/".into()),
                case_sensitive: true,
                headers: vec![],
                query_parameters: vec![],
            },
            action: Action::Route(RouteAction {
                cluster: ClusterSpecifier::Cluster("c".into()),
                timeout: Some(DEFAULT_ROUTE_TIMEOUT),
                retry_policy: None,
                prefix_rewrite: None,
                regex_rewrite: None,
                host_rewrite: Some(HostRewrite::Auto),
                hash_policy: vec![],
                upgrades: vec![],
                stream_limit: None,
                idle_timeout: None,
                mirrors: vec![],
                rate_limits: vec![],
            }),
            headers: HeaderMutation::default(),
            filters: Default::default(),
            cors: None,
            buffer_limit: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(
            v.get("filters").is_none() && v.get("cors").is_none(),
            "unset: not shown"
        );
        assert_eq!(v["match"]["path"], serde_json::json!({"prefix": "/"}));
        assert_eq!(v["action"]["route"]["timeout"], "15s");
        assert_eq!(v["action"]["route"]["host_rewrite"], "auto");
    }

    /// Envoy's table ("HTTP upgrades"): the route's entry for the type decides; without
    /// one, the connection manager's list.
    #[test]
    fn the_route_has_the_first_say_on_upgrades() {
        let action = |upgrades: &[(&str, bool)]| RouteAction {
            cluster: ClusterSpecifier::Cluster("c".into()),
            timeout: None,
            retry_policy: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            hash_policy: vec![],
            upgrades: upgrades
                .iter()
                .map(|(t, enabled)| RouteUpgrade {
                    upgrade_type: (*t).into(),
                    enabled: *enabled,
                    terminate: false,
                })
                .collect(),
            stream_limit: None,
            idle_timeout: None,
            mirrors: vec![],
            rate_limits: vec![],
        };
        let hcm = ["websocket".to_string()];
        for (route, kind, want) in [
            (&[][..], "websocket", true),
            (&[], "h2c", false),
            (&[("websocket", false)], "websocket", false),
            (&[("h2c", true)], "h2c", true),
            (&[("h2c", true)], "websocket", true),
            (&[("h2c", false)], "connect", false),
        ] {
            assert_eq!(
                action(route).allows_upgrade(kind, &hcm),
                want,
                "{route:?} {kind}"
            );
        }
        assert!(!action(&[]).allows_upgrade("websocket", &[]));
    }
}
