//! RouteConfiguration -> [`model::RouteConfiguration`].

use myelin_proxy::model::listener::{ClusterRouting, WeightedCluster};
use myelin_proxy::model::{self, route as mr};
use xds_api::pb::envoy::config::route::v3 as pb;

use super::common::{header_value_options, regex_matcher, string_matcher};
use prost::Message as _;

use super::{ext, filter, idx, join, Cx, Reason, Rejection};

/// `retry_on` conditions Envoy's router knows (HTTP and gRPC).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Converts a route table (RDS resource, or a connection manager's inline `route_config`).
pub fn route_configuration(
    rc: &pb::RouteConfiguration,
) -> Result<model::RouteConfiguration, Vec<Rejection>> {
    let mut cx = Cx::default();
    let p = "";
    let pb::RouteConfiguration {
        name,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters: _,
        max_direct_response_body_size_bytes: _,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        metadata: _,
    } = rc;
    cx.unsupported(p, "vhds", vhds);
    cx.unsupported(p, "internal_only_headers", internal_only_headers);
    cx.unsupported(
        p,
        "most_specific_header_mutations_wins",
        most_specific_header_mutations_wins,
    );
    cx.unsupported(p, "cluster_specifier_plugins", cluster_specifier_plugins);
    let mirrors = mirror_policies(&mut cx, p, request_mirror_policies);
    cx.unsupported(
        p,
        "ignore_path_parameters_in_path_matching",
        ignore_path_parameters_in_path_matching,
    );
    let filters = filter::filter_settings(&mut cx, p, typed_per_filter_config);
    let headers = mr::HeaderMutation {
        request_headers_to_add: header_value_options(
            &mut cx,
            p,
            "request_headers_to_add",
            request_headers_to_add,
        ),
        request_headers_to_remove: lower(request_headers_to_remove),
        response_headers_to_add: header_value_options(
            &mut cx,
            p,
            "response_headers_to_add",
            response_headers_to_add,
        ),
        response_headers_to_remove: lower(response_headers_to_remove),
    };
    let virtual_hosts = virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, v)| virtual_host(&mut cx, &idx(p, "virtual_hosts", i), v))
        .collect();
    cx.finish(model::RouteConfiguration {
        name: name.clone(),
        virtual_hosts,
        headers,
        filters,
        mirrors,
        ignore_port_in_host_matching: *ignore_port_in_host_matching,
    })
}

fn lower(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.to_ascii_lowercase()).collect()
}

#[allow(deprecated)]
fn virtual_host(cx: &mut Cx, p: &str, v: &pb::VirtualHost) -> mr::VirtualHost {
    let pb::VirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        virtual_clusters,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_mirror_policies,
        metadata: _,
    } = v;
    cx.unsupported(p, "matcher", matcher);
    cx.unsupported(p, "require_tls", require_tls);
    cx.unsupported(p, "virtual_clusters", virtual_clusters);
    let rate_limits = self::rate_limits(cx, p, rate_limits);
    let filters = filter::filter_settings(cx, p, typed_per_filter_config);
    let cors = cors
        .as_ref()
        .and_then(|c| filter::route_cors(cx, &join(p, "cors"), c));
    cx.unsupported(p, "retry_policy_typed_config", retry_policy_typed_config);
    cx.unsupported(p, "hedge_policy", hedge_policy);
    cx.unsupported(
        p,
        "include_is_timeout_retry_header",
        include_is_timeout_retry_header,
    );
    let mirrors = mirror_policies(cx, p, request_mirror_policies);
    if domains.is_empty() {
        cx.reject(join(p, "domains"), Reason::Missing);
    }
    let domains = domains
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let m = mr::DomainMatch::parse(d);
            if m.is_none() {
                cx.reject(
                    idx(p, "domains", i),
                    Reason::Invalid(format!(
                        "`{d}` is not a domain pattern (a `*` may only begin or end it)"
                    )),
                );
            }
            m
        })
        .collect();
    let headers = mr::HeaderMutation {
        request_headers_to_add: header_value_options(
            cx,
            p,
            "request_headers_to_add",
            request_headers_to_add,
        ),
        request_headers_to_remove: lower(request_headers_to_remove),
        response_headers_to_add: header_value_options(
            cx,
            p,
            "response_headers_to_add",
            response_headers_to_add,
        ),
        response_headers_to_remove: lower(response_headers_to_remove),
    };
    mr::VirtualHost {
        name: name.clone(),
        domains,
        routes: routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| route(cx, &idx(p, "routes", i), r))
            .collect(),
        retry_policy: retry_policy
            .as_ref()
            .and_then(|r| self::retry_policy(cx, &join(p, "retry_policy"), r)),
        headers,
        filters,
        cors,
        mirrors,
        buffer_limit: per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
        attempt_count_in_request: *include_request_attempt_count,
        attempt_count_in_response: *include_attempt_count_in_response,
        rate_limits,
    }
}

/// Whose `rate_limits` a list is: which of the newer fields it may have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RateLimitsOf {
    /// A route action's or virtual host's (`xds-api`'s schema: none of them).
    Route,
    /// The local rate limit filter's own: no `hits_addend` or `apply_on_stream_done`.
    Local,
    /// The global rate limit filter's own, or its route settings'.
    Global,
}

/// `rate_limits` of a route action or virtual host (`xds-api`'s messages, transcoded to
/// the newer [`ext::RouteRateLimit`], whose fields they have).
pub(super) fn rate_limits(cx: &mut Cx, p: &str, list: &[pb::RateLimit]) -> Vec<mr::RateLimitEntry> {
    let newer: Vec<ext::RouteRateLimit> = list
        .iter()
        .filter_map(|r| ext::RouteRateLimit::decode(r.encode_to_vec().as_slice()).ok())
        .collect();
    filter_rate_limits(cx, p, &newer, RateLimitsOf::Route)
}

/// `rate_limits` of a filter config (or of the route table's, see [`rate_limits`]).
pub(super) fn filter_rate_limits(
    cx: &mut Cx,
    p: &str,
    list: &[ext::RouteRateLimit],
    of: RateLimitsOf,
) -> Vec<mr::RateLimitEntry> {
    list.iter()
        .enumerate()
        .filter_map(|(i, r)| rate_limit(cx, &idx(p, "rate_limits", i), r, of))
        .collect()
}

fn rate_limit(
    cx: &mut Cx,
    p: &str,
    r: &ext::RouteRateLimit,
    of: RateLimitsOf,
) -> Option<mr::RateLimitEntry> {
    let ext::RouteRateLimit {
        stage,
        // A runtime key Myelin has no runtime for: the entry always applies.
        disable_key: _,
        actions,
        limit,
        hits_addend,
        apply_on_stream_done,
        x_ratelimit_option,
    } = r;
    // Dynamic metadata overrides: the global rate limit service's.
    cx.unsupported(p, "limit", limit);
    cx.unsupported(p, "x_ratelimit_option", x_ratelimit_option);
    let stage = stage.as_ref().map_or(0, |s| s.value);
    if stage > 10 {
        cx.reject(join(p, "stage"), Reason::Invalid("at most 10".into()));
    }
    if of == RateLimitsOf::Local {
        cx.unsupported(p, "hits_addend", hits_addend);
        cx.unsupported(p, "apply_on_stream_done", apply_on_stream_done);
    }
    let hits = match hits_addend {
        None => mr::Hits::One,
        Some(h) => hits(cx, &join(p, "hits_addend"), h)?,
    };
    if actions.is_empty() {
        cx.reject(join(p, "actions"), Reason::Missing);
        return None;
    }
    let mut out = Vec::with_capacity(actions.len());
    for (i, a) in actions.iter().enumerate() {
        if let Some(action) = rate_limit_action(cx, &idx(p, "actions", i), a) {
            out.push(action);
        }
    }
    (out.len() == actions.len()).then_some(mr::RateLimitEntry {
        stage,
        actions: out,
        hits,
        on_stream_done: *apply_on_stream_done,
    })
}

/// A `RateLimit.HitsAddend`: a number (at most 10^9, Envoy's bound), or a format of
/// dynamic metadata, which Myelin never has (so the entry never makes a descriptor,
/// as in Envoy when a format gives no number).
fn hits(cx: &mut Cx, p: &str, h: &ext::HitsAddend) -> Option<mr::Hits> {
    let ext::HitsAddend {
        number,
        format,
        is_negative_hits,
    } = h;
    cx.unsupported(p, "is_negative_hits", is_negative_hits);
    match (number, format.as_str()) {
        (Some(n), "") if n.value <= 1_000_000_000 => Some(mr::Hits::Number(n.value)),
        (Some(_), "") => {
            cx.reject(
                join(p, "number"),
                Reason::Invalid("at most 1000000000".into()),
            );
            None
        }
        (None, f) if is_dynamic_metadata(f) => Some(mr::Hits::Never),
        (None, "") => {
            cx.reject(p, Reason::Invalid("one of `number` and `format`".into()));
            None
        }
        (None, _) => {
            cx.reject(
                join(p, "format"),
                Reason::Invalid(
                    "only a `%DYNAMIC_METADATA(...)%` format is supported (Myelin has no \
                     dynamic metadata: the entry then makes no descriptor)"
                        .into(),
                ),
            );
            None
        }
        (Some(_), _) => {
            cx.reject(p, Reason::Invalid("one of `number` and `format`".into()));
            None
        }
    }
}

/// Whether `f` is one `%DYNAMIC_METADATA(namespace:key...)%` operator (with an optional
/// `:Z` length).
fn is_dynamic_metadata(f: &str) -> bool {
    f.strip_prefix("%DYNAMIC_METADATA(")
        .and_then(|rest| rest.strip_suffix('%'))
        .and_then(|rest| rest.split_once(')'))
        .is_some_and(|(args, tail)| {
            !args.is_empty()
                && !args.contains('%')
                && (tail.is_empty()
                    || tail
                        .strip_prefix(':')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        })
}

fn rate_limit_action(
    cx: &mut Cx,
    ap: &str,
    a: &ext::RateLimitAction,
) -> Option<mr::RateLimitAction> {
    let ext::RateLimitAction {
        source_cluster,
        destination_cluster,
        request_headers,
        remote_address,
        generic_key,
        header_value_match,
        dynamic_metadata,
        metadata,
        extension,
        masked_remote_address,
        query_parameter_value_match,
        query_parameters,
        remote_address_match,
    } = a;
    let set = [
        source_cluster.is_some(),
        destination_cluster.is_some(),
        request_headers.is_some(),
        remote_address.is_some(),
        generic_key.is_some(),
        header_value_match.is_some(),
        dynamic_metadata.is_some(),
        metadata.is_some(),
        extension.is_some(),
        masked_remote_address.is_some(),
        query_parameter_value_match.is_some(),
        query_parameters.is_some(),
        remote_address_match.is_some(),
    ];
    match set.iter().filter(|s| **s).count() {
        0 => {
            cx.reject(join(ap, "action_specifier"), Reason::Missing);
            return None;
        }
        1 => {}
        _ => {
            cx.reject(ap, Reason::Invalid("one action per entry".into()));
            return None;
        }
    }
    let key_or = |k: &str, default: &str| {
        if k.is_empty() {
            default.to_owned()
        } else {
            k.to_owned()
        }
    };
    // The node's own cluster name (`source_cluster`): Myelin's agent has none to give.
    for (field, value) in [
        ("source_cluster", source_cluster),
        ("dynamic_metadata", dynamic_metadata),
        ("metadata", metadata),
        ("extension", extension),
        ("query_parameter_value_match", query_parameter_value_match),
        ("query_parameters", query_parameters),
    ] {
        if value.is_some() {
            cx.reject(join(ap, field), Reason::NotSupported);
            return None;
        }
    }
    if destination_cluster.is_some() {
        return Some(mr::RateLimitAction::DestinationCluster);
    }
    if remote_address.is_some() {
        return Some(mr::RateLimitAction::RemoteAddress);
    }
    if let Some(h) = request_headers {
        if h.header_name.is_empty() || h.descriptor_key.is_empty() {
            cx.reject(
                join(ap, "request_headers"),
                Reason::Invalid("`header_name` and `descriptor_key` are required".into()),
            );
            return None;
        }
        return Some(mr::RateLimitAction::RequestHeaders {
            header: h.header_name.to_ascii_lowercase(),
            key: h.descriptor_key.clone(),
            skip_if_absent: h.skip_if_absent,
        });
    }
    if let Some(m) = masked_remote_address {
        let v4 = m.v4_prefix_mask_len.as_ref().map_or(32, |v| v.value);
        let v6 = m.v6_prefix_mask_len.as_ref().map_or(128, |v| v.value);
        if v4 > 32 || v6 > 128 {
            cx.reject(
                join(ap, "masked_remote_address"),
                Reason::Invalid("a prefix longer than the address".into()),
            );
            return None;
        }
        return Some(mr::RateLimitAction::MaskedRemoteAddress {
            v4: v4 as u8,
            v6: v6 as u8,
        });
    }
    if let Some(g) = generic_key {
        let gp = join(ap, "generic_key");
        cx.unsupported(&gp, "default_value", &g.default_value);
        if g.descriptor_value.is_empty() {
            cx.reject(join(&gp, "descriptor_value"), Reason::Missing);
            return None;
        }
        return Some(mr::RateLimitAction::GenericKey {
            key: key_or(&g.descriptor_key, "generic_key"),
            value: g.descriptor_value.clone(),
        });
    }
    if let Some(h) = header_value_match {
        let hp = join(ap, "header_value_match");
        cx.unsupported(&hp, "default_value", &h.default_value);
        if h.descriptor_value.is_empty() {
            cx.reject(join(&hp, "descriptor_value"), Reason::Missing);
            return None;
        }
        let headers: Vec<_> = h
            .headers
            .iter()
            .enumerate()
            .filter_map(|(i, m)| header_matcher(cx, &idx(&hp, "headers", i), m))
            .collect();
        return Some(mr::RateLimitAction::HeaderValueMatch {
            key: key_or(&h.descriptor_key, "header_match"),
            value: h.descriptor_value.clone(),
            expect_match: h.expect_match.as_ref().is_none_or(|b| b.value),
            headers,
        });
    }
    let r = remote_address_match.as_ref()?;
    let rp = join(ap, "remote_address_match");
    if r.descriptor_value.is_empty() {
        cx.reject(join(&rp, "descriptor_value"), Reason::Missing);
        return None;
    }
    let Some(m) = &r.address_matcher else {
        cx.reject(join(&rp, "address_matcher"), Reason::Missing);
        return None;
    };
    let mp = join(&rp, "address_matcher");
    let ranges: Vec<_> = m
        .ranges
        .iter()
        .enumerate()
        .filter_map(|(i, c)| super::listener::cidr(cx, &idx(&mp, "ranges", i), c))
        .collect();
    if ranges.len() != m.ranges.len() {
        return None;
    }
    Some(mr::RateLimitAction::RemoteAddressMatch {
        key: key_or(&r.descriptor_key, "remote_address_match"),
        value: r.descriptor_value.clone(),
        ranges,
        invert: m.invert_match,
        default: (!r.default_value.is_empty()).then(|| r.default_value.clone()),
    })
}

fn route(cx: &mut Cx, p: &str, r: &pb::Route) -> Option<mr::Route> {
    use pb::route::Action as A;
    let pb::Route {
        name,
        r#match,
        metadata: _,
        decorator: _,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing: _,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        action,
    } = r;
    let filters = filter::filter_settings(cx, p, typed_per_filter_config);
    let headers = mr::HeaderMutation {
        request_headers_to_add: header_value_options(
            cx,
            p,
            "request_headers_to_add",
            request_headers_to_add,
        ),
        request_headers_to_remove: lower(request_headers_to_remove),
        response_headers_to_add: header_value_options(
            cx,
            p,
            "response_headers_to_add",
            response_headers_to_add,
        ),
        response_headers_to_remove: lower(response_headers_to_remove),
    };
    let route_match = match r#match {
        Some(m) => route_match(cx, &join(p, "match"), m),
        None => {
            cx.reject(join(p, "match"), Reason::Missing);
            None
        }
    };
    #[allow(deprecated)]
    let cors = match action {
        Some(A::Route(a)) => a
            .cors
            .as_ref()
            .and_then(|c| filter::route_cors(cx, &join(p, "route.cors"), c)),
        _ => None,
    };
    let action = match action {
        Some(A::Route(a)) => route_action(cx, &join(p, "route"), a).map(mr::Action::Route),
        Some(A::Redirect(r)) => redirect(cx, &join(p, "redirect"), r).map(mr::Action::Redirect),
        Some(A::DirectResponse(d)) => {
            direct_response(cx, &join(p, "direct_response"), d).map(mr::Action::DirectResponse)
        }
        Some(A::FilterAction(_)) => {
            cx.reject(join(p, "filter_action"), Reason::NotSupported);
            None
        }
        Some(A::NonForwardingAction(_)) => {
            cx.reject(join(p, "non_forwarding_action"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(
                join(p, "route"),
                Reason::Invalid(
                    "one of `route`, `redirect` or `direct_response` is required".into(),
                ),
            );
            None
        }
    };
    Some(mr::Route {
        name: name.clone(),
        route_match: route_match?,
        action: action?,
        headers,
        filters,
        cors,
        buffer_limit: per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
    })
}

pub(super) fn route_match(cx: &mut Cx, p: &str, m: &pb::RouteMatch) -> Option<mr::RouteMatch> {
    use pb::route_match::PathSpecifier as P;
    let pb::RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        grpc,
        tls_context,
        dynamic_metadata,
        path_specifier,
    } = m;
    cx.unsupported(p, "runtime_fraction", runtime_fraction);
    cx.unsupported(p, "grpc", grpc);
    cx.unsupported(p, "tls_context", tls_context);
    cx.unsupported(p, "dynamic_metadata", dynamic_metadata);
    let path = match path_specifier {
        Some(P::Prefix(s)) => Some(mr::PathMatch::Prefix(s.clone())),
        Some(P::Path(s)) => Some(mr::PathMatch::Path(s.clone())),
        Some(P::SafeRegex(r)) => {
            regex_matcher(cx, &join(p, "safe_regex"), r).map(mr::PathMatch::SafeRegex)
        }
        Some(P::PathSeparatedPrefix(s)) => {
            if s.contains(['?', '#']) || (s.ends_with('/') && s.len() > 1) {
                cx.reject(
                    join(p, "path_separated_prefix"),
                    Reason::Invalid(format!(
                        "`{s}` must not contain `?` or `#` nor end with `/`"
                    )),
                );
            }
            Some(mr::PathMatch::PathSeparatedPrefix(s.clone()))
        }
        Some(P::ConnectMatcher(_)) => Some(mr::PathMatch::Connect),
        Some(P::PathMatchPolicy(_)) => {
            cx.reject(join(p, "path_match_policy"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(
                join(p, "prefix"),
                Reason::Invalid(
                    "one of `prefix`, `path`, `safe_regex` or `path_separated_prefix` is required"
                        .into(),
                ),
            );
            None
        }
    };
    let headers = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_matcher(cx, &idx(p, "headers", i), h))
        .collect();
    let query_parameters = query_parameters
        .iter()
        .enumerate()
        .filter_map(|(i, q)| query_matcher(cx, &idx(p, "query_parameters", i), q))
        .collect();
    Some(mr::RouteMatch {
        path: path?,
        case_sensitive: case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query_parameters,
    })
}

#[allow(deprecated)]
pub(super) fn header_matcher(
    cx: &mut Cx,
    p: &str,
    h: &pb::HeaderMatcher,
) -> Option<mr::HeaderMatcher> {
    use model::{StringMatcher as SM, StringPattern as SP};
    use pb::header_matcher::HeaderMatchSpecifier as H;
    let pb::HeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = h;
    let plain = |pattern| {
        Some(mr::HeaderRule::Value(SM {
            pattern,
            ignore_case: false,
        }))
    };
    let rule = match header_match_specifier {
        Some(H::ExactMatch(s)) => plain(SP::Exact(s.clone())),
        Some(H::PrefixMatch(s)) => plain(SP::Prefix(s.clone())),
        Some(H::SuffixMatch(s)) => plain(SP::Suffix(s.clone())),
        Some(H::ContainsMatch(s)) => plain(SP::Contains(s.clone())),
        Some(H::SafeRegexMatch(r)) => {
            regex_matcher(cx, &join(p, "safe_regex_match"), r).and_then(|r| plain(SP::SafeRegex(r)))
        }
        Some(H::StringMatch(m)) => {
            string_matcher(cx, &join(p, "string_match"), m).map(mr::HeaderRule::Value)
        }
        Some(H::PresentMatch(b)) => Some(mr::HeaderRule::Present(*b)),
        Some(H::RangeMatch(_)) => {
            cx.reject(join(p, "range_match"), Reason::NotSupported);
            None
        }
        // Envoy: no specifier means "present".
        None => Some(mr::HeaderRule::Present(true)),
    };
    if name.is_empty() {
        cx.reject(join(p, "name"), Reason::Missing);
    }
    Some(mr::HeaderMatcher {
        name: name.to_ascii_lowercase(),
        rule: rule?,
        invert: *invert_match,
        treat_missing_as_empty: *treat_missing_header_as_empty,
    })
}

fn query_matcher(
    cx: &mut Cx,
    p: &str,
    q: &pb::QueryParameterMatcher,
) -> Option<mr::QueryParameterMatcher> {
    use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let rule = match &q.query_parameter_match_specifier {
        Some(Q::StringMatch(m)) => {
            mr::QueryParameterRule::Value(string_matcher(cx, &join(p, "string_match"), m)?)
        }
        Some(Q::PresentMatch(true)) | None => mr::QueryParameterRule::Present,
        Some(Q::PresentMatch(false)) => {
            cx.reject(
                join(p, "present_match"),
                Reason::UnsupportedValue("`false`".into()),
            );
            return None;
        }
    };
    if q.name.is_empty() {
        cx.reject(join(p, "name"), Reason::Missing);
    }
    Some(mr::QueryParameterMatcher {
        name: q.name.clone(),
        rule,
    })
}

#[allow(deprecated)]
fn route_action(cx: &mut Cx, p: &str, a: &pb::RouteAction) -> Option<mr::RouteAction> {
    use pb::route_action::ClusterSpecifier as C;
    use pb::route_action::HostRewriteSpecifier as H;
    let pb::RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = a;
    cx.unsupported(
        p,
        "cluster_not_found_response_code",
        cluster_not_found_response_code,
    );
    cx.unsupported(p, "metadata_match", metadata_match);
    cx.unsupported(p, "path_rewrite_policy", path_rewrite_policy);
    cx.unsupported(p, "append_x_forwarded_host", append_x_forwarded_host);
    cx.unsupported(p, "early_data_policy", early_data_policy);
    cx.unsupported(p, "retry_policy_typed_config", retry_policy_typed_config);
    let mirrors = mirror_policies(cx, p, request_mirror_policies);
    cx.unsupported(p, "priority", priority);
    let rate_limits = self::rate_limits(cx, p, rate_limits);
    // Deprecated; what the rate limit filters' `vh_rate_limits` say instead.
    cx.unsupported(p, "include_vh_rate_limits", include_vh_rate_limits);
    // `cors` is the route's (see `route`).
    let _ = cors;
    cx.unsupported(p, "internal_redirect_policy", internal_redirect_policy);
    cx.unsupported(p, "internal_redirect_action", internal_redirect_action);
    cx.unsupported(p, "max_internal_redirects", max_internal_redirects);
    cx.unsupported(p, "hedge_policy", hedge_policy);
    let stream_limit = match max_stream_duration {
        // With it, Envoy ignores `max_grpc_timeout` and `grpc_timeout_offset`.
        Some(m) => {
            let mp = join(p, "max_stream_duration");
            let pb::route_action::MaxStreamDuration {
                max_stream_duration,
                grpc_timeout_header_max,
                grpc_timeout_header_offset,
            } = m;
            let mut d = |name: &str, v: &Option<xds_api::pb::google::protobuf::Duration>| {
                v.as_ref().and_then(|v| cx.duration(&join(&mp, name), v))
            };
            Some(mr::StreamLimit::Duration {
                max: d("max_stream_duration", max_stream_duration),
                grpc_header_max: d("grpc_timeout_header_max", grpc_timeout_header_max),
                grpc_header_offset: d("grpc_timeout_header_offset", grpc_timeout_header_offset),
            })
        }
        None => max_grpc_timeout.as_ref().and_then(|max| {
            Some(mr::StreamLimit::GrpcTimeout {
                max: cx.duration(&join(p, "max_grpc_timeout"), max)?,
                offset: grpc_timeout_offset
                    .as_ref()
                    .and_then(|o| cx.duration(&join(p, "grpc_timeout_offset"), o)),
            })
        }),
    };
    let cluster = match cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => Some(mr::ClusterSpecifier::Cluster(c.clone())),
        Some(C::Cluster(_)) => {
            cx.reject(join(p, "cluster"), Reason::Missing);
            None
        }
        Some(C::WeightedClusters(w)) => weighted_clusters(cx, &join(p, "weighted_clusters"), w)
            .map(mr::ClusterSpecifier::WeightedClusters),
        Some(C::ClusterHeader(_)) => {
            cx.reject(join(p, "cluster_header"), Reason::NotSupported);
            None
        }
        Some(C::ClusterSpecifierPlugin(_)) => {
            cx.reject(join(p, "cluster_specifier_plugin"), Reason::NotSupported);
            None
        }
        Some(C::InlineClusterSpecifierPlugin(_)) => {
            cx.reject(
                join(p, "inline_cluster_specifier_plugin"),
                Reason::NotSupported,
            );
            None
        }
        None => {
            cx.reject(
                join(p, "cluster"),
                Reason::Invalid("one of `cluster` or `weighted_clusters` is required".into()),
            );
            None
        }
    };
    let host_rewrite = match host_rewrite_specifier {
        None => None,
        Some(H::HostRewriteLiteral(h)) => Some(mr::HostRewrite::Literal(h.clone())),
        Some(H::AutoHostRewrite(b)) => b.value.then_some(mr::HostRewrite::Auto),
        Some(H::HostRewriteHeader(_)) => {
            cx.reject(join(p, "host_rewrite_header"), Reason::NotSupported);
            None
        }
        Some(H::HostRewritePathRegex(_)) => {
            cx.reject(join(p, "host_rewrite_path_regex"), Reason::NotSupported);
            None
        }
    };
    if !prefix_rewrite.is_empty() && regex_rewrite.is_some() {
        cx.reject(
            join(p, "regex_rewrite"),
            Reason::Invalid("set together with `prefix_rewrite`".into()),
        );
    }
    let regex_rewrite = regex_rewrite
        .as_ref()
        .and_then(|r| self::regex_rewrite(cx, &join(p, "regex_rewrite"), r));
    Some(mr::RouteAction {
        cluster: cluster?,
        timeout: cx.timeout(
            &join(p, "timeout"),
            timeout,
            Some(mr::DEFAULT_ROUTE_TIMEOUT),
        ),
        retry_policy: retry_policy
            .as_ref()
            .and_then(|r| self::retry_policy(cx, &join(p, "retry_policy"), r)),
        prefix_rewrite: (!prefix_rewrite.is_empty()).then(|| prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        hash_policy: hash_policy
            .iter()
            .enumerate()
            .filter_map(|(i, h)| self::hash_policy(cx, &idx(p, "hash_policy", i), h))
            .collect(),
        upgrades: upgrade_configs
            .iter()
            .enumerate()
            .filter_map(|(i, u)| route_upgrade(cx, &idx(p, "upgrade_configs", i), u))
            .collect(),
        stream_limit,
        idle_timeout: idle_timeout
            .as_ref()
            .and_then(|d| cx.duration(&join(p, "idle_timeout"), d)),
        mirrors,
        rate_limits,
    })
}

/// The `request_mirror_policies` of a route action, virtual host or route table.
fn mirror_policies(
    cx: &mut Cx,
    p: &str,
    list: &[pb::route_action::RequestMirrorPolicy],
) -> Vec<mr::MirrorPolicy> {
    list.iter()
        .enumerate()
        .filter_map(|(i, m)| mirror_policy(cx, &idx(p, "request_mirror_policies", i), m))
        .collect()
}

/// A route's request mirror (`RequestMirrorPolicy`).
fn mirror_policy(
    cx: &mut Cx,
    p: &str,
    m: &pb::route_action::RequestMirrorPolicy,
) -> Option<mr::MirrorPolicy> {
    let pb::route_action::RequestMirrorPolicy {
        cluster,
        cluster_header,
        runtime_fraction,
        trace_sampled: _,
        disable_shadow_host_suffix_append,
    } = m;
    // Exactly one of them, as Envoy requires.
    let cluster = match (cluster.is_empty(), cluster_header.is_empty()) {
        (false, true) => mr::MirrorCluster::Named(cluster.clone()),
        (true, false) => {
            if http::HeaderName::from_bytes(cluster_header.as_bytes()).is_err() {
                cx.reject(
                    join(p, "cluster_header"),
                    Reason::Invalid(format!("{cluster_header:?} is not a header name")),
                );
                return None;
            }
            mr::MirrorCluster::FromHeader(cluster_header.to_ascii_lowercase())
        }
        (true, true) => {
            cx.reject(
                p,
                Reason::Invalid("one of `cluster` or `cluster_header` is required".into()),
            );
            return None;
        }
        (false, false) => {
            cx.reject(
                join(p, "cluster_header"),
                Reason::Invalid("set together with `cluster`".into()),
            );
            return None;
        }
    };
    Some(mr::MirrorPolicy {
        cluster,
        // The runtime key names a value Myelin's (absent) runtime never has: the default.
        fraction: runtime_fraction.as_ref().map(|f| {
            filter::fraction(
                cx,
                &join(p, "runtime_fraction.default_value"),
                f.default_value.as_ref(),
            )
        }),
        keep_host: *disable_shadow_host_suffix_append,
    })
}

/// One of a route's `upgrade_configs`: the type (lowercase, required), whether it is
/// enabled here, and for `CONNECT` whether the route terminates it (`connect_config`).
fn route_upgrade(
    cx: &mut Cx,
    p: &str,
    u: &pb::route_action::UpgradeConfig,
) -> Option<mr::RouteUpgrade> {
    let pb::route_action::UpgradeConfig {
        upgrade_type,
        enabled,
        connect_config,
    } = u;
    if upgrade_type.is_empty() {
        cx.reject(join(p, "upgrade_type"), Reason::Missing);
        return None;
    }
    let upgrade_type = upgrade_type.to_ascii_lowercase();
    if let Some(c) = connect_config {
        let cp = join(p, "connect_config");
        if upgrade_type != "connect" {
            cx.reject(
                cp.clone(),
                Reason::Invalid("only for `upgrade_type: CONNECT`".into()),
            );
        }
        let pb::route_action::upgrade_config::ConnectConfig {
            proxy_protocol_config,
            allow_post,
        } = c;
        cx.unsupported(&cp, "proxy_protocol_config", proxy_protocol_config);
        if *allow_post {
            cx.reject(join(&cp, "allow_post"), Reason::NotSupported);
        }
    }
    Some(mr::RouteUpgrade {
        upgrade_type,
        enabled: enabled.as_ref().is_none_or(|e| e.value),
        terminate: connect_config.is_some(),
    })
}

fn hash_policy(cx: &mut Cx, p: &str, h: &pb::route_action::HashPolicy) -> Option<mr::HashPolicy> {
    use pb::route_action::hash_policy::PolicySpecifier as S;
    let key = match &h.policy_specifier {
        Some(S::Header(hd)) => {
            let hp = join(p, "header");
            cx.unsupported(&hp, "regex_rewrite", &hd.regex_rewrite);
            if hd.header_name.is_empty() {
                cx.reject(join(&hp, "header_name"), Reason::Missing);
                return None;
            }
            mr::HashKey::Header(hd.header_name.to_ascii_lowercase())
        }
        Some(S::Cookie(c)) => {
            let cp = join(p, "cookie");
            // With a ttl Envoy generates the cookie when it is missing; Myelin only hashes
            // an existing one.
            cx.unsupported(&cp, "ttl", &c.ttl);
            cx.unsupported(&cp, "attributes", &c.attributes);
            if c.name.is_empty() {
                cx.reject(join(&cp, "name"), Reason::Missing);
                return None;
            }
            mr::HashKey::Cookie(c.name.clone())
        }
        Some(S::ConnectionProperties(c)) => {
            if !c.source_ip {
                cx.reject(
                    join(p, "connection_properties.source_ip"),
                    Reason::Invalid("must be true".into()),
                );
                return None;
            }
            mr::HashKey::SourceIp
        }
        Some(S::QueryParameter(q)) => mr::HashKey::QueryParameter(q.name.clone()),
        Some(S::FilterState(_)) => {
            cx.reject(join(p, "filter_state"), Reason::NotSupported);
            return None;
        }
        None => {
            cx.reject(p, Reason::Missing);
            return None;
        }
    };
    Some(mr::HashPolicy {
        key,
        terminal: h.terminal,
    })
}

/// RE2 substitutions write groups as `\1`; the `regex` crate as `${1}` (and `$` is literal
/// in RE2's).
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[allow(deprecated)]
fn weighted_clusters(
    cx: &mut Cx,
    p: &str,
    w: &pb::WeightedCluster,
) -> Option<Vec<WeightedCluster>> {
    let pb::WeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = w;
    cx.unsupported(p, "total_weight", total_weight);
    cx.unsupported(p, "runtime_key_prefix", runtime_key_prefix);
    cx.unsupported(p, "header_name", random_value_specifier);
    let mut out = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let cp = idx(p, "clusters", i);
        let pb::weighted_cluster::ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        cx.unsupported(&cp, "cluster_header", cluster_header);
        cx.unsupported(&cp, "metadata_match", metadata_match);
        cx.unsupported(&cp, "typed_per_filter_config", typed_per_filter_config);
        if name.is_empty() {
            cx.reject(join(&cp, "name"), Reason::Missing);
        }
        let weight = weight.as_ref().map_or(0, |w| w.value);
        // Its own header changes and `Host` (Gateway API filters on one `backendRef`).
        let routing = ClusterRouting {
            headers: mr::HeaderMutation {
                request_headers_to_add: header_value_options(
                    cx,
                    &cp,
                    "request_headers_to_add",
                    request_headers_to_add,
                ),
                request_headers_to_remove: lower(request_headers_to_remove),
                response_headers_to_add: header_value_options(
                    cx,
                    &cp,
                    "response_headers_to_add",
                    response_headers_to_add,
                ),
                response_headers_to_remove: lower(response_headers_to_remove),
            },
            host_rewrite: match host_rewrite_specifier {
                Some(
                    pb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                        h,
                    ),
                ) => {
                    if http::HeaderValue::from_str(h).is_err() {
                        cx.reject(
                            join(&cp, "host_rewrite_literal"),
                            Reason::Invalid(format!("{h:?} is not a header value")),
                        );
                    }
                    Some(h.clone())
                }
                None => None,
            },
        };
        out.push(WeightedCluster {
            name: name.clone(),
            weight,
            routing: (routing != ClusterRouting::default()).then(|| Box::new(routing)),
        });
    }
    if out.is_empty() {
        cx.reject(join(p, "clusters"), Reason::Missing);
        return None;
    }
    if out.iter().all(|c| c.weight == 0) {
        cx.reject(
            join(p, "clusters"),
            Reason::Invalid("the weights add up to 0".into()),
        );
    }
    Some(out)
}

fn retry_policy(cx: &mut Cx, p: &str, r: &pb::RetryPolicy) -> Option<mr::RetryPolicy> {
    let pb::RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
    } = r;
    cx.unsupported(p, "per_try_idle_timeout", per_try_idle_timeout);
    cx.unsupported(p, "retry_priority", retry_priority);
    cx.unsupported(p, "retry_options_predicates", retry_options_predicates);
    // Envoy picks again, up to this many times, when a host predicate refuses the pick
    // (default once); Myelin's pick leaves the previous hosts out while others are usable
    // (`traffic::balance`), so every value acts as an unbounded one. Istio's default retry
    // policy sets 5.
    if *host_selection_retry_max_attempts < 0 {
        cx.reject(
            join(p, "host_selection_retry_max_attempts"),
            Reason::Invalid(format!("{host_selection_retry_max_attempts} is negative")),
        );
    }
    cx.unsupported(
        p,
        "rate_limited_retry_back_off",
        rate_limited_retry_back_off,
    );
    cx.unsupported(p, "retriable_headers", retriable_headers);
    cx.unsupported(p, "retriable_request_headers", retriable_request_headers);
    let conditions: Vec<String> = retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for c in &conditions {
        if !RETRY_ON.contains(&c.as_str()) {
            cx.reject(
                join(p, "retry_on"),
                Reason::UnsupportedValue(format!("condition `{c}`")),
            );
        }
    }
    let mut retry_previous_hosts = false;
    for (i, h) in retry_host_predicate.iter().enumerate() {
        if h.name == "envoy.retry_host_predicates.previous_hosts" {
            retry_previous_hosts = true;
        } else {
            cx.reject(
                idx(p, "retry_host_predicate", i),
                Reason::UnsupportedValue(format!("predicate `{}`", h.name)),
            );
        }
    }
    let codes = retriable_status_codes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match u16::try_from(*c) {
            Ok(c) if (100..600).contains(&c) => Some(c),
            _ => {
                cx.reject(
                    idx(p, "retriable_status_codes", i),
                    Reason::Invalid(format!("{c} is not an HTTP status")),
                );
                None
            }
        })
        .collect();
    let back_off = retry_back_off.as_ref().and_then(|b| {
        let bp = join(p, "retry_back_off");
        let base = match &b.base_interval {
            Some(d) => cx.duration(&join(&bp, "base_interval"), d)?,
            None => {
                cx.reject(join(&bp, "base_interval"), Reason::Missing);
                return None;
            }
        };
        if base.is_zero() {
            cx.reject(
                join(&bp, "base_interval"),
                Reason::Invalid("must be greater than zero".into()),
            );
            return None;
        }
        let max = match &b.max_interval {
            Some(d) => cx.duration(&join(&bp, "max_interval"), d)?,
            None => base * 10,
        };
        if max < base {
            cx.reject(
                join(&bp, "max_interval"),
                Reason::Invalid("shorter than `base_interval`".into()),
            );
            return None;
        }
        Some(mr::RetryBackOff {
            base_interval: base,
            max_interval: max,
        })
    });
    Some(mr::RetryPolicy {
        retry_on: conditions,
        num_retries: num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: cx.timeout(&join(p, "per_try_timeout"), per_try_timeout, None),
        retriable_status_codes: codes,
        retry_previous_hosts,
        back_off,
    })
}

/// A `regex_rewrite` (of a route's path, or of a redirect's).
fn regex_rewrite(
    cx: &mut Cx,
    p: &str,
    r: &xds_api::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
) -> Option<mr::RegexRewrite> {
    let pattern = match &r.pattern {
        Some(m) => regex_matcher(cx, &join(p, "pattern"), m)?,
        None => {
            cx.reject(join(p, "pattern"), Reason::Missing);
            return None;
        }
    };
    Some(mr::RegexRewrite {
        pattern,
        substitution: envoy_substitution(&r.substitution),
    })
}

fn redirect(cx: &mut Cx, p: &str, r: &pb::RedirectAction) -> Option<mr::Redirect> {
    use pb::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let pb::RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = r;
    let scheme = match scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let path = match path_rewrite_specifier {
        None => None,
        Some(P::PathRedirect(s)) => Some(mr::PathRedirect::Path(s.clone())),
        Some(P::PrefixRewrite(s)) => Some(mr::PathRedirect::Prefix(s.clone())),
        Some(P::RegexRewrite(r)) => {
            regex_rewrite(cx, &join(p, "regex_rewrite"), r).map(mr::PathRedirect::Regex)
        }
    };
    let code = match C::try_from(*response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => {
            cx.reject(
                join(p, "response_code"),
                Reason::UnsupportedValue(format!("value {response_code}")),
            );
            return None;
        }
    };
    let port = if *port_redirect == 0 {
        None
    } else {
        Some(cx.u16(&join(p, "port_redirect"), *port_redirect, "port")?)
    };
    Some(mr::Redirect {
        scheme,
        host: (!host_redirect.is_empty()).then(|| host_redirect.clone()),
        port,
        path,
        response_code: code,
        strip_query: *strip_query,
    })
}

fn direct_response(
    cx: &mut Cx,
    p: &str,
    d: &pb::DirectResponseAction,
) -> Option<mr::DirectResponse> {
    let status = cx.u16(&join(p, "status"), d.status, "status")?;
    if !(200..600).contains(&status) {
        cx.reject(
            join(p, "status"),
            Reason::Invalid(format!("{status} is not in [200, 600)")),
        );
        return None;
    }
    let body = match &d.body {
        Some(b) => super::common::inline_text(cx, &join(p, "body"), b).ok()?,
        None => None,
    };
    Some(mr::DirectResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_translation() {
        for (envoy, ours) in [
            ("\\1/x", "${1}/x"),
            ("a$b", "a$$b"),
            ("\\\\", "\\"),
            ("plain", "plain"),
        ] {
            assert_eq!(envoy_substitution(envoy), ours);
        }
    }
}
