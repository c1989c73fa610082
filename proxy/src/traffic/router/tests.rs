//! Table tests of the pure routing decision.

use super::*;
use crate::model::route::{
    Action, ClusterSpecifier, DirectResponse, HeaderMutation, RegexRewrite, RouteAction,
};
use crate::model::{Regex, StringMatcher, StringPattern};

fn action(cluster: &str) -> Action {
    Action::Route(RouteAction {
        cluster: ClusterSpecifier::Cluster(cluster.into()),
        timeout: None,
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
    })
}

fn route(name: &str, path: PathMatch) -> Route {
    Route {
        name: name.into(),
        route_match: RouteMatch {
            path,
            case_sensitive: true,
            headers: vec![],
            query_parameters: vec![],
        },
        action: action(name),
        headers: HeaderMutation::default(),
        filters: Default::default(),
        cors: None,
        buffer_limit: None,
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains
            .iter()
            .map(|d| DomainMatch::parse(d).unwrap())
            .collect(),
        routes,
        retry_policy: None,
        headers: HeaderMutation::default(),
        filters: Default::default(),
        cors: None,
        mirrors: vec![],
        buffer_limit: None,
        rate_limits: vec![],
        attempt_count_in_request: false,
        attempt_count_in_response: false,
    }
}

fn table(vhosts: Vec<VirtualHost>) -> RouteTable {
    RouteTable::new(Arc::new(RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vhosts,
        headers: HeaderMutation::default(),
        filters: Default::default(),
        mirrors: vec![],
        ignore_port_in_host_matching: false,
    }))
}

fn head<'a>(authority: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestHead<'a> {
    RequestHead {
        method: "GET",
        authority,
        path,
        scheme: "http",
        headers,
    }
}

fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn virtual_host_selection_is_by_specificity_not_order() {
    let catch_all = |n| vhost(n, &["*"], vec![route(n, PathMatch::Prefix("/".into()))]);
    let t = table(vec![
        catch_all("any"),
        vhost("prefix-short", &["api.*"], vec![]),
        vhost("prefix-long", &["api.example.*"], vec![]),
        vhost("suffix-short", &["*.com"], vec![]),
        vhost("suffix-long", &["*.example.com"], vec![]),
        vhost(
            "exact",
            &["api.example.com", "api.example.com:8080"],
            vec![],
        ),
    ]);
    let cases = [
        ("api.example.com", "exact"),
        ("API.Example.COM", "exact"),
        ("api.example.com:8080", "exact"),
        // The port is part of the authority: no exact match, the suffix wildcard wins.
        ("api.example.com:9090", "prefix-long"),
        ("www.example.com", "suffix-long"),
        ("www.other.com", "suffix-short"),
        ("api.example.org", "prefix-long"),
        ("api.other.org", "prefix-short"),
        ("elsewhere", "any"),
        ("", "any"),
    ];
    for (authority, want) in cases {
        assert_eq!(
            t.virtual_host(authority).map(|v| v.name.as_str()),
            Some(want),
            "{authority}"
        );
    }
    let no_any = table(vec![vhost("exact", &["a"], vec![])]);
    assert!(no_any.virtual_host("b").is_none());
}

/// `ignore_port_in_host_matching`: the request's port is not compared; the domains are
/// taken as written (one with a port then matches nothing), as in Envoy.
#[test]
fn a_table_may_ignore_the_requests_port() {
    let vhosts = vec![
        vhost("web", &["web"], vec![]),
        vhost("with-port", &["api:8080"], vec![]),
        vhost("v6", &["[::1]"], vec![]),
        vhost("any", &["*"], vec![]),
    ];
    let mut config = (*table(vhosts).config).clone();
    config.ignore_port_in_host_matching = true;
    let t = RouteTable::new(Arc::new(config));
    for (authority, want) in [
        ("web", "web"),
        ("web:8080", "web"),
        ("WEB:80", "web"),
        ("api:8080", "any"),
        ("[::1]:443", "v6"),
        // Not a port: kept, so no exact match.
        ("web:", "any"),
    ] {
        assert_eq!(
            t.virtual_host(authority).map(|v| v.name.as_str()),
            Some(want),
            "{authority}"
        );
    }
}

#[test]
fn first_matching_route_wins_in_order() {
    let t = table(vec![vhost(
        "vh",
        &["*"],
        vec![
            route("exact-path", PathMatch::Path("/api".into())),
            route("sep-prefix", PathMatch::PathSeparatedPrefix("/api".into())),
            route(
                "regex",
                PathMatch::SafeRegex(Regex::new("/v[0-9]+/.*").unwrap()),
            ),
            route("prefix-ap", PathMatch::Prefix("/ap".into())),
            route("root", PathMatch::Prefix("/".into())),
        ],
    )]);
    let h = HeaderMap::new();
    let cases = [
        ("/api", "exact-path"),
        ("/api?x=1", "exact-path"),
        ("/api/", "sep-prefix"),
        ("/api/users", "sep-prefix"),
        ("/apix", "prefix-ap"),
        ("/v2/items", "regex"),
        ("/v2/items?q=1", "regex"),
        ("/v2", "root"),
        ("/API", "root"),
        ("/", "root"),
    ];
    for (path, want) in cases {
        let got = t.find(&head("h", path, &h)).map(|(_, r)| r.name.as_str());
        assert_eq!(got, Some(want), "{path}");
    }
}

#[test]
fn case_insensitive_paths() {
    let mut r = route("ci", PathMatch::Prefix("/Api".into()));
    r.route_match.case_sensitive = false;
    let mut p = route("cip", PathMatch::Path("/Exact".into()));
    p.route_match.case_sensitive = false;
    let t = table(vec![vhost("vh", &["*"], vec![p, r])]);
    let h = HeaderMap::new();
    for (path, want) in [
        ("/aPI/x", Some("ci")),
        ("/eXACT", Some("cip")),
        ("/other", None),
    ] {
        assert_eq!(
            t.find(&head("h", path, &h)).map(|(_, r)| r.name.as_str()),
            want,
            "{path}"
        );
    }
}

fn hm(name: &str, rule: HeaderRule, invert: bool, missing_empty: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        rule,
        invert,
        treat_missing_as_empty: missing_empty,
    }
}

fn exact(s: &str) -> HeaderRule {
    HeaderRule::Value(StringMatcher::exact(s))
}

#[test]
fn header_matchers() {
    let regex = |s| {
        HeaderRule::Value(StringMatcher {
            pattern: StringPattern::SafeRegex(Regex::new(s).unwrap()),
            ignore_case: false,
        })
    };
    /// (matcher, request headers, matches)
    type Case<'a> = (HeaderMatcher, &'a [(&'a str, &'a str)], bool);
    let cases: Vec<Case> = vec![
        (hm("x-a", exact("1"), false, false), &[("x-a", "1")], true),
        (hm("x-a", exact("1"), false, false), &[("x-a", "2")], false),
        (hm("x-a", exact("1"), false, false), &[], false),
        (hm("x-a", exact("1"), true, false), &[("x-a", "2")], true),
        // Missing and inverted: a non-match, inverted, matches.
        (hm("x-a", exact("1"), true, false), &[], true),
        (hm("x-a", exact(""), false, true), &[], true),
        (hm("x-a", exact(""), false, false), &[], false),
        (
            hm("x-a", HeaderRule::Present(true), false, false),
            &[("x-a", "")],
            true,
        ),
        (
            hm("x-a", HeaderRule::Present(true), false, false),
            &[],
            false,
        ),
        (
            hm("x-a", HeaderRule::Present(false), false, false),
            &[],
            true,
        ),
        (hm("x-a", HeaderRule::Present(true), true, false), &[], true),
        // Several values are joined with a comma.
        (
            hm("x-a", exact("1,2"), false, false),
            &[("x-a", "1"), ("x-a", "2")],
            true,
        ),
        (hm(":method", exact("GET"), false, false), &[], true),
        (hm(":method", exact("POST"), false, false), &[], false),
        (hm(":authority", regex("h.*"), false, false), &[], true),
        (hm(":path", exact("/p?q=1"), false, false), &[], true),
    ];
    for (i, (m, pairs, want)) in cases.iter().enumerate() {
        let h = hdrs(pairs);
        assert_eq!(
            m.matches(&head("host", "/p?q=1", &h)),
            *want,
            "case {i}: {m:?} {pairs:?}"
        );
    }
}

#[test]
fn query_parameter_matchers() {
    let qm = |name: &str, rule| QueryParameterMatcher {
        name: name.into(),
        rule,
    };
    let v = |s: &str| QueryParameterRule::Value(StringMatcher::exact(s));
    let cases = [
        (qm("a", QueryParameterRule::Present), "a=1", true),
        (qm("a", QueryParameterRule::Present), "a", true),
        (qm("a", QueryParameterRule::Present), "b=1", false),
        (qm("a", v("1")), "b=2&a=1", true),
        // The first value counts.
        (qm("a", v("2")), "a=1&a=2", false),
        (qm("a b", v("x/y")), "a%20b=x%2Fy", true),
        (qm("a", v("")), "a=", true),
        (qm("a", v("1")), "", false),
    ];
    for (m, query, want) in cases {
        assert_eq!(m.matches(query), want, "{m:?} {query}");
    }
    // Through a route: no query string at all.
    let mut r = route("q", PathMatch::Prefix("/".into()));
    r.route_match.query_parameters = vec![qm("debug", QueryParameterRule::Present)];
    let t = table(vec![vhost("vh", &["*"], vec![r])]);
    let h = HeaderMap::new();
    assert!(t.find(&head("h", "/x?debug", &h)).is_some());
    assert!(t.find(&head("h", "/x", &h)).is_none());
}

#[test]
fn headers_and_path_together() {
    let mut canary = route("canary", PathMatch::Prefix("/".into()));
    canary.route_match.headers = vec![hm("x-canary", exact("1"), false, false)];
    let t = table(vec![vhost(
        "vh",
        &["*"],
        vec![canary, route("stable", PathMatch::Prefix("/".into()))],
    )]);
    let yes = hdrs(&[("x-canary", "1")]);
    let no = HeaderMap::new();
    assert_eq!(t.find(&head("h", "/", &yes)).unwrap().1.name, "canary");
    assert_eq!(t.find(&head("h", "/", &no)).unwrap().1.name, "stable");
}

#[test]
fn weighted_choice_follows_weights() {
    let wc = |name: &str, weight| WeightedCluster {
        name: name.into(),
        weight,
        routing: None,
    };
    let clusters = [wc("a", 1), wc("b", 3), wc("c", 0)];
    assert_eq!(pick_weighted(&clusters, 0), Some("a"));
    assert_eq!(pick_weighted(&clusters, 1), Some("b"));
    assert_eq!(pick_weighted(&clusters, 3), Some("b"));
    assert_eq!(pick_weighted(&clusters, 4), Some("a"));
    assert_eq!(pick_weighted(&[wc("z", 0)], 7), None);
    // Distribution over pseudo-random rolls (a fixed LCG: deterministic, no flakes).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut counts = HashMap::new();
    let n = 40_000;
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *counts
            .entry(pick_weighted(&clusters, x >> 11).unwrap())
            .or_insert(0) += 1;
    }
    let share = |k| f64::from(counts[k]) / f64::from(n);
    assert!((share("a") - 0.25).abs() < 0.02, "{counts:?}");
    assert!((share("b") - 0.75).abs() < 0.02, "{counts:?}");
    assert!(!counts.contains_key("c"));
}

#[test]
fn path_rewrites() {
    let mut a = match action("c") {
        Action::Route(a) => a,
        _ => unreachable!(),
    };
    let m = |path| RouteMatch {
        path,
        case_sensitive: true,
        headers: vec![],
        query_parameters: vec![],
    };
    assert_eq!(
        rewrite_path(&a, &m(PathMatch::Prefix("/".into())), "/x"),
        None
    );
    a.prefix_rewrite = Some("/v2/".into());
    assert_eq!(
        rewrite_path(&a, &m(PathMatch::Prefix("/api/".into())), "/api/users?id=1").as_deref(),
        Some("/v2/users?id=1")
    );
    a.prefix_rewrite = Some("/".into());
    assert_eq!(
        rewrite_path(
            &a,
            &m(PathMatch::PathSeparatedPrefix("/api".into())),
            "/api/x"
        )
        .as_deref(),
        Some("//x")
    );
    a.prefix_rewrite = None;
    a.regex_rewrite = Some(RegexRewrite {
        pattern: Regex::new("/v[0-9]+/").unwrap(),
        substitution: "/latest/".into(),
    });
    assert_eq!(
        rewrite_path(&a, &m(PathMatch::Prefix("/".into())), "/v1/a/v2/b?v1/=x").as_deref(),
        Some("/latest/a/latest/b?v1/=x")
    );
}

#[test]
fn redirect_locations() {
    let m = RouteMatch {
        path: PathMatch::Prefix("/old/".into()),
        case_sensitive: true,
        headers: vec![],
        query_parameters: vec![],
    };
    let redirect = |scheme: Option<&str>, host: Option<&str>, port, path, strip_query| Redirect {
        scheme: scheme.map(Into::into),
        host: host.map(Into::into),
        port,
        path,
        response_code: 301,
        strip_query,
    };
    let h = HeaderMap::new();
    let req = head("example.com:8080", "/old/page?x=1", &h);
    let cases = [
        (
            redirect(None, None, None, None, false),
            "http://example.com:8080/old/page?x=1",
        ),
        (
            redirect(Some("https"), None, None, None, false),
            "https://example.com/old/page?x=1",
        ),
        (
            redirect(None, Some("new.example.com"), None, None, true),
            "http://new.example.com:8080/old/page",
        ),
        (
            redirect(
                None,
                None,
                Some(9000),
                Some(PathRedirect::Path("/p".into())),
                false,
            ),
            "http://example.com:9000/p?x=1",
        ),
        (
            redirect(
                None,
                None,
                None,
                Some(PathRedirect::Prefix("/new/".into())),
                false,
            ),
            "http://example.com:8080/new/page?x=1",
        ),
        (
            // Every match in the path, not in the query (Envoy Gateway's
            // `ReplaceRegexMatch` redirects).
            redirect(
                None,
                None,
                None,
                Some(PathRedirect::Regex(RegexRewrite {
                    pattern: Regex::new("o").unwrap(),
                    substitution: "0".into(),
                })),
                false,
            ),
            "http://example.com:8080/0ld/page?x=1",
        ),
    ];
    for (r, want) in cases {
        assert_eq!(redirect_location(&r, &m, &req), want, "{r:?}");
    }
    let v6 = head("[fd00::1]:80", "/", &h);
    assert_eq!(
        redirect_location(&redirect(None, None, None, None, false), &m, &v6),
        "http://[fd00::1]:80/"
    );
}

#[test]
fn header_mutations() {
    let add = |name: &str, value: &str, append_action, keep_empty_value| HeaderValueOption {
        name: name.into(),
        value: value.into(),
        append_action,
        keep_empty_value,
    };
    let mut h = hdrs(&[("a", "1"), ("b", "1"), ("c", "1"), ("gone", "x")]);
    mutate_headers(
        &mut h,
        &[
            add("a", "2", AppendAction::AppendIfExistsOrAdd, false),
            add("b", "2", AppendAction::AddIfAbsent, false),
            add("new", "2", AppendAction::AddIfAbsent, false),
            add("c", "2", AppendAction::OverwriteIfExistsOrAdd, false),
            add("d", "2", AppendAction::OverwriteIfExists, false),
            add("e", "", AppendAction::AppendIfExistsOrAdd, false),
            add("f", "", AppendAction::AppendIfExistsOrAdd, true),
        ],
        &["gone".into()],
    );
    let all = |k: &str| {
        h.get_all(k)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("a"), ["1", "2"]);
    assert_eq!(all("b"), ["1"]);
    assert_eq!(all("new"), ["2"]);
    assert_eq!(all("c"), ["2"]);
    assert!(all("d").is_empty());
    assert!(all("e").is_empty());
    assert_eq!(all("f"), [""]);
    assert!(all("gone").is_empty());
}

#[test]
fn direct_response_route_is_found_like_any_other() {
    let mut r = route("direct", PathMatch::Prefix("/health".into()));
    r.action = Action::DirectResponse(DirectResponse {
        status: 200,
        body: Some("ok".into()),
    });
    let t = table(vec![vhost("vh", &["*"], vec![r])]);
    let h = HeaderMap::new();
    let (_, found) = t.find(&head("h", "/healthz", &h)).unwrap();
    assert!(matches!(
        found.action,
        Action::DirectResponse(DirectResponse { status: 200, .. })
    ));
}

/// Envoy's CONNECT routing: a `CONNECT` has no path, so only `connect_matcher` takes it
/// (other routes, even `prefix: /`, pass it by); `connect_matcher` takes nothing else, not
/// an extended CONNECT (RFC 8441), which has a path and is routed by it.
#[test]
fn connect_requests_match_only_the_connect_matcher() {
    let t = table(vec![vhost(
        "vh",
        &["*"],
        vec![
            route("root", PathMatch::Prefix("/".into())),
            route("any-regex", PathMatch::SafeRegex(Regex::new(".*").unwrap())),
            route("connect", PathMatch::Connect),
        ],
    )]);
    let only_connect = table(vec![vhost(
        "vh",
        &["*"],
        vec![route("connect", PathMatch::Connect)],
    )]);
    let h = HeaderMap::new();
    let req = |method, path| RequestHead {
        method,
        ..head("db.test:5432", path, &h)
    };
    for (method, path, want, want_only) in [
        ("CONNECT", "", Some("connect"), Some("connect")),
        // Extended CONNECT (a WebSocket over HTTP/2): routed by its path.
        ("CONNECT", "/chat", Some("root"), None),
        ("GET", "/", Some("root"), None),
        ("POST", "/x", Some("root"), None),
    ] {
        let got = |t: &RouteTable| t.find(&req(method, path)).map(|(_, r)| r.name.clone());
        assert_eq!(got(&t).as_deref(), want, "{method} {path:?}");
        assert_eq!(
            got(&only_connect).as_deref(),
            want_only,
            "{method} {path:?}"
        );
    }
}
