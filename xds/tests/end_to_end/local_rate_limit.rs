//! Envoy's local rate limit filter (`envoy.filters.http.local_ratelimit`) end to end: a
//! listener from xDS with the filter and its own bucket, routes with buckets of their own
//! (`typed_per_filter_config`, as Istio's local rate limit EnvoyFilter and Envoy Gateway
//! write them), a captured connection through it, and an upstream that counts what it got.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

const PORT: u16 = 18541;
const LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const ALL: &str = "{default_value: {numerator: 100}, runtime_key: rl}";

/// The filter's own bucket: 3 tokens, refilled after a minute (longer than the test), so
/// the counts below cannot straddle a fill.
fn listener() -> Listener {
    filtered_listener(
        "limited",
        PORT,
        &format!(
            r#"
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": {LIMIT}
    stat_prefix: node
    token_bucket: {{max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s}}
    filter_enabled: {ALL}
    filter_enforced: {ALL}
    response_headers_to_add:
    - header: {{key: x-local-rate-limit, value: "true"}}
    enable_x_ratelimit_headers: DRAFT_VERSION_03
"#
        ),
    )
}

fn routes() -> RouteConfiguration {
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {{path: /per-connection}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": {LIMIT}
        stat_prefix: per_connection
        token_bucket: {{max_tokens: 2, fill_interval: 60s}}
        filter_enabled: {ALL}
        filter_enforced: {ALL}
        local_rate_limit_per_downstream_connection: true
  - match: {{path: /refill}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": {LIMIT}
        stat_prefix: refill
        token_bucket: {{max_tokens: 1, fill_interval: 0.2s}}
        filter_enabled: {ALL}
        filter_enforced: {ALL}
  - match: {{path: /shadow}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": {LIMIT}
        stat_prefix: shadow
        token_bucket: {{max_tokens: 1, fill_interval: 60s}}
        filter_enabled: {ALL}
        request_headers_to_add_when_not_enforced:
        - header: {{key: x-echo-limited, value: "true"}}
  - match: {{path: /grpc}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": {LIMIT}
        stat_prefix: grpc
        token_bucket: {{max_tokens: 0, fill_interval: 60s}}
        filter_enabled: {ALL}
        filter_enforced: {ALL}
        rate_limited_as_resource_exhausted: true
  - match: {{path: /grpc-default}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": {LIMIT}
        stat_prefix: grpc_default
        status: {{code: 503}}
        token_bucket: {{max_tokens: 0, fill_interval: 60s}}
        filter_enabled: {ALL}
        filter_enforced: {ALL}
  - match: {{path: /off}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: true
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

async fn connect(node: &Node) -> SendRequest<Empty<Bytes>> {
    h1_sender(node, "127.0.0.1".parse().unwrap(), vip(PORT)).await
}

/// One request on a connection of its own.
async fn send(node: &Node, path: &str) -> Answer {
    request(node, PORT, "GET", path, &[]).await
}

fn limit_metric(node: &Node, prefix: &str, outcome: &str) -> f64 {
    node.metric(&format!(
        "myelin_proxy_local_rate_limit_total{{stat_prefix=\"{prefix}\",outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limits_per_filter_route_and_connection() {
    let upstream = http_upstream("web").await;
    let (_cp, node) = serving(vec![listener()], routes(), upstream.addr).await;
    let hits = || upstream.hits.load(Ordering::Relaxed);

    // The filter's own bucket: three requests pass, whatever their connection; the next
    // are answered here, flagged RL, with the configured and Envoy's headers.
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(send(&node, "/").await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(hits(), 3, "limited requests never reach the upstream");
    let remaining: Vec<_> = answers
        .iter()
        .map(|a| a.header("x-ratelimit-remaining").unwrap())
        .collect();
    assert_eq!(remaining, ["2", "1", "0", "0", "0"]);
    for a in &answers {
        assert_eq!(a.header("x-ratelimit-limit"), Some("3"));
        let reset: u32 = a.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let limited = &answers[3];
    assert_eq!(limited.body, "local_rate_limited");
    assert_eq!(limited.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(limited.header("x-local-rate-limit"), Some("true"));
    assert_eq!(answers[0].header("x-local-rate-limit"), None);
    assert_eq!(limit_metric(&node, "node", "ok"), 3.0);
    assert_eq!(limit_metric(&node, "node", "enforced"), 2.0);
    assert_eq!(
        node.metric(
            "myelin_proxy_requests_total{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"429\",response_flags=\"RL\"}"
        ),
        2.0
    );

    // A route that turns the filter off passes while the filter's bucket is empty.
    for _ in 0..3 {
        let a = send(&node, "/off").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-ratelimit-limit"), None);
    }
    assert_eq!(send(&node, "/").await.status, 429, "still empty");

    // A route's own bucket replaces the filter's (which is empty), here one per
    // connection: two requests on each connection.
    let mut first = connect(&node).await;
    let got: Vec<u16> = [
        send_on(&mut first, "GET", "/per-connection", &[]).await,
        send_on(&mut first, "GET", "/per-connection", &[]).await,
        send_on(&mut first, "GET", "/per-connection", &[]).await,
    ]
    .iter()
    .map(|a| a.status.as_u16())
    .collect();
    assert_eq!(got, [200, 200, 429]);
    let mut second = connect(&node).await;
    assert_eq!(
        send_on(&mut second, "GET", "/per-connection", &[])
            .await
            .status,
        200,
        "another connection has a bucket of its own"
    );
    assert_eq!(
        send_on(&mut first, "GET", "/per-connection", &[])
            .await
            .status,
        429
    );
    assert_eq!(limit_metric(&node, "per_connection", "ok"), 3.0);
    assert_eq!(limit_metric(&node, "per_connection", "enforced"), 2.0);

    // Tokens come back with the fill: after a 429, one fill interval (200 ms) later a
    // request passes again.
    let mut conn = connect(&node).await;
    let mut limited_once = false;
    for _ in 0..4 {
        if send_on(&mut conn, "GET", "/refill", &[]).await.status == 429 {
            limited_once = true;
            break;
        }
    }
    assert!(limited_once, "a bucket of one token never ran out");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(send_on(&mut conn, "GET", "/refill", &[]).await.status, 200);

    // Enabled but not enforced: the limited request goes on, with the headers for it.
    let before = hits();
    let a = send(&node, "/shadow").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-echo-limited"), None);
    let a = send(&node, "/shadow").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-echo-limited"), Some("true"));
    assert_eq!(hits(), before + 2);
    assert_eq!(limit_metric(&node, "shadow", "ok"), 1.0);
    assert_eq!(limit_metric(&node, "shadow", "limited_not_enforced"), 1.0);

    // gRPC clients get a gRPC status: RESOURCE_EXHAUSTED when asked for, else the HTTP
    // status mapped (503: UNAVAILABLE).
    let grpc = [("content-type", "application/grpc")];
    let a = send_on(&mut connect(&node).await, "POST", "/grpc", &grpc).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("grpc-status"), Some("8"));
    assert_eq!(a.header("grpc-message"), Some("local_rate_limited"));
    let a = send_on(&mut connect(&node).await, "POST", "/grpc-default", &grpc).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("grpc-status"), Some("14"));
    // And a plain client the configured status.
    assert_eq!(send(&node, "/grpc-default").await.status, 503);
}

const DESCRIPTOR_PORT: u16 = 18542;

/// Buckets per descriptor, as Envoy Gateway's local rate limits write them: the route's
/// `rate_limits` actions make each request's descriptors, the filter's `descriptors` give
/// the matching ones a bucket of their own (the filter's own, large, is taken from too).
fn descriptor_listener() -> Listener {
    let bucket = |n: u32| format!("{{max_tokens: {n}, tokens_per_fill: {n}, fill_interval: 60s}}");
    filtered_listener(
        "per-descriptor",
        DESCRIPTOR_PORT,
        &format!(
            r#"
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": {LIMIT}
    stat_prefix: descriptors
    token_bucket: {}
    filter_enabled: {ALL}
    filter_enforced: {ALL}
    enable_x_ratelimit_headers: DRAFT_VERSION_03
    descriptors:
    - entries: [{{key: user, value: alice}}]
      token_bucket: {}
    - entries: [{{key: route, value: login}}, {{key: admin, value: "no"}}]
      token_bucket: {}
    - entries: [{{key: masked_remote_address, value: 127.0.0.0/24}}]
      token_bucket: {}
    - entries: [{{key: destination_cluster, value: web}}]
      token_bucket: {}
"#,
            bucket(100),
            bucket(2),
            bucket(1),
            bucket(1),
            bucket(3),
        ),
    )
}

fn descriptor_routes() -> RouteConfiguration {
    yaml(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  rate_limits:
  - actions: [{masked_remote_address: {v4_prefix_mask_len: 24}}]
  routes:
  - match: {prefix: /users}
    route:
      cluster: web
      rate_limits:
      - actions: [{request_headers: {header_name: x-user-id, descriptor_key: user}}]
  - match: {prefix: /login}
    route:
      cluster: web
      rate_limits:
      - actions:
        - generic_key: {descriptor_key: route, descriptor_value: login}
        - header_value_match:
            descriptor_key: admin
            descriptor_value: "no"
            expect_match: false
            headers: [{name: x-org, string_match: {exact: admin}}]
  - match: {prefix: /stage}
    route:
      cluster: web
      rate_limits:
      - stage: 1
        actions: [{destination_cluster: {}}]
      - actions: [{destination_cluster: {}}]
  - match: {prefix: /other}
    route: {cluster: web}
  - match: {prefix: /own}
    route: {cluster: web}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
        stat_prefix: own
        token_bucket: {max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s}
        filter_enabled: {default_value: {numerator: 100}}
        filter_enforced: {default_value: {numerator: 100}}
        always_consume_default_token_bucket: false
        descriptors:
        - entries: [{key: rule-0-match-0, value: rule-0-match-0}]
          token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
        rate_limits:
        - actions:
          - header_value_match:
              descriptor_key: rule-0-match-0
              descriptor_value: rule-0-match-0
              headers: [{name: x-user-id, string_match: {exact: one}}]
"#,
    )
}

#[tokio::test]
async fn descriptors_have_buckets_of_their_own() {
    let upstream = http_upstream("web").await;
    let (_cp, node) = serving(
        vec![descriptor_listener()],
        descriptor_routes(),
        upstream.addr,
    )
    .await;
    let status = |a: Answer| a.status.as_u16();
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let node = &node;
        async move { request(node, DESCRIPTOR_PORT, "GET", path, headers).await }
    };

    // Alice's bucket (2): her third request is limited, and the headers report her bucket.
    let alice: &[(&str, &str)] = &[("x-user-id", "alice")];
    assert_eq!(status(get("/users", alice).await), 200);
    let a = get("/users", alice).await;
    assert_eq!(
        (
            a.status.as_u16(),
            a.header("x-ratelimit-limit"),
            a.header("x-ratelimit-remaining")
        ),
        (200, Some("2"), Some("0"))
    );
    let a = get("/users", alice).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (429, "local_rate_limited")
    );
    // Bob has no descriptor of his own, nor has a request without the header: the filter's
    // bucket only.
    for _ in 0..3 {
        assert_eq!(status(get("/users", &[("x-user-id", "bob")]).await), 200);
        assert_eq!(status(get("/users", &[]).await), 200);
    }

    // A generic key and a header that must not match: admins are not in that bucket.
    assert_eq!(status(get("/login", &[]).await), 200);
    assert_eq!(status(get("/login", &[]).await), 429);
    assert_eq!(status(get("/login", &[("x-org", "admin")]).await), 200);

    // A route without `rate_limits`: the virtual host's (the client's /24).
    assert_eq!(status(get("/other", &[]).await), 200);
    assert_eq!(status(get("/other", &[]).await), 429);

    // Only the entries of the filter's stage (0) count: the route's destination_cluster
    // bucket (3) is taken from once per request.
    for want in [200, 200, 200, 429] {
        assert_eq!(status(get("/stage", &[]).await), want);
    }
    assert_eq!(
        node.metric(
            "myelin_proxy_local_rate_limit_total{stat_prefix=\"descriptors\",outcome=\"enforced\"}"
        ),
        4.0
    );

    // A route's own filter settings with their own `rate_limits` (Envoy Gateway's form):
    // user `one` gets one request, others the route's large bucket.
    let one: &[(&str, &str)] = &[("x-user-id", "one")];
    assert_eq!(status(get("/own", one).await), 200);
    assert_eq!(status(get("/own", one).await), 429);
    assert_eq!(status(get("/own", &[("x-user-id", "two")]).await), 200);
}
