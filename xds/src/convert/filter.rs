//! HTTP filters before the router (fault injection, CORS, local and global rate limits, basic auth,
//! CSRF, RBAC, health checks, stateful sessions) and their per-route settings (`typed_per_filter_config`) -> [`myelin_proxy::model::filter`].

use std::collections::HashMap;
use std::sync::Arc;

use myelin_proxy::model::filter as mf;
use myelin_proxy::model::listener::HeaderText;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::route::v3 as route_pb;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds_api::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use xds_api::pb::google::protobuf;

use super::common::string_matcher;
use super::{ext, idx, join, route, Cx, Reason};

const FAULT_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const RATE_LIMIT_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const GLOBAL_RATE_LIMIT_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const GLOBAL_RATE_LIMIT_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";
const JWT_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const JWT_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
const API_KEY_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth";
const API_KEY_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute";
const COMPRESSOR_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
const COMPRESSOR_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const EXT_AUTHZ_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const EXT_AUTHZ_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
const EXT_PROC_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
const EXT_PROC_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";
const FILTER_CONFIG_URL: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
const CSRF_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy";
const BASIC_AUTH_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth";
const BASIC_AUTH_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute";
const HEALTH_CHECK_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck";
const SESSION_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession";
const SESSION_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute";
const COOKIE_STATE_URL: &str =
    "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState";
const HEADER_STATE_URL: &str =
    "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState";
const RBAC_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_ROUTE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

/// A filter of a connection manager other than the (last) router: `None` when it is
/// skipped (optional and unknown) or rejected.
pub(super) fn http_filter(cx: &mut Cx, p: &str, f: &hcm::HttpFilter) -> Option<mf::HttpFilter> {
    use hcm::http_filter::ConfigType as C;
    let hcm::HttpFilter {
        name,
        is_optional,
        disabled,
        config_type,
    } = f;
    // By type (a filter's name is the key of its per-route settings, nothing more); the
    // name alone when it is the filter's canonical name, which Envoy still accepts.
    let kind = match config_type {
        Some(C::TypedConfig(any)) if any.type_url == FAULT_URL => {
            let tp = join(p, "typed_config");
            let fault = cx.decode::<ext::HttpFault>(&tp, FAULT_URL, &any.value)?;
            Some(mf::FilterKind::Fault {
                policy: Arc::new(fault_policy(cx, &tp, &fault)?),
                active: mf::ActiveFaults::default(),
            })
        }
        Some(C::TypedConfig(any)) if any.type_url == CORS_URL => {
            cx.decode::<ext::Cors>(&join(p, "typed_config"), CORS_URL, &any.value)?;
            Some(mf::FilterKind::Cors)
        }
        Some(C::TypedConfig(any)) if any.type_url == RATE_LIMIT_URL => {
            let tp = join(p, "typed_config");
            let r = cx.decode::<ext::LocalRateLimit>(&tp, RATE_LIMIT_URL, &any.value)?;
            let policy = rate_limit_policy(cx, &tp, &r, false)?;
            Some(mf::FilterKind::LocalRateLimit(Arc::new(policy)))
        }
        Some(C::TypedConfig(any)) if any.type_url == GLOBAL_RATE_LIMIT_URL => {
            let tp = join(p, "typed_config");
            let r = cx.decode::<ext::HttpRateLimit>(&tp, GLOBAL_RATE_LIMIT_URL, &any.value)?;
            let policy = global_rate_limit(cx, &tp, &r)?;
            Some(mf::FilterKind::RateLimit(Arc::new(policy)))
        }
        Some(C::TypedConfig(any)) if any.type_url == COMPRESSOR_URL => {
            let tp = join(p, "typed_config");
            let c = cx.decode::<ext::Compressor>(&tp, COMPRESSOR_URL, &any.value)?;
            let policy = super::compressor::compressor(cx, &tp, &c)?;
            Some(mf::FilterKind::Compressor(Arc::new(policy)))
        }
        Some(C::TypedConfig(any)) if any.type_url == EXT_AUTHZ_URL => {
            let tp = join(p, "typed_config");
            let e = cx.decode::<ext::ExtAuthz>(&tp, EXT_AUTHZ_URL, &any.value)?;
            let policy = super::ext_authz::ext_authz(cx, &tp, &e)?;
            Some(mf::FilterKind::ExtAuthz(Arc::new(policy)))
        }
        Some(C::TypedConfig(any)) if any.type_url == EXT_PROC_URL => {
            let tp = join(p, "typed_config");
            let e = cx.decode::<ext::ExternalProcessor>(&tp, EXT_PROC_URL, &any.value)?;
            let policy = super::ext_proc::ext_proc(cx, &tp, &e)?;
            Some(mf::FilterKind::ExtProc(Arc::new(policy)))
        }
        Some(C::TypedConfig(any)) if any.type_url == JWT_URL => {
            let tp = join(p, "typed_config");
            let j = cx.decode::<ext::JwtAuthentication>(&tp, JWT_URL, &any.value)?;
            let config = super::jwt::jwt_authentication(cx, &tp, &j)?;
            Some(mf::FilterKind::Jwt(Arc::new(config)))
        }
        Some(C::TypedConfig(any)) if any.type_url == API_KEY_URL => {
            let tp = join(p, "typed_config");
            let a = cx.decode::<ext::ApiKeyAuth>(&tp, API_KEY_URL, &any.value)?;
            let keys = api_keys(cx, &tp, &a.credentials)?;
            let sources = api_key_sources(cx, &tp, &a.key_sources)?;
            let forwarding = api_key_forwarding(cx, &tp, a.forwarding.as_ref())?;
            Some(mf::FilterKind::ApiKeyAuth(Arc::new(mf::ApiKeyAuthPolicy {
                keys,
                sources,
                forwarding,
            })))
        }
        Some(C::TypedConfig(any)) if any.type_url == BASIC_AUTH_URL => {
            let tp = join(p, "typed_config");
            let b = cx.decode::<ext::BasicAuth>(&tp, BASIC_AUTH_URL, &any.value)?;
            Some(mf::FilterKind::BasicAuth(Arc::new(basic_auth(
                cx, &tp, &b,
            )?)))
        }
        Some(C::TypedConfig(any)) if any.type_url == CSRF_URL => {
            let tp = join(p, "typed_config");
            let c = cx.decode::<ext::CsrfPolicy>(&tp, CSRF_URL, &any.value)?;
            Some(mf::FilterKind::Csrf(Arc::new(csrf_policy(cx, &tp, &c)?)))
        }
        Some(C::TypedConfig(any)) if any.type_url == RBAC_URL => {
            let tp = join(p, "typed_config");
            let r = cx.decode::<ext::HttpRbac>(&tp, RBAC_URL, &any.value)?;
            Some(mf::FilterKind::Rbac(Arc::new(super::rbac::http_rbac(
                cx, &tp, &r,
            )?)))
        }
        Some(C::TypedConfig(any)) if any.type_url == HEALTH_CHECK_URL => {
            let tp = join(p, "typed_config");
            let h = cx.decode::<ext::HealthCheckFilter>(&tp, HEALTH_CHECK_URL, &any.value)?;
            Some(mf::FilterKind::HealthCheck(Arc::new(health_check(
                cx, &tp, &h,
            )?)))
        }
        Some(C::TypedConfig(any)) if any.type_url == SESSION_URL => {
            let tp = join(p, "typed_config");
            let st = cx.decode::<ext::StatefulSession>(&tp, SESSION_URL, &any.value)?;
            Some(mf::FilterKind::StatefulSession(
                session_policy(cx, &tp, &st)?.map(Arc::new),
            ))
        }
        None if name == "envoy.filters.http.fault" => Some(mf::FilterKind::Fault {
            policy: Arc::new(empty_fault()),
            active: mf::ActiveFaults::default(),
        }),
        None if name == "envoy.filters.http.cors" => Some(mf::FilterKind::Cors),
        Some(C::ConfigDiscovery(_)) if !is_optional => {
            cx.reject(join(p, "config_discovery"), Reason::NotSupported);
            return None;
        }
        _ => None,
    };
    match kind {
        Some(kind) => Some(mf::HttpFilter {
            name: name.clone(),
            disabled: *disabled,
            kind,
        }),
        // Optional filters Myelin lacks may be skipped: that is what `is_optional` means.
        None if *is_optional => None,
        None => {
            let what = match config_type {
                Some(C::TypedConfig(any)) => {
                    format!("HTTP filter `{name}` (type `{}`)", any.type_url)
                }
                _ => format!("HTTP filter `{name}`"),
            };
            cx.reject(p, Reason::UnsupportedValue(what));
            None
        }
    }
}

fn empty_fault() -> mf::FaultPolicy {
    mf::FaultPolicy {
        delay: None,
        abort: None,
        upstream_cluster: None,
        headers: Vec::new(),
        downstream_nodes: Vec::new(),
        max_active_faults: None,
    }
}

/// `typed_per_filter_config` of a route, virtual host or route table. Settings for filters
/// Myelin lacks are rejected unless marked optional (`FilterConfig.is_optional`), as Envoy
/// rejects settings for filters it was built without.
pub(super) fn filter_settings(
    cx: &mut Cx,
    p: &str,
    map: &HashMap<String, protobuf::Any>,
) -> mf::FilterSettings {
    let mut out = mf::FilterSettings::new();
    // In name order: the same resource gets the same rejections in the same order.
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by_key(|(name, _)| *name);
    for (name, any) in entries {
        let ep = format!("{}[{name:?}]", join(p, "typed_per_filter_config"));
        let setting = if any.type_url == FILTER_CONFIG_URL {
            let Some(fc) = cx.decode::<route_pb::FilterConfig>(&ep, FILTER_CONFIG_URL, &any.value)
            else {
                continue;
            };
            let route_pb::FilterConfig {
                config,
                is_optional,
                disabled,
            } = fc;
            // `config: {}` (an `Any` of no type, as Envoy Gateway writes it to turn on a
            // filter the connection manager has off) is no config.
            let config = config.filter(|c| !c.type_url.is_empty() || !c.value.is_empty());
            let policy = match &config {
                // `disabled` with no config is how a filter is turned off (or, `false`, on).
                None => None,
                // A disabled filter's config is ignored (Envoy does not read it).
                Some(_) if disabled => None,
                Some(c) => match filter_policy(cx, &join(&ep, "config"), c) {
                    Some(p) => Some(p),
                    None if is_optional && !is_known(&c.type_url) => continue,
                    None => {
                        reject_unknown(cx, &join(&ep, "config"), c);
                        continue;
                    }
                },
            };
            mf::FilterSetting { disabled, policy }
        } else {
            match filter_policy(cx, &ep, any) {
                Some(p) => mf::FilterSetting {
                    disabled: false,
                    policy: Some(p),
                },
                None => {
                    reject_unknown(cx, &ep, any);
                    continue;
                }
            }
        };
        out.insert(name.clone(), setting);
    }
    out
}

fn is_known(type_url: &str) -> bool {
    [
        FAULT_URL,
        CORS_POLICY_URL,
        RATE_LIMIT_URL,
        GLOBAL_RATE_LIMIT_ROUTE_URL,
        JWT_ROUTE_URL,
        EXT_AUTHZ_ROUTE_URL,
        EXT_PROC_ROUTE_URL,
        COMPRESSOR_ROUTE_URL,
        API_KEY_ROUTE_URL,
        BASIC_AUTH_ROUTE_URL,
        CSRF_URL,
        RBAC_ROUTE_URL,
        SESSION_ROUTE_URL,
    ]
    .contains(&type_url)
}

fn reject_unknown(cx: &mut Cx, p: &str, any: &protobuf::Any) {
    if !is_known(&any.type_url) {
        cx.reject(
            p,
            Reason::UnsupportedValue(format!("per-route settings of type `{}`", any.type_url)),
        );
    }
}

/// A known per-route settings message; `None` (and a rejection when it was known but bad)
/// otherwise.
fn filter_policy(cx: &mut Cx, p: &str, any: &protobuf::Any) -> Option<mf::FilterPolicy> {
    match any.type_url.as_str() {
        FAULT_URL => {
            let f = cx.decode::<ext::HttpFault>(p, FAULT_URL, &any.value)?;
            Some(mf::FilterPolicy::Fault(Arc::new(fault_policy(cx, p, &f)?)))
        }
        CORS_POLICY_URL => {
            let c = cx.decode::<ext::CorsPolicy>(p, CORS_POLICY_URL, &any.value)?;
            Some(mf::FilterPolicy::Cors(Arc::new(cors_policy(cx, p, &c)?)))
        }
        RATE_LIMIT_URL => {
            let r = cx.decode::<ext::LocalRateLimit>(p, RATE_LIMIT_URL, &any.value)?;
            let policy = rate_limit_policy(cx, p, &r, true)?;
            Some(mf::FilterPolicy::LocalRateLimit(Arc::new(policy)))
        }
        CSRF_URL => {
            let c = cx.decode::<ext::CsrfPolicy>(p, CSRF_URL, &any.value)?;
            Some(mf::FilterPolicy::Csrf(Arc::new(csrf_policy(cx, p, &c)?)))
        }
        API_KEY_ROUTE_URL => {
            let a = cx.decode::<ext::ApiKeyAuthPerRoute>(p, API_KEY_ROUTE_URL, &any.value)?;
            let keys = api_keys(cx, p, &a.credentials)?;
            let sources = api_key_sources(cx, p, &a.key_sources)?;
            let forwarding = api_key_forwarding(cx, p, a.forwarding.as_ref())?;
            Some(mf::FilterPolicy::ApiKeyAuth(Arc::new(
                mf::ApiKeyAuthRoute {
                    keys,
                    sources,
                    allowed_clients: a.allowed_clients.clone(),
                    forwarding,
                },
            )))
        }
        COMPRESSOR_ROUTE_URL => {
            let r = cx.decode::<ext::CompressorPerRoute>(p, COMPRESSOR_ROUTE_URL, &any.value)?;
            super::compressor::compressor_route(cx, p, &r)
        }
        EXT_AUTHZ_ROUTE_URL => {
            let r = cx.decode::<ext::ExtAuthzPerRoute>(p, EXT_AUTHZ_ROUTE_URL, &any.value)?;
            super::ext_authz::ext_authz_route(cx, p, &r)
        }
        EXT_PROC_ROUTE_URL => {
            let r = cx.decode::<ext::ExtProcPerRoute>(p, EXT_PROC_ROUTE_URL, &any.value)?;
            super::ext_proc::ext_proc_route(cx, p, &r)
        }
        JWT_ROUTE_URL => {
            let r = cx.decode::<ext::JwtPerRoute>(p, JWT_ROUTE_URL, &any.value)?;
            let route = super::jwt::jwt_per_route(cx, p, &r)?;
            Some(mf::FilterPolicy::Jwt(Arc::new(route)))
        }
        GLOBAL_RATE_LIMIT_ROUTE_URL => {
            let r =
                cx.decode::<ext::RateLimitPerRoute>(p, GLOBAL_RATE_LIMIT_ROUTE_URL, &any.value)?;
            Some(mf::FilterPolicy::RateLimit(Arc::new(
                global_rate_limit_route(cx, p, &r)?,
            )))
        }
        BASIC_AUTH_ROUTE_URL => {
            let b = cx.decode::<ext::BasicAuthPerRoute>(p, BASIC_AUTH_ROUTE_URL, &any.value)?;
            let users = match &b.users {
                Some(u) => htpasswd(cx, &join(p, "users"), u)?,
                None => {
                    cx.reject(join(p, "users"), Reason::Missing);
                    return None;
                }
            };
            Some(mf::FilterPolicy::BasicAuth(Arc::new(users)))
        }
        SESSION_ROUTE_URL => {
            let r = cx.decode::<ext::StatefulSessionPerRoute>(p, SESSION_ROUTE_URL, &any.value)?;
            let policy = match (r.disabled, &r.stateful_session) {
                (Some(true), None) => None,
                (None, Some(st)) => match session_policy(cx, &join(p, "stateful_session"), st)? {
                    Some(policy) => Some(Arc::new(policy)),
                    None => {
                        cx.reject(
                            join(&join(p, "stateful_session"), "session_state"),
                            Reason::Missing,
                        );
                        return None;
                    }
                },
                // Envoy's validation: `disabled` must be true; one of the two is required.
                (Some(false), None) => {
                    cx.reject(join(p, "disabled"), Reason::Invalid("must be true".into()));
                    return None;
                }
                _ => {
                    cx.reject(
                        p,
                        Reason::Invalid("one of `disabled` and `stateful_session`".into()),
                    );
                    return None;
                }
            };
            Some(mf::FilterPolicy::StatefulSession(policy))
        }
        RBAC_ROUTE_URL => {
            let r = cx.decode::<ext::HttpRbacPerRoute>(p, RBAC_ROUTE_URL, &any.value)?;
            // Without `rbac`, the filter enforces nothing on this route.
            let config = match &r.rbac {
                Some(rbac) => super::rbac::http_rbac(cx, &join(p, "rbac"), rbac)?,
                None => Default::default(),
            };
            Some(mf::FilterPolicy::Rbac(Arc::new(config)))
        }
        _ => None,
    }
}

/// A token bucket (`type.v3.TokenBucket`).
fn bucket_of(
    cx: &mut Cx,
    bp: &str,
    b: &xds_api::pb::envoy::r#type::v3::TokenBucket,
) -> Option<mf::TokenBucket> {
    let interval = match &b.fill_interval {
        Some(d) => cx.duration(&join(bp, "fill_interval"), d),
        None => {
            cx.reject(join(bp, "fill_interval"), Reason::Missing);
            None
        }
    };
    if interval.is_some_and(|i| i < MIN_FILL_INTERVAL) {
        cx.reject(
            join(bp, "fill_interval"),
            Reason::Invalid("must be at least 50ms (Envoy's limit)".into()),
        );
    }
    let per_fill = b.tokens_per_fill.as_ref().map_or(1, |v| v.value);
    if per_fill == 0 {
        cx.reject(
            join(bp, "tokens_per_fill"),
            Reason::Invalid("must be above 0".into()),
        );
    }
    interval.map(|i| mf::TokenBucket::new(b.max_tokens, per_fill, i))
}

/// A local rate limit's `descriptors`.
fn descriptor_limits(
    cx: &mut Cx,
    p: &str,
    list: &[xds_api::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor],
) -> Vec<mf::DescriptorLimit> {
    let mut out: Vec<mf::DescriptorLimit> = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let dp = idx(p, "descriptors", i);
        if d.entries.is_empty() {
            cx.reject(join(&dp, "entries"), Reason::Missing);
            continue;
        }
        let mut ok = true;
        for (j, e) in d.entries.iter().enumerate() {
            let ep = idx(&dp, "entries", j);
            if e.key.is_empty() {
                cx.reject(join(&ep, "key"), Reason::Missing);
                ok = false;
            }
            // Envoy's newer wildcard entries (a bucket per value seen): not yet.
            if e.value.is_empty() {
                cx.reject(
                    join(&ep, "value"),
                    Reason::UnsupportedValue("an empty value (a wildcard entry)".into()),
                );
                ok = false;
            }
        }
        let entries: Vec<(String, String)> = d
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        if out.iter().any(|o| o.entries == entries) {
            cx.reject(
                dp.clone(),
                Reason::Invalid("the same entries as an earlier descriptor".into()),
            );
            ok = false;
        }
        let bucket = match &d.token_bucket {
            Some(b) => bucket_of(cx, &join(&dp, "token_bucket"), b),
            None => {
                cx.reject(join(&dp, "token_bucket"), Reason::Missing);
                None
            }
        };
        if let (true, Some(bucket)) = (ok, bucket) {
            out.push(mf::DescriptorLimit { entries, bucket });
        }
    }
    out
}

/// A stateful session's settings: `Ok(None)` when it has no `session_state` (then the
/// filter does nothing, as in Envoy).
fn session_policy(
    cx: &mut Cx,
    p: &str,
    st: &ext::StatefulSession,
) -> Option<Option<mf::SessionPolicy>> {
    let ext::StatefulSession {
        session_state,
        strict,
        // Myelin has no per-filter stats.
        stat_prefix: _,
    } = st;
    let Some(state) = session_state else {
        return Some(None);
    };
    let sp = join(p, "session_state");
    let Some(any) = &state.typed_config else {
        cx.reject(join(&sp, "typed_config"), Reason::Missing);
        return None;
    };
    let tp = join(&sp, "typed_config");
    let state = match any.type_url.as_str() {
        COOKIE_STATE_URL => {
            let c = cx.decode::<ext::CookieSessionState>(&tp, COOKIE_STATE_URL, &any.value)?;
            let Some(cookie) = &c.cookie else {
                cx.reject(join(&tp, "cookie"), Reason::Missing);
                return None;
            };
            let cp = join(&tp, "cookie");
            if cookie.name.is_empty() || !cookie.name.bytes().all(is_token) {
                cx.reject(
                    join(&cp, "name"),
                    Reason::Invalid(format!("{:?} is not a cookie name", cookie.name)),
                );
                return None;
            }
            // `0s` (or none): a session cookie.
            let ttl = cx.timeout(&join(&cp, "ttl"), &cookie.ttl, None);
            mf::SessionState::Cookie {
                name: cookie.name.clone(),
                path: cookie.path.clone(),
                ttl,
                attributes: cookie
                    .attributes
                    .iter()
                    .map(|a| (a.name.clone(), a.value.clone()))
                    .collect(),
            }
        }
        HEADER_STATE_URL => {
            let h = cx.decode::<ext::HeaderSessionState>(&tp, HEADER_STATE_URL, &any.value)?;
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                cx.reject(
                    join(&tp, "name"),
                    Reason::Invalid(format!("{:?} is not a header name", h.name)),
                );
                return None;
            }
            mf::SessionState::Header {
                name: h.name.to_ascii_lowercase(),
            }
        }
        other => {
            cx.reject(
                tp,
                Reason::UnsupportedValue(format!("session state `{other}`")),
            );
            return None;
        }
    };
    Some(Some(mf::SessionPolicy {
        state,
        strict: *strict,
    }))
}

/// A byte of an HTTP token (RFC 9110), as a cookie name must be.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The health check filter (`HealthCheck`).
fn health_check(cx: &mut Cx, p: &str, h: &ext::HealthCheckFilter) -> Option<mf::HealthCheckFilter> {
    let ext::HealthCheckFilter {
        pass_through_mode,
        cache_time,
        cluster_min_healthy_percentages,
        headers,
    } = h;
    let before = cx.errs.len();
    let Some(pass_through) = pass_through_mode.as_ref().map(|b| b.value) else {
        cx.reject(join(p, "pass_through_mode"), Reason::Missing);
        return None;
    };
    // Upstream health answers cached for a while: Myelin routes every check.
    cx.unsupported(p, "cache_time", cache_time);
    let headers: Vec<_> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, m)| route::header_matcher(cx, &idx(p, "headers", i), m))
        .collect();
    let mut clusters: Vec<_> = cluster_min_healthy_percentages.iter().collect();
    clusters.sort_unstable_by_key(|(name, _)| *name);
    let mut cluster_min_healthy = Vec::with_capacity(clusters.len());
    for (name, pct) in clusters {
        if !(0.0..=100.0).contains(&pct.value) {
            cx.reject(
                format!("{}[{name:?}]", join(p, "cluster_min_healthy_percentages")),
                Reason::Invalid(format!("{} is not a percentage", pct.value)),
            );
            continue;
        }
        cluster_min_healthy.push((name.clone(), pct.value));
    }
    (cx.errs.len() == before).then_some(mf::HealthCheckFilter {
        pass_through,
        headers,
        cluster_min_healthy,
    })
}

/// A CSRF policy (the filter's and per route alike).
fn csrf_policy(cx: &mut Cx, p: &str, c: &ext::CsrfPolicy) -> Option<mf::CsrfPolicy> {
    let ext::CsrfPolicy {
        filter_enabled,
        shadow_enabled,
        additional_origins,
    } = c;
    let Some(enabled) = runtime_fraction(cx, &join(p, "filter_enabled"), filter_enabled.as_ref())
    else {
        cx.reject(join(p, "filter_enabled"), Reason::Missing);
        return None;
    };
    Some(mf::CsrfPolicy {
        filter_enabled: enabled,
        shadow_enabled: runtime_fraction(cx, &join(p, "shadow_enabled"), shadow_enabled.as_ref()),
        additional_origins: origins(cx, p, "additional_origins", additional_origins),
    })
}

/// The basic auth filter (`BasicAuth`).
fn basic_auth(cx: &mut Cx, p: &str, b: &ext::BasicAuth) -> Option<mf::BasicAuthPolicy> {
    let ext::BasicAuth {
        users,
        forward_username_header,
        authentication_header,
    } = b;
    let header = |cx: &mut Cx, field: &str, v: &str| -> Result<Option<String>, ()> {
        if v.is_empty() {
            return Ok(None);
        }
        match http::HeaderName::from_bytes(v.as_bytes()) {
            Ok(h) => Ok(Some(h.as_str().to_owned())),
            Err(_) => {
                cx.reject(
                    join(p, field),
                    Reason::Invalid(format!("{v:?} is not a header name")),
                );
                Err(())
            }
        }
    };
    let forward = header(cx, "forward_username_header", forward_username_header);
    let auth = header(cx, "authentication_header", authentication_header);
    // Envoy reads no users as none: every request is refused.
    let users = match users {
        Some(u) => htpasswd(cx, &join(p, "users"), u)?,
        None => mf::BasicAuthUsers(Default::default()),
    };
    Some(mf::BasicAuthPolicy {
        users: Arc::new(users),
        forward_username_header: forward.ok()?,
        authentication_header: auth.ok()?,
    })
}

/// Users of an htpasswd file given inline, as Envoy reads them: `name:{SHA}<base64 of the
/// password's SHA-1>` per line, empty lines and `#` comments skipped, names once.
/// API key `credentials`: each key and client required, no key twice (Envoy's
/// "Duplicated credential key").
fn api_keys(cx: &mut Cx, p: &str, list: &[ext::ApiKeyCredential]) -> Option<mf::ApiKeys> {
    let errors = cx.errs.len();
    let mut keys = std::collections::BTreeMap::new();
    for (i, c) in list.iter().enumerate() {
        let cp = idx(p, "credentials", i);
        if c.key.is_empty() {
            cx.reject(join(&cp, "key"), Reason::Missing);
        } else if c.client.is_empty() {
            cx.reject(join(&cp, "client"), Reason::Missing);
        } else if keys.insert(c.key.clone(), c.client.clone()).is_some() {
            // The key itself is a secret: not repeated in the message.
            cx.reject(
                join(&cp, "key"),
                Reason::Invalid("the same key as an earlier credential".into()),
            );
        }
    }
    (cx.errs.len() == errors).then_some(mf::ApiKeys(keys))
}

/// API key `key_sources`: one of `header`, `query`, `cookie` each.
fn api_key_sources(
    cx: &mut Cx,
    p: &str,
    list: &[ext::ApiKeySource],
) -> Option<Vec<mf::ApiKeySource>> {
    let errors = cx.errs.len();
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let sp = idx(p, "key_sources", i);
        // Envoy takes the first of the three that is set.
        if !s.header.is_empty() {
            match http::HeaderName::from_bytes(s.header.to_ascii_lowercase().as_bytes()) {
                Ok(n) => out.push(mf::ApiKeySource::Header(n.as_str().to_owned())),
                Err(_) => cx.reject(
                    join(&sp, "header"),
                    Reason::Invalid(format!("{:?} is not a header name", s.header)),
                ),
            }
        } else if !s.query.is_empty() {
            out.push(mf::ApiKeySource::Query(s.query.clone()));
        } else if !s.cookie.is_empty() {
            out.push(mf::ApiKeySource::Cookie(s.cookie.clone()));
        } else {
            cx.reject(
                sp,
                Reason::Invalid("one of `header`, `query` and `cookie`".into()),
            );
        }
    }
    (cx.errs.len() == errors).then_some(out)
}

/// API key `forwarding`.
fn api_key_forwarding(
    cx: &mut Cx,
    p: &str,
    f: Option<&ext::ApiKeyForwarding>,
) -> Option<mf::ApiKeyForwarding> {
    let Some(f) = f else {
        return Some(mf::ApiKeyForwarding::default());
    };
    let header = match f.header.as_str() {
        "" => None,
        h => match http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(n) => Some(n.as_str().to_owned()),
            Err(_) => {
                cx.reject(
                    join(&join(p, "forwarding"), "header"),
                    Reason::Invalid(format!("{h:?} is not a header name")),
                );
                return None;
            }
        },
    };
    Some(mf::ApiKeyForwarding {
        header,
        hide_credentials: f.hide_credentials,
    })
}

/// The text of an inline `DataSource` (a file or a variable is not read by the
/// converter: rejected).
pub(super) fn inline_text(cx: &mut Cx, p: &str, d: &core::DataSource) -> Option<String> {
    use core::data_source::Specifier as S;
    match &d.specifier {
        Some(S::InlineBytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(S::InlineString(t)) => Some(t.clone()),
        Some(S::Filename(_)) => {
            cx.reject(join(p, "filename"), Reason::NotSupported);
            None
        }
        Some(S::EnvironmentVariable(_)) => {
            cx.reject(join(p, "environment_variable"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(p, Reason::Missing);
            None
        }
    }
}

fn htpasswd(cx: &mut Cx, p: &str, d: &core::DataSource) -> Option<mf::BasicAuthUsers> {
    let text = inline_text(cx, p, d)?;
    let mut users = std::collections::BTreeMap::new();
    let mut ok = true;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut bad = |why: String| {
            cx.reject(p, Reason::Invalid(format!("line {}: {why}", i + 1)));
            ok = false;
        };
        let Some((name, hash)) = line.split_once(':') else {
            bad("`user:password` is expected".into());
            continue;
        };
        if name.is_empty() || hash.is_empty() {
            bad("empty user name or password".into());
            continue;
        }
        let Some(sha) = hash.strip_prefix("{SHA}") else {
            bad(format!(
                "{name:?} is not a {{SHA}} entry (the only kind Envoy takes)"
            ));
            continue;
        };
        if sha.len() != 28 {
            bad(format!(
                "{name:?}: a {{SHA}} hash is 28 characters of base64"
            ));
            continue;
        }
        if users.insert(name.to_owned(), sha.to_owned()).is_some() {
            bad(format!("{name:?} is listed twice"));
        }
    }
    ok.then_some(mf::BasicAuthUsers(users))
}

/// A `FractionalPercent`; unset is none of the requests (Envoy's proto default).
pub(super) fn fraction(cx: &mut Cx, p: &str, f: Option<&FractionalPercent>) -> mf::Fraction {
    let Some(f) = f else {
        return mf::Fraction::NONE;
    };
    let denominator = match DenominatorType::try_from(f.denominator) {
        Ok(DenominatorType::Hundred) => 100,
        Ok(DenominatorType::TenThousand) => 10_000,
        Ok(DenominatorType::Million) => 1_000_000,
        Err(_) => {
            cx.reject(
                join(p, "denominator"),
                Reason::Invalid(format!("unknown value {}", f.denominator)),
            );
            100
        }
    };
    mf::Fraction {
        numerator: f.numerator,
        denominator,
    }
}

pub(super) fn runtime_fraction(
    cx: &mut Cx,
    p: &str,
    f: Option<&core::RuntimeFractionalPercent>,
) -> Option<mf::Fraction> {
    // The runtime key names a value Myelin's (absent) runtime never has: the default
    // applies, as in an Envoy whose runtime lacks the key.
    f.map(|f| fraction(cx, &join(p, "default_value"), f.default_value.as_ref()))
}

fn fault_policy(cx: &mut Cx, p: &str, f: &ext::HttpFault) -> Option<mf::FaultPolicy> {
    let ext::HttpFault {
        delay,
        abort,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        response_rate_limit,
        delay_percent_runtime: _,
        abort_percent_runtime: _,
        delay_duration_runtime: _,
        abort_http_status_runtime: _,
        max_active_faults_runtime: _,
        response_rate_limit_percent_runtime: _,
        abort_grpc_status_runtime: _,
        disable_downstream_cluster_stats: _,
        filter_metadata,
    } = f;
    cx.unsupported(p, "response_rate_limit", response_rate_limit);
    cx.unsupported(p, "filter_metadata", filter_metadata);
    let delay = delay.as_ref().and_then(|d| {
        let dp = join(p, "delay");
        let duration = match (&d.fixed_delay, &d.header_delay) {
            (Some(t), None) => {
                let t = cx.duration(&join(&dp, "fixed_delay"), t)?;
                if t.is_zero() {
                    cx.reject(
                        join(&dp, "fixed_delay"),
                        Reason::Invalid("must be above 0".into()),
                    );
                    return None;
                }
                mf::DelaySource::Fixed(t)
            }
            (None, Some(_)) => mf::DelaySource::Header,
            _ => {
                cx.reject(
                    &dp,
                    Reason::Invalid(
                        "exactly one of `fixed_delay` or `header_delay` is required".into(),
                    ),
                );
                return None;
            }
        };
        Some(mf::FaultDelay {
            duration,
            percentage: fraction(cx, &join(&dp, "percentage"), d.percentage.as_ref()),
        })
    });
    let abort = abort.as_ref().and_then(|a| {
        let ap = join(p, "abort");
        let status = match (a.http_status, a.grpc_status, &a.header_abort) {
            (Some(s), None, None) => match s {
                200..=599 => mf::AbortStatus::Http(s as u16),
                _ => {
                    cx.reject(
                        join(&ap, "http_status"),
                        Reason::Invalid(format!("{s} is not in 200..=599")),
                    );
                    return None;
                }
            },
            (None, Some(g), None) => mf::AbortStatus::Grpc(g),
            (None, None, Some(_)) => mf::AbortStatus::Header,
            _ => {
                cx.reject(
                    &ap,
                    Reason::Invalid(
                        "exactly one of `http_status`, `grpc_status` or `header_abort` is required"
                            .into(),
                    ),
                );
                return None;
            }
        };
        Some(mf::FaultAbort {
            status,
            percentage: fraction(cx, &join(&ap, "percentage"), a.percentage.as_ref()),
        })
    });
    let headers = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| route::header_matcher(cx, &idx(p, "headers", i), h))
        .collect::<Vec<_>>();
    if headers.len() != f.headers.len() {
        return None;
    }
    Some(mf::FaultPolicy {
        delay,
        abort,
        upstream_cluster: (!upstream_cluster.is_empty()).then(|| upstream_cluster.clone()),
        headers,
        downstream_nodes: downstream_nodes.clone(),
        max_active_faults: max_active_faults.as_ref().map(|v| v.value),
    })
}

/// The shortest fill interval Envoy takes (`local_ratelimit`: "must be >= 50ms").
const MIN_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// A `LocalRateLimit`; `per_route` settings must have a token bucket (Envoy's rule: a
/// route's settings exist to bring one).
fn rate_limit_policy(
    cx: &mut Cx,
    p: &str,
    r: &ext::LocalRateLimit,
    per_route: bool,
) -> Option<mf::RateLimitPolicy> {
    let ext::LocalRateLimit {
        stat_prefix,
        status,
        token_bucket,
        filter_enabled,
        filter_enforced,
        response_headers_to_add,
        descriptors,
        stage,
        request_headers_to_add_when_not_enforced,
        local_rate_limit_per_downstream_connection,
        enable_x_ratelimit_headers,
        vh_rate_limits,
        always_consume_default_token_bucket,
        rate_limited_as_resource_exhausted,
        local_cluster_rate_limit,
        rate_limits,
    } = r;
    let errors = cx.errs.len();
    if stat_prefix.is_empty() {
        cx.reject(join(p, "stat_prefix"), Reason::Missing);
    }
    let descriptors = descriptor_limits(cx, p, descriptors);
    if *stage > 10 {
        cx.reject(join(p, "stage"), Reason::Invalid("at most 10".into()));
    }
    let vh_rate_limits = vh_option(cx, p, *vh_rate_limits);
    // The filter's own: in place of the route's and the virtual host's.
    let rate_limits = route::filter_rate_limits(cx, p, rate_limits, route::RateLimitsOf::Local);
    cx.unsupported(p, "local_cluster_rate_limit", local_cluster_rate_limit);
    let x_ratelimit_headers = x_ratelimit_headers(cx, p, *enable_x_ratelimit_headers);
    let bucket = match token_bucket {
        Some(b) => bucket_of(cx, &join(p, "token_bucket"), b),
        None if per_route => {
            cx.reject(
                join(p, "token_bucket"),
                Reason::Invalid("required in per-route settings".into()),
            );
            None
        }
        None => None,
    };
    let response_headers_to_add = super::common::header_value_options(
        cx,
        p,
        "response_headers_to_add",
        response_headers_to_add,
    );
    let request_headers = super::common::header_value_options(
        cx,
        p,
        "request_headers_to_add_when_not_enforced",
        request_headers_to_add_when_not_enforced,
    );
    if cx.errs.len() != errors {
        return None;
    }
    // Envoy answers 429 for an unset status or one below 400.
    let status = status
        .as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(429);
    Some(mf::RateLimitPolicy {
        stat_prefix: stat_prefix.as_str().into(),
        status,
        bucket,
        filter_enabled: runtime_fraction(cx, &join(p, "filter_enabled"), filter_enabled.as_ref())
            .unwrap_or(mf::Fraction::NONE),
        filter_enforced: runtime_fraction(
            cx,
            &join(p, "filter_enforced"),
            filter_enforced.as_ref(),
        )
        .unwrap_or(mf::Fraction::NONE),
        request_headers_to_add_when_not_enforced: request_headers,
        response_headers_to_add,
        per_connection: *local_rate_limit_per_downstream_connection,
        x_ratelimit_headers,
        grpc_resource_exhausted: *rate_limited_as_resource_exhausted,
        descriptors,
        rate_limits,
        stage: *stage,
        vh_rate_limits,
        always_consume_default: always_consume_default_token_bucket
            .as_ref()
            .is_none_or(|b| b.value),
    })
}

/// `enable_x_ratelimit_headers` of a rate limit filter: `OFF` or `DRAFT_VERSION_03`.
fn x_ratelimit_headers(cx: &mut Cx, p: &str, v: i32) -> bool {
    match v {
        0 => false,
        1 => true,
        v => {
            cx.reject(
                join(p, "enable_x_ratelimit_headers"),
                Reason::Invalid(format!("unknown value {v}")),
            );
            false
        }
    }
}

/// `vh_rate_limits` of a rate limit filter or its route settings.
fn vh_option(cx: &mut Cx, p: &str, v: i32) -> mf::VhRateLimits {
    match v {
        0 => mf::VhRateLimits::Override,
        1 => mf::VhRateLimits::Include,
        2 => mf::VhRateLimits::Ignore,
        v => {
            cx.reject(
                join(p, "vh_rate_limits"),
                Reason::Invalid(format!("unknown value {v}")),
            );
            mf::VhRateLimits::Override
        }
    }
}

/// The global rate limit filter (`envoy.extensions.filters.http.ratelimit.v3.RateLimit`).
fn global_rate_limit(
    cx: &mut Cx,
    p: &str,
    r: &ext::HttpRateLimit,
) -> Option<mf::GlobalRateLimitPolicy> {
    let ext::HttpRateLimit {
        domain,
        stage,
        request_type,
        timeout,
        failure_mode_deny,
        rate_limited_as_resource_exhausted,
        rate_limit_service,
        enable_x_ratelimit_headers,
        disable_x_envoy_ratelimited_header,
        rate_limited_status,
        response_headers_to_add,
        status_on_error,
        stat_prefix,
        filter_enabled,
        filter_enforced,
        failure_mode_deny_percent,
        rate_limits,
    } = r;
    let errors = cx.errs.len();
    if domain.is_empty() {
        cx.reject(join(p, "domain"), Reason::Missing);
    }
    if *stage > 10 {
        cx.reject(join(p, "stage"), Reason::Invalid("at most 10".into()));
    }
    let request_type = match request_type.as_str() {
        "" | "both" => mf::RequestType::Both,
        "internal" => mf::RequestType::Internal,
        "external" => mf::RequestType::External,
        other => {
            cx.reject(
                join(p, "request_type"),
                Reason::Invalid(format!(
                    "{other:?}: one of \"internal\", \"external\", \"both\""
                )),
            );
            mf::RequestType::Both
        }
    };
    let timeout = match timeout {
        Some(d) => cx.duration(&join(p, "timeout"), d),
        None => Some(std::time::Duration::from_millis(20)),
    };
    let service = match rate_limit_service {
        Some(s) => rate_limit_service_of(cx, &join(p, "rate_limit_service"), s),
        None => {
            cx.reject(join(p, "rate_limit_service"), Reason::Missing);
            None
        }
    };
    let x_ratelimit_headers = x_ratelimit_headers(cx, p, *enable_x_ratelimit_headers);
    let response_headers_to_add = super::common::header_value_options(
        cx,
        p,
        "response_headers_to_add",
        response_headers_to_add,
    );
    let rate_limits = route::filter_rate_limits(cx, p, rate_limits, route::RateLimitsOf::Global);
    let deny = if *failure_mode_deny {
        mf::Fraction::ALL
    } else {
        mf::Fraction::NONE
    };
    let failure_mode_deny = runtime_fraction(
        cx,
        &join(p, "failure_mode_deny_percent"),
        failure_mode_deny_percent.as_ref(),
    )
    .unwrap_or(deny);
    let filter_enabled = runtime_fraction(cx, &join(p, "filter_enabled"), filter_enabled.as_ref())
        .unwrap_or(mf::Fraction::ALL);
    let filter_enforced =
        runtime_fraction(cx, &join(p, "filter_enforced"), filter_enforced.as_ref())
            .unwrap_or(mf::Fraction::ALL);
    if cx.errs.len() != errors {
        return None;
    }
    // Envoy's rules: a limited status below 400 is 429, an error status outside 100..=511
    // is 500.
    let code = |s: &Option<xds_api::pb::envoy::r#type::v3::HttpStatus>| {
        s.as_ref().and_then(|s| u16::try_from(s.code).ok())
    };
    let status = code(rate_limited_status)
        .filter(|c| (400..600).contains(c))
        .unwrap_or(429);
    let status_on_error = code(status_on_error)
        .filter(|c| (100..=511).contains(c))
        .unwrap_or(500);
    Some(mf::GlobalRateLimitPolicy {
        domain: domain.clone(),
        stage: *stage,
        request_type,
        service: service?,
        timeout: timeout?,
        failure_mode_deny,
        status,
        status_on_error,
        grpc_resource_exhausted: *rate_limited_as_resource_exhausted,
        x_ratelimit_headers,
        x_envoy_ratelimited: !*disable_x_envoy_ratelimited_header,
        response_headers_to_add,
        stat_prefix: stat_prefix.as_str().into(),
        filter_enabled,
        filter_enforced,
        rate_limits,
    })
}

/// A `RateLimitServiceConfig`: gRPC (`envoy_grpc`) to a cluster, API v3.
fn rate_limit_service_of(
    cx: &mut Cx,
    p: &str,
    s: &xds_api::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig,
) -> Option<mf::GrpcService> {
    api_v3(cx, p, s.transport_api_version);
    let gp = join(p, "grpc_service");
    let Some(g) = &s.grpc_service else {
        cx.reject(gp, Reason::Missing);
        return None;
    };
    // The filter's `timeout` bounds the call.
    grpc_service_of(cx, &gp, g)
}

/// A `transport_api_version`: `AUTO` (0) and `V2` (1) are gone from Envoy; `V3` is 2.
pub(super) fn api_v3(cx: &mut Cx, p: &str, version: i32) {
    if version != 2 {
        cx.reject(
            join(p, "transport_api_version"),
            Reason::Invalid("must be V3".into()),
        );
    }
}

/// Headers a gRPC call carries (`initial_metadata`, `grpc_initial_metadata`): lower-case
/// names and plain values.
pub(super) fn metadata_of(
    cx: &mut Cx,
    p: &str,
    field: &str,
    headers: &[core::HeaderValue],
) -> Vec<(String, String)> {
    let mut metadata = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        let hp = idx(p, field, i);
        let name_ok = !h.key.is_empty()
            && http::HeaderName::from_bytes(h.key.as_bytes()).is_ok_and(|n| n.as_str() == h.key);
        let value_ok = h.raw_value.is_empty() && http::HeaderValue::from_str(&h.value).is_ok();
        if !name_ok {
            cx.reject(
                join(&hp, "key"),
                Reason::Invalid("a lower-case header name".into()),
            );
        } else if !value_ok {
            cx.reject(
                join(&hp, "value"),
                Reason::Invalid("a header value (raw_value not supported)".into()),
            );
        } else {
            metadata.push((h.key.clone(), h.value.clone()));
        }
    }
    metadata
}

/// A `GrpcService` to a cluster (`envoy_grpc`), without its `timeout` (each filter reads
/// that its own way).
pub(super) fn grpc_service_of(
    cx: &mut Cx,
    gp: &str,
    g: &core::GrpcService,
) -> Option<mf::GrpcService> {
    use core::grpc_service::TargetSpecifier as T;
    let core::GrpcService {
        timeout: _,
        initial_metadata,
        retry_policy,
        target_specifier,
    } = g;
    cx.unsupported(gp, "retry_policy", retry_policy);
    let metadata = metadata_of(cx, gp, "initial_metadata", initial_metadata);
    match target_specifier {
        Some(T::EnvoyGrpc(e)) => {
            let ep = join(gp, "envoy_grpc");
            cx.unsupported(&ep, "retry_policy", &e.retry_policy);
            cx.unsupported(
                &ep,
                "max_receive_message_length",
                &e.max_receive_message_length,
            );
            if e.cluster_name.is_empty() {
                cx.reject(join(&ep, "cluster_name"), Reason::Missing);
                return None;
            }
            // Unset: the cluster's name, as Envoy sends it. Where that is no authority an
            // HTTP/2 request can carry (Istio's `outbound|9000||host` names), the service
            // it names (`host:9000`), else the name with its other characters as `-`.
            let authority = if e.authority.is_empty() {
                let name = &e.cluster_name;
                let parts: Vec<&str> = name.split('|').collect();
                if http::uri::Authority::try_from(name.as_str()).is_ok() {
                    name.clone()
                } else if let [_, port, _, host] = parts[..] {
                    format!("{host}:{port}")
                } else {
                    name.chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || "-._~:".contains(c) {
                                c
                            } else {
                                '-'
                            }
                        })
                        .collect()
                }
            } else {
                e.authority.clone()
            };
            if http::uri::Authority::try_from(authority.as_str()).is_err() {
                cx.reject(
                    join(&ep, "authority"),
                    Reason::Invalid(format!("{authority:?} is not an authority")),
                );
                return None;
            }
            Some(mf::GrpcService {
                cluster: e.cluster_name.clone(),
                authority,
                metadata,
            })
        }
        Some(T::GoogleGrpc(_)) => {
            cx.reject(join(gp, "google_grpc"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(join(gp, "envoy_grpc"), Reason::Missing);
            None
        }
    }
}

/// A route's settings for the global rate limit filter (`RateLimitPerRoute`).
fn global_rate_limit_route(
    cx: &mut Cx,
    p: &str,
    r: &ext::RateLimitPerRoute,
) -> Option<mf::GlobalRateLimitRoute> {
    let ext::RateLimitPerRoute {
        vh_rate_limits: vh,
        override_option,
        rate_limits,
        domain,
    } = r;
    let errors = cx.errs.len();
    let vh = vh_option(cx, p, *vh);
    // Not implemented in Envoy either (`[#not-implemented-hide:]`).
    cx.unsupported(p, "override_option", override_option);
    let rate_limits = route::filter_rate_limits(cx, p, rate_limits, route::RateLimitsOf::Global);
    if cx.errs.len() != errors {
        return None;
    }
    Some(mf::GlobalRateLimitRoute {
        vh_rate_limits: vh,
        rate_limits,
        domain: (!domain.is_empty()).then(|| domain.clone()),
    })
}

fn header_text(cx: &mut Cx, p: &str, field: &str, s: &str) -> Option<HeaderText> {
    if s.is_empty() {
        return None;
    }
    let t = HeaderText::new(s);
    if t.is_none() {
        cx.reject(
            join(p, field),
            Reason::Invalid(format!("{s:?} is not a header value")),
        );
    }
    t
}

fn origins(
    cx: &mut Cx,
    p: &str,
    field: &str,
    list: &[xds_api::pb::envoy::r#type::matcher::v3::StringMatcher],
) -> Vec<myelin_proxy::model::StringMatcher> {
    list.iter()
        .enumerate()
        .filter_map(|(i, m)| string_matcher(cx, &idx(p, field, i), m))
        .collect()
}

fn cors_policy(cx: &mut Cx, p: &str, c: &ext::CorsPolicy) -> Option<mf::CorsPolicy> {
    let ext::CorsPolicy {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        filter_enabled,
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
    } = c;
    Some(mf::CorsPolicy {
        allow_origin: origins(
            cx,
            p,
            "allow_origin_string_match",
            allow_origin_string_match,
        ),
        allow_methods: header_text(cx, p, "allow_methods", allow_methods),
        allow_headers: header_text(cx, p, "allow_headers", allow_headers),
        expose_headers: header_text(cx, p, "expose_headers", expose_headers),
        max_age: header_text(cx, p, "max_age", max_age),
        allow_credentials: allow_credentials.as_ref().map(|b| b.value),
        allow_private_network_access: allow_private_network_access.as_ref().map(|b| b.value),
        forward_not_matching_preflights: forward_not_matching_preflights.as_ref().map(|b| b.value),
        filter_enabled: runtime_fraction(cx, &join(p, "filter_enabled"), filter_enabled.as_ref()),
        shadow_enabled: runtime_fraction(cx, &join(p, "shadow_enabled"), shadow_enabled.as_ref()),
    })
}

/// The deprecated `cors` of a virtual host or route action (`config.route.v3.CorsPolicy`):
/// the same fields as the CORS filter's `CorsPolicy`, read the same way.
#[allow(deprecated)]
pub(super) fn route_cors(
    cx: &mut Cx,
    p: &str,
    c: &route_pb::CorsPolicy,
) -> Option<Arc<mf::CorsPolicy>> {
    use route_pb::cors_policy::EnabledSpecifier as E;
    let route_pb::CorsPolicy {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
        enabled_specifier,
    } = c;
    let same = ext::CorsPolicy {
        allow_origin_string_match: allow_origin_string_match.clone(),
        allow_methods: allow_methods.clone(),
        allow_headers: allow_headers.clone(),
        expose_headers: expose_headers.clone(),
        max_age: max_age.clone(),
        allow_credentials: *allow_credentials,
        filter_enabled: enabled_specifier
            .as_ref()
            .map(|E::FilterEnabled(f)| f.clone()),
        shadow_enabled: shadow_enabled.clone(),
        allow_private_network_access: *allow_private_network_access,
        forward_not_matching_preflights: *forward_not_matching_preflights,
    };
    cors_policy(cx, p, &same).map(Arc::new)
}

#[cfg(test)]
mod tests;
