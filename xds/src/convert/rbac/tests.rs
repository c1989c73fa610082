//! RBAC filters from Envoy YAML (as istiod and Envoy Gateway write them) and what is
//! rejected.

use std::sync::Arc;

use myelin_proxy::model::filter as mf;
use myelin_proxy::model::listener as ml;
use myelin_proxy::model::rbac as mr;
use myelin_proxy::model::{self, StringMatcher, StringPattern};
use xds_api::pb::envoy::config::listener::v3 as lpb;
use xds_api::pb::envoy::config::route::v3 as rpb;

use super::super::json;
use super::super::test_util::{hcm_listener, messages};
use super::super::{listener, route_configuration};

fn yaml<T: serde::de::DeserializeOwned + prost::Name>(text: &str) -> T {
    json::from_value(serde_yaml::from_str(text).unwrap()).unwrap()
}

fn http_rbac(l: &model::Listener) -> Arc<mr::RbacConfig> {
    let ml::NetworkFilter::HttpConnectionManager(h) = &l.filter_chains[0].filter else {
        panic!("not a connection manager");
    };
    match &h.http_filters.0[0].kind {
        mf::FilterKind::Rbac(c) => c.clone(),
        other => panic!("{other:?}"),
    }
}

/// What istiod writes for an ALLOW AuthorizationPolicy: frontend may GET `/api/*`.
const ISTIO_ALLOW: &str = r#"
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      policies:
        ns[shop]-policy[api]-rule[0]:
          permissions:
          - and_rules:
              rules:
              - or_rules:
                  rules:
                  - header: {name: ":method", string_match: {exact: GET}}
              - or_rules:
                  rules:
                  - url_path: {path: {prefix: /api/}}
          principals:
          - and_ids:
              ids:
              - or_ids:
                  ids:
                  - authenticated:
                      principal_name: {exact: spiffe://cluster.local/ns/shop/sa/frontend}
    shadow_rules_stat_prefix: istio_dry_run_allow_
"#;

#[test]
fn istio_policies_convert_in_name_order() {
    let l = listener(&hcm_listener(ISTIO_ALLOW, "")).unwrap();
    let c = http_rbac(&l);
    assert!(c.shadow.is_none());
    let Some(mr::RbacEngine::Policies { action, policies }) = &c.enforced else {
        panic!("{c:?}");
    };
    assert_eq!(*action, mr::RbacAction::Allow);
    assert_eq!(policies.len(), 1);
    let (name, p) = &policies[0];
    assert_eq!(name, "ns[shop]-policy[api]-rule[0]");
    let mr::Permission::And(rules) = &p.permissions[0] else {
        panic!("{p:?}");
    };
    assert_eq!(
        rules[1],
        mr::Permission::Or(vec![mr::Permission::UrlPath(StringMatcher {
            pattern: StringPattern::Prefix("/api/".into()),
            ignore_case: false,
        })])
    );
    assert_eq!(
        p.principals[0],
        mr::Principal::And(vec![mr::Principal::Or(vec![mr::Principal::Authenticated(
            Some(StringMatcher::exact(
                "spiffe://cluster.local/ns/shop/sa/frontend"
            ))
        )])])
    );

    // DENY with several policies: sorted by name; a matcher beats rules when both are set.
    let l = listener(&hcm_listener(
        r#"
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      action: DENY
      policies:
        zz: {permissions: [{any: true}], principals: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]}
        aa: {permissions: [{destination_port: 9090}], principals: [{any: true}]}
    shadow_rules:
      action: LOG
      policies:
        all: {permissions: [{any: true}], principals: [{any: true}]}
"#,
        "",
    ))
    .unwrap();
    let c = http_rbac(&l);
    let Some(mr::RbacEngine::Policies { action, policies }) = &c.enforced else {
        panic!("{c:?}");
    };
    assert_eq!(*action, mr::RbacAction::Deny);
    let names: Vec<_> = policies.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["aa", "zz"]);
    assert_eq!(
        policies[0].1.permissions,
        [mr::Permission::DestinationPort(9090)]
    );
    assert!(matches!(
        &c.shadow,
        Some(mr::RbacEngine::Policies {
            action: mr::RbacAction::Log,
            ..
        })
    ));
}

/// Envoy Gateway's client CIDR authorization (its `authorization-client-cidr` golden):
/// a matcher per route, the filter itself empty in the connection manager.
#[test]
fn envoy_gateway_matchers_per_route_convert() {
    let l = listener(&hcm_listener(
        r#"
- name: envoy.filters.http.rbac
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC}
"#,
        "",
    ))
    .unwrap();
    // No rules, no matcher: nothing enforced by the filter itself.
    assert_eq!(*http_rbac(&l), mr::RbacConfig::default());

    let table: rpb::RouteConfiguration = yaml(
        r#"
name: r
virtualHosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: /foo}
    route: {cluster: c}
    typedPerFilterConfig:
      envoy.filters.http.rbac:
        '@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
        rbac:
          matcher:
            matcherList:
              matchers:
              - onMatch:
                  action:
                    name: deny-location-1
                    typedConfig:
                      '@type': type.googleapis.com/envoy.config.rbac.v3.Action
                      action: DENY
                      name: DENY
                predicate:
                  singlePredicate:
                    customMatch:
                      name: ip_matcher
                      typedConfig:
                        '@type': type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip
                        cidrRanges:
                        - {addressPrefix: 192.168.1.0, prefixLen: 24}
                        statPrefix: client_ip
                    input:
                      name: client_ip
                      typedConfig:
                        '@type': type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput
            onNoMatch:
              action:
                name: default
                typedConfig:
                  '@type': type.googleapis.com/envoy.config.rbac.v3.Action
                  name: ALLOW
  - match: {prefix: /open}
    route: {cluster: c}
    typedPerFilterConfig:
      envoy.filters.http.rbac:
        '@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
"#,
    );
    let t = route_configuration(&table).unwrap();
    let routes = &t.virtual_hosts[0].routes;
    let policy = |i: usize| match &routes[i].filters["envoy.filters.http.rbac"].policy {
        Some(mf::FilterPolicy::Rbac(c)) => c.clone(),
        other => panic!("{other:?}"),
    };
    let foo = policy(0);
    let Some(mr::RbacEngine::Matcher(m)) = &foo.enforced else {
        panic!("{foo:?}");
    };
    // Decisions are named by the action's own `name`, as in Envoy (not the extension's).
    let deny = mr::OnMatch::Action(mr::RbacMatchAction {
        name: "DENY".into(),
        allow: false,
    });
    assert_eq!(
        m.kind,
        mr::MatcherKind::List(vec![mr::FieldMatcher {
            predicate: mr::Predicate::Single {
                input: mr::MatchInput::SourceIp,
                matcher: mr::InputMatcher::Ip(vec![ml::CidrRange {
                    address: "192.168.1.0".parse().unwrap(),
                    prefix_len: 24,
                }]),
            },
            on_match: deny,
        }])
    );
    assert_eq!(
        m.on_no_match.as_deref(),
        Some(&mr::OnMatch::Action(mr::RbacMatchAction {
            name: "ALLOW".into(),
            allow: true,
        }))
    );
    // `RBACPerRoute` without `rbac`: the filter enforces nothing on that route.
    assert_eq!(*policy(1), mr::RbacConfig::default());
}

fn tcp_listener(filters: &str) -> lpb::Listener {
    let indented: String = filters
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {l}\n"))
        .collect();
    yaml(&format!(
        r#"
name: tcp
address: {{socket_address: {{address: 0.0.0.0, port_value: 5432}}}}
filter_chains:
- filters:
{indented}  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: db
      cluster: db
"#
    ))
}

#[test]
fn network_rbac_filters_go_before_the_terminal_filter() {
    // istiod's pair on an inbound TCP chain: its DENY filter, then its ALLOW filter.
    let l = listener(&tcp_listener(
        r#"
- name: envoy.filters.network.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
    stat_prefix: tcp.
    rules: {action: DENY, policies: {}}
- name: envoy.filters.network.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
    stat_prefix: tcp.
    rules:
      policies:
        ns[db]-policy[clients]-rule[0]:
          permissions: [{destination_port: 5432}]
          principals: [{authenticated: {principal_name: {prefix: "spiffe://cluster.local/ns/app/"}}}]
    shadow_rules_stat_prefix: istio_dry_run_allow_
"#,
    ))
    .unwrap();
    let chain = &l.filter_chains[0];
    assert!(matches!(chain.filter, ml::NetworkFilter::TcpProxy(_)));
    assert_eq!(chain.rbac.len(), 2);
    assert!(matches!(
        &chain.rbac[0].enforced,
        Some(mr::RbacEngine::Policies { action: mr::RbacAction::Deny, policies }) if policies.is_empty()
    ));
    assert!(matches!(
        &chain.rbac[1].enforced,
        Some(mr::RbacEngine::Policies { action: mr::RbacAction::Allow, policies }) if policies.len() == 1
    ));
}

#[test]
fn what_myelin_cannot_decide_is_rejected() {
    // The filter alone as a chain's only filter.
    let alone = messages(listener(&yaml::<lpb::Listener>(
        r#"
name: tcp
address: {socket_address: {address: 0.0.0.0, port_value: 5432}}
filter_chains:
- filters:
  - name: envoy.filters.network.rbac
    typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: x}
"#,
    )));
    assert!(alone[0].contains("is not terminal"), "{alone:?}");

    let network = messages(listener(&tcp_listener(
        r#"
- name: envoy.filters.network.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
    stat_prefix: x
    enforcement_type: CONTINUOUS
    delay_deny: 1s
    matcher:
      matcher_tree:
        input:
          name: h
          typed_config: {"@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x}
        exact_match_map: {map: {}}
"#,
    )));
    let joined = network.join("\n");
    for want in [
        "enforcement_type: `CONTINUOUS` is not supported",
        "delay_deny: not supported",
        "a request header input in a network filter is not supported",
    ] {
        assert!(joined.contains(want), "{want} in {joined}");
    }

    let http = messages(listener(&hcm_listener(
        r#"
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      policies:
        cel:
          permissions: [{any: true}]
          principals: [{any: true}]
          condition: {const_expr: {bool_value: true}}
        meta:
          permissions: [{metadata: {filter: f, path: [{key: k}], value: {present_match: true}}}]
          principals: [{any: false}]
        empty:
          permissions: []
          principals: [{filter_state: {key: k, string_match: {exact: v}}}]
    shadow_matcher:
      matcher_list:
        matchers:
        - predicate:
            single_predicate:
              input:
                name: i
                typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput}
              value_match: {exact: h2}
          on_match:
            action:
              name: log
              typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: log, action: LOG}
"#,
        "",
    )));
    let joined = http.join("\n");
    for want in [
        "policies[\"cel\"].condition: not supported",
        "policies[\"empty\"].permissions: required but not set",
        "policies[\"empty\"].principals[0].filter_state: not supported",
        "policies[\"meta\"].permissions[0].metadata: not supported",
        "policies[\"meta\"].principals[0].any: must be true",
        "input.typed_config: type `type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput` is not supported here",
        "action.typed_config.action: action 2 is not supported",
    ] {
        assert!(joined.contains(want), "{want} in {joined}");
    }
}
