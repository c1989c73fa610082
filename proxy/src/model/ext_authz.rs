//! External authorization (`envoy.filters.http.ext_authz`): a service of the operator's
//! decides whether a request goes on, over gRPC (`envoy.service.auth.v3.Authorization`)
//! or plain HTTP. Run by [`crate::ext_authz`] from the filter chain.

use std::time::Duration;

use serde::{Serialize, Serializer};

use super::filter::{Fraction, GrpcService};
use super::route::HeaderValueOption;
use super::types::StringMatcher;

/// The filter's settings (`ExtAuthz`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtAuthzPolicy {
    /// The service and how it is asked.
    pub service: AuthzService,
    /// How long the service may take (`grpc_service.timeout` or `server_uri.timeout`;
    /// 200 ms by default for gRPC); a late answer is an error.
    #[serde(serialize_with = "millis")]
    pub timeout: Duration,
    /// An error lets the request through (`failure_mode_allow`) instead of answering
    /// `status_on_error`.
    pub failure_mode_allow: bool,
    /// ... and then adds `x-envoy-auth-failure-mode-allowed: true` to it
    /// (`failure_mode_allow_header_add`).
    pub failure_mode_allow_header_add: bool,
    /// `clear_route_cache`: when the service lets a request through with changes to its
    /// headers, its route is chosen again with them; the filters after this one see the
    /// new route.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clear_route_cache: bool,
    /// The status of the answer to a request the service failed for (`status_on_error`;
    /// 403 unless 100 to 511), and to one the filter is off for with `deny_at_disable`.
    pub status_on_error: u16,
    /// Share of requests checked (`filter_enabled`; unset: all).
    pub filter_enabled: Fraction,
    /// Requests are checked only when this matches the request's dynamic metadata
    /// (`filter_enabled_metadata`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_enabled_metadata: Option<MetadataMatcher>,
    /// A request the filter is not enabled for (by `filter_enabled` or its metadata) is
    /// answered `status_on_error` (`deny_at_disable`).
    pub deny_at_disable: bool,
    /// The request headers the service is told about: `None`, all of them (gRPC without
    /// `allowed_headers`); else those matching (for an HTTP service always with
    /// `authorization`, `:method`, `:path` and `:authority`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_headers: Option<Vec<StringMatcher>>,
    /// Request headers never told (`disallowed_headers`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disallowed_headers: Vec<StringMatcher>,
    /// The client's certificate goes in the check (`include_peer_certificate`).
    pub include_peer_certificate: bool,
    /// The client's TLS SNI goes in the check (`include_tls_session`).
    pub include_tls_session: bool,
    /// Headers are sent as `header_map` with raw values (`encode_raw_headers`), not as
    /// the `headers` map.
    pub encode_raw_headers: bool,
    /// A service's answer with an invalid header (or append action) is refused with a
    /// `500` (`validate_mutations`); else the invalid parts are skipped.
    pub validate_mutations: bool,
    /// `decoder_header_mutation_rules`: which request headers the service's answer may
    /// set, append or remove (a refused change skipped, or with `disallow_is_error` the
    /// answer refused with a `500`); `None`: any, but `host` is never removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_rules: Option<super::ext_proc::MutationRules>,
    /// The body of a denial is cut to this many bytes (`max_denied_response_body_bytes`;
    /// 0: not cut).
    pub max_denied_body: u32,
    /// The request's dynamic metadata namespaces sent as `metadata_context`
    /// (`metadata_context_namespaces`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata_namespaces: Vec<String>,
    /// `stat_prefix`: a label of the filter's counter.
    pub stat_prefix: std::sync::Arc<str>,
    /// `with_request_body`: the request's body (up to a limit) goes in the check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_body: Option<BodySettings>,
}

/// `BufferSettings`: how much of a request's body the service is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BodySettings {
    /// `max_request_bytes`: the most told (at least 1).
    pub max_bytes: u32,
    /// `allow_partial_message`: a longer body is told cut to `max_bytes` (with
    /// `x-envoy-auth-partial-body: true`); without it such a request is answered `413`
    /// and not checked.
    pub allow_partial: bool,
    /// `pack_as_bytes`: a gRPC service gets the body as bytes (`raw_body`), not as text
    /// (`body`).
    pub pack_as_bytes: bool,
}

/// The authorization service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthzService {
    /// `envoy.service.auth.v3.Authorization/Check` over gRPC (`grpc_service`).
    Grpc(GrpcService),
    /// A plain HTTP request per check (`http_service`).
    Http(HttpAuthzService),
}

/// An HTTP authorization service (`HttpService`): it gets the request's method, path
/// (after `path_prefix`) and allowed headers (and its body's start with
/// `with_request_body`); `200` lets the request
/// through, a `5xx` is an error, anything else is the answer to the client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpAuthzService {
    /// `server_uri.cluster`.
    pub cluster: String,
    /// `path_prefix`: put before the request's path.
    pub path_prefix: String,
    /// `authorization_request.headers_to_add`: set on each check request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers_to_add: Vec<HeaderValueOption>,
    /// `authorization_response.allowed_upstream_headers`: the service's headers that are
    /// set on the request going upstream (after a `200`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<StringMatcher>,
    /// `allowed_upstream_headers_to_append`: ... added to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream_append: Vec<StringMatcher>,
    /// `allowed_client_headers`: the service's headers that go with a denial to the
    /// client; `None`: all but `host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Vec<StringMatcher>>,
    /// `allowed_client_headers_on_success`: the service's headers added to the response
    /// of a request it let through.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_on_success: Vec<StringMatcher>,
}

/// A route's settings (`ExtAuthzPerRoute`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtAuthzRoute {
    /// `disabled`: no check on this route (the most specific level that has settings
    /// says).
    pub disabled: bool,
    /// `check_settings.context_extensions`: sent to a gRPC service as the check's
    /// `context_extensions` (merged over the levels, the most specific winning per key).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub context_extensions: Vec<(String, String)>,
    /// `check_settings.with_request_body`: the body settings on this route, over the
    /// filter's (the most specific level that has them says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_body: Option<BodySettings>,
    /// `check_settings.disable_request_body_buffering`: no body in the check on this
    /// route.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_body: bool,
}

/// `type.matcher.v3.MetadataMatcher` over a request's dynamic metadata, whose values are
/// strings in Myelin (what RBAC's shadow rules leave): a path of more than one key, or a
/// value matcher for another type, never matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetadataMatcher {
    /// `filter`: the namespace.
    pub filter: String,
    /// `path`: the keys.
    pub path: Vec<String>,
    /// `value`.
    pub value: MetadataValueMatch,
    /// `invert`.
    pub invert: bool,
}

/// `type.matcher.v3.ValueMatcher`, as far as string values go.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataValueMatch {
    /// `string_match`.
    String(StringMatcher),
    /// `present_match`: `true` matches a value that exists; `false` matches nothing (as
    /// Envoy's `PresentMatcher`).
    Present(bool),
    /// A matcher for numbers, booleans, lists or nulls: never matches a string.
    OtherType,
}

impl MetadataMatcher {
    /// Whether `value` (the value at `filter` and `path`, `None` when absent) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let hit = match (&self.value, value) {
            (MetadataValueMatch::Present(want), v) => *want && v.is_some(),
            (MetadataValueMatch::String(m), Some(v)) => m.matches(v),
            _ => false,
        };
        hit != self.invert
    }
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}
