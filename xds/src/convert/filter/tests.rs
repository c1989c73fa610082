//! Fault and CORS filters and their per-route settings: conversion from Envoy YAML (the
//! file source's path, which also makes the protobuf the xDS path decodes) and rejections.

use std::sync::Arc;
use std::time::Duration;

use myelin_proxy::model::filter as mf;
use myelin_proxy::model::jwt as mj;
use myelin_proxy::model::listener as ml;
use myelin_proxy::model::route as mr;
use myelin_proxy::model::{self, StringPattern};
use xds_api::pb::envoy::config::listener::v3 as lpb;
use xds_api::pb::envoy::config::route::v3 as rpb;

use super::super::json;
use super::super::test_util::{hcm_listener, messages};
use super::super::{listener, route_configuration};

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

fn yaml<T: serde::de::DeserializeOwned + prost::Name>(text: &str) -> T {
    json::from_value(serde_yaml::from_str(text).unwrap()).unwrap()
}

/// A listener whose connection manager has `filters` (YAML list items, unindented) before
/// the router.
fn listener_with(filters: &str) -> lpb::Listener {
    hcm_listener(filters, "")
}

fn filters_of(l: &model::Listener) -> Arc<mf::HttpFilters> {
    match &l.filter_chains[0].filter {
        ml::NetworkFilter::HttpConnectionManager(h) => h.http_filters.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn istiod_filters_are_accepted() {
    // What istiod puts before the router of every HTTP connection manager that Myelin has
    // (its own `istio.*` filters aside), and an optional filter Myelin lacks.
    let l = listener(&listener_with(
        r#"
- name: envoy.filters.http.fault
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
- name: envoy.filters.http.cors
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
- name: envoy.filters.http.wasm
  is_optional: true
"#,
    ))
    .unwrap();
    let f = filters_of(&l);
    assert_eq!(f.0.len(), 2);
    assert_eq!(f.0[0].name, "envoy.filters.http.fault");
    match &f.0[0].kind {
        mf::FilterKind::Fault { policy, .. } => {
            assert!(policy.delay.is_none() && policy.abort.is_none())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.0[1].kind, mf::FilterKind::Cors);

    // With no filter but the router, nothing runs before it.
    assert!(filters_of(&listener(&listener_with("")).unwrap()).is_empty());
}

#[test]
fn a_fault_filters_own_settings() {
    let l = listener(&listener_with(
        r#"
- name: faults
  disabled: true
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    delay: {fixed_delay: 1.5s, percentage: {numerator: 25, denominator: TEN_THOUSAND}}
    abort: {grpc_status: 14, percentage: {numerator: 3}}
    upstream_cluster: web
    headers: [{name: x-test, exact_match: "yes"}]
    downstream_nodes: [a, b]
    max_active_faults: 7
    abort_percent_runtime: fault.abort
"#,
    ))
    .unwrap();
    let f = filters_of(&l);
    assert_eq!(f.0[0].name, "faults");
    assert!(f.0[0].disabled);
    let mf::FilterKind::Fault { policy, .. } = &f.0[0].kind else {
        panic!("{:?}", f.0[0].kind)
    };
    assert_eq!(
        policy.delay,
        Some(mf::FaultDelay {
            duration: mf::DelaySource::Fixed(Duration::from_millis(1500)),
            percentage: mf::Fraction {
                numerator: 25,
                denominator: 10_000
            },
        })
    );
    assert_eq!(
        policy.abort,
        Some(mf::FaultAbort {
            status: mf::AbortStatus::Grpc(14),
            percentage: mf::Fraction {
                numerator: 3,
                denominator: 100
            },
        })
    );
    assert_eq!(policy.upstream_cluster.as_deref(), Some("web"));
    assert_eq!(policy.headers.len(), 1);
    assert_eq!(policy.downstream_nodes, ["a", "b"]);
    assert_eq!(policy.max_active_faults, Some(7));
}

#[test]
fn bad_filters_are_rejected_by_path() {
    let fc = "filter_chains[0].filters[0].typed_config";
    for (filters, want) in [
        (
            "- name: envoy.filters.http.lua\n  typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}",
            format!("{fc}.http_filters[0]: HTTP filter `envoy.filters.http.lua` (type `type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua`) is not supported"),
        ),
        (
            &format!("- name: f\n  typed_config: {{\"@type\": {FAULT}, abort: {{http_status: 700}}}}"),
            format!("{fc}.http_filters[0].typed_config.abort.http_status: 700 is not in 200..=599"),
        ),
        (
            &format!("- name: f\n  typed_config: {{\"@type\": {FAULT}, abort: {{percentage: {{numerator: 1}}}}}}"),
            format!("{fc}.http_filters[0].typed_config.abort: exactly one of `http_status`, `grpc_status` or `header_abort` is required"),
        ),
        (
            &format!("- name: f\n  typed_config: {{\"@type\": {FAULT}, delay: {{fixed_delay: 1s, header_delay: {{}}}}}}"),
            format!("{fc}.http_filters[0].typed_config.delay: exactly one of `fixed_delay` or `header_delay` is required"),
        ),
        (
            &format!("- name: f\n  typed_config: {{\"@type\": {FAULT}, response_rate_limit: {{fixed_limit: {{limit_kbps: 1}}}}}}"),
            format!("{fc}.http_filters[0].typed_config.response_rate_limit: not supported"),
        ),
    ] {
        let e = messages(listener(&listener_with(filters)));
        assert_eq!(e, [want], "{filters}");
    }
}

#[test]
fn settings_at_every_level() {
    let rc = route_configuration(&yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
typed_per_filter_config:
  envoy.filters.http.fault:
    "@type": {FAULT}
    abort: {{http_status: 503, percentage: {{numerator: 1}}}}
virtual_hosts:
- name: v
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.cors:
      "@type": {CORS}
      allow_origin_string_match: [{{prefix: "https://"}}]
      allow_methods: GET
      max_age: "60"
      allow_credentials: true
      forward_not_matching_preflights: false
      filter_enabled: {{default_value: {{numerator: 50}}, runtime_key: cors.on}}
  cors:
    allow_origin_string_match: [{{exact: "https://old.example"}}]
  routes:
  - match: {{prefix: /}}
    route:
      cluster: web
      cors: {{allow_methods: PUT}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: true
      envoy.filters.http.lua:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        is_optional: true
        config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute}}
      envoy.filters.http.local_ratelimit:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        config: {{}}
"#
    )))
    .unwrap();
    let fault = &rc.filters["envoy.filters.http.fault"];
    assert!(!fault.disabled);
    assert!(matches!(&fault.policy, Some(mf::FilterPolicy::Fault(p))
        if p.abort.as_ref().map(|a| a.status) == Some(mf::AbortStatus::Http(503))));
    let vh = &rc.virtual_hosts[0];
    let Some(mf::FilterPolicy::Cors(c)) = &vh.filters["envoy.filters.http.cors"].policy else {
        panic!("{:?}", vh.filters)
    };
    assert_eq!(
        c.allow_origin[0].pattern,
        StringPattern::Prefix("https://".into())
    );
    assert_eq!(c.allow_methods.as_ref().unwrap().as_str(), "GET");
    assert_eq!(c.max_age.as_ref().unwrap().as_str(), "60");
    assert_eq!(c.allow_credentials, Some(true));
    assert_eq!(c.forward_not_matching_preflights, Some(false));
    assert_eq!(
        c.filter_enabled,
        Some(mf::Fraction {
            numerator: 50,
            denominator: 100
        })
    );
    assert_eq!(
        vh.cors.as_ref().unwrap().allow_origin[0].pattern,
        StringPattern::Exact("https://old.example".into())
    );
    let r = &vh.routes[0];
    assert_eq!(
        r.filters["envoy.filters.http.fault"],
        mf::FilterSetting {
            disabled: true,
            policy: None
        }
    );
    assert!(
        !r.filters.contains_key("envoy.filters.http.lua"),
        "optional settings of a filter Myelin lacks are skipped"
    );
    // An empty `config` (Envoy Gateway's way of turning on a filter the connection
    // manager has off) is no config: on, with the filter's own.
    assert_eq!(
        r.filters["envoy.filters.http.local_ratelimit"],
        mf::FilterSetting {
            disabled: false,
            policy: None
        }
    );
    assert_eq!(
        r.cors
            .as_ref()
            .unwrap()
            .allow_methods
            .as_ref()
            .unwrap()
            .as_str(),
        "PUT"
    );
}

#[test]
fn bad_settings_are_rejected_by_path() {
    let route_with = |settings: &str| {
        let settings: String = settings
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("      {l}\n"))
            .collect();
        yaml::<rpb::RouteConfiguration>(&format!(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
{settings}"#
        ))
    };
    let at = "virtual_hosts[0].routes[0].typed_per_filter_config";
    for (settings, want) in [
        (
            "authz:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute".to_owned(),
            format!("{at}[\"authz\"]: per-route settings of type `type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute` is not supported"),
        ),
        (
            "authz:\n  \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig\n  config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute}".to_owned(),
            format!("{at}[\"authz\"].config: per-route settings of type `type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute` is not supported"),
        ),
        (
            format!("cors:\n  \"@type\": {CORS}\n  allow_methods: \"GET\\nX\""),
            format!("{at}[\"cors\"].allow_methods: \"GET\\nX\" is not a header value"),
        ),
        (
            format!("fault:\n  \"@type\": {FAULT}\n  delay: {{fixed_delay: 0s}}"),
            format!("{at}[\"fault\"].delay.fixed_delay: must be above 0"),
        ),
    ] {
        let e = messages(route_configuration(&route_with(&settings)));
        assert_eq!(e, [want], "{settings}");
    }
    // Several at once: in name order, whatever the map's.
    let unknown = |name: &str| format!("{name}:\n  \"@type\": type.googleapis.com/x.Unknown\n");
    let e = messages(route_configuration(&route_with(&format!(
        "{}{}{}",
        unknown("c"),
        unknown("a"),
        unknown("b")
    ))));
    let names: Vec<&str> = e.iter().map(|m| &m[at.len() + 2..at.len() + 3]).collect();
    assert_eq!(names, ["a", "b", "c"], "{e:?}");
}

#[test]
fn fields_myelin_does_not_know_are_rejected_not_dropped() {
    // An HTTPFault with a field from a newer Envoy (tag 99): decoding keeps its bytes, so
    // the conversion sees it.
    use prost::Message;
    let mut bytes = super::ext::HttpFault::default().encode_to_vec();
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]); // field 99, varint 1
    let rc = rpb::RouteConfiguration {
        name: "r".into(),
        typed_per_filter_config: [(
            "fault".to_owned(),
            xds_api::pb::google::protobuf::Any {
                type_url: FAULT.into(),
                value: bytes,
            },
        )]
        .into(),
        ..Default::default()
    };
    let e = messages(route_configuration(&rc));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("typed_per_filter_config[\"fault\"]"),
        "{e:?}"
    );
}

const RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

#[test]
fn a_local_rate_limit_filter_and_its_route_settings() {
    // Envoy's documented example: the filter in the connection manager with a bucket, and
    // a route with its own.
    let l = listener(&listener_with(&format!(
        r#"
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": {RATE_LIMIT}
    stat_prefix: http_local_rate_limiter
    token_bucket: {{max_tokens: 10000, tokens_per_fill: 1000, fill_interval: 1s}}
    filter_enabled: {{runtime_key: local_rate_limit_enabled, default_value: {{numerator: 100, denominator: HUNDRED}}}}
    filter_enforced: {{runtime_key: local_rate_limit_enforced, default_value: {{numerator: 100, denominator: HUNDRED}}}}
    response_headers_to_add:
    - append_action: OVERWRITE_IF_EXISTS_OR_ADD
      header: {{key: x-local-rate-limit, value: "true"}}
    local_rate_limit_per_downstream_connection: false
    enable_x_ratelimit_headers: DRAFT_VERSION_03
    status: {{code: 503}}
"#
    )))
    .unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::LocalRateLimit(p) = &f.0[0].kind else {
        panic!("{:?}", f.0[0].kind)
    };
    assert_eq!(&*p.stat_prefix, "http_local_rate_limiter");
    assert_eq!(p.status, 503);
    let b = p.bucket.as_ref().unwrap();
    assert_eq!(
        (b.max_tokens, b.tokens_per_fill, b.fill_interval),
        (10_000, 1_000, Duration::from_secs(1))
    );
    assert_eq!(p.filter_enabled, mf::Fraction::ALL);
    assert_eq!(p.filter_enforced, mf::Fraction::ALL);
    assert_eq!(p.response_headers_to_add[0].name, "x-local-rate-limit");
    assert!(p.x_ratelimit_headers && !p.per_connection && !p.grpc_resource_exhausted);

    // Without a bucket the filter limits nothing itself (routes bring theirs); unset
    // shares are none of the requests, Envoy's safe default; a status below 400 is 429.
    let l = listener(&listener_with(&format!(
        "- name: rl\n  typed_config: {{\"@type\": {RATE_LIMIT}, stat_prefix: rl, status: {{code: 302}}}}"
    )))
    .unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::LocalRateLimit(p) = &f.0[0].kind else {
        panic!()
    };
    assert!(p.bucket.is_none());
    assert_eq!(p.filter_enabled, mf::Fraction::NONE);
    assert_eq!(p.filter_enforced, mf::Fraction::NONE);
    assert_eq!(p.status, 429);

    let rc = route_configuration(&yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
      rl:
        "@type": {RATE_LIMIT}
        stat_prefix: route
        token_bucket: {{max_tokens: 5, fill_interval: 0.5s}}
        local_rate_limit_per_downstream_connection: true
        rate_limited_as_resource_exhausted: true
        request_headers_to_add_when_not_enforced:
        - header: {{key: x-limited, value: "1"}}
"#
    )))
    .unwrap();
    let s = &rc.virtual_hosts[0].routes[0].filters["rl"];
    let Some(mf::FilterPolicy::LocalRateLimit(p)) = &s.policy else {
        panic!("{s:?}")
    };
    let b = p.bucket.as_ref().unwrap();
    assert_eq!(
        (b.max_tokens, b.tokens_per_fill, b.fill_interval),
        (5, 1, Duration::from_millis(500)),
        "one token per fill unless set"
    );
    assert!(p.per_connection && p.grpc_resource_exhausted);
    assert_eq!(
        p.request_headers_to_add_when_not_enforced[0].name,
        "x-limited"
    );
}

#[test]
fn bad_local_rate_limits_are_rejected_by_path() {
    let fc = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    for (config, want) in [
        (
            "stat_prefix: x, token_bucket: {max_tokens: 1, fill_interval: 0.01s}",
            format!("{fc}.token_bucket.fill_interval: must be at least 50ms (Envoy's limit)"),
        ),
        (
            "stat_prefix: x, token_bucket: {max_tokens: 1}",
            format!("{fc}.token_bucket.fill_interval: required but not set"),
        ),
        (
            "stat_prefix: x, token_bucket: {max_tokens: 1, tokens_per_fill: 0, fill_interval: 1s}",
            format!("{fc}.token_bucket.tokens_per_fill: must be above 0"),
        ),
        (
            "token_bucket: {max_tokens: 1, fill_interval: 1s}",
            format!("{fc}.stat_prefix: required but not set"),
        ),
        (
            "stat_prefix: x, descriptors: [{entries: [{key: k, value: ''}], token_bucket: {max_tokens: 1, fill_interval: 1s}}]",
            format!("{fc}.descriptors[0].entries[0].value: an empty value (a wildcard entry) is not supported"),
        ),
        (
            "stat_prefix: x, descriptors: [{entries: [{key: k, value: v}]}]",
            format!("{fc}.descriptors[0].token_bucket: required but not set"),
        ),
        (
            "stat_prefix: x, descriptors: [{entries: [{key: k, value: v}], token_bucket: {max_tokens: 1, fill_interval: 1s}}, {entries: [{key: k, value: v}], token_bucket: {max_tokens: 2, fill_interval: 1s}}]",
            format!("{fc}.descriptors[1]: the same entries as an earlier descriptor"),
        ),
        (
            "stat_prefix: x, local_cluster_rate_limit: {}",
            format!("{fc}.local_cluster_rate_limit: not supported"),
        ),
    ] {
        let filters = format!("- name: rl\n  typed_config: {{\"@type\": {RATE_LIMIT}, {config}}}");
        let e = messages(listener(&listener_with(&filters)));
        assert_eq!(e, [want], "{config}");
    }
    // Per route, a bucket is required (Envoy: "token bucket must be set for per filter
    // configs").
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
typed_per_filter_config:
  rl: {{"@type": {RATE_LIMIT}, stat_prefix: x}}
"#
    ));
    assert_eq!(
        messages(route_configuration(&rc)),
        ["typed_per_filter_config[\"rl\"].token_bucket: required in per-route settings"]
    );
}

const GLOBAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const GLOBAL_RATE_LIMIT_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";

#[test]
fn the_global_rate_limit_filter_as_envoy_gateway_writes_it() {
    // Envoy Gateway's listener (camelCase JSON, as its goldens have it): the domain and the
    // service's cluster, everything else Envoy's defaults.
    let l: lpb::Listener = json::from_value(serde_json::json!({
        "name": "first-listener",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 10080}},
        "defaultFilterChain": {"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "statPrefix": "http",
                "rds": {"configSource": {"ads": {}, "resourceApiVersion": "V3"}, "routeConfigName": "first-listener"},
                "httpFilters": [
                    {"name": "envoy.filters.http.ratelimit", "typedConfig": {
                        "@type": GLOBAL_RATE_LIMIT,
                        "domain": "first-listener",
                        "rateLimitService": {
                            "grpcService": {"envoyGrpc": {"clusterName": "ratelimit_cluster"}},
                            "transportApiVersion": "V3"
                        }
                    }},
                    {"name": "envoy.filters.http.router", "typedConfig": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    }}
                ]
            }
        }]}
    }))
    .unwrap();
    let l = listener(&l).unwrap();
    let f = match &l.default_filter_chain.as_ref().unwrap().filter {
        ml::NetworkFilter::HttpConnectionManager(h) => h.http_filters.clone(),
        other => panic!("{other:?}"),
    };
    let mf::FilterKind::RateLimit(p) = &f.0[0].kind else {
        panic!("{:?}", f.0[0].kind)
    };
    assert_eq!(p.domain, "first-listener");
    assert_eq!(p.service.cluster, "ratelimit_cluster");
    assert_eq!(
        p.service.authority, "ratelimit_cluster",
        "the cluster's name"
    );
    assert_eq!(p.timeout, Duration::from_millis(20), "Envoy's default");
    assert_eq!((p.status, p.status_on_error), (429, 500));
    assert_eq!(p.failure_mode_deny, mf::Fraction::NONE);
    assert_eq!(
        p.filter_enabled,
        mf::Fraction::ALL,
        "unset: all (Envoy's runtime default)"
    );
    assert_eq!(p.filter_enforced, mf::Fraction::ALL);
    assert_eq!(p.request_type, mf::RequestType::Both);
    assert!(p.x_envoy_ratelimited && !p.x_ratelimit_headers);

    // Every setting, and statuses out of range falling back as in Envoy.
    let l = listener(&listener_with(&format!(
        r#"
- name: rl
  typed_config:
    "@type": {GLOBAL_RATE_LIMIT}
    domain: d
    stage: 2
    request_type: external
    timeout: 0.1s
    failure_mode_deny: true
    failure_mode_deny_percent: {{runtime_key: k, default_value: {{numerator: 25}}}}
    rate_limited_as_resource_exhausted: true
    enable_x_ratelimit_headers: DRAFT_VERSION_03
    disable_x_envoy_ratelimited_header: true
    rate_limited_status: {{code: 302}}
    status_on_error: {{code: 503}}
    response_headers_to_add: [{{header: {{key: x-limited, value: "1"}}}}]
    stat_prefix: s
    rate_limits: [{{actions: [{{generic_key: {{descriptor_value: own}}}}]}}]
    rate_limit_service:
      grpc_service:
        envoy_grpc: {{cluster_name: rls, authority: rls.example.com}}
        initial_metadata: [{{key: x-tenant, value: a}}]
      transport_api_version: V3
"#
    )))
    .unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::RateLimit(p) = &f.0[0].kind else {
        panic!()
    };
    assert_eq!((p.stage, p.request_type), (2, mf::RequestType::External));
    assert_eq!(p.timeout, Duration::from_millis(100));
    assert_eq!(
        p.failure_mode_deny,
        mf::Fraction {
            numerator: 25,
            denominator: 100
        },
        "the percent in place of failure_mode_deny"
    );
    assert_eq!((p.status, p.status_on_error), (429, 503));
    assert!(p.grpc_resource_exhausted && p.x_ratelimit_headers && !p.x_envoy_ratelimited);
    assert_eq!(p.response_headers_to_add[0].name, "x-limited");
    assert_eq!(&*p.stat_prefix, "s");
    assert_eq!(p.rate_limits.len(), 1);
    assert_eq!(p.service.authority, "rls.example.com");
    assert_eq!(
        p.service.metadata,
        [("x-tenant".to_owned(), "a".to_owned())]
    );

    let rc = route_configuration(&yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
      rl:
        "@type": {GLOBAL_RATE_LIMIT_ROUTE}
        vh_rate_limits: INCLUDE
        domain: other
        rate_limits: [{{actions: [{{remote_address: {{}}}}]}}]
"#
    )))
    .unwrap();
    let s = &rc.virtual_hosts[0].routes[0].filters["rl"];
    let Some(mf::FilterPolicy::RateLimit(r)) = &s.policy else {
        panic!("{s:?}")
    };
    assert_eq!(r.vh_rate_limits, mf::VhRateLimits::Include);
    assert_eq!(r.domain.as_deref(), Some("other"));
    assert_eq!(r.rate_limits.len(), 1);
}

#[test]
fn newer_rate_limit_fields_in_filter_configs() {
    // Envoy Gateway's per-route costs (`hitsAddend`, `applyOnStreamDone`, camelCase as in
    // its goldens) and its client CIDR match (`remoteAddressMatch`): past `xds-api` 0.2's
    // `RateLimit`, read with Myelin's own.
    let rc: rpb::RouteConfiguration = json::from_value(serde_json::json!({
        "name": "r",
        "virtualHosts": [{"name": "v", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "route": {"cluster": "web"},
            "typedPerFilterConfig": {
                "envoy.filters.http.ratelimit": {
                    "@type": GLOBAL_RATE_LIMIT_ROUTE,
                    "rateLimits": [
                        {"actions": [{"genericKey": {"descriptorKey": "cost", "descriptorValue": "c"}}],
                         "hitsAddend": {"number": "12345"}},
                        {"actions": [{"genericKey": {"descriptorKey": "cost", "descriptorValue": "c"}}],
                         "applyOnStreamDone": true,
                         "hitsAddend": {"format": "%DYNAMIC_METADATA(something.com:key)%"}},
                        {"actions": [{"remoteAddressMatch": {
                            "addressMatcher": {"ranges": [{"addressPrefix": "192.168.0.0", "prefixLen": 16}]},
                            "descriptorKey": "masked_remote_address",
                            "descriptorValue": "192.168.0.0/16"
                        }}]}
                    ]
                }
            }
        }]}]
    }))
    .unwrap();
    let rc = route_configuration(&rc).unwrap();
    let s = &rc.virtual_hosts[0].routes[0].filters["envoy.filters.http.ratelimit"];
    let Some(mf::FilterPolicy::RateLimit(r)) = &s.policy else {
        panic!("{s:?}")
    };
    let [cost, done, cidr] = &r.rate_limits[..] else {
        panic!("{:?}", r.rate_limits)
    };
    assert_eq!(
        (cost.hits, cost.on_stream_done),
        (mr::Hits::Number(12345), false)
    );
    assert_eq!((done.hits, done.on_stream_done), (mr::Hits::Never, true));
    let mr::RateLimitAction::RemoteAddressMatch {
        key,
        value,
        ranges,
        invert,
        default,
    } = &cidr.actions[0]
    else {
        panic!("{:?}", cidr.actions)
    };
    assert_eq!(
        (key.as_str(), value.as_str()),
        ("masked_remote_address", "192.168.0.0/16")
    );
    assert_eq!(ranges[0].prefix_len, 16);
    assert!(!invert && default.is_none());

    // What the filters cannot honour is rejected with its path.
    let route = |config: &str| {
        yaml::<rpb::RouteConfiguration>(&format!(
            "name: r\ntypedPerFilterConfig:\n  rl: {{\"@type\": {config}}}\n"
        ))
    };
    for (config, want) in [
        (
            format!("{RATE_LIMIT}, stat_prefix: x, token_bucket: {{max_tokens: 1, fill_interval: 1s}}, rate_limits: [{{actions: [{{remote_address: {{}}}}], hits_addend: {{number: 2}}}}]"),
            "typed_per_filter_config[\"rl\"].rate_limits[0].hits_addend: not supported",
        ),
        (
            format!("{GLOBAL_RATE_LIMIT_ROUTE}, rate_limits: [{{actions: [{{remote_address: {{}}}}], hits_addend: {{format: '%BYTES_SENT%'}}}}]"),
            "typed_per_filter_config[\"rl\"].rate_limits[0].hits_addend.format: only a `%DYNAMIC_METADATA(...)%` format is supported (Myelin has no dynamic metadata: the entry then makes no descriptor)",
        ),
        (
            format!("{GLOBAL_RATE_LIMIT_ROUTE}, rate_limits: [{{actions: [{{remote_address: {{}}}}], hits_addend: {{number: 1000000001}}}}]"),
            "typed_per_filter_config[\"rl\"].rate_limits[0].hits_addend.number: at most 1000000000",
        ),
        (
            format!("{GLOBAL_RATE_LIMIT_ROUTE}, rate_limits: [{{actions: [{{remote_address: {{}}, generic_key: {{descriptor_value: v}}}}]}}]"),
            "typed_per_filter_config[\"rl\"].rate_limits[0].actions[0]: one action per entry",
        ),
        (
            format!("{GLOBAL_RATE_LIMIT_ROUTE}, rate_limits: [{{actions: [{{query_parameters: {{query_parameter_name: q, descriptor_key: k}}}}]}}]"),
            "typed_per_filter_config[\"rl\"].rate_limits[0].actions[0].query_parameters: not supported",
        ),
        (
            format!("{GLOBAL_RATE_LIMIT_ROUTE}, rate_limits: [{{actions: [{{remote_address_match: {{descriptor_value: v}}}}]}}]"),
            "typed_per_filter_config[\"rl\"].rate_limits[0].actions[0].remote_address_match.address_matcher: required but not set",
        ),
    ] {
        assert_eq!(messages(route_configuration(&route(&config))), [want], "{config}");
    }
}

const JWT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const JWT_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
/// An RSA key as istiod inlines a RequestAuthentication's JWKS.
const RSA_JWKS: &str = r#"{"keys":[{"e":"AQAB","kid":"DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ","kty":"RSA","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7KfIupjf59vsdo91bSP9C8H07pSAGQO1MV_xFj9VswgsCg4R6otmg5PV2He95lZdHtOcU5DXIg_pbhLdKXbi66GlVeK6ABZOUW3WYtnNHD-91gVuoeJT_DwtGGcp4ignkgXfkiEm4sw-4sfb4qdt5oLbyVpmW6x9cfa7vs2WTfURiCrBoUqgBo_-4WTiULmmHSGZHOjzwa8WtrtOQGsAFjIbno85jp6MnGGGZPYZbDAa_b3y5u-YpW7ypZrvD8BgtKVjgtQgZhLAGezMt0ua3DRrWnKqTZ0BJ_EyxOGuHJrLsn00fnMQ"}]}"#;

#[test]
fn jwt_authentication_as_istiod_and_envoy_gateway_write_it() {
    // istiod's RequestAuthentication: an inline JWKS, any token of it or none.
    let jwks = serde_json::to_string(RSA_JWKS).unwrap();
    let l = listener(&listener_with(&format!(
        r#"
- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": {JWT}
    providers:
      origins-0:
        issuer: testing@secure.istio.io
        local_jwks: {{inline_string: {jwks}}}
        payload_in_metadata: testing@secure.istio.io
        forward: true
    rules:
    - match: {{prefix: /}}
      requires:
        requires_any:
          requirements: [{{provider_name: origins-0}}, {{allow_missing: {{}}}}]
    bypass_cors_preflight: true
"#
    )))
    .unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::Jwt(j) = &f.0[0].kind else {
        panic!("{:?}", f.0[0].kind)
    };
    let p = &j.providers["origins-0"];
    assert_eq!(p.issuer.as_deref(), Some("testing@secure.istio.io"));
    assert!(p.forward && p.default_locations());
    assert_eq!(p.clock_skew, 60, "Envoy's default");
    let mj::Jwks::Local(keys) = &p.jwks else {
        panic!("{:?}", p.jwks)
    };
    assert_eq!(keys.keys.len(), 1);
    assert_eq!(
        j.rules[0].requires,
        Some(mj::JwtRequirement::Any(vec![
            mj::JwtRequirement::Provider {
                name: "origins-0".into(),
                audiences: None
            },
            mj::JwtRequirement::AllowMissing,
        ]))
    );
    assert!(j.bypass_cors_preflight);

    // Envoy Gateway's SecurityPolicy (camelCase, a remote JWKS), and its route's
    // requirement by name.
    let l: lpb::Listener = json::from_value(serde_json::json!({
        "name": "l",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 10080}},
        "filterChains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "statPrefix": "http",
                "rds": {"configSource": {"ads": {}}, "routeConfigName": "r"},
                "httpFilters": [
                    {"name": "envoy.filters.http.jwt_authn", "typedConfig": {
                        "@type": JWT,
                        "providers": {"first-route-example": {
                            "audiences": ["foo.com"],
                            "issuer": "https://www.example.com",
                            "payloadInMetadata": "https://www.example.com",
                            "remoteJwks": {
                                "cacheDuration": "300s",
                                "httpUri": {"cluster": "localhost_443", "timeout": "5s",
                                            "uri": "https://localhost/jwt/public-key/jwks.json"}
                            },
                            "claimToHeaders": [{"headerName": "X-Sub", "claimName": "sub"}]
                        }},
                        "requirementMap": {"first-route": {"providerName": "first-route-example"}}
                    }},
                    {"name": "envoy.filters.http.router", "typedConfig": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    }}
                ]
            }
        }]}]
    }))
    .unwrap();
    let l = listener(&l).unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::Jwt(j) = &f.0[0].kind else {
        panic!()
    };
    let p = &j.providers["first-route-example"];
    let mj::Jwks::Remote(r) = &p.jwks else {
        panic!("{:?}", p.jwks)
    };
    assert_eq!(r.cluster, "localhost_443");
    assert_eq!(r.uri, "https://localhost/jwt/public-key/jwks.json");
    assert_eq!(
        (r.timeout, r.cache_duration),
        (Duration::from_secs(5), Duration::from_secs(300))
    );
    assert_eq!(p.claim_to_headers, [("x-sub".to_owned(), "sub".to_owned())]);
    assert!(j.rules.is_empty());
    assert!(j.requirement_map.contains_key("first-route"));
    let rc = route_configuration(&yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.jwt_authn: {{"@type": {JWT_ROUTE}, requirement_name: first-route}}
"#
    )))
    .unwrap();
    let s = &rc.virtual_hosts[0].routes[0].filters["envoy.filters.http.jwt_authn"];
    assert_eq!(
        s.policy,
        Some(mf::FilterPolicy::Jwt(Arc::new(mj::JwtRoute::Requirement(
            "first-route".into()
        ))))
    );
}

#[test]
fn bad_jwt_authentication_is_rejected_by_path() {
    let fc = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    let keys = serde_json::to_string(RSA_JWKS).unwrap();
    let local = format!("local_jwks: {{inline_string: {keys}}}");
    for (config, want) in [
        (
            "providers: {p: {issuer: i}}".to_owned(),
            format!("{fc}.providers[\"p\"].remote_jwks: required but not set"),
        ),
        (
            "providers: {p: {local_jwks: {inline_string: '{\"keys\": []}'}}}".to_owned(),
            format!("{fc}.providers[\"p\"].local_jwks: a JWKS without keys"),
        ),
        (
            format!("providers: {{p: {{{local}}}}}, rules: [{{match: {{prefix: /}}, requires: {{provider_name: q}}}}]"),
            format!("{fc}.rules[0].requires.provider_name: no provider named \"q\""),
        ),
        (
            format!("providers: {{p: {{{local}}}}}, rules: [{{match: {{prefix: /}}, requires: {{requires_any: {{requirements: [{{provider_name: p}}]}}}}}}]"),
            format!("{fc}.rules[0].requires.requires_any.requirements: at least 2"),
        ),
        (
            format!("providers: {{p: {{{local}}}}}, rules: [{{match: {{prefix: /}}, requirement_name: n}}]"),
            format!("{fc}.rules[0].requirement_name: \"n\" is not in requirement_map"),
        ),
        (
            "providers: {p: {remote_jwks: {http_uri: {uri: /keys, cluster: c, timeout: 1s}}}}".to_owned(),
            format!("{fc}.providers[\"p\"].remote_jwks.http_uri.uri: \"/keys\" is not an absolute URL"),
        ),
        (
            format!("providers: {{p: {{{local}, from_headers: [{{name: 'bad name'}}]}}}}"),
            format!("{fc}.providers[\"p\"].from_headers[0].name: \"bad name\" is not a header name"),
        ),
        (
            format!("providers: {{p: {{{local}}}}}, filter_state_rules: {{name: x}}"),
            format!("{fc}.filter_state_rules: not supported"),
        ),
    ] {
        let filters = format!("- name: jwt\n  typed_config: {{\"@type\": {JWT}, {config}}}");
        let e = messages(listener(&listener_with(&filters)));
        assert_eq!(e, [want], "{config}");
    }
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        "name: r\ntyped_per_filter_config:\n  jwt: {{\"@type\": {JWT_ROUTE}, disabled: false}}\n"
    ));
    assert_eq!(
        messages(route_configuration(&rc)),
        ["typed_per_filter_config[\"jwt\"].disabled: must be true"]
    );
}

const API_KEY: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth";
const API_KEY_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute";

#[test]
fn api_key_auth_as_envoy_gateway_writes_it() {
    // The filter with no keys of its own, a route with its keys, sources and forwarding
    // (Envoy Gateway's SecurityPolicy `apiKeyAuth`, camelCase).
    let l = listener(&listener_with(&format!(
        "- name: envoy.filters.http.api_key_auth\n  typed_config: {{\"@type\": {API_KEY}}}"
    )))
    .unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::ApiKeyAuth(a) = &f.0[0].kind else {
        panic!("{:?}", f.0[0].kind)
    };
    assert!(a.keys.0.is_empty() && a.sources.is_empty());
    let rc: rpb::RouteConfiguration = json::from_value(serde_json::json!({
        "name": "r",
        "virtualHosts": [{"name": "v", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "route": {"cluster": "web"},
            "typedPerFilterConfig": {"envoy.filters.http.api_key_auth": {
                "@type": API_KEY_ROUTE,
                "allowedClients": ["client-1"],
                "credentials": [{"client": "client-1", "key": "key1"}],
                "keySources": [{"header": "X-API-KEY"}, {"query": "X-API-KEY"}],
                "forwarding": {"header": "X-API-KEY-CLIENT-ID", "hideCredentials": true}
            }}
        }]}]
    }))
    .unwrap();
    let rc = route_configuration(&rc).unwrap();
    let s = &rc.virtual_hosts[0].routes[0].filters["envoy.filters.http.api_key_auth"];
    let Some(mf::FilterPolicy::ApiKeyAuth(r)) = &s.policy else {
        panic!("{s:?}")
    };
    assert_eq!(r.keys.0["key1"], "client-1");
    assert_eq!(
        r.sources,
        [
            mf::ApiKeySource::Header("x-api-key".into()),
            mf::ApiKeySource::Query("X-API-KEY".into()),
        ]
    );
    assert_eq!(r.allowed_clients, ["client-1"]);
    assert_eq!(r.forwarding.header.as_deref(), Some("x-api-key-client-id"));
    assert!(r.forwarding.hide_credentials);
    assert!(!format!("{r:?}").contains("key1"), "keys are not shown");

    // Rejections, the key not named.
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
typed_per_filter_config:
  k:
    "@type": {API_KEY_ROUTE}
    credentials: [{{key: s3cret, client: a}}, {{key: s3cret, client: b}}, {{key: x}}]
    key_sources: [{{}}]
"#
    ));
    let e = messages(route_configuration(&rc));
    assert_eq!(
        e,
        [
            "typed_per_filter_config[\"k\"].credentials[1].key: the same key as an earlier credential",
            "typed_per_filter_config[\"k\"].credentials[2].client: required but not set",
        ]
    );
    assert!(!e.concat().contains("s3cret"));
}

#[test]
fn bad_global_rate_limits_are_rejected_by_path() {
    let fc = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    let service = "rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: rls}}, transport_api_version: V3}";
    for (config, want) in [
        (service.to_owned(), format!("{fc}.domain: required but not set")),
        ("domain: d".to_owned(), format!("{fc}.rate_limit_service: required but not set")),
        (
            format!("domain: d, stage: 11, {service}"),
            format!("{fc}.stage: at most 10"),
        ),
        (
            format!("domain: d, request_type: sometimes, {service}"),
            format!(r#"{fc}.request_type: "sometimes": one of "internal", "external", "both""#),
        ),
        (
            "domain: d, rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: rls}}}".to_owned(),
            format!("{fc}.rate_limit_service.transport_api_version: must be V3"),
        ),
        (
            "domain: d, rate_limit_service: {grpc_service: {google_grpc: {target_uri: x, stat_prefix: x}}, transport_api_version: V3}".to_owned(),
            format!("{fc}.rate_limit_service.grpc_service.google_grpc: not supported"),
        ),
        (
            "domain: d, rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: rls}, initial_metadata: [{key: X-Big, value: v}]}, transport_api_version: V3}".to_owned(),
            format!("{fc}.rate_limit_service.grpc_service.initial_metadata[0].key: a lower-case header name"),
        ),
        (
            "domain: d, rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: rls, authority: 'a b'}}, transport_api_version: V3}".to_owned(),
            format!(r#"{fc}.rate_limit_service.grpc_service.envoy_grpc.authority: "a b" is not an authority"#),
        ),
    ] {
        let filters =
            format!("- name: rl\n  typed_config: {{\"@type\": {GLOBAL_RATE_LIMIT}, {config}}}");
        let e = messages(listener(&listener_with(&filters)));
        assert_eq!(e, [want], "{config}");
    }
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
typed_per_filter_config:
  rl: {{"@type": {GLOBAL_RATE_LIMIT_ROUTE}, override_option: INCLUDE_POLICY}}
"#
    ));
    assert_eq!(
        messages(route_configuration(&rc)),
        ["typed_per_filter_config[\"rl\"].override_option: not supported"]
    );
}

const BASIC_AUTH: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth";

#[test]
fn basic_auth_users_are_read_as_envoy_reads_htpasswd() {
    let filters = format!(
        "- name: ba\n  typed_config: {{\"@type\": {BASIC_AUTH}, users: {{inline_string: \"# c\\n\\nu1:{{SHA}}8FePHnF0saQcTqjG4X96ijuIySo=\\nu2:{{SHA}}i+UhJqb95FCnFio2UdWJu1HpV50=\\n\"}}, forward_username_header: X-User}}"
    );
    let l = listener(&listener_with(&filters)).unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::BasicAuth(p) = &f.0[0].kind else {
        panic!("{:?}", f.0[0])
    };
    assert_eq!(p.users.0.keys().collect::<Vec<_>>(), ["u1", "u2"]);
    assert!(p.users.verify("u1", "pass1") && p.users.verify("u2", "pass2"));
    assert!(!p.users.verify("u1", "pass2") && !p.users.verify("u3", "pass1"));
    assert_eq!(p.forward_username_header.as_deref(), Some("x-user"));
    // The config dump names users, never their hashes.
    let dump = serde_json::to_string(&**p).unwrap();
    assert!(dump.contains("\"u1\"") && !dump.contains("8FeP"), "{dump}");

    let fc = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    for (users, want) in [
        (
            "u1",
            format!("{fc}.users: line 1: `user:password` is expected"),
        ),
        (
            "u1:$apr1$x$y",
            format!(
                "{fc}.users: line 1: \\\"u1\\\" is not a {{SHA}} entry (the only kind Envoy takes)"
            ),
        ),
        (
            "u1:{SHA}abc",
            format!("{fc}.users: line 1: \\\"u1\\\": a {{SHA}} hash is 28 characters of base64"),
        ),
        (
            "u1:{SHA}8FePHnF0saQcTqjG4X96ijuIySo=\\nu1:{SHA}8FePHnF0saQcTqjG4X96ijuIySo=",
            format!("{fc}.users: line 2: \\\"u1\\\" is listed twice"),
        ),
        (
            ":{SHA}8FePHnF0saQcTqjG4X96ijuIySo=",
            format!("{fc}.users: line 1: empty user name or password"),
        ),
    ] {
        let filters = format!(
            "- name: ba\n  typed_config: {{\"@type\": {BASIC_AUTH}, users: {{inline_string: \"{users}\"}}}}"
        );
        let e = messages(listener(&listener_with(&filters)));
        assert_eq!(e, [want.replace("\\\"", "\"")], "{users}");
    }
    let filters = format!(
        "- name: ba\n  typed_config: {{\"@type\": {BASIC_AUTH}, users: {{filename: /etc/htpasswd}}, authentication_header: \"bad header\"}}"
    );
    assert_eq!(
        messages(listener(&listener_with(&filters))),
        [
            format!("{fc}.authentication_header: \"bad header\" is not a header name"),
            format!("{fc}.users.filename: not supported"),
        ]
    );
}

const CSRF: &str = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy";

/// CSRF policies per route as Envoy Gateway writes them, and a filter without
/// `filter_enabled` (required).
#[test]
fn csrf_policies() {
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: c}}
    typed_per_filter_config:
      envoy.filters.http.csrf:
        "@type": {CSRF}
        additionalOrigins: [{{exact: www.example.com}}, {{prefix: app.example}}, {{safeRegex: {{regex: '.*\.partner\.com$'}}}}]
        filterEnabled: {{defaultValue: {{numerator: 50}}}}
        shadowEnabled: {{defaultValue: {{denominator: TEN_THOUSAND, numerator: 250}}}}
"#
    ));
    let m = route_configuration(&rc).unwrap();
    let s = &m.virtual_hosts[0].routes[0].filters["envoy.filters.http.csrf"];
    let Some(mf::FilterPolicy::Csrf(p)) = &s.policy else {
        panic!("{s:?}")
    };
    assert_eq!(
        p.filter_enabled,
        mf::Fraction {
            numerator: 50,
            denominator: 100
        }
    );
    assert_eq!(
        p.shadow_enabled,
        Some(mf::Fraction {
            numerator: 250,
            denominator: 10_000
        })
    );
    assert_eq!(p.additional_origins.len(), 3);
    assert!(p.additional_origins[2].matches("api.partner.com"));

    let filters = format!("- name: csrf\n  typed_config: {{\"@type\": {CSRF}}}");
    assert_eq!(
        messages(listener(&listener_with(&filters))),
        ["filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.filter_enabled: required but not set"]
    );
}

#[test]
fn the_health_check_filter_as_envoy_gateway_writes_it() {
    let l = listener(&listener_with(
        r#"
- name: envoy.filters.http.health_check
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
    headers:
    - exactMatch: /status
      name: :path
    passThroughMode: false
    clusterMinHealthyPercentages: {web: {value: 12.5}}
"#,
    ))
    .unwrap();
    let f = filters_of(&l);
    let mf::FilterKind::HealthCheck(hc) = &f.0[0].kind else {
        panic!("{:?}", f.0[0]);
    };
    assert!(!hc.pass_through);
    assert_eq!(hc.headers.len(), 1);
    assert_eq!(hc.headers[0].name, ":path");
    assert_eq!(hc.cluster_min_healthy, [("web".to_owned(), 12.5)]);

    let errs = messages(listener(&listener_with(
        r#"
- name: a
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
    headers: [{name: ":path", exact_match: /healthz}]
- name: b
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
    pass_through_mode: true
    cache_time: 5s
    cluster_min_healthy_percentages: {web: {value: 150}}
"#,
    )));
    let joined = errs.join("\n");
    for want in [
        "http_filters[0].typed_config.pass_through_mode: required but not set",
        "http_filters[1].typed_config.cache_time: not supported",
        "http_filters[1].typed_config.cluster_min_healthy_percentages[\"web\"]: 150 is not a percentage",
    ] {
        assert!(joined.contains(want), "{want} in {joined}");
    }
}

#[test]
fn stateful_sessions_as_envoy_gateway_writes_them() {
    let l = listener(&listener_with(
        r#"
- name: envoy.filters.http.stateful_session
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession}
"#,
    ))
    .unwrap();
    assert!(matches!(
        filters_of(&l).0[0].kind,
        mf::FilterKind::StatefulSession(None)
    ));
    let table: rpb::RouteConfiguration = yaml(
        r#"
name: r
virtualHosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: /c}
    route: {cluster: c}
    typedPerFilterConfig:
      envoy.filters.http.stateful_session:
        '@type': type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
        statefulSession:
          sessionState:
            name: envoy.http.stateful_session.cookie
            typedConfig:
              '@type': type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState
              cookie: {name: session-header, path: /v1, ttl: 3600s}
  - match: {prefix: /h}
    route: {cluster: c}
    typedPerFilterConfig:
      envoy.filters.http.stateful_session:
        '@type': type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
        statefulSession:
          strict: true
          sessionState:
            name: envoy.http.stateful_session.header
            typedConfig:
              '@type': type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState
              name: Session-Header
  - match: {prefix: /off}
    route: {cluster: c}
    typedPerFilterConfig:
      envoy.filters.http.stateful_session:
        '@type': type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
        disabled: true
"#,
    );
    let t = route_configuration(&table).unwrap();
    let policy = |i: usize| match &t.virtual_hosts[0].routes[i].filters
        ["envoy.filters.http.stateful_session"]
        .policy
    {
        Some(mf::FilterPolicy::StatefulSession(p)) => p.clone(),
        other => panic!("{other:?}"),
    };
    let c = policy(0).unwrap();
    assert!(!c.strict);
    assert_eq!(
        c.state,
        mf::SessionState::Cookie {
            name: "session-header".into(),
            path: "/v1".into(),
            ttl: Some(Duration::from_secs(3600)),
            attributes: vec![],
        }
    );
    let h = policy(1).unwrap();
    assert!(h.strict);
    assert_eq!(
        h.state,
        mf::SessionState::Header {
            name: "session-header".into()
        }
    );
    assert_eq!(policy(2), None);

    let bad: rpb::RouteConfiguration = yaml(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  typed_per_filter_config:
    a:
      "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
      stateful_session:
        session_state:
          name: x
          typed_config: {"@type": type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState, cookie: {name: "bad name"}}
    b:
      "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
      disabled: false
    c:
      "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
      stateful_session: {}
  routes:
  - match: {prefix: /}
    route: {cluster: c}
"#,
    );
    let joined = messages(route_configuration(&bad)).join("\n");
    for want in [
        "cookie.name: \"bad name\" is not a cookie name",
        "[\"b\"].disabled: must be true",
        "[\"c\"].stateful_session.session_state: required but not set",
    ] {
        assert!(joined.contains(want), "{want} in {joined}");
    }
}

const EXT_AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const EXT_AUTHZ_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

#[test]
fn ext_authz_as_envoy_gateway_and_istiod_write_it() {
    use myelin_proxy::model::ext_authz as ma;
    // Envoy Gateway's two (camelCase, as its goldens), then istiod's for a CUSTOM policy.
    let l = listener(&json::from_value(serde_json::json!({
        "name": "l",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 8080}},
        "filterChains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "statPrefix": "s",
                "rds": {"routeConfigName": "r", "configSource": {"ads": {}}},
                "httpFilters": [
                    {"name": "http", "disabled": true, "typedConfig": {
                        "@type": EXT_AUTHZ,
                        "failureModeAllow": true,
                        "httpService": {
                            "authorizationResponse": {
                                "allowedClientHeadersOnSuccess": {"patterns": [{"exact": "set-cookie", "ignoreCase": true}]},
                                "allowedUpstreamHeaders": {"patterns": [{"exact": "header1", "ignoreCase": true}]}
                            },
                            "pathPrefix": "/auth",
                            "serverUri": {"cluster": "http-backend", "timeout": "10s", "uri": "http://http-backend.envoy-gateway:80/auth"}
                        },
                        "transportApiVersion": "V3"
                    }},
                    {"name": "grpc", "disabled": true, "typedConfig": {
                        "@type": EXT_AUTHZ,
                        "allowedHeaders": {"patterns": [{"exact": "header1", "ignoreCase": true}]},
                        "grpcService": {"envoyGrpc": {"authority": "grpc-backend.default:9000", "clusterName": "grpc-backend"}, "timeout": "10s"},
                        "routeMetadataContextNamespaces": ["envoy-gateway"],
                        "statusOnError": {"code": "InternalServerError"},
                        "withRequestBody": {"maxRequestBytes": 32768},
                        "transportApiVersion": "V3"
                    }},
                    {"name": "envoy.filters.http.ext_authz", "typedConfig": {
                        "@type": EXT_AUTHZ,
                        "grpcService": {"envoyGrpc": {"clusterName": "outbound|9000||ext-authz.foo.svc.cluster.local"}},
                        "filterEnabledMetadata": {
                            "filter": "envoy.filters.http.rbac",
                            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
                            "value": {"stringMatch": {"prefix": "istio-ext-authz"}}
                        },
                        "transportApiVersion": "V3"
                    }},
                    {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]
            }
        }]}]
    }))
    .unwrap())
    .unwrap();
    let f = filters_of(&l);
    let policy = |i: usize| match &f.0[i].kind {
        mf::FilterKind::ExtAuthz(p) => p.clone(),
        other => panic!("{other:?}"),
    };
    let http = policy(0);
    assert!(f.0[0].disabled);
    assert!(http.failure_mode_allow);
    assert_eq!(http.timeout, Duration::from_secs(10));
    assert_eq!(http.status_on_error, 403, "Envoy's default");
    assert_eq!(
        http.allowed_headers,
        Some(vec![]),
        "an HTTP service's own few only"
    );
    let ma::AuthzService::Http(s) = &http.service else {
        panic!("{:?}", http.service)
    };
    assert_eq!(s.cluster, "http-backend");
    assert_eq!(s.path_prefix, "/auth");
    assert_eq!(s.upstream.len(), 1);
    assert!(s.upstream[0].matches("HEADER1"));
    assert_eq!(s.client, None);
    assert_eq!(s.client_on_success.len(), 1);
    let grpc = policy(1);
    assert_eq!(grpc.status_on_error, 500);
    assert_eq!(
        grpc.with_body,
        Some(ma::BodySettings {
            max_bytes: 32768,
            allow_partial: false,
            pack_as_bytes: false
        }),
        "Envoy Gateway's bodyToExtAuth"
    );
    assert_eq!(http.with_body, None);
    assert_eq!(grpc.allowed_headers.as_ref().map(Vec::len), Some(1));
    let ma::AuthzService::Grpc(g) = &grpc.service else {
        panic!()
    };
    assert_eq!(
        (g.cluster.as_str(), g.authority.as_str()),
        ("grpc-backend", "grpc-backend.default:9000")
    );
    let istio = policy(2);
    let ma::AuthzService::Grpc(g) = &istio.service else {
        panic!()
    };
    assert_eq!(
        g.authority, "ext-authz.foo.svc.cluster.local:9000",
        "the service an Istio cluster name names"
    );
    assert_eq!(
        istio.timeout,
        Duration::from_millis(200),
        "the gRPC default"
    );
    assert_eq!(istio.allowed_headers, None, "all headers for gRPC");
    let m = istio.filter_enabled_metadata.as_ref().unwrap();
    assert_eq!(m.filter, "envoy.filters.http.rbac");
    assert_eq!(m.path, ["istio_ext_authz_shadow_effective_policy_id"]);
    assert!(m.matches(Some("istio-ext-authz-ns[foo]-policy[p]-rule[0]")));
    assert!(!m.matches(None));

    // Per route: on (Envoy Gateway's empty FilterConfig), off, context extensions.
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  typed_per_filter_config:
    grpc: {{"@type": {EXT_AUTHZ_ROUTE}, check_settings: {{context_extensions: {{b: "2", a: "1"}}}}}}
  routes:
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
      grpc: {{"@type": {EXT_AUTHZ_ROUTE}, disabled: true}}
  - match: {{prefix: /upload}}
    route: {{cluster: web}}
    typed_per_filter_config:
      grpc:
        "@type": {EXT_AUTHZ_ROUTE}
        check_settings: {{withRequestBody: {{maxRequestBytes: 64, packAsBytes: true}}}}
  - match: {{prefix: /stream}}
    route: {{cluster: web}}
    typed_per_filter_config:
      grpc: {{"@type": {EXT_AUTHZ_ROUTE}, check_settings: {{disable_request_body_buffering: true}}}}
"#
    ));
    let rc = route_configuration(&rc).unwrap();
    let vh = &rc.virtual_hosts[0];
    let Some(mf::FilterPolicy::ExtAuthz(r)) = &vh.filters["grpc"].policy else {
        panic!()
    };
    assert!(!r.disabled);
    assert_eq!(
        r.context_extensions,
        [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned())
        ]
    );
    let Some(mf::FilterPolicy::ExtAuthz(r)) = &vh.routes[0].filters["grpc"].policy else {
        panic!()
    };
    assert!(r.disabled);
    assert_eq!((r.with_body, r.no_body), (None, false));
    let Some(mf::FilterPolicy::ExtAuthz(r)) = &vh.routes[1].filters["grpc"].policy else {
        panic!()
    };
    assert_eq!(
        r.with_body,
        Some(ma::BodySettings {
            max_bytes: 64,
            allow_partial: false,
            pack_as_bytes: true
        })
    );
    let Some(mf::FilterPolicy::ExtAuthz(r)) = &vh.routes[2].filters["grpc"].policy else {
        panic!()
    };
    assert_eq!((r.with_body, r.no_body), (None, true));
}

#[test]
fn bad_ext_authz_is_rejected_by_path() {
    let fc = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    let grpc = "grpc_service: {envoy_grpc: {cluster_name: authz}}, transport_api_version: V3";
    for (config, want) in [
        (
            "grpc_service: {envoy_grpc: {cluster_name: authz}}".to_owned(),
            format!("{fc}.transport_api_version: must be V3"),
        ),
        (
            "transport_api_version: V3".to_owned(),
            format!("{fc}.grpc_service: required but not set"),
        ),
        (
            format!("{grpc}, with_request_body: {{allow_partial_message: true}}"),
            format!("{fc}.with_request_body.max_request_bytes: must be greater than 0"),
        ),
        (
            format!("{grpc}, include_peer_certificate: true"),
            format!("{fc}.include_peer_certificate: not supported"),
        ),
        (
            format!("{grpc}, decoder_header_mutation_rules: {{allow_expression: {{regex: \"(\"}}}}"),
            format!("{fc}.decoder_header_mutation_rules.allow_expression.regex: `(` is not a valid regex: unclosed group"),
        ),
        (
            "grpc_service: {google_grpc: {target_uri: x, stat_prefix: y}}, transport_api_version: V3".to_owned(),
            format!("{fc}.grpc_service.google_grpc: not supported"),
        ),
        (
            "http_service: {server_uri: {uri: 'http://authz', cluster: authz}}, transport_api_version: V3".to_owned(),
            format!("{fc}.http_service.server_uri.timeout: required but not set"),
        ),
        (
            "allowed_headers: {patterns: [{exact: a}]}, http_service: {server_uri: {uri: 'http://authz', cluster: authz, timeout: 1s}, authorization_request: {allowed_headers: {patterns: [{exact: b}]}}}, transport_api_version: V3".to_owned(),
            format!("{fc}.http_service.authorization_request.allowed_headers: set together with the filter's `allowed_headers`"),
        ),
        (
            "http_service: {server_uri: {uri: 'http://authz', cluster: authz, timeout: 1s}, authorization_request: {headers_to_add: [{key: x-id, value: '%REQ(x-id)%'}]}}, transport_api_version: V3".to_owned(),
            format!("{fc}.http_service.authorization_request.headers_to_add[0].value: a value with a `%` format is not supported"),
        ),
        (
            format!("{grpc}, filter_enabled_metadata: {{filter: f, path: [{{key: k}}]}}"),
            format!("{fc}.filter_enabled_metadata.value: required but not set"),
        ),
    ] {
        let filters = format!("- name: authz\n  typed_config: {{\"@type\": {EXT_AUTHZ}, {config}}}");
        let e = messages(listener(&listener_with(&filters)));
        assert_eq!(e, [want], "{config}");
    }
    // The rules the service's request changes are checked by.
    let filters = format!("- name: authz\n  typed_config: {{\"@type\": {EXT_AUTHZ}, {grpc}, decoder_header_mutation_rules: {{allow_envoy: true, disallow_expression: {{regex: \"x-tenant|x-user\"}}, disallow_is_error: true}}}}");
    let l = listener(&listener_with(&filters)).unwrap();
    let mf::FilterKind::ExtAuthz(p) = &filters_of(&l).0[0].kind else {
        panic!()
    };
    let rules = p.header_rules.as_ref().unwrap();
    assert!(rules.allow_envoy && rules.disallow_is_error && !rules.disallow_all);
    assert!(rules.allows("x-envoy-thing") && rules.allows("x-other"));
    assert!(!rules.allows("x-tenant") && !rules.allows("x-user") && !rules.allows("host"));
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        "name: r\ntyped_per_filter_config:\n  authz: {{\"@type\": {EXT_AUTHZ_ROUTE}, check_settings: {{grpc_service: {{envoy_grpc: {{cluster_name: other}}}}}}}}\n"
    ));
    assert_eq!(
        messages(route_configuration(&rc)),
        ["typed_per_filter_config[\"authz\"].check_settings.grpc_service: not supported"]
    );
}

const COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
const COMPRESSOR_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI: &str = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD: &str = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd";

#[test]
fn compressors_as_envoy_gateway_writes_them() {
    let lib = |name: &str, url: &str, more: &str| {
        format!(
            "- name: {name}\n  typed_config:\n    \"@type\": {COMPRESSOR}\n    compressor_library: {{name: {name}, typed_config: {{\"@type\": {url}{more}}}}}\n"
        )
    };
    let filters = [
        lib("br", BROTLI, ""),
        lib("gz", GZIP, ", compression_level: COMPRESSION_LEVEL_3"),
        lib("zs", ZSTD, ", compression_level: 0, strategy: BTULTRA")
            + "    choose_first: true\n    response_direction_config: {remove_accept_encoding_header: true, uncompressible_response_codes: [206], common_config: {min_content_length: 100, content_type: [Text/Plain]}}\n",
        // The deprecated form.
        lib("old", GZIP, "") + "    content_length: 0\n    disable_on_etag_header: true\n    runtime_enabled: {default_value: false, runtime_key: k}\n",
    ]
    .concat();
    let l = listener(&listener_with(&filters)).unwrap();
    let f = filters_of(&l);
    let policy = |i: usize| match &f.0[i].kind {
        mf::FilterKind::Compressor(p) => p.clone(),
        other => panic!("{other:?}"),
    };
    let br = policy(0);
    assert_eq!(
        br.library,
        mf::CompressionLibrary::Brotli {
            quality: 3,
            window_bits: 18,
            input_block_bits: 24,
            mode: 0,
            disable_literal_context_modeling: false,
            chunk_size: 4096
        },
        "Envoy's defaults"
    );
    assert!(br.enabled && !br.choose_first && !br.remove_accept_encoding);
    assert_eq!(br.min_content_length, 30);
    assert!(br.content_types.iter().any(|t| t == "application/json"));
    assert_eq!(policy(1).library, mf::CompressionLibrary::Gzip { level: 3 });
    let zs = policy(2);
    assert_eq!(
        zs.library,
        mf::CompressionLibrary::Zstd {
            level: 3,
            checksum: false,
            strategy: 8
        }
    );
    assert!(zs.choose_first && zs.remove_accept_encoding);
    assert_eq!(zs.uncompressible_statuses, [206]);
    assert_eq!(zs.min_content_length, 100);
    assert_eq!(zs.content_types, ["text/plain"]);
    let old = policy(3);
    assert!(!old.enabled, "runtime_enabled's default value");
    assert!(old.disable_on_etag);
    assert_eq!(old.min_content_length, 30, "0 is 30");
    assert_eq!(old.library, mf::CompressionLibrary::Gzip { level: 6 });

    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  typed_per_filter_config:
    gz: {{"@type": {COMPRESSOR_ROUTE}, disabled: true}}
  routes:
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
      gz: {{"@type": {COMPRESSOR_ROUTE}, overrides: {{response_direction_config: {{remove_accept_encoding_header: false}}}}}}
"#
    ));
    let rc = route_configuration(&rc).unwrap();
    let vh = &rc.virtual_hosts[0];
    let Some(mf::FilterPolicy::Compressor(r)) = &vh.filters["gz"].policy else {
        panic!()
    };
    assert_eq!((r.enabled, r.remove_accept_encoding), (Some(false), None));
    let Some(mf::FilterPolicy::Compressor(r)) = &vh.routes[0].filters["gz"].policy else {
        panic!()
    };
    assert_eq!(
        (r.enabled, r.remove_accept_encoding),
        (Some(true), Some(false))
    );
}

#[test]
fn bad_compressors_are_rejected_by_path() {
    let fc = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    for (config, want) in [
        (
            "{}".to_owned(),
            format!("{fc}.compressor_library: required but not set"),
        ),
        (
            "{compressor_library: {name: x, typed_config: {\"@type\": type.googleapis.com/x.Unknown}}}".to_owned(),
            format!("{fc}.compressor_library.typed_config: compressor library of type `type.googleapis.com/x.Unknown` is not supported"),
        ),
        (
            format!("{{compressor_library: {{name: g, typed_config: {{\"@type\": {GZIP}, window_bits: 20}}}}}}"),
            format!("{fc}.compressor_library.typed_config.window_bits: 20 is not in 9..=15"),
        ),
        (
            format!("{{compressor_library: {{name: b, typed_config: {{\"@type\": {BROTLI}, quality: 12}}}}}}"),
            format!("{fc}.compressor_library.typed_config.quality: 12 is not in 0..=11"),
        ),
        (
            format!("{{compressor_library: {{name: z, typed_config: {{\"@type\": {ZSTD}, dictionary: {{inline_string: d}}}}}}}}"),
            format!("{fc}.compressor_library.typed_config.dictionary: not supported"),
        ),
        (
            format!("{{compressor_library: {{name: g, typed_config: {{\"@type\": {GZIP}}}}}, request_direction_config: {{}}}}"),
            format!("{fc}.request_direction_config: not supported"),
        ),
        (
            format!("{{compressor_library: {{name: g, typed_config: {{\"@type\": {GZIP}}}}}, response_direction_config: {{status_header_enabled: true}}}}"),
            format!("{fc}.response_direction_config.status_header_enabled: not supported"),
        ),
    ] {
        let filters = format!("- name: c\n  typed_config: {{\"@type\": {COMPRESSOR}, {}}}", &config[1..config.len() - 1]);
        let e = messages(listener(&listener_with(&filters)));
        assert_eq!(e, [want], "{config}");
    }
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        "name: r\ntyped_per_filter_config:\n  c: {{\"@type\": {COMPRESSOR_ROUTE}, disabled: false}}\n"
    ));
    assert_eq!(
        messages(route_configuration(&rc)),
        ["typed_per_filter_config[\"c\"].disabled: must be true"]
    );
}

const EXT_PROC: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
const EXT_PROC_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";

#[test]
fn ext_proc_as_envoy_gateway_writes_it_and_what_is_refused() {
    use myelin_proxy::model::ext_proc as mp;
    // Envoy Gateway's filter for an EnvoyExtensionPolicy with `failOpen` and headers only
    // (camelCase, as its goldens), then one with every setting Myelin takes.
    let l = listener(&json::from_value(serde_json::json!({
        "name": "l",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 8080}},
        "filterChains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "statPrefix": "s",
                "rds": {"routeConfigName": "r", "configSource": {"ads": {}}},
                "httpFilters": [
                    {"name": "envoy.filters.http.ext_proc/envoyextensionpolicy/default/p/extproc/0", "disabled": true, "typedConfig": {
                        "@type": EXT_PROC,
                        "failureModeAllow": true,
                        "grpcService": {"envoyGrpc": {"authority": "grpc-backend.default:9000", "clusterName": "envoyextensionpolicy/default/p/0/grpc-backend"}, "timeout": "10s"},
                        "messageTimeout": "0.500s",
                        "processingMode": {"requestHeaderMode": "SEND", "responseHeaderMode": "SKIP", "requestBodyMode": "BUFFERED", "requestTrailerMode": "SKIP", "responseTrailerMode": "SKIP"}
                    }},
                    {"name": "all", "typedConfig": {
                        "@type": EXT_PROC,
                        "grpcService": {"envoyGrpc": {"clusterName": "proc"}},
                        "statPrefix": "mine",
                        "disableImmediateResponse": true,
                        "allowModeOverride": true,
                        "routeCacheAction": "CLEAR",
                        "mutationRules": {"allowAllRouting": true, "disallowIsError": true, "disallowExpression": {"regex": "x-secret-.*"}},
                        "forwardRules": {"allowedHeaders": {"patterns": [{"prefix": "x-"}]}, "disallowedHeaders": {"patterns": [{"exact": "x-token"}]}},
                        "filterMetadata": {"team": "a"},
                        "deferredCloseTimeout": "1s"
                    }},
                    {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]
            }
        }]}]
    }))
    .unwrap())
    .unwrap();
    let f = filters_of(&l);
    let policy = |i: usize| match &f.0[i].kind {
        mf::FilterKind::ExtProc(p) => p.clone(),
        other => panic!("{other:?}"),
    };
    let eg = policy(0);
    assert!(f.0[0].disabled);
    assert!(eg.failure_mode_allow);
    assert_eq!(eg.message_timeout, Duration::from_millis(500));
    assert_eq!(
        eg.mode,
        mp::ProcessingMode {
            request_headers: true,
            response_headers: false,
            request_body: mp::BodyMode::Buffered,
            response_body: mp::BodyMode::None,
        }
    );
    assert_eq!(eg.service.authority, "grpc-backend.default:9000");
    assert_eq!(eg.route_cache, mp::RouteCache::Default);
    assert_eq!(eg.rules, mp::MutationRules::default());
    let all = policy(1);
    assert_eq!(
        all.mode,
        mp::ProcessingMode::default(),
        "both headers by default"
    );
    assert_eq!(
        all.message_timeout,
        Duration::from_millis(200),
        "Envoy's default"
    );
    assert_eq!(&*all.stat_prefix, "mine");
    assert!(all.disable_immediate_response);
    assert!(all.allow_mode_override && !eg.allow_mode_override);
    assert_eq!(all.route_cache, mp::RouteCache::Clear);
    assert!(all.rules.allows(":authority") && !all.rules.allows("x-secret-1"));
    assert!(all.rules.disallow_is_error);
    assert!(all.forward.forwards("x-user") && !all.forward.forwards("x-token"));
    assert!(!all.forward.forwards("authorization"));

    let fc = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    for (config, want) in [
        (
            "processing_mode: {response_trailer_mode: SEND}",
            format!("{fc}.processing_mode.response_trailer_mode: not supported"),
        ),
        (
            "request_attributes: [request.path]",
            format!("{fc}.request_attributes: not supported"),
        ),
        (
            "message_timeout: 3601s",
            format!("{fc}.message_timeout: at most 3600s"),
        ),
        (
            "disable_clear_route_cache: true, route_cache_action: CLEAR",
            format!("{fc}: only one of `disable_clear_route_cache` and `route_cache_action`"),
        ),
    ] {
        let filters = format!(
            "- name: p\n  typed_config: {{\"@type\": {EXT_PROC}, grpc_service: {{envoy_grpc: {{cluster_name: proc}}}}, {config}}}"
        );
        let e = messages(listener(&listener_with(&filters)));
        assert_eq!(e, [want], "{config}");
    }
    let e = messages(listener(&listener_with(&format!(
        "- name: p\n  typed_config: {{\"@type\": {EXT_PROC}}}"
    ))));
    assert_eq!(e, [format!("{fc}.grpc_service: required but not set")]);

    // Per route: off, and overrides of the mode, the service and its metadata.
    let rc = yaml::<rpb::RouteConfiguration>(&format!(
        r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  typed_per_filter_config:
    p: {{"@type": {EXT_PROC_ROUTE}, disabled: true}}
  routes:
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
      p:
        "@type": {EXT_PROC_ROUTE}
        overrides:
          processing_mode: {{request_header_mode: SKIP, request_body_mode: STREAMED, response_body_mode: BUFFERED_PARTIAL}}
          grpc_service: {{envoy_grpc: {{cluster_name: other}}}}
          grpc_initial_metadata: [{{key: x-tenant, value: b}}]
"#
    ));
    let rc = route_configuration(&rc).unwrap();
    let vh = &rc.virtual_hosts[0];
    let Some(mf::FilterPolicy::ExtProc(r)) = &vh.filters["p"].policy else {
        panic!()
    };
    assert_eq!(**r, mp::ExtProcRoute::Disabled);
    let Some(mf::FilterPolicy::ExtProc(r)) = &vh.routes[0].filters["p"].policy else {
        panic!()
    };
    let mp::ExtProcRoute::Overrides {
        mode,
        service,
        metadata,
    } = &**r
    else {
        panic!("{r:?}")
    };
    assert_eq!(
        *mode,
        Some(mp::ProcessingMode {
            request_headers: false,
            response_headers: true,
            request_body: mp::BodyMode::Streamed,
            response_body: mp::BodyMode::BufferedPartial,
        })
    );
    assert_eq!(service.as_ref().unwrap().cluster, "other");
    assert_eq!(metadata, &[("x-tenant".to_owned(), "b".to_owned())]);
    let e = messages(route_configuration(&yaml::<rpb::RouteConfiguration>(
        &format!(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  typed_per_filter_config:
    p: {{"@type": {EXT_PROC_ROUTE}, overrides: {{async_mode: true}}}}
"#
        ),
    )));
    assert_eq!(
        e,
        ["virtual_hosts[0].typed_per_filter_config[\"p\"].overrides.async_mode: not supported"]
    );
}
