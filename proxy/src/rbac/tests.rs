use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::model::listener::CidrRange;
use crate::model::rbac::RbacMatchAction;
use crate::model::route::{HeaderMatcher, HeaderRule};
use crate::model::{StringMatcher, StringPattern};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn cidr(s: &str) -> CidrRange {
    let (a, p) = s.split_once('/').unwrap();
    CidrRange {
        address: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

fn prefix(s: &str) -> StringMatcher {
    StringMatcher {
        pattern: StringPattern::Prefix(s.into()),
        ignore_case: false,
    }
}

fn header(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        rule: HeaderRule::Value(StringMatcher::exact(value)),
        invert: false,
        treat_missing_as_empty: false,
    }
}

fn head<'a>(method: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestHead<'a> {
    RequestHead {
        method,
        authority: "shop.example",
        path,
        scheme: "http",
        headers,
    }
}

fn subject<'a>(head: Option<&'a RequestHead<'a>>) -> Subject<'a> {
    Subject {
        head,
        peer: "10.0.1.7:40000".parse().unwrap(),
        direct: "10.0.1.7".parse().unwrap(),
        remote_ip: "192.168.1.20".parse().unwrap(),
        local: "10.0.2.9:8080".parse().unwrap(),
        sni: None,
        principal: Some(FRONTEND),
    }
}

fn policies(action: RbacAction, list: Vec<(&str, RbacPolicy)>) -> RbacEngine {
    let mut policies: Vec<_> = list.into_iter().map(|(n, p)| (n.to_owned(), p)).collect();
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    RbacEngine::Policies { action, policies }
}

fn policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> RbacPolicy {
    RbacPolicy {
        permissions,
        principals,
    }
}

#[test]
fn allow_policies_let_through_only_what_one_of_them_matches() {
    // Istio's translation of "frontend may GET /api/*".
    let engine = policies(
        RbacAction::Allow,
        vec![(
            "ns[shop]-policy[api]-rule[0]",
            policy(
                vec![Permission::And(vec![
                    Permission::Header(header(":method", "GET")),
                    Permission::UrlPath(prefix("/api/")),
                ])],
                vec![Principal::Authenticated(Some(StringMatcher::exact(
                    FRONTEND,
                )))],
            ),
        )],
    );
    let h = HeaderMap::new();
    let get = head("GET", "/api/items?page=2", &h);
    let d = engine.decide(&subject(Some(&get)));
    assert_eq!(
        d,
        Decision {
            allowed: true,
            policy: Some("ns[shop]-policy[api]-rule[0]")
        }
    );
    // Another method, another path, another identity, no identity: denied, no policy.
    let post = head("POST", "/api/items", &h);
    let other = head("GET", "/admin", &h);
    for (head, principal) in [
        (&post, Some(FRONTEND)),
        (&other, Some(FRONTEND)),
        (&get, Some("spiffe://cluster.local/ns/shop/sa/intruder")),
        (&get, None),
    ] {
        let mut s = subject(Some(head));
        s.principal = principal;
        assert_eq!(
            engine.decide(&s),
            Decision {
                allowed: false,
                policy: None
            },
            "{} {} as {principal:?}",
            head.method,
            head.path
        );
    }
    // `url_path` is the path without its query: a query cannot make `/api/` match.
    let query = head("GET", "/other?x=/api/", &h);
    assert!(!engine.decide(&subject(Some(&query))).allowed);
}

#[test]
fn deny_policies_refuse_what_one_matches_and_log_refuses_nothing() {
    let blocked = policy(
        vec![Permission::Any],
        vec![Principal::Or(vec![
            Principal::RemoteIp(cidr("192.168.1.0/24")),
            Principal::Header(header("x-block", "yes")),
        ])],
    );
    let deny = policies(RbacAction::Deny, vec![("blocked", blocked.clone())]);
    let h = HeaderMap::new();
    let req = head("GET", "/", &h);
    assert_eq!(
        deny.decide(&subject(Some(&req))),
        Decision {
            allowed: false,
            policy: Some("blocked")
        }
    );
    let mut s = subject(Some(&req));
    s.remote_ip = "172.16.0.1".parse().unwrap();
    assert!(deny.decide(&s).allowed);
    let mut flagged = HeaderMap::new();
    flagged.insert("x-block", HeaderValue::from_static("yes"));
    let req2 = head("GET", "/", &flagged);
    let mut s2 = subject(Some(&req2));
    s2.remote_ip = "172.16.0.1".parse().unwrap();
    assert!(!deny.decide(&s2).allowed);

    let log = policies(RbacAction::Log, vec![("blocked", blocked)]);
    assert_eq!(
        log.decide(&subject(Some(&req))),
        Decision {
            allowed: true,
            policy: Some("blocked")
        }
    );
}

#[test]
fn the_first_policy_by_name_names_the_decision() {
    let any = || policy(vec![Permission::Any], vec![Principal::Any]);
    let engine = policies(RbacAction::Deny, vec![("zeta", any()), ("alpha", any())]);
    assert_eq!(engine.decide(&subject(None)).policy, Some("alpha"));
}

#[test]
fn connection_rules_read_addresses_ports_and_sni() {
    let s = subject(None);
    let yes = [
        Permission::DestinationIp(cidr("10.0.2.0/24")),
        Permission::DestinationPort(8080),
        Permission::DestinationPortRange(8000, 8081),
        Permission::Not(Box::new(Permission::DestinationPortRange(8000, 8080))),
        Permission::RequestedServerName(StringMatcher::exact("")),
    ];
    for p in &yes {
        assert!(p.matches(&s), "{p:?}");
    }
    let no = [
        Permission::DestinationIp(cidr("10.0.3.0/24")),
        Permission::DestinationPort(80),
        // A connection has no headers and no path: such rules never match it.
        Permission::Header(header(":method", "GET")),
        Permission::UrlPath(prefix("/")),
        Permission::And(vec![Permission::Any, Permission::DestinationPort(80)]),
    ];
    for p in &no {
        assert!(!p.matches(&s), "{p:?}");
    }
    let mut tls = subject(None);
    tls.sni = Some("api.shop.example");
    assert!(Permission::RequestedServerName(prefix("api.")).matches(&tls));
    // The peer and the client the connection manager worked out are two principals.
    assert!(Principal::DirectRemoteIp(cidr("10.0.1.0/24")).matches(&s));
    assert!(!Principal::RemoteIp(cidr("10.0.1.0/24")).matches(&s));
    assert!(Principal::RemoteIp(cidr("192.168.0.0/16")).matches(&s));
    assert!(Principal::SourceIp(cidr("10.0.1.0/24")).matches(&s));
    // Behind a PROXY protocol header: `source_ip` is its client, `direct_remote_ip` the
    // load balancer that sent it.
    let mut proxied = subject(None);
    proxied.peer = "203.0.113.5:1234".parse().unwrap();
    assert!(Principal::SourceIp(cidr("203.0.113.0/24")).matches(&proxied));
    assert!(!Principal::DirectRemoteIp(cidr("203.0.113.0/24")).matches(&proxied));
    assert!(Principal::DirectRemoteIp(cidr("10.0.1.0/24")).matches(&proxied));
    assert!(Principal::Authenticated(None).matches(&s));
    let mut anonymous = subject(None);
    anonymous.principal = None;
    assert!(!Principal::Authenticated(None).matches(&anonymous));
    assert!(Principal::Not(Box::new(Principal::Authenticated(None))).matches(&anonymous));
}

fn action(name: &str, allow: bool) -> OnMatch<RbacMatchAction> {
    OnMatch::Action(RbacMatchAction {
        name: name.into(),
        allow,
    })
}

fn ip_predicate(ranges: &[&str]) -> Predicate {
    Predicate::Single {
        input: MatchInput::SourceIp,
        matcher: InputMatcher::Ip(ranges.iter().map(|r| cidr(r)).collect()),
    }
}

#[test]
fn a_matcher_list_takes_the_first_match_and_else_on_no_match() {
    // Envoy Gateway's client CIDR authorization: deny two locations, allow the rest.
    let engine = RbacEngine::Matcher(Matcher {
        kind: MatcherKind::List(vec![
            FieldMatcher {
                predicate: ip_predicate(&["192.168.1.0/24", "192.168.2.0/24"]),
                on_match: action("deny-location-1", false),
            },
            FieldMatcher {
                predicate: ip_predicate(&["10.75.1.0/24"]),
                on_match: action("deny-location-2", false),
            },
        ]),
        on_no_match: Some(Box::new(action("default", true))),
    });
    assert_eq!(
        engine.decide(&subject(None)),
        Decision {
            allowed: false,
            policy: Some("deny-location-1")
        }
    );
    let mut s = subject(None);
    s.remote_ip = "10.75.1.3".parse().unwrap();
    assert_eq!(engine.decide(&s).policy, Some("deny-location-2"));
    s.remote_ip = "10.9.9.9".parse().unwrap();
    assert_eq!(
        engine.decide(&s),
        Decision {
            allowed: true,
            policy: Some("default")
        }
    );
}

#[test]
fn a_matcher_without_a_match_or_on_no_match_denies() {
    let engine = RbacEngine::Matcher(Matcher {
        kind: MatcherKind::List(vec![FieldMatcher {
            predicate: ip_predicate(&["10.0.0.0/8"]),
            on_match: action("internal", true),
        }]),
        on_no_match: None,
    });
    assert_eq!(
        engine.decide(&subject(None)),
        Decision {
            allowed: false,
            policy: None
        }
    );
    let empty: RbacEngine = RbacEngine::Matcher(Matcher {
        kind: MatcherKind::Empty,
        on_no_match: None,
    });
    assert!(!empty.decide(&subject(None)).allowed);
}

#[test]
fn predicates_combine_and_inputs_without_a_value_do_not_match() {
    let h = {
        let mut h = HeaderMap::new();
        h.append("x-team", HeaderValue::from_static("a"));
        h.append("x-team", HeaderValue::from_static("b"));
        h
    };
    let req = head("GET", "/", &h);
    let s = subject(Some(&req));
    let team = |v: &str| Predicate::Single {
        input: MatchInput::RequestHeader("x-team".into()),
        matcher: InputMatcher::Value(StringMatcher::exact(v)),
    };
    // Several values are one, joined with `,`.
    assert!(team("a,b").holds(&s));
    assert!(!team("a").holds(&s));
    assert!(Predicate::Or(vec![team("a"), team("a,b")]).holds(&s));
    assert!(!Predicate::And(vec![team("a"), team("a,b")]).holds(&s));
    assert!(Predicate::Not(Box::new(team("a"))).holds(&s));
    // No request (a connection), no SNI: no value, no match, whatever the matcher.
    let conn = subject(None);
    assert!(!team("a,b").holds(&conn));
    let sni = Predicate::Single {
        input: MatchInput::ServerName,
        matcher: InputMatcher::Value(prefix("")),
    };
    assert!(!sni.holds(&conn));
    // Ports are matched as their decimal text; addresses by range or as text.
    let port = Predicate::Single {
        input: MatchInput::DestinationPort,
        matcher: InputMatcher::Value(StringMatcher::exact("8080")),
    };
    assert!(port.holds(&conn));
    let peer = Predicate::Single {
        input: MatchInput::DirectSourceIp,
        matcher: InputMatcher::Value(StringMatcher::exact("10.0.1.7")),
    };
    assert!(peer.holds(&conn));
    let san = Predicate::Single {
        input: MatchInput::UriSan,
        matcher: InputMatcher::Value(prefix("spiffe://cluster.local/ns/shop/")),
    };
    assert!(san.holds(&conn));
}

#[test]
fn matcher_trees_look_values_up_and_nested_matchers_decide() {
    let mut map = HashMap::new();
    map.insert("GET".to_owned(), action("reads", true));
    map.insert(
        "DELETE".to_owned(),
        OnMatch::Matcher(Box::new(Matcher {
            kind: MatcherKind::List(vec![FieldMatcher {
                predicate: Predicate::Single {
                    input: MatchInput::UriSan,
                    matcher: InputMatcher::Value(StringMatcher::exact(FRONTEND)),
                },
                on_match: action("frontend-deletes", true),
            }]),
            // Nothing matched in the nested matcher: no match at all (denied), not the
            // outer `on_no_match`.
            on_no_match: None,
        })),
    );
    let engine = RbacEngine::Matcher(Matcher {
        kind: MatcherKind::Exact {
            input: MatchInput::RequestHeader(":method".into()),
            map,
        },
        on_no_match: Some(Box::new(action("other-methods", false))),
    });
    let h = HeaderMap::new();
    let get = head("GET", "/", &h);
    let delete = head("DELETE", "/", &h);
    let post = head("POST", "/", &h);
    assert_eq!(engine.decide(&subject(Some(&get))).policy, Some("reads"));
    assert_eq!(
        engine.decide(&subject(Some(&delete))),
        Decision {
            allowed: true,
            policy: Some("frontend-deletes")
        }
    );
    let mut stranger = subject(Some(&delete));
    stranger.principal = Some("spiffe://cluster.local/ns/x/sa/y");
    assert_eq!(
        engine.decide(&stranger),
        Decision {
            allowed: false,
            policy: None
        }
    );
    assert_eq!(
        engine.decide(&subject(Some(&post))),
        Decision {
            allowed: false,
            policy: Some("other-methods")
        }
    );

    // Prefix maps take the longest key.
    let prefixes = RbacEngine::Matcher(Matcher {
        kind: MatcherKind::Prefix {
            input: MatchInput::RequestHeader(":path".into()),
            map: vec![
                ("/api/admin".to_owned(), action("admin", false)),
                ("/api".to_owned(), action("api", true)),
            ],
        },
        on_no_match: None,
    });
    let admin = head("GET", "/api/admin/users", &h);
    let api = head("GET", "/api/items", &h);
    assert_eq!(
        prefixes.decide(&subject(Some(&admin))).policy,
        Some("admin")
    );
    assert!(!prefixes.decide(&subject(Some(&admin))).allowed);
    assert_eq!(prefixes.decide(&subject(Some(&api))).policy, Some("api"));
    assert!(!prefixes.decide(&subject(Some(&post))).allowed);
}
