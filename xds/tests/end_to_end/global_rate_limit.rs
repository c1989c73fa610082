//! Envoy's global rate limit filter (`envoy.filters.http.ratelimit`) end to end: listeners
//! from xDS with the filter (as Envoy Gateway writes it), route `rate_limits` and per-route
//! settings making each request's descriptors, and a real gRPC rate limit service (tonic's
//! server of `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, with `xds-api`'s
//! messages, the request's read with its descriptors' `hits_addend`, which `xds-api` 0.2
//! lacks) behind a cluster of its own that decides and records what it was asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::net::TcpListener;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::{Request, Response, Status};
use xds_api::pb::envoy::config::core::v3::HeaderValue;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use xds_api::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use xds_api::pb::google::protobuf;

const PORT: u16 = 18581;
const STRICT_PORT: u16 = 18582;
const FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";
/// What a user may send per minute.
const PER_USER: u32 = 2;

/// One call the service got: its domain, descriptors and `x-tenant` metadata.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    domain: String,
    descriptors: Vec<Vec<(String, String)>>,
    /// Each descriptor's `hits_addend`.
    hits: Vec<Option<u64>>,
    tenant: Option<String>,
}

/// The rate limit service: `PER_USER` requests per `user` entry, then `OVER_LIMIT`;
/// `generic_key: always` is always over its limit (with a body of its own), `slow` is
/// answered after a second, `broken` with `UNAVAILABLE`.
#[derive(Default)]
struct Limiter {
    calls: Mutex<Vec<Call>>,
    hits: Mutex<HashMap<String, u32>>,
}

/// `RateLimitRequest` with each descriptor's `hits_addend` (tag 3 of
/// `RateLimitDescriptor`), which `xds-api` 0.2's message would drop.
#[derive(Clone, PartialEq, prost::Message)]
struct RateLimitRequest {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(message, repeated, tag = "2")]
    descriptors: Vec<Descriptor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Descriptor {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<Entry>,
    #[prost(message, optional, tag = "3")]
    hits_addend: Option<protobuf::UInt64Value>,
}

/// The service as tonic serves it: its one method, as tonic's generated servers are made.
#[derive(Clone)]
struct Served(Arc<Limiter>);

struct ShouldRateLimit(Arc<Limiter>);

impl tonic::server::UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, req: Request<RateLimitRequest>) -> Self::Future {
        let limiter = self.0.clone();
        Box::pin(async move { limiter.decide(req).await })
    }
}

impl<B> Service<http::Request<B>> for Served
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        assert_eq!(
            req.uri().path(),
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        );
        let method = ShouldRateLimit(self.0.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic::codec::ProstCodec::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

impl tonic::server::NamedService for Served {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

impl Limiter {
    async fn decide(
        &self,
        req: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let tenant = req
            .metadata()
            .get("x-tenant")
            .map(|v| v.to_str().unwrap().to_owned());
        let req = req.into_inner();
        let descriptors: Vec<Vec<(String, String)>> = req
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        self.calls.lock().unwrap().push(Call {
            domain: req.domain.clone(),
            descriptors: descriptors.clone(),
            hits: req
                .descriptors
                .iter()
                .map(|d| d.hits_addend.as_ref().map(|h| h.value))
                .collect(),
            tenant,
        });
        let generic = |v: &str| {
            descriptors
                .iter()
                .any(|d| d.contains(&("generic_key".to_owned(), v.to_owned())))
        };
        if generic("slow") {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if generic("broken") {
            return Err(Status::unavailable("down for maintenance"));
        }
        let mut resp = RateLimitResponse {
            overall_code: Code::Ok as i32,
            response_headers_to_add: vec![header("x-rls", "seen")],
            request_headers_to_add: vec![header("x-echo-rls", "asked")],
            ..Default::default()
        };
        for d in &descriptors {
            let Some((_, user)) = d.iter().find(|(k, _)| k == "user") else {
                resp.statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            let mut hits = self.hits.lock().unwrap();
            let n = hits.entry(format!("{}/{user}", req.domain)).or_default();
            *n += 1;
            let over = *n > PER_USER;
            if over {
                resp.overall_code = Code::OverLimit as i32;
            }
            resp.statuses.push(DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(RateLimit {
                    name: "per-user".into(),
                    requests_per_unit: PER_USER,
                    unit: Unit::Minute as i32,
                }),
                limit_remaining: PER_USER.saturating_sub(*n),
                duration_until_reset: Some(protobuf::Duration {
                    seconds: 42,
                    nanos: 0,
                }),
                ..Default::default()
            });
        }
        if generic("always") {
            resp.overall_code = Code::OverLimit as i32;
            resp.raw_body = br#"{"error":"slow down"}"#.to_vec();
            resp.response_headers_to_add
                .push(header("content-type", "application/json"));
        }
        Ok(Response::new(resp))
    }
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// Serves `limiter` over HTTP/2 on a loopback port.
async fn rate_limit_service(limiter: Arc<Limiter>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(Served(limiter))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (addr, task)
}

/// The filter as Envoy Gateway writes it (domain, the service's cluster, API v3), with
/// `x-ratelimit-*` headers and a 200 ms timeout; `strict`: `failure_mode_deny` with
/// `status_on_error` 503.
fn listener(name: &str, port: u16, strict: bool) -> Listener {
    let strict = if strict {
        "failure_mode_deny: true\n    status_on_error: {code: 503}\n    stat_prefix: strict"
    } else {
        "stat_prefix: edge"
    };
    filtered_listener(
        name,
        port,
        &format!(
            r#"
- name: envoy.filters.http.ratelimit
  typed_config:
    "@type": {FILTER}
    domain: edge
    timeout: 0.2s
    enable_x_ratelimit_headers: DRAFT_VERSION_03
    {strict}
    rate_limit_service:
      grpc_service:
        envoy_grpc: {{cluster_name: rls}}
        initial_metadata: [{{key: x-tenant, value: t1}}]
      transport_api_version: V3
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
  - match: {{path: /user}}
    route:
      cluster: web
      rate_limits:
      - actions:
        - request_headers: {{header_name: x-user, descriptor_key: user}}
  - match: {{path: /always}}
    route:
      cluster: web
      rate_limits:
      - actions: [{{generic_key: {{descriptor_value: always}}}}]
  - match: {{path: /slow}}
    route:
      cluster: web
      rate_limits:
      - actions: [{{generic_key: {{descriptor_value: slow}}}}]
  - match: {{path: /broken}}
    route:
      cluster: web
      rate_limits:
      - actions: [{{generic_key: {{descriptor_value: broken}}}}]
  - match: {{path: /per-route}}
    route:
      cluster: web
      rate_limits:
      - actions: [{{generic_key: {{descriptor_value: from-route}}}}]
    typed_per_filter_config:
      envoy.filters.http.ratelimit:
        "@type": {PER_ROUTE}
        domain: other
        rate_limits:
        - actions:
          - generic_key: {{descriptor_value: from-settings}}
          - request_headers: {{header_name: x-user, descriptor_key: user}}
  - match: {{path: /cost}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.ratelimit:
        "@type": {PER_ROUTE}
        rate_limits:
        - actions: [{{generic_key: {{descriptor_key: cost, descriptor_value: request}}}}]
          hits_addend: {{number: 5}}
        - actions: [{{generic_key: {{descriptor_key: cost, descriptor_value: response}}}}]
          apply_on_stream_done: true
          hits_addend: {{number: 3}}
        - actions: [{{generic_key: {{descriptor_key: cost, descriptor_value: metadata}}}}]
          apply_on_stream_done: true
          hits_addend: {{format: "%DYNAMIC_METADATA(something.com:key)%"}}
        - actions:
          - remote_address_match:
              address_matcher: {{ranges: [{{address_prefix: 127.0.0.0, prefix_len: 8}}]}}
              descriptor_value: loopback
        - actions:
          - remote_address_match:
              address_matcher: {{ranges: [{{address_prefix: 10.0.0.0, prefix_len: 8}}]}}
              descriptor_value: ten
              default_value: elsewhere
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

async fn user(node: &Node, name: &str) -> Answer {
    request(node, PORT, "GET", "/user", &[("x-user", name)]).await
}

fn outcome(node: &Node, prefix: &str, outcome: &str) -> f64 {
    node.metric(&format!(
        "myelin_proxy_rate_limit_service_total{{stat_prefix=\"{prefix}\",outcome=\"{outcome}\"}}"
    ))
}

fn flagged(node: &Node, code: u16, flags: &str) -> f64 {
    node.metric(&format!(
        "myelin_proxy_requests_total{{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"{code}\",response_flags=\"{flags}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_service_decides_over_xds() {
    let upstream = http_upstream("web").await;
    let limiter = Arc::new(Limiter::default());
    let (rls, _rls_task) = rate_limit_service(limiter.clone()).await;
    let cp = ControlPlane::start().await;
    let listeners = [
        listener("edge", PORT, false),
        listener("strict", STRICT_PORT, true),
    ];
    cp.update(|b| {
        for l in &listeners {
            set(b, &l.name, l);
        }
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[upstream.addr]));
        set(b, "rls", &h2_cluster("rls"));
        set(b, "rls", &endpoints("rls", &[rls]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["edge", "strict"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web", "rls"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    let hits = || upstream.hits.load(Ordering::Relaxed);
    let calls = || limiter.calls.lock().unwrap().clone();

    // A user's requests: the service's word on each, its headers on the way up and down,
    // the `x-ratelimit-*` headers from its descriptor statuses; the third is answered here.
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(user(&node, "alice").await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        hits(),
        2,
        "the request over its limit never reached the upstream"
    );
    let remaining: Vec<_> = answers
        .iter()
        .map(|a| a.header("x-ratelimit-remaining").unwrap())
        .collect();
    assert_eq!(remaining, ["1", "0", "0"]);
    for a in &answers {
        assert_eq!(
            a.header("x-ratelimit-limit"),
            Some("2, 2;w=60;name=\"per-user\"")
        );
        assert_eq!(a.header("x-ratelimit-reset"), Some("42"));
    }
    let ok = &answers[0];
    assert_eq!(
        ok.header("x-rls"),
        Some("seen"),
        "the service's response header"
    );
    assert_eq!(
        ok.header("x-echo-rls"),
        Some("asked"),
        "the service's request header reached the upstream"
    );
    assert_eq!(ok.header("x-envoy-ratelimited"), None);
    let limited = &answers[2];
    assert_eq!(limited.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(limited.header("x-rls"), Some("seen"));
    assert_eq!(limited.body, "", "Envoy's 429 has no body of its own");
    assert_eq!(
        user(&node, "bob").await.status,
        200,
        "another user has a limit of their own"
    );
    assert_eq!(
        calls()[0],
        Call {
            domain: "edge".into(),
            descriptors: vec![vec![("user".into(), "alice".into())]],
            hits: vec![None],
            tenant: Some("t1".into()),
        }
    );
    assert_eq!(outcome(&node, "edge", "ok"), 3.0);
    assert_eq!(outcome(&node, "edge", "over_limit"), 1.0);
    assert_eq!(flagged(&node, 429, "RL"), 1.0);

    // No descriptor (no `rate_limits` on the route, or an action with nothing), no call.
    let before = calls().len();
    assert_eq!(request(&node, PORT, "GET", "/", &[]).await.status, 200);
    assert_eq!(request(&node, PORT, "GET", "/user", &[]).await.status, 200);
    assert_eq!(calls().len(), before, "nothing to ask about");

    // A route's settings: their domain and `rate_limits` in place of the filter's and the
    // route's.
    let a = request(&node, PORT, "GET", "/per-route", &[("x-user", "carol")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        calls().last().unwrap().descriptors,
        [vec![
            ("generic_key".to_owned(), "from-settings".to_owned()),
            ("user".to_owned(), "carol".to_owned()),
        ]]
    );
    assert_eq!(calls().last().unwrap().domain, "other");

    // Costs: a descriptor counting for 5 hits; once the response is made, the descriptor
    // for the end of the stream (3 hits; the one whose cost is dynamic metadata, which
    // Myelin never has, is not sent); the client's address matched against CIDRs.
    let before = calls().len();
    assert_eq!(request(&node, PORT, "GET", "/cost", &[]).await.status, 200);
    let call = calls()[before].clone();
    let entry = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    assert_eq!(
        call.descriptors,
        [
            entry("cost", "request"),
            entry("remote_address_match", "loopback"),
            entry("remote_address_match", "elsewhere"),
        ]
    );
    assert_eq!(call.hits, [Some(5), None, None]);
    eventually("the stream-done call", || calls().len() == before + 2).await;
    let done = calls()[before + 1].clone();
    assert_eq!(done.descriptors, [entry("cost", "response")]);
    assert_eq!(done.hits, [Some(3)]);
    assert_eq!(done.domain, "edge");

    // Over a limit with the service's body and content type; a gRPC client gets
    // `UNAVAILABLE` (Envoy's mapping of 429) in a trailers-only answer.
    let a = request(&node, PORT, "GET", "/always", &[]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.body, r#"{"error":"slow down"}"#);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let a = request(
        &node,
        PORT,
        "POST",
        "/always",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("grpc-status"), Some("14"));

    // The service too slow (past the 200 ms timeout) or failing: the request goes on
    // (`failure_mode_deny` false), or is answered `status_on_error` flagged RLSE.
    let before = hits();
    let a = request(&node, PORT, "GET", "/slow", &[]).await;
    assert_eq!(a.status, 200);
    assert!(
        a.took < Duration::from_millis(900),
        "the filter waited {:?} for the service",
        a.took
    );
    assert_eq!(
        request(&node, PORT, "GET", "/broken", &[]).await.status,
        200
    );
    assert_eq!(hits(), before + 2);
    assert_eq!(outcome(&node, "edge", "error_allowed"), 2.0);
    let a = request(&node, STRICT_PORT, "GET", "/broken", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(
        request(&node, STRICT_PORT, "GET", "/slow", &[])
            .await
            .status,
        503
    );
    assert_eq!(
        hits(),
        before + 2,
        "denied requests never reached the upstream"
    );
    assert_eq!(outcome(&node, "strict", "error_denied"), 2.0);
    assert_eq!(flagged(&node, 503, "RLSE"), 2.0);

    // The service's cluster gone from xDS: an error like any other, the request goes on.
    cp.update(|b| {
        b.remove(type_url::CLUSTER, "rls");
    });
    let version = cp.version(type_url::CLUSTER);
    node.wait_applied(type_url::CLUSTER, &["web"], &version)
        .await;
    assert_eq!(
        request(&node, PORT, "GET", "/always", &[]).await.status,
        200
    );
    assert_eq!(outcome(&node, "edge", "error_allowed"), 3.0);
}
