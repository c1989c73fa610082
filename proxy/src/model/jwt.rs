//! JWT authentication (Envoy's `envoy.filters.http.jwt_authn`): providers (who issues the
//! tokens, where their keys are, where a request carries its token) and requirements
//! (which providers a request must satisfy), chosen per request by the filter's `rules` or
//! a route's `requirement_name`. Verified by [`crate::jwt`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use jsonwebtoken::jwk::JwkSet;
use serde::{Serialize, Serializer};

use super::route::RouteMatch;
use super::types::StringMatcher;

/// One JWT filter's settings (`JwtAuthentication`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtConfig {
    /// `providers`, by name.
    pub providers: BTreeMap<String, Arc<JwtProvider>>,
    /// `rules`: the first whose match takes the request gives its requirement (none: no
    /// requirement).
    pub rules: Vec<JwtRule>,
    /// `requirement_map`: the requirements routes name (`PerRouteConfig.requirement_name`).
    pub requirement_map: BTreeMap<String, JwtRequirement>,
    /// `bypass_cors_preflight`: CORS preflights pass unchecked.
    pub bypass_cors_preflight: bool,
    /// `strip_failure_response`: a failure's answer has no body.
    pub strip_failure_response: bool,
}

/// A `RequirementRule`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtRule {
    /// `match`: as a route's.
    pub route_match: RouteMatch,
    /// `requires` (or `requirement_name`, resolved); `None`: nothing is required.
    pub requires: Option<JwtRequirement>,
}

/// What a request must present (`JwtRequirement`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtRequirement {
    /// `provider_name` (or `provider_and_audiences`, with audiences of its own): a valid
    /// token of this provider.
    Provider {
        /// The provider.
        name: String,
        /// In place of the provider's `audiences`.
        #[serde(skip_serializing_if = "Option::is_none")]
        audiences: Option<Vec<String>>,
    },
    /// `requires_any`: one of these.
    Any(Vec<JwtRequirement>),
    /// `requires_all`: all of these.
    All(Vec<JwtRequirement>),
    /// `allow_missing`: no token at all, or a valid one.
    AllowMissing,
    /// `allow_missing_or_failed`: anything (a valid token is still used).
    AllowMissingOrFailed,
}

/// A route's settings (`PerRouteConfig`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtRoute {
    /// `disabled`: no check on this route.
    Disabled,
    /// `requirement_name`: this requirement of the filter's `requirement_map`.
    Requirement(String),
}

/// A `JwtProvider`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtProvider {
    /// Its name in `providers`.
    pub name: String,
    /// `issuer`: the `iss` its tokens must have (`None`: any).
    pub issuer: Option<String>,
    /// `audiences`: one must be in the token's `aud` (empty: not checked).
    pub audiences: Vec<String>,
    /// Where its keys are.
    pub jwks: Jwks,
    /// `forward`: the token stays in the request going upstream (default: removed).
    pub forward: bool,
    /// `from_headers`: (header, value prefix) to read a token from.
    pub from_headers: Vec<(String, String)>,
    /// `from_params`: query parameters to read a token from.
    pub from_params: Vec<String>,
    /// `from_cookies`: cookies to read a token from.
    pub from_cookies: Vec<String>,
    /// `forward_payload_header`: a header for the token's payload (base64url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_payload_header: Option<String>,
    /// `pad_forward_payload_header`: that payload with `=` padding.
    pub pad_forward_payload_header: bool,
    /// `claim_to_headers`: (header, claim) to copy a claim into.
    pub claim_to_headers: Vec<(String, String)>,
    /// `clock_skew_seconds` (default 60): slack for `exp` and `nbf`.
    pub clock_skew: u64,
    /// `max_lifetime_seconds`: the most `exp` may be past `iat` (or now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<u64>,
    /// `require_expiration`: a token without `exp` fails.
    pub require_expiration: bool,
    /// `subjects`: what the token's `sub` must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects: Option<StringMatcher>,
    /// `clear_route_cache`: when a token of this provider passes and sets a header (a
    /// claim, the payload), the request's route is chosen again with it (Envoy Gateway's
    /// `recomputeRoute`, routing on claims); the filters after this one see the new route.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clear_route_cache: bool,
}

impl JwtProvider {
    /// Where a request carries this provider's token when nothing is configured: the
    /// `Authorization` header after `Bearer `, and the `access_token` query parameter.
    pub fn default_locations(&self) -> bool {
        self.from_headers.is_empty() && self.from_params.is_empty() && self.from_cookies.is_empty()
    }
}

/// A provider's keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Jwks {
    /// `local_jwks`.
    Local(#[serde(serialize_with = "key_ids")] Arc<JwkSet>),
    /// `remote_jwks`: fetched when first needed, kept for `cache_duration`.
    Remote(Arc<RemoteJwks>),
}

fn key_ids<S: Serializer>(keys: &Arc<JwkSet>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        keys.keys
            .iter()
            .map(|k| k.common.key_id.clone().unwrap_or_default()),
    )
}

/// `remote_jwks`: a JWKS document fetched from a cluster.
#[derive(Debug, Serialize)]
pub struct RemoteJwks {
    /// `http_uri.uri`.
    pub uri: String,
    /// `http_uri.cluster`.
    pub cluster: String,
    /// `http_uri.timeout`.
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    /// `cache_duration` (default 10 minutes).
    #[serde(serialize_with = "secs")]
    pub cache_duration: Duration,
    /// The keys last fetched, and when.
    #[serde(skip)]
    pub cache: Mutex<Option<(Instant, Arc<JwkSet>)>>,
}

// Config equality, not the cache's.
impl PartialEq for RemoteJwks {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
            && self.cluster == other.cluster
            && self.timeout == other.timeout
            && self.cache_duration == other.cache_duration
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs_f64()))
}

/// Reads a JWKS document (RFC 7517), or says why it is not one.
pub fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    if set.keys.is_empty() {
        return Err("a JWKS without keys".into());
    }
    Ok(set)
}
