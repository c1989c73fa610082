//! RouteConfiguration conversion: supported fields and rejections.

use super::test_util::{boolv, dur, messages, u32v};
use super::{model, route_configuration};
use model::route as mr;
use std::time::Duration;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::route::v3 as pb;
use xds_api::pb::envoy::r#type::matcher::v3 as matcher;

fn to_cluster(c: &str) -> pb::RouteAction {
    pb::RouteAction {
        cluster_specifier: Some(pb::route_action::ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    }
}

fn prefix(p: &str) -> Option<pb::RouteMatch> {
    Some(pb::RouteMatch {
        path_specifier: Some(pb::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    })
}

fn rc(routes: Vec<pb::Route>) -> pb::RouteConfiguration {
    pb::RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![pb::VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route(m: Option<pb::RouteMatch>, a: pb::RouteAction) -> pb::Route {
    pb::Route {
        r#match: m,
        action: Some(pb::route::Action::Route(a)),
        ..Default::default()
    }
}

fn regex(r: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: r.into(),
        ..Default::default()
    }
}

fn one(r: pb::Route) -> mr::Route {
    let m = route_configuration(&rc(vec![r])).unwrap_or_else(|e| panic!("{e:?}"));
    m.virtual_hosts[0].routes[0].clone()
}

fn action(r: &mr::Route) -> &mr::RouteAction {
    match &r.action {
        mr::Action::Route(a) => a,
        other => panic!("{other:?}"),
    }
}

fn hvo(k: &str, v: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The model of `hvo(name, value)`: appended (Envoy's default action).
fn one_header(name: &str, value: &str) -> Vec<mr::HeaderValueOption> {
    vec![mr::HeaderValueOption {
        name: name.into(),
        value: value.into(),
        append_action: mr::AppendAction::AppendIfExistsOrAdd,
        keep_empty_value: false,
    }]
}

#[test]
fn domains_and_headers_at_every_level() {
    let mut input = rc(vec![route(prefix("/"), to_cluster("c"))]);
    input.virtual_hosts[0].domains = vec![
        "Example.com".into(),
        "*.a.com".into(),
        "b.*".into(),
        "*".into(),
    ];
    input.request_headers_to_add = vec![hvo("X-A", "1")];
    // As Envoy Gateway and Istio's gateways set it.
    input.ignore_port_in_host_matching = true;
    // As istiod sets it on every virtual host.
    input.virtual_hosts[0].include_request_attempt_count = true;
    input.virtual_hosts[0].response_headers_to_remove = vec!["Server".into()];
    input.virtual_hosts[0].routes[0].request_headers_to_remove = vec!["x-b".into()];
    input.virtual_hosts[0].retry_policy = Some(pb::RetryPolicy {
        retry_on: "5xx".into(),
        ..Default::default()
    });
    let m = route_configuration(&input).unwrap();
    assert_eq!(m.name, "rc");
    assert!(m.ignore_port_in_host_matching);
    assert!(m.virtual_hosts[0].attempt_count_in_request);
    assert!(!m.virtual_hosts[0].attempt_count_in_response);
    assert_eq!(
        m.virtual_hosts[0].domains,
        [
            mr::DomainMatch::Exact("example.com".into()),
            mr::DomainMatch::Suffix(".a.com".into()),
            mr::DomainMatch::Prefix("b.".into()),
            mr::DomainMatch::Any
        ]
    );
    assert_eq!(m.headers.request_headers_to_add[0].name, "x-a");
    assert_eq!(
        m.headers.request_headers_to_add[0].append_action,
        mr::AppendAction::AppendIfExistsOrAdd
    );
    assert_eq!(
        m.virtual_hosts[0].headers.response_headers_to_remove,
        ["server"]
    );
    assert_eq!(
        m.virtual_hosts[0].routes[0]
            .headers
            .request_headers_to_remove,
        ["x-b"]
    );
    assert_eq!(
        m.virtual_hosts[0]
            .retry_policy
            .as_ref()
            .unwrap()
            .num_retries,
        1
    );
}

#[test]
fn matches() {
    use pb::route_match::PathSpecifier as P;
    let pm = |p| {
        Some(pb::RouteMatch {
            path_specifier: Some(p),
            ..Default::default()
        })
    };
    let cases: Vec<(Option<pb::RouteMatch>, mr::PathMatch)> = vec![
        (prefix("/a"), mr::PathMatch::Prefix("/a".into())),
        (
            pm(P::Path("/exact".into())),
            mr::PathMatch::Path("/exact".into()),
        ),
        (
            pm(P::SafeRegex(regex("/v[0-9]+"))),
            mr::PathMatch::SafeRegex(model::Regex::new("/v[0-9]+").unwrap()),
        ),
        (
            pm(P::PathSeparatedPrefix("/api".into())),
            mr::PathMatch::PathSeparatedPrefix("/api".into()),
        ),
        (
            pm(P::ConnectMatcher(Default::default())),
            mr::PathMatch::Connect,
        ),
    ];
    for (m, want) in cases {
        assert_eq!(one(route(m, to_cluster("c"))).route_match.path, want);
    }
    // Headers, query parameters, case sensitivity.
    use pb::header_matcher::HeaderMatchSpecifier as H;
    let sm = |p| {
        Some(matcher::StringMatcher {
            match_pattern: Some(p),
            ignore_case: true,
        })
    };
    use matcher::string_matcher::MatchPattern as MP;
    let hm = |name: &str, s, invert| pb::HeaderMatcher {
        name: name.into(),
        header_match_specifier: s,
        invert_match: invert,
        ..Default::default()
    };
    let m = pb::RouteMatch {
        case_sensitive: boolv(false),
        headers: vec![
            hm("X-Exact", Some(H::ExactMatch("e".into())), false),
            hm("p", Some(H::PrefixMatch("pre".into())), false),
            hm("s", Some(H::SuffixMatch("suf".into())), false),
            hm("c", Some(H::ContainsMatch("mid".into())), false),
            hm("r", Some(H::SafeRegexMatch(regex("a+"))), false),
            hm("present", Some(H::PresentMatch(true)), true),
            hm(
                "sm",
                Some(H::StringMatch(matcher::StringMatcher {
                    match_pattern: sm(MP::Prefix("x".into())).unwrap().match_pattern,
                    ignore_case: true,
                })),
                false,
            ),
        ],
        query_parameters: vec![
            pb::QueryParameterMatcher {
                name: "q".into(),
                query_parameter_match_specifier: Some(
                    pb::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        sm(MP::Exact("v".into())).unwrap(),
                    ),
                ),
            },
            pb::QueryParameterMatcher {
                name: "p".into(),
                query_parameter_match_specifier: Some(
                    pb::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
                ),
            },
        ],
        ..prefix("/").unwrap()
    };
    let r = one(route(Some(m), to_cluster("c")));
    let got = &r.route_match;
    assert!(!got.case_sensitive);
    let plain = |p| {
        mr::HeaderRule::Value(model::StringMatcher {
            pattern: p,
            ignore_case: false,
        })
    };
    use model::StringPattern as SP;
    let rules: Vec<_> = got
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.rule.clone(), h.invert))
        .collect();
    assert_eq!(
        rules,
        [
            ("x-exact", plain(SP::Exact("e".into())), false),
            ("p", plain(SP::Prefix("pre".into())), false),
            ("s", plain(SP::Suffix("suf".into())), false),
            ("c", plain(SP::Contains("mid".into())), false),
            (
                "r",
                plain(SP::SafeRegex(model::Regex::new("a+").unwrap())),
                false
            ),
            ("present", mr::HeaderRule::Present(true), true),
            (
                "sm",
                mr::HeaderRule::Value(model::StringMatcher {
                    pattern: SP::Prefix("x".into()),
                    ignore_case: true
                }),
                false
            ),
        ]
    );
    assert_eq!(
        got.query_parameters,
        [
            mr::QueryParameterMatcher {
                name: "q".into(),
                rule: mr::QueryParameterRule::Value(model::StringMatcher {
                    pattern: SP::Exact("v".into()),
                    ignore_case: true
                })
            },
            mr::QueryParameterMatcher {
                name: "p".into(),
                rule: mr::QueryParameterRule::Present
            },
        ]
    );
}

#[test]
fn actions() {
    use pb::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    // Defaults.
    let r = one(route(prefix("/"), to_cluster("c")));
    assert_eq!(
        *action(&r),
        mr::RouteAction {
            cluster: mr::ClusterSpecifier::Cluster("c".into()),
            timeout: Some(Duration::from_secs(15)),
            retry_policy: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            hash_policy: vec![],
            upgrades: vec![],
            stream_limit: None,
            idle_timeout: None,
            mirrors: vec![],
            rate_limits: vec![],
        }
    );
    // Everything set.
    let a = pb::RouteAction {
        cluster_specifier: Some(C::WeightedClusters(pb::WeightedCluster {
            clusters: vec![
                pb::weighted_cluster::ClusterWeight {
                    name: "a".into(),
                    weight: u32v(90),
                    ..Default::default()
                },
                pb::weighted_cluster::ClusterWeight {
                    name: "b".into(),
                    weight: u32v(10),
                    request_headers_to_add: vec![hvo("x-backend", "b")],
                    request_headers_to_remove: vec!["X-Old".into()],
                    response_headers_to_add: vec![hvo("x-served-by", "b")],
                    response_headers_to_remove: vec!["server".into()],
                    host_rewrite_specifier: Some(
                        pb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                            "b.internal".into(),
                        ),
                    ),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })),
        timeout: dur(0, 0),
        idle_timeout: dur(3600, 0),
        prefix_rewrite: "/new".into(),
        host_rewrite_specifier: Some(H::AutoHostRewrite(protobuf_bool(true))),
        retry_policy: Some(pb::RetryPolicy {
            retry_on: "5xx, connect-failure,retriable-status-codes".into(),
            num_retries: u32v(3),
            per_try_timeout: dur(0, 250_000_000),
            retriable_status_codes: vec![409],
            // Istio's default retry policy's.
            host_selection_retry_max_attempts: 5,
            retry_host_predicate: vec![pb::retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                ..Default::default()
            }],
            retry_back_off: Some(pb::retry_policy::RetryBackOff {
                base_interval: dur(0, 10_000_000),
                max_interval: None,
            }),
            ..Default::default()
        }),
        upgrade_configs: vec![
            pb::route_action::UpgradeConfig {
                upgrade_type: "WebSocket".into(),
                ..Default::default()
            },
            pb::route_action::UpgradeConfig {
                upgrade_type: "CONNECT".into(),
                enabled: Some(protobuf_bool(false)),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let r = one(route(prefix("/"), a));
    let a = action(&r);
    assert_eq!(
        a.cluster,
        mr::ClusterSpecifier::WeightedClusters(vec![
            model::listener::WeightedCluster {
                name: "a".into(),
                weight: 90,
                routing: None
            },
            model::listener::WeightedCluster {
                name: "b".into(),
                weight: 10,
                routing: Some(Box::new(model::listener::ClusterRouting {
                    headers: mr::HeaderMutation {
                        request_headers_to_add: one_header("x-backend", "b"),
                        request_headers_to_remove: vec!["x-old".into()],
                        response_headers_to_add: one_header("x-served-by", "b"),
                        response_headers_to_remove: vec!["server".into()],
                    },
                    host_rewrite: Some("b.internal".into()),
                }))
            },
        ])
    );
    assert_eq!(a.timeout, None);
    assert_eq!(a.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(
        a.upgrades,
        vec![
            mr::RouteUpgrade {
                upgrade_type: "websocket".into(),
                enabled: true,
                terminate: false,
            },
            mr::RouteUpgrade {
                upgrade_type: "connect".into(),
                enabled: false,
                terminate: false,
            },
        ]
    );
    assert!(!a.terminates_connect());
    let terminating = one(route(
        prefix("/"),
        pb::RouteAction {
            upgrade_configs: vec![pb::route_action::UpgradeConfig {
                upgrade_type: "CONNECT".into(),
                connect_config: Some(Default::default()),
                ..Default::default()
            }],
            ..to_cluster("c")
        },
    ));
    assert!(action(&terminating).terminates_connect());
    assert_eq!(a.prefix_rewrite.as_deref(), Some("/new"));
    assert_eq!(a.host_rewrite, Some(mr::HostRewrite::Auto));
    assert_eq!(
        a.retry_policy,
        Some(mr::RetryPolicy {
            retry_on: vec![
                "5xx".into(),
                "connect-failure".into(),
                "retriable-status-codes".into()
            ],
            num_retries: 3,
            per_try_timeout: Some(Duration::from_millis(250)),
            retriable_status_codes: vec![409],
            retry_previous_hosts: true,
            back_off: Some(mr::RetryBackOff {
                base_interval: Duration::from_millis(10),
                max_interval: Duration::from_millis(100)
            }),
        })
    );
    // Regex rewrite and host literal.
    let r = one(route(
        prefix("/"),
        pb::RouteAction {
            regex_rewrite: Some(matcher::RegexMatchAndSubstitute {
                pattern: Some(regex("^/svc/([^/]+)")),
                substitution: "/\\1".into(),
            }),
            host_rewrite_specifier: Some(H::HostRewriteLiteral("h.example".into())),
            ..to_cluster("c")
        },
    ));
    let a = action(&r);
    let rw = a.regex_rewrite.as_ref().unwrap();
    assert_eq!(rw.pattern.replace_all("/svc/x/y", &rw.substitution), "/x/y");
    assert_eq!(
        a.host_rewrite,
        Some(mr::HostRewrite::Literal("h.example".into()))
    );
    // Redirect and direct response.
    let red = pb::Route {
        r#match: prefix("/"),
        action: Some(pb::route::Action::Redirect(pb::RedirectAction {
            host_redirect: "h".into(),
            port_redirect: 8443,
            response_code: pb::redirect_action::RedirectResponseCode::PermanentRedirect as i32,
            strip_query: true,
            scheme_rewrite_specifier: Some(
                pb::redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true),
            ),
            path_rewrite_specifier: Some(pb::redirect_action::PathRewriteSpecifier::PrefixRewrite(
                "/p".into(),
            )),
        })),
        ..Default::default()
    };
    assert_eq!(
        one(red).action,
        mr::Action::Redirect(mr::Redirect {
            scheme: Some("https".into()),
            host: Some("h".into()),
            port: Some(8443),
            path: Some(mr::PathRedirect::Prefix("/p".into())),
            response_code: 308,
            strip_query: true,
        })
    );
    let by_regex = pb::Route {
        r#match: prefix("/"),
        action: Some(pb::route::Action::Redirect(pb::RedirectAction {
            path_rewrite_specifier: Some(pb::redirect_action::PathRewriteSpecifier::RegexRewrite(
                matcher::RegexMatchAndSubstitute {
                    pattern: Some(regex("^/v1/(.*)")),
                    substitution: "/v2/\\1".into(),
                },
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mr::Action::Redirect(r) = one(by_regex).action else {
        panic!()
    };
    let Some(mr::PathRedirect::Regex(rw)) = &r.path else {
        panic!("{r:?}")
    };
    assert_eq!(rw.pattern.replace_all("/v1/a", &rw.substitution), "/v2/a");
    let dr = pb::Route {
        r#match: prefix("/"),
        action: Some(pb::route::Action::DirectResponse(
            pb::DirectResponseAction {
                status: 404,
                body: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString("nope".into())),
                    ..Default::default()
                }),
            },
        )),
        ..Default::default()
    };
    assert_eq!(
        one(dr).action,
        mr::Action::DirectResponse(mr::DirectResponse {
            status: 404,
            body: Some("nope".into())
        })
    );
}

fn protobuf_bool(b: bool) -> xds_api::pb::google::protobuf::BoolValue {
    xds_api::pb::google::protobuf::BoolValue { value: b }
}

/// `max_stream_duration` (which makes Envoy ignore the deprecated gRPC fields beside it),
/// else `max_grpc_timeout` with its offset.
#[test]
#[allow(deprecated)]
fn stream_limits() {
    let limit = |a: pb::RouteAction| action(&one(route(prefix("/"), a))).stream_limit;
    assert_eq!(
        limit(pb::RouteAction {
            max_stream_duration: Some(pb::route_action::MaxStreamDuration {
                max_stream_duration: dur(0, 0),
                grpc_timeout_header_max: dur(30, 0),
                grpc_timeout_header_offset: dur(0, 50_000_000),
            }),
            max_grpc_timeout: dur(1, 0),
            ..to_cluster("c")
        }),
        Some(mr::StreamLimit::Duration {
            max: Some(Duration::ZERO),
            grpc_header_max: Some(Duration::from_secs(30)),
            grpc_header_offset: Some(Duration::from_millis(50)),
        })
    );
    assert_eq!(
        limit(pb::RouteAction {
            max_stream_duration: Some(Default::default()),
            ..to_cluster("c")
        }),
        Some(mr::StreamLimit::Duration {
            max: None,
            grpc_header_max: None,
            grpc_header_offset: None,
        })
    );
    assert_eq!(
        limit(pb::RouteAction {
            max_grpc_timeout: dur(0, 0),
            grpc_timeout_offset: dur(0, 10_000_000),
            ..to_cluster("c")
        }),
        Some(mr::StreamLimit::GrpcTimeout {
            max: Duration::ZERO,
            offset: Some(Duration::from_millis(10)),
        })
    );
    // The offset alone does nothing, as in Envoy.
    assert_eq!(
        limit(pb::RouteAction {
            grpc_timeout_offset: dur(1, 0),
            ..to_cluster("c")
        }),
        None
    );
}

#[test]
fn rejections() {
    use pb::route_match::PathSpecifier as P;
    let r0 = "virtual_hosts[0].routes[0]";
    let rx = |re: &str| {
        route(
            Some(pb::RouteMatch {
                path_specifier: Some(P::SafeRegex(regex(re))),
                ..Default::default()
            }),
            to_cluster("c"),
        )
    };
    let cases: Vec<(pb::RouteConfiguration, Vec<String>)> = vec![
        (rc(vec![rx("(")]), vec![format!("{r0}.match.safe_regex.regex: `(` is not a valid regex: unclosed group")]),
        (
            // Every problem, not only the first; the good route next to them is not reported.
            {
                let mut c = rc(vec![route(prefix("/"), to_cluster("ok")), rx("["), route(None, to_cluster("c"))]);
                c.virtual_hosts[0].rate_limits = vec![Default::default()];
                c.vhds = Some(Default::default());
                c
            },
            vec![
                "vhds: not supported".into(),
                "virtual_hosts[0].rate_limits[0].actions: required but not set".into(),
                "virtual_hosts[0].routes[1].match.safe_regex.regex: `[` is not a valid regex: unclosed character class".into(),
                "virtual_hosts[0].routes[2].match: required but not set".into(),
            ],
        ),
        (
            rc(vec![route(prefix("/"), pb::RouteAction { hash_policy: vec![Default::default()], idle_timeout: dur(-1, 0), ..to_cluster("c") })]),
            vec![format!("{r0}.route.hash_policy[0]: required but not set"), format!("{r0}.route.idle_timeout: duration -1s 0ns is negative or malformed")],
        ),
        (
            rc(vec![route(prefix("/"), pb::RouteAction {
                upgrade_configs: vec![
                    Default::default(),
                    pb::route_action::UpgradeConfig {
                        upgrade_type: "websocket".into(),
                        connect_config: Some(Default::default()),
                        ..Default::default()
                    },
                    pb::route_action::UpgradeConfig {
                        upgrade_type: "CONNECT".into(),
                        connect_config: Some(pb::route_action::upgrade_config::ConnectConfig {
                            proxy_protocol_config: Some(Default::default()),
                            allow_post: true,
                        }),
                        ..Default::default()
                    },
                ],
                ..to_cluster("c")
            })]),
            vec![
                format!("{r0}.route.upgrade_configs[0].upgrade_type: required but not set"),
                format!("{r0}.route.upgrade_configs[1].connect_config: only for `upgrade_type: CONNECT`"),
                format!("{r0}.route.upgrade_configs[2].connect_config.proxy_protocol_config: not supported"),
                format!("{r0}.route.upgrade_configs[2].connect_config.allow_post: not supported"),
            ],
        ),
        (
            {
                use pb::route_action::hash_policy::{Cookie, FilterState, PolicySpecifier as S};
                let hp = |s| pb::route_action::HashPolicy { policy_specifier: Some(s), terminal: false };
                rc(vec![route(prefix("/"), pb::RouteAction {
                    hash_policy: vec![
                        hp(S::FilterState(FilterState { key: "k".into() })),
                        hp(S::Cookie(Cookie { name: "session".into(), ttl: dur(60, 0), ..Default::default() })),
                    ],
                    ..to_cluster("c")
                })])
            },
            vec![
                format!("{r0}.route.hash_policy[0].filter_state: not supported"),
                format!("{r0}.route.hash_policy[1].cookie.ttl: not supported"),
            ],
        ),
        (
            rc(vec![route(prefix("/"), pb::RouteAction { cluster_specifier: Some(pb::route_action::ClusterSpecifier::ClusterHeader("x".into())), ..Default::default() })]),
            vec![format!("{r0}.route.cluster_header: not supported")],
        ),
        (
            rc(vec![route(prefix("/"), pb::RouteAction {
                retry_policy: Some(pb::RetryPolicy {
                    retry_on: "5xx,sometimes".into(),
                    retry_host_predicate: vec![pb::retry_policy::RetryHostPredicate { name: "envoy.retry_host_predicates.omit_canary_hosts".into(), ..Default::default() }],
                    retriable_status_codes: vec![42],
                    host_selection_retry_max_attempts: -1,
                    ..Default::default()
                }),
                ..to_cluster("c")
            })]),
            vec![
                format!("{r0}.route.retry_policy.host_selection_retry_max_attempts: -1 is negative"),
                format!("{r0}.route.retry_policy.retry_on: condition `sometimes` is not supported"),
                format!("{r0}.route.retry_policy.retry_host_predicate[0]: predicate `envoy.retry_host_predicates.omit_canary_hosts` is not supported"),
                format!("{r0}.route.retry_policy.retriable_status_codes[0]: 42 is not an HTTP status"),
            ],
        ),
        (
            rc(vec![route(Some(pb::RouteMatch { runtime_fraction: Some(Default::default()), ..prefix("/").unwrap() }), to_cluster("c"))]),
            vec![format!("{r0}.match.runtime_fraction: not supported")],
        ),
        (
            rc(vec![route(Some(pb::RouteMatch { headers: vec![pb::HeaderMatcher { name: "h".into(), header_match_specifier: Some(pb::header_matcher::HeaderMatchSpecifier::RangeMatch(Default::default())), ..Default::default() }], ..prefix("/").unwrap() }), to_cluster("c"))]),
            vec![format!("{r0}.match.headers[0].range_match: not supported")],
        ),
        (
            rc(vec![route(prefix("/"), pb::RouteAction { cluster_specifier: Some(pb::route_action::ClusterSpecifier::WeightedClusters(pb::WeightedCluster { clusters: vec![pb::weighted_cluster::ClusterWeight { name: "a".into(), ..Default::default() }], ..Default::default() })), ..Default::default() })]),
            vec![format!("{r0}.route.weighted_clusters.clusters: the weights add up to 0")],
        ),
        (
            rc(vec![pb::Route { r#match: prefix("/"), action: Some(pb::route::Action::DirectResponse(pb::DirectResponseAction { status: 100, body: None })), ..Default::default() }]),
            vec![format!("{r0}.direct_response.status: 100 is not in [200, 600)")],
        ),
        (
            rc(vec![pb::Route { r#match: prefix("/"), action: None, ..Default::default() }]),
            vec![format!("{r0}.route: one of `route`, `redirect` or `direct_response` is required")],
        ),
    ];
    for (i, (input, want)) in cases.into_iter().enumerate() {
        assert_eq!(messages(route_configuration(&input)), want, "case {i}");
    }
}

/// Istio's VirtualService `mirror` and `mirrorPercentage`.
#[test]
fn mirror_policies() {
    use pb::route_action::RequestMirrorPolicy as M;
    let with = |mirrors: Vec<M>| {
        rc(vec![route(
            prefix("/"),
            pb::RouteAction {
                request_mirror_policies: mirrors,
                ..to_cluster("c")
            },
        )])
    };
    let got = route_configuration(&with(vec![
        M {
            cluster: "shadow".into(),
            runtime_fraction: Some(core::RuntimeFractionalPercent {
                default_value: Some(xds_api::pb::envoy::r#type::v3::FractionalPercent {
                    numerator: 25,
                    denominator: 1,
                }),
                runtime_key: "k".into(),
            }),
            ..Default::default()
        },
        M {
            cluster_header: "X-Mirror-To".into(),
            disable_shadow_host_suffix_append: true,
            ..Default::default()
        },
    ]))
    .unwrap();
    let mr::Action::Route(a) = &got.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.mirrors,
        [
            mr::MirrorPolicy {
                cluster: mr::MirrorCluster::Named("shadow".into()),
                fraction: Some(model::filter::Fraction {
                    numerator: 25,
                    denominator: 10_000
                }),
                keep_host: false,
            },
            mr::MirrorPolicy {
                cluster: mr::MirrorCluster::FromHeader("x-mirror-to".into()),
                fraction: None,
                keep_host: true,
            },
        ]
    );
    let at = "virtual_hosts[0].routes[0].route.request_mirror_policies";
    assert_eq!(
        messages(route_configuration(&with(vec![
            M::default(),
            M {
                cluster: "a".into(),
                cluster_header: "x-mirror".into(),
                ..Default::default()
            },
            M {
                cluster_header: "bad header".into(),
                ..Default::default()
            },
        ]))),
        [
            format!("{at}[0]: one of `cluster` or `cluster_header` is required"),
            format!("{at}[1].cluster_header: set together with `cluster`"),
            format!("{at}[2].cluster_header: \"bad header\" is not a header name"),
        ]
    );
    // Virtual hosts and route tables have mirrors too (the most specific level with any
    // applies, at request time).
    let mut table = with(vec![]);
    table.request_mirror_policies = vec![M {
        cluster: "table".into(),
        ..Default::default()
    }];
    table.virtual_hosts[0].request_mirror_policies = vec![M {
        cluster: "vhost".into(),
        ..Default::default()
    }];
    let got = route_configuration(&table).unwrap();
    assert_eq!(
        got.mirrors[0].cluster,
        mr::MirrorCluster::Named("table".into())
    );
    assert_eq!(
        got.virtual_hosts[0].mirrors[0].cluster,
        mr::MirrorCluster::Named("vhost".into())
    );
}

#[test]
fn rate_limit_actions() {
    let table: pb::RouteConfiguration = super::json::from_value(
        serde_yaml::from_str(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  rate_limits:
  - actions: [{remote_address: {}}, {masked_remote_address: {v6_prefix_mask_len: 64}}]
  routes:
  - match: {prefix: /}
    route:
      cluster: c
      rate_limits:
      - stage: 2
        actions:
        - request_headers: {header_name: X-User, descriptor_key: user, skip_if_absent: true}
        - generic_key: {descriptor_value: v}
        - header_value_match: {descriptor_value: m, headers: [{name: x-a, present_match: true}]}
        - destination_cluster: {}
"#,
        )
        .unwrap(),
    )
    .unwrap();
    let t = route_configuration(&table).unwrap();
    let v = &t.virtual_hosts[0];
    assert_eq!(
        v.rate_limits,
        [mr::RateLimitEntry {
            stage: 0,
            actions: vec![
                mr::RateLimitAction::RemoteAddress,
                mr::RateLimitAction::MaskedRemoteAddress { v4: 32, v6: 64 },
            ],
            hits: mr::Hits::One,
            on_stream_done: false,
        }]
    );
    let r = &action(&v.routes[0]).rate_limits[0];
    assert_eq!(r.stage, 2);
    assert_eq!(
        r.actions[..2],
        [
            mr::RateLimitAction::RequestHeaders {
                header: "x-user".into(),
                key: "user".into(),
                skip_if_absent: true,
            },
            // Envoy's default keys.
            mr::RateLimitAction::GenericKey {
                key: "generic_key".into(),
                value: "v".into(),
            },
        ]
    );
    assert!(matches!(
        &r.actions[2],
        mr::RateLimitAction::HeaderValueMatch { key, expect_match: true, .. } if key == "header_match"
    ));

    // What Myelin cannot give is rejected, with the entry.
    let bad: pb::RouteConfiguration = super::json::from_value(
        serde_yaml::from_str(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  rate_limits:
  - actions: [{source_cluster: {}}]
  - actions: [{generic_key: {descriptor_key: k}}]
  - stage: 11
    actions: [{metadata: {descriptor_key: k, metadata_key: {key: a, path: [{key: b}]}}}]
"#,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        messages(route_configuration(&bad)),
        [
            "virtual_hosts[0].rate_limits[0].actions[0].source_cluster: not supported",
            "virtual_hosts[0].rate_limits[1].actions[0].generic_key.descriptor_value: required but not set",
            "virtual_hosts[0].rate_limits[2].stage: at most 10",
            "virtual_hosts[0].rate_limits[2].actions[0].metadata: not supported",
        ]
    );
}

/// `per_request_buffer_limit_bytes` of a route, else of its virtual host: the most of a
/// body kept for retries (under the listener's limit, applied by the proxy).
#[test]
fn request_buffer_limits() {
    let mut table = rc(vec![
        pb::Route {
            per_request_buffer_limit_bytes: u32v(4096),
            ..route(prefix("/own"), to_cluster("c"))
        },
        route(prefix("/"), to_cluster("c")),
    ]);
    let m = route_configuration(&table).unwrap();
    let vh = &m.virtual_hosts[0];
    assert_eq!(
        (
            vh.buffer_limit,
            vh.routes[0].buffer_limit,
            vh.routes[1].buffer_limit
        ),
        (None, Some(4096), None)
    );
    table.virtual_hosts[0].per_request_buffer_limit_bytes = u32v(0);
    let m = route_configuration(&table).unwrap();
    assert_eq!(m.virtual_hosts[0].buffer_limit, Some(0));
}
