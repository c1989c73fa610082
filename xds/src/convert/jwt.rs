//! The JWT authentication filter (`envoy.extensions.filters.http.jwt_authn.v3`) and its
//! per-route settings -> [`myelin_proxy::model::jwt`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use myelin_proxy::model::jwt as mj;
use xds_api::pb::envoy::config::core::v3 as core;

use super::common::string_matcher;
use super::{ext, idx, join, route, Cx, Reason};

/// A `JwtAuthentication`.
pub(super) fn jwt_authentication(
    cx: &mut Cx,
    p: &str,
    j: &ext::JwtAuthentication,
) -> Option<mj::JwtConfig> {
    let ext::JwtAuthentication {
        providers,
        rules,
        filter_state_rules,
        bypass_cors_preflight,
        requirement_map,
        strip_failure_response,
        // Counters are Myelin's own (`myelin_proxy_jwt_authn_total`).
        stat_prefix: _,
    } = j;
    let errors = cx.errs.len();
    cx.unsupported(p, "filter_state_rules", filter_state_rules);
    let mut names: Vec<&String> = providers.keys().collect();
    names.sort();
    let mut out_providers = BTreeMap::new();
    for name in names {
        let pp = format!("{}[\"{name}\"]", join(p, "providers"));
        if let Some(provider) = jwt_provider(cx, &pp, name, &providers[name]) {
            out_providers.insert(name.clone(), Arc::new(provider));
        }
    }
    let mut map_names: Vec<&String> = requirement_map.keys().collect();
    map_names.sort();
    let mut out_map = BTreeMap::new();
    for name in map_names {
        let rp = format!("{}[\"{name}\"]", join(p, "requirement_map"));
        if let Some(r) = requirement(cx, &rp, &requirement_map[name], providers) {
            out_map.insert(name.clone(), r);
        }
    }
    let mut out_rules = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let rp = idx(p, "rules", i);
        let route_match = match &r.r#match {
            Some(m) => route::route_match(cx, &join(&rp, "match"), m),
            None => {
                cx.reject(join(&rp, "match"), Reason::Missing);
                None
            }
        };
        let requires = match (&r.requires, &r.requirement_name) {
            (Some(req), None) => requirement(cx, &join(&rp, "requires"), req, providers),
            (None, Some(name)) => match out_map.get(name) {
                Some(req) => Some(req.clone()),
                None => {
                    cx.reject(
                        join(&rp, "requirement_name"),
                        Reason::Invalid(format!("{name:?} is not in requirement_map")),
                    );
                    None
                }
            },
            (None, None) => None,
            (Some(_), Some(_)) => {
                cx.reject(
                    &rp,
                    Reason::Invalid("one of `requires` and `requirement_name`".into()),
                );
                None
            }
        };
        if let Some(route_match) = route_match {
            out_rules.push(mj::JwtRule {
                route_match,
                requires,
            });
        }
    }
    if cx.errs.len() != errors {
        return None;
    }
    Some(mj::JwtConfig {
        providers: out_providers,
        rules: out_rules,
        requirement_map: out_map,
        bypass_cors_preflight: *bypass_cors_preflight,
        strip_failure_response: *strip_failure_response,
    })
}

fn header_name(cx: &mut Cx, p: &str, name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty() || http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        cx.reject(p, Reason::Invalid(format!("{name:?} is not a header name")));
        return None;
    }
    Some(lower)
}

/// A `JwtProvider`.
fn jwt_provider(cx: &mut Cx, p: &str, name: &str, j: &ext::JwtProvider) -> Option<mj::JwtProvider> {
    let ext::JwtProvider {
        issuer,
        audiences,
        remote_jwks,
        local_jwks,
        forward,
        from_headers,
        from_params,
        forward_payload_header,
        // Dynamic metadata: nothing in Myelin reads it (RBAC's metadata principals, Lua
        // and access log operators for it are rejected), so writing it changes nothing.
        payload_in_metadata: _,
        header_in_metadata: _,
        failed_status_in_metadata: _,
        normalize_payload_in_metadata: _,
        clock_skew_seconds,
        pad_forward_payload_header,
        // A cache of verified tokens: speed only.
        jwt_cache_config: _,
        from_cookies,
        claim_to_headers,
        clear_route_cache,
        subjects,
        require_expiration,
        max_lifetime,
    } = j;
    let errors = cx.errs.len();
    let jwks = match (remote_jwks, local_jwks) {
        (Some(r), None) => remote(cx, &join(p, "remote_jwks"), r).map(mj::Jwks::Remote),
        (None, Some(l)) => local(cx, &join(p, "local_jwks"), l).map(mj::Jwks::Local),
        (None, None) => {
            cx.reject(join(p, "remote_jwks"), Reason::Missing);
            None
        }
        (Some(_), Some(_)) => {
            cx.reject(
                p,
                Reason::Invalid("one of `remote_jwks` and `local_jwks`".into()),
            );
            None
        }
    };
    let mut headers = Vec::with_capacity(from_headers.len());
    for (i, h) in from_headers.iter().enumerate() {
        if let Some(n) = header_name(cx, &join(&idx(p, "from_headers", i), "name"), &h.name) {
            headers.push((n, h.value_prefix.clone()));
        }
    }
    let forward_payload_header = match forward_payload_header.as_str() {
        "" => None,
        h => header_name(cx, &join(p, "forward_payload_header"), h),
    };
    let mut claims = Vec::with_capacity(claim_to_headers.len());
    for (i, c) in claim_to_headers.iter().enumerate() {
        let cp = idx(p, "claim_to_headers", i);
        if c.claim_name.is_empty() {
            cx.reject(join(&cp, "claim_name"), Reason::Missing);
            continue;
        }
        if let Some(n) = header_name(cx, &join(&cp, "header_name"), &c.header_name) {
            claims.push((n, c.claim_name.clone()));
        }
    }
    let subjects = subjects
        .as_ref()
        .and_then(|m| string_matcher(cx, &join(p, "subjects"), m));
    let max_lifetime = max_lifetime
        .as_ref()
        .and_then(|d| cx.duration(&join(p, "max_lifetime"), d))
        .map(|d| d.as_secs());
    if cx.errs.len() != errors {
        return None;
    }
    Some(mj::JwtProvider {
        name: name.to_owned(),
        issuer: (!issuer.is_empty()).then(|| issuer.clone()),
        audiences: audiences.clone(),
        jwks: jwks?,
        forward: *forward,
        from_headers: headers,
        from_params: from_params.clone(),
        from_cookies: from_cookies.clone(),
        forward_payload_header,
        pad_forward_payload_header: *pad_forward_payload_header,
        claim_to_headers: claims,
        // Envoy's default for 0 (unset).
        clock_skew: if *clock_skew_seconds == 0 {
            60
        } else {
            u64::from(*clock_skew_seconds)
        },
        max_lifetime,
        require_expiration: *require_expiration,
        subjects,
        clear_route_cache: *clear_route_cache,
    })
}

/// `local_jwks`: inline (a file is not read by the converter).
fn local(cx: &mut Cx, p: &str, d: &core::DataSource) -> Option<Arc<mj::JwkSet>> {
    let text = super::filter::inline_text(cx, p, d)?;
    match mj::parse_jwks(&text) {
        Ok(set) => Some(Arc::new(set)),
        Err(e) => {
            cx.reject(p, Reason::Invalid(e));
            None
        }
    }
}

/// `remote_jwks`: fetched over the cluster of its `http_uri`.
fn remote(cx: &mut Cx, p: &str, r: &ext::RemoteJwks) -> Option<Arc<mj::RemoteJwks>> {
    use core::http_uri::HttpUpstreamType as U;
    let ext::RemoteJwks {
        http_uri,
        cache_duration,
        // Fetched when first needed instead of when the listener comes: the same keys.
        async_fetch: _,
        retry_policy,
    } = r;
    cx.unsupported(p, "retry_policy", retry_policy);
    let up = join(p, "http_uri");
    let Some(u) = http_uri else {
        cx.reject(up, Reason::Missing);
        return None;
    };
    let uri_ok = u
        .uri
        .parse::<http::Uri>()
        .is_ok_and(|x| x.scheme().is_some() && x.authority().is_some());
    if !uri_ok {
        cx.reject(
            join(&up, "uri"),
            Reason::Invalid(format!("{:?} is not an absolute URL", u.uri)),
        );
    }
    let cluster = match &u.http_upstream_type {
        Some(U::Cluster(c)) if !c.is_empty() => Some(c.clone()),
        _ => {
            cx.reject(join(&up, "cluster"), Reason::Missing);
            None
        }
    };
    let timeout = match &u.timeout {
        Some(t) => cx.duration(&join(&up, "timeout"), t),
        None => {
            cx.reject(join(&up, "timeout"), Reason::Missing);
            None
        }
    };
    let cache_duration = match cache_duration {
        Some(d) => cx.duration(&join(p, "cache_duration"), d),
        // Envoy's default: 10 minutes.
        None => Some(Duration::from_secs(600)),
    };
    if !uri_ok {
        return None;
    }
    Some(Arc::new(mj::RemoteJwks {
        uri: u.uri.clone(),
        cluster: cluster?,
        timeout: timeout?,
        cache_duration: cache_duration?,
        cache: Mutex::new(None),
    }))
}

/// A `JwtRequirement`: exactly one of its kinds; providers named must exist.
fn requirement(
    cx: &mut Cx,
    p: &str,
    r: &ext::JwtRequirement,
    providers: &HashMap<String, ext::JwtProvider>,
) -> Option<mj::JwtRequirement> {
    let ext::JwtRequirement {
        provider_name,
        provider_and_audiences,
        requires_any,
        requires_all,
        allow_missing_or_failed,
        allow_missing,
        extract_only_without_validation,
    } = r;
    let set = [
        provider_name.is_some(),
        provider_and_audiences.is_some(),
        requires_any.is_some(),
        requires_all.is_some(),
        allow_missing_or_failed.is_some(),
        allow_missing.is_some(),
        extract_only_without_validation.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        cx.reject(p, Reason::Invalid("exactly one kind of requirement".into()));
        return None;
    }
    let known = |cx: &mut Cx, fp: &str, name: &str| {
        if providers.contains_key(name) {
            true
        } else {
            cx.reject(fp, Reason::Invalid(format!("no provider named {name:?}")));
            false
        }
    };
    if let Some(name) = provider_name {
        return known(cx, &join(p, "provider_name"), name).then(|| mj::JwtRequirement::Provider {
            name: name.clone(),
            audiences: None,
        });
    }
    if let Some(pa) = provider_and_audiences {
        let fp = join(&join(p, "provider_and_audiences"), "provider_name");
        return known(cx, &fp, &pa.provider_name).then(|| mj::JwtRequirement::Provider {
            name: pa.provider_name.clone(),
            audiences: Some(pa.audiences.clone()),
        });
    }
    for (field, list, all) in [
        ("requires_any", requires_any, false),
        ("requires_all", requires_all, true),
    ] {
        let Some(list) = list else { continue };
        let lp = join(p, field);
        if list.requirements.len() < 2 {
            cx.reject(
                join(&lp, "requirements"),
                Reason::Invalid("at least 2".into()),
            );
            return None;
        }
        let errors = cx.errs.len();
        let items: Vec<_> = list
            .requirements
            .iter()
            .enumerate()
            .filter_map(|(i, r)| requirement(cx, &idx(&lp, "requirements", i), r, providers))
            .collect();
        if cx.errs.len() != errors {
            return None;
        }
        return Some(if all {
            mj::JwtRequirement::All(items)
        } else {
            mj::JwtRequirement::Any(items)
        });
    }
    if allow_missing.is_some() {
        return Some(mj::JwtRequirement::AllowMissing);
    }
    if allow_missing_or_failed.is_some() {
        return Some(mj::JwtRequirement::AllowMissingOrFailed);
    }
    cx.reject(
        join(p, "extract_only_without_validation"),
        Reason::NotSupported,
    );
    None
}

/// A route's `PerRouteConfig`.
pub(super) fn jwt_per_route(cx: &mut Cx, p: &str, r: &ext::JwtPerRoute) -> Option<mj::JwtRoute> {
    match (r.disabled, &r.requirement_name) {
        (Some(true), None) => Some(mj::JwtRoute::Disabled),
        (None, Some(name)) if !name.is_empty() => Some(mj::JwtRoute::Requirement(name.clone())),
        (Some(false), None) => {
            cx.reject(join(p, "disabled"), Reason::Invalid("must be true".into()));
            None
        }
        _ => {
            cx.reject(
                p,
                Reason::Invalid("one of `disabled` and `requirement_name`".into()),
            );
            None
        }
    }
}
