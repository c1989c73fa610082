//! The HTTP filters before the router ([`crate::model::filter`]), run once a request's
//! route is known and before an endpoint is picked, as Envoy runs its filter chain before
//! its router:
//!
//! - **fault** (`envoy.filters.http.fault`): a delay, then maybe an abort (Envoy's
//!   `fault_filter.cc`: a delay is rolled first, the abort after it);
//! - **CORS** (`envoy.filters.http.cors`): preflights answered here, allowed origins
//!   named in the response (Envoy's `cors_filter.cc`);
//! - **local rate limit** (`envoy.filters.http.local_ratelimit`): a token bucket per filter
//!   config, or per connection; a request without a token is answered `429` (Envoy's
//!   `local_ratelimit.cc`);
//! - **global rate limit** (`envoy.filters.http.ratelimit`): the request's descriptors go
//!   to a rate limit service ([`crate::ratelimit`]); a request over a limit is answered
//!   `429` (Envoy's `ratelimit.cc`);
//! - **JWT authentication** (`envoy.filters.http.jwt_authn`): the request's requirement (the
//!   filter's `rules`, or the route's `requirement_name`) checked by [`crate::jwt`]; a
//!   request without the tokens it needs is answered `401` (`403` for an audience not
//!   allowed);
//! - **API key auth** (`envoy.filters.http.api_key_auth`): a request without a known key is
//!   answered `401`, one whose client the route does not allow `403` (Envoy's
//!   `api_key_auth.cc`);
//! - **basic auth** (`envoy.filters.http.basic_auth`): HTTP Basic credentials checked
//!   against htpasswd `{SHA}` users; a request without valid ones is answered `401` (Envoy's
//!   `basic_auth_filter.cc`);
//! - **CSRF** (`envoy.filters.http.csrf`): a request that changes state from another origin
//!   is answered `403` (Envoy's `csrf_filter.cc`);
//! - **RBAC** (`envoy.filters.http.rbac`): a request the rules deny is answered `403`
//!   (decided by [`crate::rbac`]).
//!
//! Requests routed to a cluster pass through them all. Requests their route answers itself
//! (direct responses, redirects) pass through those that guard or limit (RBAC, basic auth,
//! API key auth, JWT, CSRF, local rate limit), as in Envoy; fault injection, CORS, sessions and the
//! global rate limit need a route to a cluster (Envoy's CORS and rate limit filters skip
//! them too, having no route entry).
//! **Stateful sessions** (`envoy.filters.http.stateful_session`) only note the host the
//! request's cookie or header names ([`Session`]): the router prefers it, and the response
//! names the host that answered when it is another.
//! The exception is the **health check** filter (`envoy.filters.http.health_check`), which
//! needs no route and runs before one is chosen ([`before_route`]): a request whose headers
//! match is answered `200` (or `503` while a cluster it watches has too few healthy hosts)
//! unless it passes through (Envoy's `health_check.cc`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response};

use crate::error::{BodyError, ProxyBody};
use crate::metrics::ProxyMetrics;
use crate::model::filter::{
    AbortStatus, BasicAuthPolicy, BasicAuthUsers, BucketState, CorsPolicy, CsrfPolicy, DelaySource,
    FaultPolicy, FilterKind, FilterPolicy, FilterSetting, Fraction, GlobalRateLimitPolicy,
    GlobalRateLimitRoute, HttpFilter, HttpFilters, RateLimitPolicy, RequestType, SessionPolicy,
    SessionState, Taken, TokenBucket, VhRateLimits,
};
use crate::model::listener::HeaderText;
use crate::model::route::{
    Action as RouteActionKind, Hits, RateLimitAction, RateLimitEntry, Route, RouteConfiguration,
    VirtualHost,
};
use crate::rbac::Subject;
use crate::traffic::router::RequestHead;

const DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
const DOWNSTREAM_NODE: &str = "x-envoy-downstream-service-node";
const ABORT_BODY: &str = "fault filter abort";
const RATE_LIMITED_BODY: &str = "local_rate_limited";
/// gRPC `RESOURCE_EXHAUSTED`.
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;

const X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

const ACCESS_CONTROL_REQUEST_METHOD: HeaderName =
    HeaderName::from_static("access-control-request-method");
const ACCESS_CONTROL_REQUEST_HEADERS: HeaderName =
    HeaderName::from_static("access-control-request-headers");
const ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
const ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// The route-config levels a request's filter settings come from.
#[derive(Clone, Copy)]
pub(crate) struct Levels<'a> {
    pub(crate) route: &'a Route,
    pub(crate) vhost: &'a VirtualHost,
    pub(crate) table: &'a RouteConfiguration,
}

impl<'a> Levels<'a> {
    /// The settings of the filter named `name`, most specific first.
    fn settings(self, name: &'a str) -> impl Iterator<Item = &'a FilterSetting> + 'a {
        [
            &self.route.filters,
            &self.vhost.filters,
            &self.table.filters,
        ]
        .into_iter()
        .filter_map(move |m| m.get(name))
    }

    /// Whether `filter` runs for this route: the most specific level that names it says,
    /// else the connection manager.
    fn enabled(self, filter: &'a HttpFilter) -> bool {
        match self.settings(&filter.name).next() {
            Some(s) => !s.disabled,
            None => !filter.disabled,
        }
    }
}

/// What the filters left for the rest of the request.
#[derive(Default)]
pub(crate) struct Filtered {
    /// What CORS adds to the response.
    cors: Option<CorsAnswer>,
    /// A fault delay was injected (response flag `DI`).
    delayed: bool,
    /// One of a fault filter's faults in progress, until the response is made.
    active_fault: Option<ActiveFault>,
    /// The `x-ratelimit-*` headers of the response.
    rate_limit: Option<RateLimitHeaders>,
    /// A rate limit that was reached but not enforced: its request headers go upstream.
    not_enforced: Option<Arc<RateLimitPolicy>>,
    /// Basic auth's `forward_username_header` with the user's name.
    forward_username: Option<(HeaderName, HeaderValue)>,
    /// A stateful session: its policy and the host the request named.
    session: Option<Session>,
    /// What a rate limit service's answer adds to the request going upstream.
    service_request_headers: Vec<(HeaderName, HeaderValue)>,
    /// What a rate limit service's answer adds to the response.
    service_response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The descriptors to send a rate limit service once the response is made.
    stream_done: Option<StreamDone>,
    /// What JWT authentication changes in the request (tokens removed, claims added).
    jwt: Option<crate::jwt::Passed>,
    /// What API key auth changes in the request (the client's name added, keys hidden).
    api_key: Option<ApiKeyEdits>,
    /// What external authorization services changed (one per filter that let it through).
    ext_authz: Vec<crate::ext_authz::Allowed>,
    /// What filters leave for later ones (RBAC's shadow decision).
    metadata: DynamicMetadata,
    /// The compressor filters the request passed (boxed: most requests have none).
    compressors: Option<Box<crate::compress::Compressors>>,
    /// A filter cleared the route cache (`clear_route_cache`): the filters stopped after
    /// it, to go on from this one with the route chosen again ([`run`]).
    resume_at: Option<usize>,
    /// External authorization changes already applied to the request (before the route
    /// was chosen again): [`Filtered::finish_request`] applies only the later ones.
    ext_authz_applied: usize,
    /// The start of the request's body, read for the filters that send it to a service
    /// (external authorization's `with_request_body`; [`body_to_read`]).
    pub(crate) body: Option<crate::body::ReadAhead>,
    /// What external processors changed in the request's headers (one per filter).
    ext_proc: Vec<crate::ext_proc::Changes>,
    /// How many of those are applied already (as for `ext_authz_applied`).
    ext_proc_applied: usize,
    /// The request's `:path` as an external processor set it last.
    ext_proc_path: Option<String>,
    /// The external processors that are to see the response, in filter order.
    ext_proc_responses: Vec<crate::ext_proc::Exchange>,
    /// An external processor replaced the request's body with `body`'s.
    body_replaced: bool,
}

/// A request's dynamic metadata (Envoy's `StreamInfo::dynamicMetadata`), as far as Myelin's
/// filters write it: string values under a filter's namespace (RBAC's shadow decision,
/// which Istio's `CUSTOM` authorization reads to turn external authorization on).
#[derive(Debug, Default)]
pub(crate) struct DynamicMetadata(Vec<(&'static str, String, String)>);

impl DynamicMetadata {
    /// Sets `key` in `namespace`.
    pub(crate) fn set(&mut self, namespace: &'static str, key: String, value: String) {
        match self
            .0
            .iter_mut()
            .find(|(n, k, _)| *n == namespace && *k == key)
        {
            Some(entry) => entry.2 = value,
            None => self.0.push((namespace, key, value)),
        }
    }

    /// The value of `key` in `namespace`.
    pub(crate) fn get(&self, namespace: &str, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, k, _)| *n == namespace && k == key)
            .map(|(_, _, v)| v.as_str())
    }

    /// The keys and values of `namespace`.
    pub(crate) fn entries<'m>(
        &'m self,
        namespace: &'m str,
    ) -> impl Iterator<Item = (&'m str, &'m str)> + 'm {
        self.0
            .iter()
            .filter(move |(n, _, _)| *n == namespace)
            .map(|(_, k, v)| (k.as_str(), v.as_str()))
    }
}

/// The API key auth filter's changes to a request that passed.
#[derive(Debug, Default)]
struct ApiKeyEdits {
    /// The client's name, in `forwarding.header`.
    client: Option<(HeaderName, HeaderValue)>,
    /// Headers to remove (`hide_credentials`).
    headers: Vec<HeaderName>,
    /// Query parameters to remove.
    params: Vec<String>,
    /// Cookies to remove.
    cookies: Vec<String>,
}

/// A call to a rate limit service at the end of a request's stream
/// (`apply_on_stream_done`): its answer is not waited for.
#[derive(Debug)]
pub(crate) struct StreamDone {
    pub(crate) policy: Arc<GlobalRateLimitPolicy>,
    pub(crate) domain: String,
    pub(crate) descriptors: Vec<Descriptor>,
}

/// A request's stateful session (see [`FilterKind::StatefulSession`]).
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) policy: Arc<SessionPolicy>,
    /// The host the request's cookie or header names (`None`: none, or not readable).
    pub(crate) requested: Option<SocketAddr>,
}

impl Session {
    /// Tells the client its session's host `host`, when it is not the one the request
    /// named (Envoy's `onUpdate`): a `set-cookie`, or the session header.
    pub(crate) fn answer(&self, host: SocketAddr, headers: &mut HeaderMap) {
        use base64::Engine;
        if self.requested == Some(host) {
            return;
        }
        let value = base64::engine::general_purpose::STANDARD.encode(host.to_string());
        match &self.policy.state {
            SessionState::Cookie {
                name,
                path,
                ttl,
                attributes,
            } => {
                // Envoy's `makeSetCookieValue`: the value quoted, then the attributes.
                let mut cookie = format!("{name}=\"{value}\"");
                if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
                    cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
                }
                if !path.is_empty() {
                    cookie.push_str(&format!("; Path={path}"));
                }
                for (k, v) in attributes {
                    if v.is_empty() {
                        cookie.push_str(&format!("; {k}"));
                    } else {
                        cookie.push_str(&format!("; {k}={v}"));
                    }
                }
                cookie.push_str("; HttpOnly");
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    headers.append(header::SET_COOKIE, v);
                }
            }
            SessionState::Header { name } => {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(n, v);
                }
            }
        }
    }
}

/// The host a session value names: base64 of `ip:port` (as Myelin writes it and Envoy
/// did first), or of Envoy's newer `envoy.Cookie` message (`address` = 1, `expires` = 2,
/// seconds since the epoch; an expired one names nothing).
pub(crate) fn session_host(value: &str) -> Option<SocketAddr> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim().trim_matches('"'))
        .ok()?;
    if let Some(addr) = std::str::from_utf8(&raw).ok().and_then(|s| s.parse().ok()) {
        return Some(addr);
    }
    // The message: field 1 (length-delimited), then maybe field 2 (varint).
    let mut b = raw.as_slice();
    let mut address = None;
    let mut expires = None;
    while let [key, rest @ ..] = b {
        b = rest;
        match key {
            0x0a => {
                let (&len, rest) = b.split_first()?;
                let len = usize::from(len);
                if len > 127 || rest.len() < len {
                    return None;
                }
                address = Some(std::str::from_utf8(&rest[..len]).ok()?.parse().ok()?);
                b = &rest[len..];
            }
            0x10 => {
                let mut v = 0u64;
                let mut shift = 0;
                loop {
                    let (&byte, rest) = b.split_first()?;
                    b = rest;
                    v |= u64::from(byte & 0x7f) << shift;
                    if byte & 0x80 == 0 {
                        break;
                    }
                    shift += 7;
                    if shift > 63 {
                        return None;
                    }
                }
                expires = Some(v);
            }
            _ => return None,
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if expires.is_some_and(|e| e != 0 && e < now) {
        return None;
    }
    address
}

/// What `x-ratelimit-*` headers say: the bucket's size, the tokens left, and seconds to
/// the next fill.
#[derive(Clone, Copy)]
struct RateLimitHeaders {
    limit: u32,
    remaining: u32,
    reset: u32,
}

impl Filtered {
    /// The request's URI with the query changes of the filters: the parameters API key
    /// auth hides (`hide_credentials`), those external authorization services set or
    /// remove; `None`: nothing to change.
    pub(crate) fn rewritten_uri(&self, uri: &http::Uri) -> Option<http::Uri> {
        let hidden = self.api_key.as_ref().map_or(&[][..], |a| &a.params[..]);
        let changes_query = !hidden.is_empty()
            || self
                .ext_authz
                .iter()
                .any(|a| !a.query_set.is_empty() || !a.query_remove.is_empty());
        if !changes_query && self.ext_proc_path.is_none() {
            return None;
        }
        let pq = uri.path_and_query()?;
        let base = self.ext_proc_path.as_deref().unwrap_or(pq.as_str());
        let mut path = if hidden.is_empty() {
            base.to_owned()
        } else {
            crate::ext_authz::rewrite_query(base, &[], hidden)
        };
        for a in &self.ext_authz {
            path = crate::ext_authz::rewrite_query(&path, &a.query_set, &a.query_remove);
        }
        if path == pq.as_str() {
            return None;
        }
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = path.parse().ok();
        http::Uri::from_parts(parts).ok()
    }

    /// The external processors that are to see the response's headers (taken: in the
    /// order they are to see them, the last filter first).
    pub(crate) fn take_ext_proc(&mut self) -> Vec<crate::ext_proc::Exchange> {
        let mut e = std::mem::take(&mut self.ext_proc_responses);
        e.reverse();
        e
    }

    /// The rate limit call due at the end of the stream, if any.
    pub(crate) fn take_stream_done(&mut self) -> Option<StreamDone> {
        self.stream_done.take()
    }

    /// The request's stateful session, for the router (taken: it goes with the decision).
    pub(crate) fn take_session(&mut self) -> Option<Session> {
        self.session.take()
    }

    /// Adds what the filters put in every response (CORS, a rate limit service's headers)
    /// to `headers`.
    pub(crate) fn finish_response(&mut self, headers: &mut HeaderMap) {
        for (name, value) in self.service_response_headers.drain(..) {
            headers.append(name, value);
        }
        for a in &self.ext_authz {
            a.edit_response(headers);
        }
        if let Some(c) = &self.cors {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, c.origin.clone());
            if c.credentials {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(e) = &c.expose {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.value().clone());
            }
        }
        if let Some(r) = self.rate_limit {
            headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(r.limit));
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(r.remaining));
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(r.reset));
        }
    }

    /// The response, compressed when a compressor filter the request passed takes it.
    pub(crate) fn compress(
        &self,
        resp: Response<ProxyBody>,
        metrics: &ProxyMetrics,
    ) -> Response<ProxyBody> {
        match &self.compressors {
            Some(c) => c.apply(resp, metrics),
            None => resp,
        }
    }

    /// Adds what a limit reached but not enforced puts in the request going upstream.
    pub(crate) fn finish_request(&mut self, headers: &mut HeaderMap) {
        if self
            .compressors
            .as_ref()
            .is_some_and(|c| c.strip_accept_encoding)
        {
            headers.remove(header::ACCEPT_ENCODING);
        }
        if let Some((name, value)) = self.forward_username.take() {
            headers.insert(name, value);
        }
        for (name, value) in self.service_request_headers.drain(..) {
            headers.append(name, value);
        }
        if let Some(edits) = self.api_key.take() {
            for name in &edits.headers {
                headers.remove(name);
            }
            if !edits.cookies.is_empty() {
                strip_cookies(headers, &edits.cookies);
            }
            if let Some((name, value)) = edits.client {
                headers.insert(name, value);
            }
        }
        if let Some(jwt) = self.jwt.take() {
            for name in &jwt.remove {
                headers.remove(name);
            }
            for (name, value) in jwt.set {
                headers.insert(name, value);
            }
        }
        for a in &self.ext_authz[self.ext_authz_applied..] {
            a.edit_request(headers);
        }
        self.ext_authz_applied = self.ext_authz.len();
        for c in &self.ext_proc[self.ext_proc_applied..] {
            c.apply(headers);
        }
        self.ext_proc_applied = self.ext_proc.len();
        if let Some(p) = self.not_enforced.take() {
            crate::traffic::router::mutate_headers(
                headers,
                &p.request_headers_to_add_when_not_enforced,
                &[],
            );
        }
    }

    /// Where the filters stopped to have the route chosen again (a filter with
    /// `clear_route_cache` changed the request): the index of the next filter. The
    /// filters' changes so far are to be applied first ([`Filtered::apply_now`]).
    pub(crate) fn take_resume(&mut self) -> Option<usize> {
        self.resume_at.take()
    }

    /// The request's new body and trailers, when an external processor replaced it
    /// (taken once).
    pub(crate) fn take_new_body(&mut self) -> Option<(bytes::Bytes, Option<HeaderMap>)> {
        if !std::mem::take(&mut self.body_replaced) {
            return None;
        }
        let b = self.body.as_ref()?;
        Some((b.data.clone(), b.trailers.clone()))
    }

    /// Applies the filters' changes to the request so far (its headers, its query), as
    /// the route is to be chosen again from it; what they add later is applied by
    /// [`Filtered::finish_request`] as usual.
    pub(crate) fn apply_now<B>(&mut self, req: &mut http::Request<B>) {
        if let Some(uri) = self.rewritten_uri(req.uri()) {
            *req.uri_mut() = uri;
        }
        self.finish_request(req.headers_mut());
    }

    /// `flags` with `DI` in front when a delay was injected.
    pub(crate) fn flags(&self, flags: &'static str) -> &'static str {
        if self.delayed {
            delayed(flags)
        } else {
            flags
        }
    }
}

/// The response headers CORS adds for an allowed origin.
struct CorsAnswer {
    origin: HeaderValue,
    credentials: bool,
    expose: Option<HeaderText>,
}

/// Holds one fault in progress of a fault filter.
struct ActiveFault(Arc<AtomicU32>);

impl ActiveFault {
    fn new(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request the filters answered: the response and its response flags.
pub(crate) type Answer = (Response<ProxyBody>, &'static str);

/// A connection's own token buckets (`local_rate_limit_per_downstream_connection`), one
/// per rate-limit config its requests used; those of configs gone are dropped as new ones
/// come.
#[derive(Default)]
pub(crate) struct ConnBuckets(Mutex<Vec<(Weak<RateLimitPolicy>, usize, BucketState)>>);

impl ConnBuckets {
    /// Takes a token from this connection's copy of a policy's bucket (`slot` 0: the
    /// filter's own; `i + 1`: its descriptor `i`'s).
    fn take(
        &self,
        policy: &Arc<RateLimitPolicy>,
        slot: usize,
        bucket: &TokenBucket,
        now: Instant,
    ) -> Taken {
        let mut buckets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = match buckets
            .iter()
            .position(|(p, s, _)| *s == slot && std::ptr::eq(p.as_ptr(), Arc::as_ptr(policy)))
        {
            Some(i) => i,
            None => {
                buckets.retain(|(p, _, _)| p.strong_count() > 0);
                buckets.push((Arc::downgrade(policy), slot, bucket.full(now)));
                buckets.len() - 1
            }
        };
        bucket.take(&mut buckets[i].2, now)
    }
}

/// What the filters of one request run with, besides the request.
pub(crate) struct Context<'a> {
    pub(crate) levels: Levels<'a>,
    /// The cluster the route picked; `None`: the route answers itself (a direct response
    /// or a redirect), and only the filters that guard or limit run (RBAC, basic auth,
    /// CSRF, local rate limit), as in Envoy, where the others need a route to a cluster.
    pub(crate) cluster: Option<&'a str>,
    /// A gRPC request (answers are gRPC local replies).
    pub(crate) grpc: bool,
    pub(crate) metrics: &'a ProxyMetrics,
    /// The connection's own token buckets.
    pub(crate) buckets: &'a ConnBuckets,
    /// Who sent the request over what connection, for RBAC (its `head` is the request's,
    /// set by [`run`]).
    pub(crate) client: Subject<'a>,
    /// The way to a rate limit service.
    pub(crate) services: &'a dyn crate::services::Services,
    /// The request has no body (its headers end the stream).
    pub(crate) end_of_stream: bool,
    /// The connection manager's buffer limit, in bytes: the most of a body a filter holds.
    pub(crate) buffer_limit: usize,
    /// The request's body, for the filters that read it as they run (external processing);
    /// `None` when the request has none to read (it ended with the head, CONNECT, an
    /// upgrade).
    pub(crate) body: Option<&'a mut crate::body::CountingBody<crate::body::RequestBody>>,
}

/// How much of the request's body the filters from `start` on want to see before they run
/// for this route (external authorization with `with_request_body`): the bytes to read
/// ahead, enough for each such filter to tell whether the body is longer than its limit;
/// `None`: none of them wants it. (External processing reads the body itself, after its
/// head's answer: [`run`].)
pub(crate) fn body_to_read(
    filters: &HttpFilters,
    start: usize,
    levels: Levels<'_>,
) -> Option<usize> {
    filters
        .0
        .iter()
        .skip(start)
        .filter(|f| levels.enabled(f))
        .filter_map(|f| match &f.kind {
            FilterKind::ExtAuthz(policy) => {
                let route = levels.settings(&f.name).find_map(|s| match &s.policy {
                    Some(FilterPolicy::ExtAuthz(r)) => Some(&**r),
                    _ => None,
                });
                let b = ext_authz_body(route, policy)?;
                Some(b.max_bytes as usize + usize::from(!b.allow_partial))
            }
            _ => None,
        })
        .max()
}

/// The body settings of an external authorization filter on a route whose most specific
/// level with settings for it has `route` (`disabled`, `disable_request_body_buffering`,
/// `with_request_body`), else the filter's own.
fn ext_authz_body(
    route: Option<&crate::model::ext_authz::ExtAuthzRoute>,
    policy: &crate::model::ext_authz::ExtAuthzPolicy,
) -> Option<crate::model::ext_authz::BodySettings> {
    match route {
        Some(r) if r.disabled || r.no_body => None,
        Some(r) => r.with_body.or(policy.with_body),
        None => policy.with_body,
    }
}

/// Runs `filters` for a request: `Some` when a filter answers it (a fault abort, a CORS
/// preflight, a rate limit); a fault delay is waited out here. An error: the client's
/// body failed while a filter read it.
pub(crate) async fn run(
    filters: &HttpFilters,
    start: usize,
    cx: Context<'_>,
    head: &RequestHead<'_>,
    filtered: &mut Filtered,
) -> Result<Option<Answer>, BodyError> {
    let Context {
        levels,
        cluster,
        grpc,
        metrics,
        buckets,
        client,
        services,
        end_of_stream,
        buffer_limit,
        mut body,
    } = cx;
    for (i, filter) in filters.0.iter().enumerate().skip(start) {
        if !levels.enabled(filter) {
            continue;
        }
        let routed = match cluster {
            Some(c) => c,
            None if matches!(
                filter.kind,
                FilterKind::Rbac(_)
                    | FilterKind::BasicAuth(_)
                    | FilterKind::Jwt(_)
                    | FilterKind::ApiKeyAuth(_)
                    | FilterKind::ExtAuthz(_)
                    | FilterKind::ExtProc(_)
                    | FilterKind::Compressor(_)
                    | FilterKind::Csrf(_)
                    | FilterKind::LocalRateLimit(_)
            ) =>
            {
                ""
            }
            None => continue,
        };
        let cluster = routed;
        let answer = match &filter.kind {
            FilterKind::Fault { policy, active } => {
                let policy = levels
                    .settings(&filter.name)
                    .find_map(|s| match &s.policy {
                        Some(FilterPolicy::Fault(p)) => Some(p),
                        _ => None,
                    })
                    .unwrap_or(policy);
                fault(policy, &active.0, cluster, head, grpc, metrics, filtered).await
            }
            FilterKind::Cors => cors(levels, &filter.name, head, metrics, filtered),
            FilterKind::LocalRateLimit(policy) => {
                let policy = levels
                    .settings(&filter.name)
                    .find_map(|s| match &s.policy {
                        Some(FilterPolicy::LocalRateLimit(p)) => Some(p),
                        _ => None,
                    })
                    .unwrap_or(policy);
                let request = Limited {
                    levels,
                    cluster,
                    head,
                    client: client.remote_ip,
                };
                local_rate_limit(policy, buckets, &request, grpc, metrics, filtered)
            }
            FilterKind::RateLimit(policy) => {
                let route = levels.settings(&filter.name).find_map(|s| match &s.policy {
                    Some(FilterPolicy::RateLimit(r)) => Some(&**r),
                    _ => None,
                });
                let request = Limited {
                    levels,
                    cluster,
                    head,
                    client: client.remote_ip,
                };
                let limit = GlobalLimit {
                    policy,
                    route,
                    grpc,
                    services,
                };
                Box::pin(global_rate_limit(limit, &request, metrics, filtered)).await
            }
            FilterKind::Jwt(config) => {
                let route = levels.settings(&filter.name).find_map(|s| match &s.policy {
                    Some(FilterPolicy::Jwt(r)) => Some(&**r),
                    _ => None,
                });
                let check = jwt(config, route, head, grpc, metrics, services, filtered);
                let answer = Box::pin(check).await;
                if answer.is_none() && filtered.jwt.as_ref().is_some_and(|j| j.clear_route) {
                    // The route is chosen again with the claims' headers; the filters after
                    // this one run with it.
                    if let Some(j) = filtered.jwt.as_mut() {
                        j.clear_route = false;
                    }
                    filtered.resume_at = Some(i + 1);
                    return Ok(None);
                }
                answer
            }
            FilterKind::ExtAuthz(policy) => {
                let routes: Vec<_> = levels
                    .settings(&filter.name)
                    .filter_map(|s| match &s.policy {
                        Some(FilterPolicy::ExtAuthz(r)) => Some(&**r),
                        _ => None,
                    })
                    .collect();
                if routes.first().is_some_and(|r| r.disabled) {
                    continue;
                }
                // The levels' `context_extensions`, the most specific winning per key.
                let mut context_extensions = HashMap::new();
                for r in routes.iter().rev() {
                    for (k, v) in &r.context_extensions {
                        context_extensions.insert(k.clone(), v.clone());
                    }
                }
                let subject = Subject {
                    head: Some(head),
                    ..client
                };
                let body = ext_authz_body(routes.first().copied(), policy)
                    .and_then(|settings| Some((filtered.body.as_ref()?, settings)));
                let check = crate::ext_authz::Check {
                    policy,
                    context_extensions,
                    head,
                    client: &subject,
                    metadata: &filtered.metadata,
                    body,
                };
                match Box::pin(crate::ext_authz::run(services, check, grpc, metrics)).await {
                    Ok(Some(allowed)) => {
                        // Envoy clears the route cache when the service changed the
                        // request's headers.
                        let reroute = policy.clear_route_cache
                            && (!allowed.request.is_empty() || !allowed.remove.is_empty());
                        filtered.ext_authz.push(allowed);
                        if reroute {
                            filtered.resume_at = Some(i + 1);
                            return Ok(None);
                        }
                        None
                    }
                    Ok(None) => None,
                    Err(answer) => Some(answer),
                }
            }
            FilterKind::ExtProc(policy) => {
                let route = levels.settings(&filter.name).find_map(|s| match &s.policy {
                    Some(FilterPolicy::ExtProc(r)) => Some(&**r),
                    _ => None,
                });
                let Some(mut exchange) =
                    crate::ext_proc::Exchange::new(policy, route, buffer_limit)
                else {
                    continue;
                };
                // The body as far as an earlier filter read it, or read now (and kept for
                // the filters after this one).
                let have = &mut filtered.body;
                let read = body.as_deref_mut().map(|body| {
                    move |at_least: usize| async move {
                        match have.as_ref() {
                            Some(r) if r.covers(at_least) => Ok(r.clone()),
                            _ => {
                                let r = body.read_ahead(at_least).await?;
                                *have = Some(r.clone());
                                Ok(r)
                            }
                        }
                    }
                });
                let processed =
                    exchange.request(services, head, read, end_of_stream, grpc, metrics);
                match Box::pin(processed).await? {
                    crate::ext_proc::Processed::Answer(answer) => Some(answer),
                    crate::ext_proc::Processed::Continue(c) => {
                        for changes in c.changes {
                            if let Some(path) = changes.path() {
                                filtered.ext_proc_path = Some(path.to_owned());
                            }
                            filtered.ext_proc.push(changes);
                        }
                        if let (Some(data), Some(n), Some(body)) =
                            (&c.body, c.replaces, body.as_deref_mut())
                        {
                            // The told part of the body replaced: the rest of the client's
                            // follows it; later filters read on from the new part.
                            body.replace_read(data.clone(), n);
                            filtered.body = Some(crate::body::ReadAhead {
                                data: data.clone(),
                                whole: false,
                                trailers: None,
                            });
                        } else if let Some(data) = c.body {
                            // Later filters see the new body, and so does the upstream.
                            let trailers = filtered.body.take().and_then(|b| b.trailers);
                            filtered.body = Some(crate::body::ReadAhead {
                                data,
                                whole: true,
                                trailers,
                            });
                            filtered.body_replaced = true;
                        }
                        if let (Some(streaming), Some(body)) = (c.streamed, body.as_deref_mut()) {
                            // Told as it goes on; the filters after this one read it as the
                            // processor leaves it.
                            body.through(|inner| {
                                crate::body::RequestBody::Own(Box::pin(streaming.body(inner)))
                            });
                            filtered.body = None;
                        }
                        if exchange.wants_response() {
                            filtered.ext_proc_responses.push(exchange);
                        }
                        if c.reroute {
                            filtered.resume_at = Some(i + 1);
                            return Ok(None);
                        }
                        None
                    }
                }
            }
            FilterKind::Compressor(policy) => {
                let route = levels.settings(&filter.name).find_map(|s| match &s.policy {
                    Some(FilterPolicy::Compressor(r)) => Some(&**r),
                    _ => None,
                });
                filtered.compressors.get_or_insert_default().note(
                    policy,
                    route,
                    head.headers.get(header::ACCEPT_ENCODING),
                );
                None
            }
            FilterKind::ApiKeyAuth(policy) => {
                let route = levels.settings(&filter.name).find_map(|s| match &s.policy {
                    Some(FilterPolicy::ApiKeyAuth(r)) => Some(&**r),
                    _ => None,
                });
                api_key_auth(policy, route, head, grpc, metrics, filtered)
            }
            FilterKind::BasicAuth(policy) => {
                let users = levels
                    .settings(&filter.name)
                    .find_map(|s| match &s.policy {
                        Some(FilterPolicy::BasicAuth(u)) => Some(u),
                        _ => None,
                    })
                    .unwrap_or(&policy.users);
                basic_auth(policy, users, head, grpc, metrics, filtered)
            }
            FilterKind::Csrf(policy) => {
                let policy = levels
                    .settings(&filter.name)
                    .find_map(|s| match &s.policy {
                        Some(FilterPolicy::Csrf(p)) => Some(p),
                        _ => None,
                    })
                    .unwrap_or(policy);
                csrf(policy, head, grpc, metrics)
            }
            // Answered before the route was chosen.
            FilterKind::HealthCheck(_) => None,
            FilterKind::StatefulSession(own) => {
                let policy = levels
                    .settings(&filter.name)
                    .find_map(|s| match &s.policy {
                        Some(FilterPolicy::StatefulSession(p)) => Some(p),
                        _ => None,
                    })
                    .unwrap_or(own);
                if let Some(policy) = policy {
                    filtered.session = Some(Session {
                        policy: policy.clone(),
                        requested: requested_host(policy, head),
                    });
                }
                None
            }
            FilterKind::Rbac(config) => {
                let config = levels
                    .settings(&filter.name)
                    .find_map(|s| match &s.policy {
                        Some(FilterPolicy::Rbac(c)) => Some(c),
                        _ => None,
                    })
                    .unwrap_or(config);
                let subject = Subject {
                    head: Some(head),
                    ..client
                };
                let checked = crate::rbac::check(config, &subject, "http", metrics);
                if let Some(shadow) = checked.shadow {
                    // Envoy's RBAC filter leaves its shadow decision for later filters.
                    const RBAC: &str = "envoy.filters.http.rbac";
                    let prefix = &config.shadow_prefix;
                    if let Some(policy) = shadow.policy {
                        filtered.metadata.set(
                            RBAC,
                            format!("{prefix}shadow_effective_policy_id"),
                            policy.to_owned(),
                        );
                    }
                    let result = if shadow.allowed { "allowed" } else { "denied" };
                    filtered.metadata.set(
                        RBAC,
                        format!("{prefix}shadow_engine_result"),
                        result.to_owned(),
                    );
                }
                (!checked.allowed).then(|| {
                    // Envoy's RBAC filter answers exactly this.
                    const BODY: &str = "RBAC: access denied";
                    let resp = crate::http::text_response(403, BODY.to_owned());
                    let resp = crate::http::for_grpc(resp, BODY, grpc);
                    (crate::local_reply::mark(resp, 403, BODY, None), "RBAC")
                })
            }
        };
        if answer.is_some() {
            return Ok(answer);
        }
    }
    Ok(None)
}

/// The host a request's session cookie or header names.
fn requested_host(policy: &SessionPolicy, head: &RequestHead<'_>) -> Option<SocketAddr> {
    match &policy.state {
        SessionState::Cookie { name, .. } => head
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| session_host(v)),
        SessionState::Header { name } => {
            session_host(head.headers.get(name.as_str())?.to_str().ok()?)
        }
    }
}

/// Runs the filters that come before the route is chosen (the health check filter):
/// `Some` when one answers the request.
pub(crate) fn before_route(
    filters: &HttpFilters,
    head: &RequestHead<'_>,
    traffic: &crate::traffic::Traffic,
    grpc: bool,
    metrics: &ProxyMetrics,
) -> Option<Answer> {
    for filter in &filters.0 {
        let FilterKind::HealthCheck(hc) = &filter.kind else {
            continue;
        };
        // No route yet: only the connection manager can turn it off.
        if filter.disabled || !hc.headers.iter().all(|h| h.matches(head)) {
            continue;
        }
        if hc.pass_through {
            metrics.health_check_request("passed_through");
            continue;
        }
        let now = Instant::now();
        let healthy = hc.cluster_min_healthy.iter().all(|(name, min)| {
            let Some(cluster) = traffic.cluster(name) else {
                return false;
            };
            let (healthy, total) = cluster.health(now);
            // Envoy truncates the percentage: 12.5 % is 12 %.
            let min = min.trunc() as usize;
            if total == 0 {
                return min == 0;
            }
            healthy * 100 >= total * min
        });
        let status = if healthy { 200 } else { 503 };
        metrics.health_check_request(if healthy { "healthy" } else { "unhealthy" });
        let resp = crate::http::text_response(status, String::new());
        let resp = crate::http::for_grpc(resp, "", grpc);
        return Some((crate::local_reply::mark(resp, status, "", None), "-"));
    }
    None
}

/// A fraction of requests as a request's header may narrow it (header-driven faults only):
/// the header's number out of the same denominator, at most the configured share.
fn header_share(head: &RequestHead<'_>, name: &str, configured: Fraction) -> Fraction {
    match first_number(head.headers, name) {
        Some(n) => configured.capped(u32::try_from(n).unwrap_or(u32::MAX)),
        None => configured,
    }
}

/// The first value of header `name` as a number (Envoy reads only the first value of
/// these untrusted headers).
fn first_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn roll() -> u32 {
    fastrand::u32(..)
}

async fn fault(
    policy: &FaultPolicy,
    active: &Arc<AtomicU32>,
    cluster: &str,
    head: &RequestHead<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
    filtered: &mut Filtered,
) -> Option<Answer> {
    if policy.delay.is_none() && policy.abort.is_none() {
        return None;
    }
    if let Some(max) = policy.max_active_faults {
        if active.load(Ordering::Relaxed) >= max {
            metrics.fault_overflow.inc();
            return None;
        }
    }
    if policy
        .upstream_cluster
        .as_deref()
        .is_some_and(|c| c != cluster)
    {
        return None;
    }
    if !policy.downstream_nodes.is_empty() {
        let node = head
            .headers
            .get(DOWNSTREAM_NODE)
            .and_then(|v| v.to_str().ok());
        if !node.is_some_and(|n| policy.downstream_nodes.iter().any(|d| d == n)) {
            return None;
        }
    }
    if !policy.headers.iter().all(|m| m.matches(head)) {
        return None;
    }
    if let Some(d) = &policy.delay {
        let (share, length) = match &d.duration {
            DelaySource::Fixed(t) => (d.percentage, Some(*t)),
            DelaySource::Header => (
                header_share(head, DELAY_PERCENTAGE, d.percentage),
                first_number(head.headers, DELAY_REQUEST).map(Duration::from_millis),
            ),
        };
        if let Some(t) = length.filter(|t| !t.is_zero() && share.chooses(roll())) {
            filtered
                .active_fault
                .get_or_insert_with(|| ActiveFault::new(active));
            filtered.delayed = true;
            metrics.fault_injected("delay");
            tokio::time::sleep(t).await;
        }
    }
    let a = policy.abort.as_ref()?;
    let share = match a.status {
        AbortStatus::Header => header_share(head, ABORT_PERCENTAGE, a.percentage),
        _ => a.percentage,
    };
    if !share.chooses(roll()) {
        return None;
    }
    let status = match a.status {
        AbortStatus::Header => {
            match first_number(head.headers, ABORT_REQUEST).filter(|c| (200..600).contains(c)) {
                Some(c) => AbortStatus::Http(c as u16),
                None => AbortStatus::Grpc(
                    u32::try_from(first_number(head.headers, ABORT_GRPC_REQUEST)?).ok()?,
                ),
            }
        }
        fixed => fixed,
    };
    filtered
        .active_fault
        .get_or_insert_with(|| ActiveFault::new(active));
    metrics.fault_injected("abort");
    // Marked for a `local_reply_config` (rare enough not to ask first whether there is one):
    // Envoy's aborts are local replies.
    let local = |resp, code, own| crate::local_reply::mark(resp, code, ABORT_BODY, own);
    let resp = match status {
        AbortStatus::Http(code) => local(
            crate::http::for_grpc(abort_response(code), ABORT_BODY, grpc),
            code,
            None,
        ),
        AbortStatus::Grpc(code) if grpc => local(
            crate::error::grpc_local_reply(code, ABORT_BODY),
            200,
            Some(code),
        ),
        // Envoy answers a gRPC abort to a request that is not gRPC with a plain `200`.
        AbortStatus::Grpc(_) | AbortStatus::Header => local(abort_response(200), 200, None),
    };
    Some((resp, "FI"))
}

fn abort_response(status: u16) -> Response<ProxyBody> {
    crate::http::text_response(status, ABORT_BODY.to_owned())
}

/// Envoy's `local_ratelimit.cc`: a checked request (`filter_enabled`) takes a token; one
/// that finds none is counted and, where enforced (`filter_enforced`), answered.
/// What a local rate limit reads of a request for its descriptors.
struct Limited<'a> {
    levels: Levels<'a>,
    /// The cluster the route chose (`destination_cluster`).
    cluster: &'a str,
    head: &'a RequestHead<'a>,
    /// The client as the connection manager worked it out (`remote_address`).
    client: IpAddr,
}

/// A request's rate limit descriptor: its entries in order, and what it counts for
/// (`None`: one hit, unsaid).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Descriptor {
    pub(crate) entries: Vec<(String, String)>,
    pub(crate) hits: Option<u64>,
}

/// The descriptors of a request for a rate limit filter: one per route (and virtual host,
/// as `vh_rate_limits` says) `rate_limits` entry of the filter's `stage` whose actions all
/// give something (Envoy's `populateDescriptors`); from `own` instead when the filter (or
/// its route settings) has `rate_limits` of its own. `on_stream_done`: those of the
/// entries for the end of the stream (`apply_on_stream_done`), else those for the request.
fn request_descriptors(
    own: &[RateLimitEntry],
    stage: u32,
    vh_rate_limits: VhRateLimits,
    r: &Limited<'_>,
    on_stream_done: bool,
) -> Vec<Descriptor> {
    let when = |e: &&RateLimitEntry| e.on_stream_done == on_stream_done;
    if !own.is_empty() {
        return own
            .iter()
            .filter(when)
            .filter_map(|e| descriptor(e, r))
            .collect();
    }
    let route: &[RateLimitEntry] = match &r.levels.route.action {
        RouteActionKind::Route(a) => &a.rate_limits,
        _ => &[],
    };
    let vhost: &[RateLimitEntry] = &r.levels.vhost.rate_limits;
    let lists: [&[RateLimitEntry]; 2] = match vh_rate_limits {
        VhRateLimits::Ignore => [route, &[]],
        VhRateLimits::Include => [route, vhost],
        VhRateLimits::Override if route.is_empty() => [vhost, &[]],
        VhRateLimits::Override => [route, &[]],
    };
    lists
        .iter()
        .flat_map(|l| l.iter())
        .filter(|e| e.stage == stage)
        .filter(when)
        .filter_map(|e| descriptor(e, r))
        .collect()
}

/// One `rate_limits` entry's descriptor for a request; `None` when an action has nothing.
fn descriptor(entry: &RateLimitEntry, r: &Limited<'_>) -> Option<Descriptor> {
    let hits = match entry.hits {
        Hits::One => None,
        Hits::Number(n) => Some(n),
        Hits::Never => return None,
    };
    let mut out = Vec::with_capacity(entry.actions.len());
    for a in &entry.actions {
        match a {
            // A route that answers itself has no cluster: no descriptor.
            RateLimitAction::DestinationCluster if r.cluster.is_empty() => return None,
            RateLimitAction::DestinationCluster => {
                out.push(("destination_cluster".to_owned(), r.cluster.to_owned()));
            }
            RateLimitAction::RequestHeaders {
                header,
                key,
                skip_if_absent,
            } => {
                // The first value, as Envoy takes it (pseudo-headers from the request).
                let value = if header.starts_with(':') {
                    r.head.header(header)
                } else {
                    r.head
                        .headers
                        .get(header.as_str())
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                };
                match value {
                    Some(v) => out.push((key.clone(), v)),
                    None if *skip_if_absent => {}
                    None => return None,
                }
            }
            RateLimitAction::RemoteAddress => {
                out.push(("remote_address".to_owned(), r.client.to_string()));
            }
            RateLimitAction::MaskedRemoteAddress { v4, v6 } => {
                out.push((
                    "masked_remote_address".to_owned(),
                    masked(r.client, *v4, *v6),
                ));
            }
            RateLimitAction::GenericKey { key, value } => out.push((key.clone(), value.clone())),
            RateLimitAction::RemoteAddressMatch {
                key,
                value,
                ranges,
                invert,
                default,
            } => {
                let matched = ranges.iter().any(|c| c.contains(r.client)) != *invert;
                match (matched, default) {
                    (true, _) => out.push((key.clone(), value.clone())),
                    (false, Some(d)) => out.push((key.clone(), d.clone())),
                    (false, None) => return None,
                }
            }
            RateLimitAction::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                if headers.iter().all(|h| h.matches(r.head)) != *expect_match {
                    return None;
                }
                out.push((key.clone(), value.clone()));
            }
        }
    }
    (!out.is_empty()).then_some(Descriptor { entries: out, hits })
}

/// `ip`'s network with a prefix of `v4` (or `v6`) bits, as `addr/len`.
fn masked(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
            format!("{}/{v4}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
            format!("{}/{v6}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn local_rate_limit(
    policy: &Arc<RateLimitPolicy>,
    buckets: &ConnBuckets,
    request: &Limited<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
    filtered: &mut Filtered,
) -> Option<Answer> {
    if policy.bucket.is_none() && policy.descriptors.is_empty() {
        return None;
    }
    if !policy.filter_enabled.chooses(roll()) {
        return None;
    }
    // The descriptor buckets the request's descriptors name, the slowest to fill first
    // (Envoy's order: the most restrictive decides and is reported).
    let mut matched: Vec<usize> = Vec::new();
    if !policy.descriptors.is_empty() {
        let own = &policy.rate_limits;
        let vh = policy.vh_rate_limits;
        for d in request_descriptors(own, policy.stage, vh, request, false) {
            if let Some(i) = policy
                .descriptors
                .iter()
                .position(|l| l.entries == d.entries)
            {
                if !matched.contains(&i) {
                    matched.push(i);
                }
            }
        }
        matched.sort_by(|&a, &b| {
            let rate = |i: usize| {
                let b = &policy.descriptors[i].bucket;
                f64::from(b.tokens_per_fill) / b.fill_interval.as_secs_f64()
            };
            rate(a).total_cmp(&rate(b))
        });
    }
    let now = Instant::now();
    let take = |slot: usize, bucket: &TokenBucket| {
        if policy.per_connection {
            buckets.take(policy, slot, bucket, now)
        } else {
            let mut state = bucket.shared.lock().unwrap_or_else(|e| e.into_inner());
            bucket.take(&mut state, now)
        }
    };
    // (the bucket's size, what was taken from it) of the bucket reported.
    let mut reported: Option<(u32, Taken)> = None;
    let mut allowed = true;
    for &i in &matched {
        let bucket = &policy.descriptors[i].bucket;
        let taken = take(i + 1, bucket);
        if reported.is_none() || !taken.allowed {
            reported = Some((bucket.max_tokens, taken));
        }
        if !taken.allowed {
            allowed = false;
            break;
        }
    }
    if allowed && (matched.is_empty() || policy.always_consume_default) {
        if let Some(bucket) = &policy.bucket {
            let taken = take(0, bucket);
            if reported.is_none() || !taken.allowed {
                reported = Some((bucket.max_tokens, taken));
            }
            allowed = taken.allowed;
        }
    }
    // No descriptor matched and the filter has no bucket of its own: nothing applies.
    let (limit, taken) = reported?;
    if policy.x_ratelimit_headers {
        filtered.rate_limit = Some(RateLimitHeaders {
            limit,
            remaining: taken.remaining,
            reset: taken.reset.as_secs_f64().ceil() as u32,
        });
    }
    if allowed {
        metrics.local_rate_limit(&policy.stat_prefix, "ok");
        return None;
    }
    if !policy.filter_enforced.chooses(roll()) {
        metrics.local_rate_limit(&policy.stat_prefix, "limited_not_enforced");
        filtered.not_enforced = Some(policy.clone());
        return None;
    }
    metrics.local_rate_limit(&policy.stat_prefix, "enforced");
    let mut resp = crate::http::text_response(policy.status, RATE_LIMITED_BODY.to_owned());
    let h = resp.headers_mut();
    h.insert(X_ENVOY_RATELIMITED, HeaderValue::from_static("true"));
    crate::traffic::router::mutate_headers(h, &policy.response_headers_to_add, &[]);
    let own = (grpc && policy.grpc_resource_exhausted).then_some(GRPC_RESOURCE_EXHAUSTED);
    if let Some(s) = own {
        // `for_grpc` keeps a status the answer names.
        h.insert("grpc-status", HeaderValue::from(s));
    }
    let resp = crate::http::for_grpc(resp, RATE_LIMITED_BODY, grpc);
    // A local reply in Envoy: marked for a `local_reply_config`.
    let resp = crate::local_reply::mark(resp, policy.status, RATE_LIMITED_BODY, own);
    Some((resp, "RL"))
}

/// The JWT filter for a request: its requirement (the route's named one, else the first
/// rule that matches), checked; the answer to a request that fails it.
async fn jwt(
    config: &crate::model::jwt::JwtConfig,
    route: Option<&crate::model::jwt::JwtRoute>,
    head: &RequestHead<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
    services: &dyn crate::services::Services,
    filtered: &mut Filtered,
) -> Option<Answer> {
    use crate::model::jwt::JwtRoute;
    let requirement = match route {
        Some(JwtRoute::Disabled) => return None,
        Some(JwtRoute::Requirement(name)) => match config.requirement_map.get(name) {
            Some(r) => r,
            None => {
                // Envoy's answer to a route naming a requirement the filter lacks.
                metrics.jwt_authn("denied");
                let names: Vec<&str> = config.requirement_map.keys().map(String::as_str).collect();
                let body = format!(
                    "Wrong requirement_name: {name}. It should be one of [{}]",
                    names.join(",")
                );
                let resp = crate::http::text_response(403, body.clone());
                let resp = crate::http::for_grpc(resp, &body, grpc);
                return Some((crate::local_reply::mark(resp, 403, &body, None), "-"));
            }
        },
        None => config
            .rules
            .iter()
            .find(|r| r.route_match.matches(head))
            .and_then(|r| r.requires.as_ref())?,
    };
    if config.bypass_cors_preflight && crate::jwt::is_cors_preflight(head) {
        metrics.jwt_authn("cors_preflight_bypassed");
        return None;
    }
    match crate::jwt::check(config, requirement, head, services).await {
        Ok(passed) => {
            metrics.jwt_authn("allowed");
            // A second JWT filter's changes add to the first's.
            let jwt = filtered.jwt.get_or_insert_with(Default::default);
            jwt.remove.extend(passed.remove);
            jwt.set.extend(passed.set);
            jwt.clear_route |= passed.clear_route;
            None
        }
        Err(failure) => {
            metrics.jwt_authn("denied");
            tracing::debug!(target: "myelin::jwt", reason = failure.message(), "request denied");
            let status = failure.status();
            let body = if config.strip_failure_response {
                ""
            } else {
                failure.message()
            };
            let mut resp = if body.is_empty() {
                crate::http::local_response(status, String::new())
            } else {
                crate::http::text_response(status, body.to_owned())
            };
            let challenge = crate::jwt::challenge(&original_uri(head), failure);
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            let resp = crate::http::for_grpc(resp, body, grpc);
            Some((crate::local_reply::mark(resp, status, body, None), "-"))
        }
    }
}

/// Removes `names` from the request's cookies (the `Cookie` header is dropped when none is
/// left).
fn strip_cookies(headers: &mut HeaderMap, names: &[String]) {
    let values: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    !names.iter().any(|n| n == name)
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    headers.remove(header::COOKIE);
    for v in values {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.append(header::COOKIE, v);
        }
    }
}

/// The API key of a request: the first source, in order, that gives a non-empty one.
fn api_key(
    sources: &[crate::model::filter::ApiKeySource],
    head: &RequestHead<'_>,
) -> Option<String> {
    use crate::model::filter::ApiKeySource as S;
    sources.iter().find_map(|s| {
        let key = match s {
            S::Header(name) => {
                let v = head.headers.get(name.as_str())?.to_str().ok()?;
                v.strip_prefix("Bearer ").unwrap_or(v).to_owned()
            }
            S::Query(name) => {
                let query = head.path.split_once('?')?.1;
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
                    (k == name.as_str()).then(|| {
                        percent_encoding::percent_decode_str(&v.replace('+', " "))
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                })?
            }
            S::Cookie(name) => head
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.trim_matches('"').to_owned())
                })?,
        };
        (!key.is_empty()).then_some(key)
    })
}

/// API key auth (Envoy's `api_key_auth.cc`): the request's key must be one of the keys
/// (the route's when it has any, else the filter's), its client one of the route's
/// `allowed_clients` when it lists any.
fn api_key_auth(
    policy: &crate::model::filter::ApiKeyAuthPolicy,
    route: Option<&crate::model::filter::ApiKeyAuthRoute>,
    head: &RequestHead<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
    filtered: &mut Filtered,
) -> Option<Answer> {
    use crate::model::filter::ApiKeySource as S;
    let keys = match route {
        Some(r) if !r.keys.0.is_empty() => &r.keys,
        _ => &policy.keys,
    };
    let sources = match route {
        Some(r) if !r.sources.is_empty() => &r.sources,
        _ => &policy.sources,
    };
    let forwarding = route.map_or(&policy.forwarding, |r| &r.forwarding);
    let client = api_key(sources, head).and_then(|k| keys.0.get(&k));
    let refuse = |status: u16, body: &'static str| {
        let resp = crate::http::text_response(status, body.to_owned());
        let resp = crate::http::for_grpc(resp, body, grpc);
        Some((crate::local_reply::mark(resp, status, body, None), "-"))
    };
    let Some(client) = client else {
        metrics.api_key_auth("unauthorized");
        return refuse(401, "Client authentication failed.");
    };
    if let Some(r) = route {
        if !r.allowed_clients.is_empty() && !r.allowed_clients.contains(client) {
            metrics.api_key_auth("forbidden");
            return refuse(403, "Client is forbidden.");
        }
    }
    metrics.api_key_auth("allowed");
    let mut edits = ApiKeyEdits::default();
    if let Some(h) = &forwarding.header {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.as_bytes()),
            HeaderValue::from_str(client),
        ) {
            edits.client = Some((n, v));
        }
    }
    if forwarding.hide_credentials {
        for s in sources {
            match s {
                S::Header(h) => {
                    if let Ok(n) = HeaderName::from_bytes(h.as_bytes()) {
                        edits.headers.push(n);
                    }
                }
                S::Query(q) => edits.params.push(q.clone()),
                S::Cookie(c) => edits.cookies.push(c.clone()),
            }
        }
    }
    filtered.api_key = Some(edits);
    None
}

/// A global rate limit filter's config for one request.
struct GlobalLimit<'a> {
    policy: &'a Arc<GlobalRateLimitPolicy>,
    /// The route's settings (`RateLimitPerRoute`).
    route: Option<&'a GlobalRateLimitRoute>,
    grpc: bool,
    services: &'a dyn crate::services::Services,
}

/// The global rate limit filter (Envoy's `ratelimit.cc`): asks the rate limit service about
/// the request's descriptors (no descriptor, no call) and answers a request over a limit
/// (`429` `RL`), or one the service failed to answer for under `failure_mode_deny`
/// (`status_on_error`, `RLSE`); what the service's answer adds to the request and the
/// response is left in `filtered`.
async fn global_rate_limit(
    limit: GlobalLimit<'_>,
    request: &Limited<'_>,
    metrics: &ProxyMetrics,
    filtered: &mut Filtered,
) -> Option<Answer> {
    let GlobalLimit {
        policy,
        route,
        grpc,
        services,
    } = limit;
    if !policy.filter_enabled.chooses(roll()) {
        return None;
    }
    let internal = request
        .head
        .headers
        .get("x-envoy-internal")
        .is_some_and(|v| v == "true");
    match policy.request_type {
        RequestType::Internal if !internal => return None,
        RequestType::External if internal => return None,
        _ => {}
    }
    let own = match route {
        Some(r) if !r.rate_limits.is_empty() => &r.rate_limits,
        _ => &policy.rate_limits,
    };
    let vh = route.map_or(VhRateLimits::Override, |r| r.vh_rate_limits);
    // Those for the end of the stream are sent then, whatever the answer now.
    let done = request_descriptors(own, policy.stage, vh, request, true);
    if !done.is_empty() {
        filtered.stream_done = Some(StreamDone {
            policy: policy.clone(),
            domain: route
                .and_then(|r| r.domain.clone())
                .unwrap_or_else(|| policy.domain.clone()),
            descriptors: done,
        });
    }
    let descriptors = request_descriptors(own, policy.stage, vh, request, false);
    if descriptors.is_empty() {
        return None;
    }
    let domain = route
        .and_then(|r| r.domain.as_deref())
        .unwrap_or(&policy.domain);
    let asked = crate::ratelimit::ask(
        services,
        &policy.service,
        domain,
        &descriptors,
        policy.timeout,
    )
    .await;
    let answer = match asked {
        Ok(a) => a,
        Err(error) => {
            tracing::debug!(
                target: "myelin::ratelimit",
                cluster = %policy.service.cluster,
                %error,
                "no answer from the rate limit service"
            );
            if !policy.failure_mode_deny.chooses(roll()) {
                metrics.rate_limit_service(&policy.stat_prefix, "error_allowed");
                return None;
            }
            metrics.rate_limit_service(&policy.stat_prefix, "error_denied");
            let status = policy.status_on_error;
            let resp = crate::http::local_response(status, String::new());
            let resp = crate::http::for_grpc(resp, "", grpc);
            return Some((crate::local_reply::mark(resp, status, "", None), "RLSE"));
        }
    };
    let mut response_headers = answer.response_headers;
    if answer.over_limit && policy.x_envoy_ratelimited {
        response_headers.push((X_ENVOY_RATELIMITED, HeaderValue::from_static("true")));
    }
    if policy.x_ratelimit_headers {
        response_headers.extend(crate::ratelimit::x_ratelimit_headers(&answer.statuses));
    }
    if !answer.over_limit || !policy.filter_enforced.chooses(roll()) {
        let outcome = if answer.over_limit {
            "over_limit_not_enforced"
        } else {
            "ok"
        };
        metrics.rate_limit_service(&policy.stat_prefix, outcome);
        filtered.service_request_headers = answer.request_headers;
        filtered.service_response_headers = response_headers;
        return None;
    }
    metrics.rate_limit_service(&policy.stat_prefix, "over_limit");
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    let mut resp = if body.is_empty() {
        crate::http::local_response(policy.status, body.clone())
    } else {
        crate::http::text_response(policy.status, body.clone())
    };
    let h = resp.headers_mut();
    // The service's content type is the answer's (Envoy's `populateResponseHeaders`).
    if response_headers
        .iter()
        .any(|(n, _)| n == header::CONTENT_TYPE)
    {
        h.remove(header::CONTENT_TYPE);
    }
    for (name, value) in response_headers {
        h.append(name, value);
    }
    crate::traffic::router::mutate_headers(h, &policy.response_headers_to_add, &[]);
    let own = (grpc && policy.grpc_resource_exhausted).then_some(GRPC_RESOURCE_EXHAUSTED);
    if let Some(s) = own {
        h.insert("grpc-status", HeaderValue::from(s));
    }
    let resp = crate::http::for_grpc(resp, &body, grpc);
    let resp = crate::local_reply::mark(resp, policy.status, &body, own);
    Some((resp, "RL"))
}

/// The CSRF check (Envoy's `csrf_filter.cc`): a request that changes state must come from
/// the origin it goes to (its `Origin`, else its `Referer`, as `host[:port]`, against its
/// host) or from one of the policy's other origins; else `403 Invalid origin` (only
/// counted when the check is shadowed).
fn csrf(
    policy: &CsrfPolicy,
    head: &RequestHead<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
) -> Option<Answer> {
    let enforced = policy.filter_enabled.chooses(roll());
    let shadow = policy.shadow_enabled.is_some_and(|f| f.chooses(roll()));
    if !enforced && !shadow {
        return None;
    }
    if !matches!(head.method, "POST" | "PUT" | "DELETE" | "PATCH") {
        return None;
    }
    let source = [header::ORIGIN, header::REFERER]
        .iter()
        .filter_map(|h| head.headers.get(h)?.to_str().ok())
        .map(host_and_port)
        .find(|s| !s.is_empty())
        .unwrap_or("");
    let outcome = if source.is_empty() {
        "missing_source_origin"
    } else if source == host_and_port(head.authority)
        || policy.additional_origins.iter().any(|m| m.matches(source))
    {
        "valid"
    } else {
        "invalid"
    };
    metrics.csrf(outcome);
    if outcome == "valid" || !enforced {
        return None;
    }
    const BODY: &str = "Invalid origin";
    let resp = crate::http::text_response(403, BODY.to_owned());
    let resp = crate::http::for_grpc(resp, BODY, grpc);
    let resp = crate::local_reply::mark(resp, 403, BODY, None);
    Some((resp, "-"))
}

/// `host[:port]` of an absolute URL (`https://app.example.com:8443/x` ->
/// `app.example.com:8443`); any other value as it is (a `Host` header).
fn host_and_port(value: &str) -> &str {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value;
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return value;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Without user information.
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// The realm of a basic auth refusal names at most this much of the request's URI
/// (Envoy's).
const REALM_URI_MAX: usize = 256;

/// HTTP Basic authentication (Envoy's `basic_auth_filter.cc`): the credentials of the
/// `Authorization` header (or `authentication_header`) must name a user whose password's
/// SHA-1 is the one listed; else `401` with a `www-authenticate` challenge.
fn basic_auth(
    policy: &BasicAuthPolicy,
    users: &BasicAuthUsers,
    head: &RequestHead<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
    filtered: &mut Filtered,
) -> Option<Answer> {
    let header = policy
        .authentication_header
        .as_deref()
        .unwrap_or("authorization");
    let refusal = match head.headers.get(header) {
        None => Err((
            "User authentication failed. Missing username and password.",
            "no_credential",
        )),
        Some(v) => match v.as_bytes().strip_prefix(b"Basic ") {
            None => Err((
                "User authentication failed. Expected 'Basic' authentication scheme.",
                "invalid_scheme",
            )),
            Some(token) => basic_credentials(token).ok_or((
                "User authentication failed. Invalid basic credential format.",
                "invalid_format",
            )),
        },
    }
    .and_then(|(user, password)| {
        if users.verify(&user, &password) {
            Ok(user)
        } else {
            Err((
                "User authentication failed. Invalid username/password combination.",
                "invalid_credential",
            ))
        }
    });
    let (body, reason) = match refusal {
        Ok(user) => {
            metrics.basic_auth("allowed");
            let name = policy
                .forward_username_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
            if let (Some(name), Ok(value)) = (name, HeaderValue::from_str(&user)) {
                filtered.forward_username = Some((name, value));
            }
            return None;
        }
        Err(refused) => refused,
    };
    metrics.basic_auth(reason);
    let mut resp = crate::http::text_response(401, body.to_owned());
    let realm = format!("Basic realm=\"{}\"", original_uri(head));
    if let Ok(v) = HeaderValue::from_str(&realm) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    let resp = crate::http::for_grpc(resp, body, grpc);
    let resp = crate::local_reply::mark(resp, 401, body, None);
    Some((resp, "-"))
}

/// The request's URL for a challenge's realm (Envoy's `buildOriginalUri`: scheme, host,
/// path with its query), cut to `REALM_URI_MAX` bytes, its quotes escaped.
fn original_uri(head: &RequestHead<'_>) -> String {
    let scheme = if head.scheme.is_empty() {
        "http"
    } else {
        head.scheme
    };
    let mut uri = format!("{scheme}://{}{}", head.authority, head.path);
    if uri.len() > REALM_URI_MAX {
        let mut end = REALM_URI_MAX;
        while !uri.is_char_boundary(end) {
            end -= 1;
        }
        uri.truncate(end);
    }
    uri.replace('"', "%22")
}

/// The user and password of a Basic credential (base64 with or without padding, as
/// Envoy decodes it).
fn basic_credentials(token: &[u8]) -> Option<(String, String)> {
    use base64::Engine;
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = LENIENT.decode(token).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The CORS policies of a route, most specific first (at most three, on the stack): the
/// filter's per-route settings, or when no level has any, the deprecated `cors` fields
/// (route action, then virtual host).
fn cors_policies<'a>(levels: Levels<'a>, name: &'a str) -> [Option<&'a CorsPolicy>; 3] {
    let mut out = [None; 3];
    let typed = levels.settings(name).filter_map(|s| match &s.policy {
        Some(FilterPolicy::Cors(p)) => Some(&**p),
        _ => None,
    });
    for (slot, p) in out.iter_mut().zip(typed) {
        *slot = Some(p);
    }
    if out[0].is_none() {
        out[0] = levels.route.cors.as_deref();
        out[1] = levels.vhost.cors.as_deref();
        if out[0].is_none() {
            out.swap(0, 1);
        }
    }
    out
}

/// The first policy (most specific) that sets the field.
fn first<'a, T: ?Sized>(
    policies: &[Option<&'a CorsPolicy>; 3],
    field: impl Fn(&'a CorsPolicy) -> Option<&'a T>,
) -> Option<&'a T> {
    policies.iter().flatten().find_map(|p| field(p))
}

fn cors(
    levels: Levels<'_>,
    name: &str,
    head: &RequestHead<'_>,
    metrics: &ProxyMetrics,
    filtered: &mut Filtered,
) -> Option<Answer> {
    let policies = cors_policies(levels, name);
    let top = policies[0]?;
    let enabled = top.filter_enabled.is_none_or(|f| f.chooses(roll()));
    let shadow = top.shadow_enabled.is_some_and(|f| f.chooses(roll()));
    if !enabled && !shadow {
        return None;
    }
    let origin = head.headers.get(header::ORIGIN).filter(|o| !o.is_empty())?;
    let allowed = origin_allowed(&policies, origin);
    metrics.cors_origin(allowed);
    if !enabled {
        // Shadow mode: checked and counted, nothing enforced.
        return None;
    }
    let credentials = first(&policies, |p| p.allow_credentials.as_ref()).copied() == Some(true);
    if allowed {
        filtered.cors = Some(CorsAnswer {
            origin: origin.clone(),
            credentials,
            expose: first(&policies, |p| p.expose_headers.as_ref()).cloned(),
        });
    }
    let requested_method = head
        .headers
        .get(&ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|m| !m.is_empty());
    let (Some(requested_method), true) =
        (requested_method, head.method == Method::OPTIONS.as_str())
    else {
        return None;
    };
    // A preflight. From an origin not allowed it goes upstream unless the policy says
    // otherwise (Envoy's default).
    if !allowed
        && first(&policies, |p| p.forward_not_matching_preflights.as_ref()).copied() != Some(false)
    {
        return None;
    }
    let mut resp = crate::http::local_response(200, String::new());
    let h = resp.headers_mut();
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(m) = first(&policies, |p| p.allow_methods.as_ref()) {
        let v = if m.as_str() == "*" {
            requested_method.clone()
        } else {
            m.value().clone()
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(a) = first(&policies, |p| p.allow_headers.as_ref()) {
        let v = if a.as_str() == "*" {
            head.headers
                .get(&ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static(""))
        } else {
            a.value().clone()
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(m) = first(&policies, |p| p.max_age.as_ref()) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, m.value().clone());
    }
    if first(&policies, |p| p.allow_private_network_access.as_ref()).copied() == Some(true)
        && head
            .headers
            .get(&ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK)
            .is_some_and(|v| v == "true")
    {
        h.insert(
            ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK,
            HeaderValue::from_static("true"),
        );
    }
    // The preflight answer carries its own CORS headers.
    filtered.cors = None;
    Some((resp, "-"))
}

/// Whether the most specific non-empty origin list allows `origin` (a matcher that
/// matches `*` allows every origin, as in Envoy).
fn origin_allowed(policies: &[Option<&CorsPolicy>; 3], origin: &HeaderValue) -> bool {
    let Some(list) = policies
        .iter()
        .flatten()
        .map(|p| &p.allow_origin)
        .find(|l| !l.is_empty())
    else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("");
    list.iter().any(|m| m.matches("*") || m.matches(origin))
}

/// `flags` after a delay was injected: `DI`, or `DI,` and `flags`. Strings are made once
/// per distinct set of flags (a handful) and kept.
fn delayed(flags: &'static str) -> &'static str {
    if flags == "-" {
        return "DI";
    }
    static JOINED: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    let mut joined = JOINED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    joined
        .entry(flags)
        .or_insert_with(|| Box::leak(format!("DI,{flags}").into_boxed_str()))
}

#[cfg(test)]
mod tests;
