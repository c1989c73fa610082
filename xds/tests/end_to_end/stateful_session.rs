//! Envoy's stateful session filter (`envoy.filters.http.stateful_session`) end to end, as
//! Envoy Gateway writes an HTTPRoute's `sessionPersistence`: the filter empty in the
//! connection manager, a cookie or a header per route. Three upstreams behind round robin:
//! without a session, consecutive requests go to each in turn; with one, to its host.

use std::collections::HashSet;

use crate::support::*;
use base64::Engine;
use http::StatusCode;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

const PORT: u16 = 18571;
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute";
const COOKIE: &str =
    "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState";
const HEADER: &str =
    "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState";

fn routes() -> RouteConfiguration {
    let session = |state: &str, strict: bool| {
        format!(
            r#"
    typed_per_filter_config:
      envoy.filters.http.stateful_session:
        "@type": {PER_ROUTE}
        stateful_session:
          strict: {strict}
          session_state:
            name: s
            typed_config: {state}"#
        )
    };
    let cookie = format!(
        r#"{{"@type": {COOKIE}, cookie: {{name: session, path: /cookie, ttl: 3600s, attributes: [{{name: SameSite, value: Lax}}]}}}}"#
    );
    let header = format!(r#"{{"@type": {HEADER}, name: x-session}}"#);
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {{prefix: /cookie}}
    route: {{cluster: web}}{}
  - match: {{prefix: /header}}
    route: {{cluster: web}}{}
  - match: {{prefix: /strict}}
    route: {{cluster: web}}{}
  - match: {{prefix: /off}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.stateful_session: {{"@type": {PER_ROUTE}, disabled: true}}
"#,
        session(&cookie, false),
        session(&header, false),
        session(&cookie, true),
    ))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn sessions_stick_to_their_host() {
    let upstreams = [
        http_upstream("a").await,
        http_upstream("b").await,
        http_upstream("c").await,
    ];
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let listener = filtered_listener(
        "sticky",
        PORT,
        r#"
- name: envoy.filters.http.stateful_session
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession}
"#,
    );
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "sticky", &listener);
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &addrs));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["sticky"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    let server_of = |a: &Answer| a.header("x-server").unwrap().to_owned();
    let addr_of = |name: &str| {
        let i = ["a", "b", "c"].iter().position(|n| *n == name).unwrap();
        addrs[i]
    };

    // A first request: balanced, and told its host in a cookie as Envoy writes it.
    let first = request(&node, PORT, "GET", "/cookie", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let host = server_of(&first);
    let value = b64(&addr_of(&host).to_string());
    assert_eq!(
        first.header("set-cookie"),
        Some(
            format!("session=\"{value}\"; Max-Age=3600; Path=/cookie; SameSite=Lax; HttpOnly")
                .as_str()
        )
    );
    // With the cookie (quoted, among others): always that host, and no new cookie.
    let cookie = format!("theme=dark; session=\"{value}\"");
    for _ in 0..6 {
        let a = request(&node, PORT, "GET", "/cookie/x", &[("cookie", &cookie)]).await;
        assert_eq!(server_of(&a), host);
        assert_eq!(a.header("set-cookie"), None);
    }
    // Without it, round robin goes round.
    let mut seen = HashSet::new();
    for _ in 0..3 {
        seen.insert(server_of(&request(&node, PORT, "GET", "/off", &[]).await));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // A cookie naming no host of the cluster (or garbage): balanced anew and told the new
    // host; strict: 503.
    let gone = format!("session={}", b64("127.0.0.1:1"));
    for cookie in [gone.as_str(), "session=!!!"] {
        let a = request(&node, PORT, "GET", "/cookie", &[("cookie", cookie)]).await;
        assert_eq!(a.status, StatusCode::OK);
        let new = b64(&addr_of(&server_of(&a)).to_string());
        assert!(a
            .header("set-cookie")
            .unwrap()
            .starts_with(&format!("session=\"{new}\"")));
    }
    let a = request(&node, PORT, "GET", "/strict", &[("cookie", &gone)]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let a = request(&node, PORT, "GET", "/strict", &[("cookie", &cookie)]).await;
    assert_eq!((a.status, server_of(&a)), (StatusCode::OK, host.clone()));
    // Disabled on the route: no cookie set, none read.
    let a = request(&node, PORT, "GET", "/off", &[]).await;
    assert_eq!(a.header("set-cookie"), None);

    // A header instead of a cookie.
    let first = request(&node, PORT, "GET", "/header", &[]).await;
    let host = server_of(&first);
    let value = first.header("x-session").unwrap().to_owned();
    assert_eq!(value, b64(&addr_of(&host).to_string()));
    for _ in 0..4 {
        let a = request(&node, PORT, "GET", "/header", &[("x-session", &value)]).await;
        assert_eq!(server_of(&a), host);
        assert_eq!(a.header("x-session"), None);
    }

    // The session's host turns unhealthy (EDS): the next request goes elsewhere and is
    // told so.
    let healthy: Vec<_> = addrs.iter().filter(|a| **a != addr_of(&host)).collect();
    let mut eps: String = healthy
        .iter()
        .map(|a| format!("  - endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}\n", a.ip(), a.port()))
        .collect();
    eps.push_str(&format!(
        "  - endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}\n    health_status: UNHEALTHY\n",
        addr_of(&host).ip(),
        addr_of(&host).port()
    ));
    let cla: xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment = yaml(&format!(
        "cluster_name: web\nendpoints:\n- lb_endpoints:\n{eps}"
    ));
    cp.update(|b| set(b, "web", &cla));
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let a = request(&node, PORT, "GET", "/header", &[("x-session", &value)]).await;
    assert_ne!(server_of(&a), host);
    assert_eq!(
        a.header("x-session"),
        Some(b64(&addr_of(&server_of(&a)).to_string()).as_str())
    );
}
