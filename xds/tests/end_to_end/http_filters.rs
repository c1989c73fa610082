//! The HTTP filters before the router, end to end: a listener from xDS with Envoy's fault
//! (`envoy.filters.http.fault`) and CORS (`envoy.filters.http.cors`) filters, configured
//! per route with `typed_per_filter_config` as istiod writes a VirtualService's `fault` and
//! `corsPolicy`, a captured connection through it, and an upstream that counts what it got;
//! and the health check filter (`envoy.filters.http.health_check`), which answers before
//! any route is chosen.

use std::time::Duration;

use crate::support::*;
use http::StatusCode;
use std::sync::atomic::Ordering;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

const PORT: u16 = 18511;

fn listener() -> Listener {
    filtered_listener(
        "filters",
        PORT,
        r#"
- name: envoy.filters.http.fault
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
- name: envoy.filters.http.cors
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
"#,
    )
}

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// Routes as istiod writes a VirtualService with `fault` and `corsPolicy`: the CORS policy
/// on the virtual host, faults on routes.
fn routes() -> RouteConfiguration {
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.cors:
      "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
      allow_origin_string_match: [{{exact: "https://app.example"}}]
      allow_methods: "GET, POST"
      allow_headers: "*"
      expose_headers: x-server
      max_age: "600"
      allow_credentials: true
  routes:
  - match: {{path: /abort}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        abort: {{http_status: 503, percentage: {{numerator: 100}}}}
  - match: {{path: /grpc-abort}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        abort: {{grpc_status: 14, percentage: {{numerator: 1000000, denominator: MILLION}}}}
  - match: {{path: /delay}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        delay: {{fixed_delay: 0.3s, percentage: {{numerator: 100}}}}
  - match: {{path: /delay-then-abort}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        delay: {{fixed_delay: 0.2s, percentage: {{numerator: 100}}}}
        abort: {{http_status: 500, percentage: {{numerator: 100}}}}
  - match: {{path: /by-header}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        delay: {{header_delay: {{}}, percentage: {{numerator: 100}}}}
        abort: {{header_abort: {{}}, percentage: {{numerator: 100}}}}
  - match: {{path: /half}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        abort: {{http_status: 418, percentage: {{numerator: 50}}}}
  - match: {{path: /only-canary}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        headers: [{{name: x-canary, present_match: true}}]
        abort: {{http_status: 503, percentage: {{numerator: 100}}}}
  - match: {{path: /no-cors}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: true
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

async fn send(node: &Node, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(node, PORT, method, path, headers).await
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.header(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_and_cors_filters_per_route() {
    let upstream = http_upstream("web").await;
    let (_cp, node) = serving(vec![listener()], routes(), upstream.addr).await;
    let hits = || upstream.hits.load(Ordering::Relaxed);

    // An abort answers in place of the upstream, flagged FI.
    let before = hits();
    let a = send(&node, "GET", "/abort", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.body, "fault filter abort");
    assert_eq!(
        hits(),
        before,
        "an aborted request never reaches the upstream"
    );
    assert_eq!(
        node.metric("myelin_proxy_faults_injected_total{kind=\"abort\"}"),
        1.0
    );
    assert_eq!(
        node.metric(
            "myelin_proxy_requests_total{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"503\",response_flags=\"FI\"}"
        ),
        1.0
    );

    // A gRPC abort is a trailers-only gRPC status in a 200.
    let a = send(
        &node,
        "POST",
        "/grpc-abort",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(header(&a, "grpc-status"), Some("14"));
    assert_eq!(hits(), before);

    // A delay holds the request, then it goes on (flag DI).
    let a = send(&node, "GET", "/delay", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "web /delay");
    assert!(a.took >= Duration::from_millis(300), "took {:?}", a.took);
    assert_eq!(hits(), before + 1);
    assert_eq!(
        node.metric(
            "myelin_proxy_requests_total{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"200\",response_flags=\"DI\"}"
        ),
        1.0
    );

    // A delay, then an abort: both flags.
    let a = send(&node, "GET", "/delay-then-abort", &[]).await;
    assert_eq!(a.status, 500);
    assert!(a.took >= Duration::from_millis(200), "took {:?}", a.took);
    assert_eq!(hits(), before + 1);
    assert_eq!(
        node.metric(
            "myelin_proxy_requests_total{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"500\",response_flags=\"DI,FI\"}"
        ),
        1.0
    );

    // Header-driven faults: only what the request asks for, its share capped by the route.
    let a = send(&node, "GET", "/by-header", &[]).await;
    assert_eq!(a.status, 200, "no fault headers, no fault");
    assert!(a.took < Duration::from_millis(200), "took {:?}", a.took);
    let a = send(
        &node,
        "GET",
        "/by-header",
        &[("x-envoy-fault-abort-request", "429")],
    )
    .await;
    assert_eq!(a.status, 429);
    let a = send(
        &node,
        "GET",
        "/by-header",
        &[
            ("x-envoy-fault-abort-request", "429"),
            ("x-envoy-fault-abort-request-percentage", "0"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "a header share of 0 aborts nothing");
    let a = send(
        &node,
        "GET",
        "/by-header",
        &[("x-envoy-fault-delay-request", "250")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(a.took >= Duration::from_millis(250), "took {:?}", a.took);

    // A percentage: about half of 400 (50 % +- 7.5 sigma).
    let mut aborted = 0;
    for _ in 0..400 {
        if send(&node, "GET", "/half", &[]).await.status == 418 {
            aborted += 1;
        }
    }
    assert!((125..=275).contains(&aborted), "{aborted} of 400 aborted");

    // Header matchers of the fault: only matching requests.
    assert_eq!(send(&node, "GET", "/only-canary", &[]).await.status, 200);
    assert_eq!(
        send(&node, "GET", "/only-canary", &[("x-canary", "1")])
            .await
            .status,
        503
    );

    // A CORS preflight from an allowed origin is answered here.
    let before = hits();
    let a = send(
        &node,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-a, x-b"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(hits(), before, "the preflight never reaches the upstream");
    assert_eq!(
        header(&a, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header(&a, "access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        header(&a, "access-control-allow-headers"),
        Some("x-a, x-b"),
        "`*` answers with the requested headers"
    );
    assert_eq!(header(&a, "access-control-max-age"), Some("600"));
    assert_eq!(header(&a, "access-control-allow-credentials"), Some("true"));

    // A preflight from another origin goes upstream (Envoy's default), unmarked.
    let a = send(
        &node,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(hits(), before + 1);
    assert_eq!(header(&a, "access-control-allow-origin"), None);

    // An allowed origin's request goes upstream and its answer names the origin.
    let a = send(&node, "GET", "/page", &[("origin", "https://app.example")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "web /page");
    assert_eq!(
        header(&a, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header(&a, "access-control-expose-headers"),
        Some("x-server")
    );
    assert_eq!(header(&a, "access-control-allow-credentials"), Some("true"));

    // CORS switched off for one route.
    let a = send(
        &node,
        "GET",
        "/no-cors",
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(header(&a, "access-control-allow-origin"), None);

    assert_eq!(
        node.metric("myelin_proxy_cors_origins_total{origin=\"valid\"}"),
        2.0
    );
    assert_eq!(
        node.metric("myelin_proxy_cors_origins_total{origin=\"invalid\"}"),
        1.0
    );
}

const HC_PORT: u16 = 18512;
const HC_PASS_PORT: u16 = 18513;

/// Envoy Gateway's health check filter (`:path` `/status`, answered by the proxy), here
/// also watching the cluster `web`; and one in pass-through mode.
fn health_check_listeners() -> Vec<Listener> {
    let hc = |pass: bool, watch: &str| {
        format!(
            r#"
- name: envoy.filters.http.health_check
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
    headers: [{{name: ":path", string_match: {{exact: /status}}}}]
    pass_through_mode: {pass}
    {watch}
"#
        )
    };
    vec![
        filtered_listener(
            "hc",
            HC_PORT,
            &hc(false, "cluster_min_healthy_percentages: {web: {value: 50}}"),
        ),
        filtered_listener("hc-pass", HC_PASS_PORT, &hc(true, "")),
    ]
}

/// A route table without a route for `/status`: the filter answers before routing.
fn app_routes() -> RouteConfiguration {
    yaml(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {prefix: /app}
    route: {cluster: web}
"#,
    )
}

#[tokio::test]
async fn the_health_check_filter_answers_before_routing() {
    let upstream = http_upstream("web").await;
    let (cp, node) = serving(health_check_listeners(), app_routes(), upstream.addr).await;

    let a = request(&node, HC_PORT, "GET", "/status", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
    // Not a health check (the query is part of `:path`): routed, and no route matches.
    let a = request(&node, HC_PORT, "GET", "/status?x=1", &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        request(&node, HC_PORT, "GET", "/app", &[]).await.status,
        StatusCode::OK
    );
    // Passed through: routed like any request (no route here).
    let a = request(&node, HC_PASS_PORT, "GET", "/status", &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(upstream.hits.load(Ordering::Relaxed), 1);

    // The watched cluster's only host turns unhealthy (EDS): fewer than half are healthy.
    let unhealthy: xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment = yaml(&format!(
        "cluster_name: web\nendpoints:\n- lb_endpoints:\n  - endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}\n    health_status: UNHEALTHY\n",
        upstream.addr.ip(),
        upstream.addr.port()
    ));
    cp.update(|b| set(b, "web", &unhealthy));
    node.wait_applied(
        myelin_xds::ads::type_url::ENDPOINT,
        &["web"],
        &cp.version(myelin_xds::ads::type_url::ENDPOINT),
    )
    .await;
    let a = request(&node, HC_PORT, "GET", "/status", &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);

    let count = |result: &str| {
        node.metric(&format!(
            "myelin_proxy_health_check_requests_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!(count("healthy"), 1.0);
    assert_eq!(count("unhealthy"), 1.0);
    assert_eq!(count("passed_through"), 1.0);
}
