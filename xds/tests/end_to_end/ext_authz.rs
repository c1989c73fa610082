//! Envoy's external authorization filter (`envoy.filters.http.ext_authz`) end to end:
//! listeners from xDS with the filter as Envoy Gateway writes it (a gRPC service, an HTTP
//! service, off in the connection manager and on per route) and as istiod writes an
//! `AuthorizationPolicy` with `action: CUSTOM` (RBAC shadow rules naming the requests to
//! check, the filter enabled by that decision in the request's dynamic metadata), with a
//! real gRPC authorization service (tonic's server of `xds-api`'s
//! `envoy.service.auth.v3.Authorization`) and a real HTTP one (hyper), each behind a
//! cluster of its own, deciding by the request and recording what it was told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request as HyperRequest, Response as HyperResponse};
use hyper_util::rt::TokioIo;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use xds_api::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::r#type::v3::HttpStatus;
use xds_api::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use xds_api::pb::envoy::service::auth::v3::check_response::HttpResponse;
use xds_api::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use xds_api::pb::google::protobuf::BoolValue;
use xds_api::pb::google::rpc::Status as RpcStatus;

/// Envoy Gateway's shape: a gRPC service and an HTTP service, each a filter off in the
/// connection manager, turned on by the routes that want it.
const GATEWAY_PORT: u16 = 18601;
/// istiod's shape for a `CUSTOM` policy.
const ISTIO_PORT: u16 = 18602;
const RECOMPUTE_PORT: u16 = 18603;
/// Request bodies told to the services (`with_request_body`).
const BODY_PORT: u16 = 18604;
/// `decoder_header_mutation_rules`: a refused change skipped, or the answer refused.
const RULES_PORT: u16 = 18605;
const STRICT_PORT: u16 = 18606;
const FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The gRPC service: decides by `x-user`, records the checks.
#[derive(Default)]
struct Authorizer {
    checks: Mutex<Vec<CheckRequest>>,
}

fn option(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| BoolValue { value }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let check = req.into_inner();
        self.checks.lock().unwrap().push(check.clone());
        let http = check
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        let user = http.headers.get("x-user").cloned().unwrap_or_default();
        let status = |code| {
            Some(RpcStatus {
                code,
                ..Default::default()
            })
        };
        let resp = match user.as_str() {
            "alice" => CheckResponse {
                status: status(0),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        option("x-user-id", "42", Some(false)),
                        option("x-trace", "authz", Some(true)),
                    ],
                    headers_to_remove: vec!["x-secret".into()],
                    response_headers_to_add: vec![option("x-authz", "alice ok", None)],
                    query_parameters_to_set: vec![QueryParameter {
                        key: "checked".into(),
                        value: "yes".into(),
                    }],
                    query_parameters_to_remove: vec!["token".into()],
                    ..Default::default()
                })),
                ..Default::default()
            },
            "slow" => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                CheckResponse {
                    status: status(0),
                    ..Default::default()
                }
            }
            "broken" => return Err(Status::unavailable("down for maintenance")),
            "mallory" => CheckResponse {
                status: status(16),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![option("www-authenticate", "Bearer realm=\"shop\"", None)],
                    body: "who are you?".into(),
                })),
                ..Default::default()
            },
            // Anyone else: PERMISSION_DENIED, no details (a 403).
            _ => CheckResponse {
                status: status(7),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }
}

async fn grpc_service(authorizer: Arc<Authorizer>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::from_arc(authorizer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

/// What the HTTP service was asked: method, path, headers and body.
type Asked = Arc<Mutex<Vec<(String, String, HashMap<String, String>, Bytes)>>>;

/// The HTTP service: `/auth/ok...` lets through, `/auth/down...` fails with a 503, any
/// other path is denied with a page of its own.
async fn http_service(asked: Asked) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let asked = asked.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: HyperRequest<Incoming>| {
                    let asked = asked.clone();
                    async move {
                        let headers: HashMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                            .collect();
                        let path = req.uri().path().to_owned();
                        let method = req.method().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        asked
                            .lock()
                            .unwrap()
                            .push((method, path.clone(), headers, body));
                        if path.starts_with("/auth/ok") {
                            HyperResponse::builder()
                                .header("x-user-id", "7")
                                .header("x-ignored", "not allowed upstream")
                                .header("set-cookie", "session=abc")
                                .header("x-envoy-auth-headers-to-remove", "x-secret")
                                .body(Full::new(Bytes::new()))
                        } else if path.starts_with("/auth/down") {
                            HyperResponse::builder()
                                .status(503)
                                .body(Full::new(Bytes::from_static(b"down")))
                        } else {
                            HyperResponse::builder()
                                .status(403)
                                .header("content-type", "text/html")
                                .header("x-reason", "not on the list")
                                .body(Full::new(Bytes::from_static(b"<h1>forbidden</h1>")))
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn gateway_listener() -> Listener {
    filtered_listener(
        "gateway",
        GATEWAY_PORT,
        &format!(
            r#"
- name: envoy.filters.http.ext_authz/securitypolicy/default/grpc
  disabled: true
  typed_config:
    "@type": {FILTER}
    grpc_service:
      envoy_grpc: {{cluster_name: grpc-authz, authority: "grpc-authz.default:9000"}}
      timeout: 0.3s
    allowed_headers:
      patterns: [{{exact: x-user, ignore_case: true}}, {{prefix: x-secret}}]
    route_metadata_context_namespaces: [envoy-gateway]
    status_on_error: {{code: InternalServerError}}
    stat_prefix: grpc
    transport_api_version: V3
- name: envoy.filters.http.ext_authz/securitypolicy/default/http
  disabled: true
  typed_config:
    "@type": {FILTER}
    failure_mode_allow: true
    failure_mode_allow_header_add: true
    http_service:
      server_uri: {{uri: "http://http-authz/auth", cluster: http-authz, timeout: 2s}}
      path_prefix: /auth
      authorization_request:
        headers_to_add: [{{key: x-from, value: myelin}}]
      authorization_response:
        allowed_upstream_headers: {{patterns: [{{exact: x-user-id}}]}}
        allowed_client_headers_on_success: {{patterns: [{{exact: set-cookie}}]}}
        allowed_client_headers: {{patterns: [{{exact: x-reason}}, {{exact: content-type}}]}}
    stat_prefix: http
    transport_api_version: V3
"#
        ),
    )
}

fn istio_listener() -> Listener {
    filtered_listener(
        "istio",
        ISTIO_PORT,
        &format!(
            r#"
- name: envoy.filters.http.rbac
  typed_config:
    "@type": {RBAC}
    shadow_rules:
      action: DENY
      policies:
        "istio-ext-authz-ns[shop]-policy[ext]-rule[0]":
          permissions: [{{url_path: {{path: {{prefix: /protected}}}}}}]
          principals: [{{any: true}}]
    shadow_rules_stat_prefix: istio_ext_authz_
- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": {FILTER}
    grpc_service:
      envoy_grpc: {{cluster_name: grpc-authz}}
      timeout: 0.6s
    filter_enabled_metadata:
      filter: envoy.filters.http.rbac
      path: [{{key: istio_ext_authz_shadow_effective_policy_id}}]
      value: {{string_match: {{prefix: istio-ext-authz}}}}
    metadata_context_namespaces: [envoy.filters.http.rbac]
    stat_prefix: istio
    transport_api_version: V3
"#
        ),
    )
}

/// External authorization with `clear_route_cache` (Envoy Gateway's `recomputeRoute`): the
/// route is chosen again with the headers the service added.
fn recompute_listener() -> Listener {
    grpc_authz_listener("recompute", RECOMPUTE_PORT, "clear_route_cache: true")
}

/// The gRPC service with rules for its request changes: `x-user-id` may not change, and
/// with `strict` a refused change refuses the answer.
fn rules_listener(name: &str, port: u16, strict: bool) -> Listener {
    grpc_authz_listener(
        name,
        port,
        &format!(
            "decoder_header_mutation_rules: {{disallow_expression: {{regex: x-user-id}}, disallow_is_error: {strict}}}\nstat_prefix: {name}"
        ),
    )
}

/// A listener whose one filter asks the gRPC service, with more of the filter's keys
/// (YAML lines at its own indentation).
fn grpc_authz_listener(name: &str, port: u16, extra: &str) -> Listener {
    let extra: String = extra.lines().map(|l| format!("    {l}\n")).collect();
    filtered_listener(
        name,
        port,
        &format!(
            r#"
- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": {FILTER}
    grpc_service:
      envoy_grpc: {{cluster_name: grpc-authz}}
      timeout: 0.6s
{extra}    transport_api_version: V3
"#
        ),
    )
}

/// Request bodies told to the services: a gRPC service told the first 8 bytes (more are
/// allowed), an HTTP one told up to 16 (more are not), each route able to say otherwise.
fn body_listener() -> Listener {
    filtered_listener(
        "bodies",
        BODY_PORT,
        &format!(
            r#"
- name: grpc-body
  typed_config:
    "@type": {FILTER}
    grpc_service:
      envoy_grpc: {{cluster_name: grpc-authz}}
      timeout: 0.6s
    with_request_body: {{max_request_bytes: 8, allow_partial_message: true}}
    stat_prefix: body
    transport_api_version: V3
- name: http-body
  disabled: true
  typed_config:
    "@type": {FILTER}
    http_service:
      server_uri: {{uri: "http://http-authz/auth", cluster: http-authz, timeout: 2s}}
      path_prefix: /auth
    allowed_headers: {{patterns: [{{exact: x-envoy-auth-partial-body}}]}}
    with_request_body: {{max_request_bytes: 16}}
    stat_prefix: http-body
    transport_api_version: V3
"#
        ),
    )
}

fn routes() -> RouteConfiguration {
    let on = format!(r#"{{"@type": {FILTER_CONFIG}, config: {{}}}}"#);
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: shop
  domains: [shop]
  typed_per_filter_config:
    envoy.filters.http.ext_authz/securitypolicy/default/grpc:
      "@type": {PER_ROUTE}
      check_settings: {{context_extensions: {{vhost: shop, level: vhost}}}}
  routes:
  - match: {{prefix: /grpc-checked}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.ext_authz/securitypolicy/default/grpc: {on}
  - match: {{prefix: /grpc-route}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.ext_authz/securitypolicy/default/grpc:
        "@type": {PER_ROUTE}
        check_settings: {{context_extensions: {{level: route}}}}
  - match: {{prefix: /grpc-off}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.ext_authz/securitypolicy/default/grpc:
        "@type": {PER_ROUTE}
        disabled: true
  - match: {{prefix: /static}}
    direct_response: {{status: 200, body: {{inline_string: "static"}}}}
    typed_per_filter_config:
      envoy.filters.http.ext_authz/securitypolicy/default/grpc: {on}
  - match: {{prefix: /}}
    route: {{cluster: web}}
- name: web
  domains: ["*"]
  routes:
  - match: {{prefix: /ok}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.ext_authz/securitypolicy/default/http: {on}
  - match: {{prefix: /down}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.ext_authz/securitypolicy/default/http: {on}
  - match: {{prefix: /nope}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.ext_authz/securitypolicy/default/http: {on}
  - match: {{prefix: /}}
    route: {{cluster: web}}
- name: bodies
  domains: [bodies]
  routes:
  - match: {{prefix: /raw}}
    route: {{cluster: web}}
    typed_per_filter_config:
      grpc-body:
        "@type": {PER_ROUTE}
        check_settings:
          with_request_body: {{max_request_bytes: 4, allow_partial_message: true, pack_as_bytes: true}}
  - match: {{prefix: /streaming}}
    route: {{cluster: web}}
    typed_per_filter_config:
      grpc-body:
        "@type": {PER_ROUTE}
        check_settings: {{disable_request_body_buffering: true}}
  - match: {{prefix: /strict}}
    route: {{cluster: web}}
    typed_per_filter_config:
      grpc-body:
        "@type": {PER_ROUTE}
        check_settings: {{with_request_body: {{max_request_bytes: 8}}}}
  - match: {{prefix: /ok-form}}
    route: {{cluster: web}}
    typed_per_filter_config:
      grpc-body: {{"@type": {PER_ROUTE}, disabled: true}}
      http-body: {on}
  - match: {{prefix: /}}
    route: {{cluster: web}}
- name: reroute
  domains: [reroute]
  routes:
  - match: {{prefix: /, headers: [{{name: x-user-id, string_match: {{exact: "42"}}}}]}}
    direct_response: {{status: 200, body: {{inline_string: "the authorized route"}}}}
  - match: {{prefix: /}}
    direct_response: {{status: 200, body: {{inline_string: "the first route"}}}}
"#
    ))
}

fn outcome(node: &Node, prefix: &str, outcome: &str) -> f64 {
    node.metric(&format!(
        "myelin_proxy_ext_authz_total{{stat_prefix=\"{prefix}\",outcome=\"{outcome}\"}}"
    ))
}

fn uaex(node: &Node, code: u16) -> f64 {
    node.metric(&format!(
        "myelin_proxy_requests_total{{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"{code}\",response_flags=\"UAEX\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_services_decide_over_xds() {
    let hits = Arc::new(AtomicUsize::new(0));
    let web = echo_upstream(hits.clone()).await;
    let authorizer = Arc::new(Authorizer::default());
    let grpc = grpc_service(authorizer.clone()).await;
    let asked: Asked = Arc::default();
    let http = http_service(asked.clone()).await;
    let cp = ControlPlane::start().await;
    let listeners = [
        gateway_listener(),
        istio_listener(),
        recompute_listener(),
        rules_listener("rules", RULES_PORT, false),
        rules_listener("strict", STRICT_PORT, true),
    ];
    cp.update(|b| {
        for l in &listeners {
            set(b, &l.name, l);
        }
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[web]));
        set(b, "grpc-authz", &h2_cluster("grpc-authz"));
        set(b, "grpc-authz", &endpoints("grpc-authz", &[grpc]));
        set(b, "http-authz", &eds_cluster("http-authz"));
        set(b, "http-authz", &endpoints("http-authz", &[http]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (
            type_url::LISTENER,
            &["gateway", "istio", "recompute", "rules", "strict"][..],
        ),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web", "grpc-authz", "http-authz"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    let checks = || authorizer.checks.lock().unwrap().clone();
    let hit_count = || hits.load(Ordering::Relaxed);
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let node = &node;
        async move { request(node, GATEWAY_PORT, "GET", path, headers).await }
    };

    // gRPC, let through: the service's header changes reach the upstream (set, joined,
    // removed), its query changes too, its response header the client.
    let a = get(
        "/grpc-checked/cart?token=t0k&id=7",
        &[
            ("host", "shop"),
            ("x-user", "alice"),
            ("x-trace", "client"),
            ("x-secret", "s3cr3t"),
            ("x-user-id", "forged"),
            ("accept", "*/*"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut lines = a.body.lines();
    assert_eq!(lines.next(), Some("/grpc-checked/cart?id=7&checked=yes"));
    let seen: Vec<&str> = lines.collect();
    assert!(seen.contains(&"x-user-id: 42"), "{seen:?}");
    assert!(!seen.contains(&"x-user-id: forged"), "{seen:?}");
    assert!(seen.contains(&"x-trace: client,authz"), "{seen:?}");
    assert!(!seen.iter().any(|l| l.starts_with("x-secret")), "{seen:?}");
    assert_eq!(a.header("x-authz"), Some("alice ok"));
    // What the service was told: the allowed headers (and the pseudo-headers Envoy's
    // header map holds, which the allow list does not name), the vhost's context
    // extensions, the client's address.
    let first = checks()[0].clone();
    let attrs = first.attributes.unwrap();
    let req = attrs.request.unwrap().http.unwrap();
    let mut told: Vec<_> = req.headers.keys().cloned().collect();
    told.sort();
    assert_eq!(told, ["x-secret", "x-user"]);
    assert_eq!(req.path, "/grpc-checked/cart?token=t0k&id=7");
    assert_eq!(req.method, "GET");
    assert_eq!(
        attrs.context_extensions,
        HashMap::from([
            ("vhost".to_owned(), "shop".to_owned()),
            ("level".to_owned(), "vhost".to_owned())
        ])
    );
    let source = attrs.source.unwrap().address.unwrap();
    let Some(xds_api::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) =
        source.address
    else {
        panic!("no source address")
    };
    assert_eq!(s.address, "127.0.0.1");

    // The route's context extensions over the virtual host's.
    let a = get("/grpc-route", &[("host", "shop"), ("x-user", "alice")]).await;
    assert_eq!(a.status, 200);
    let last = checks().last().unwrap().clone();
    assert_eq!(
        last.attributes.unwrap().context_extensions,
        HashMap::from([
            ("vhost".to_owned(), "shop".to_owned()),
            ("level".to_owned(), "route".to_owned())
        ])
    );

    // gRPC, denied: the service's status, headers and body, flag UAEX; a bare denial is a
    // 403; the upstream never sees either.
    let before = hit_count();
    let a = get("/grpc-checked", &[("host", "shop"), ("x-user", "mallory")]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body, "who are you?");
    assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"shop\""));
    let a = get("/grpc-checked", &[("host", "shop"), ("x-user", "eve")]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body, "");
    // A route that answers itself is guarded too.
    assert_eq!(
        get("/static", &[("host", "shop"), ("x-user", "eve")])
            .await
            .status,
        403
    );
    assert_eq!(
        get("/static", &[("host", "shop"), ("x-user", "alice")])
            .await
            .body,
        "static"
    );
    // A gRPC client gets the denial as a gRPC status.
    let a = request(
        &node,
        GATEWAY_PORT,
        "POST",
        "/grpc-checked",
        &[
            ("host", "shop"),
            ("x-user", "eve"),
            ("content-type", "application/grpc"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("grpc-status"), Some("7"));
    assert_eq!(
        hit_count(),
        before,
        "denied requests never reached the upstream"
    );

    // The service failing or too slow (past 0.3 s): status_on_error (500), UAEX.
    let a = get("/grpc-checked", &[("host", "shop"), ("x-user", "broken")]).await;
    assert_eq!(a.status, 500);
    let a = get("/grpc-checked", &[("host", "shop"), ("x-user", "slow")]).await;
    assert_eq!(a.status, 500);
    assert!(a.took < Duration::from_millis(900), "waited {:?}", a.took);

    // Off on its route: not asked. A route without settings of its own has the virtual
    // host's, which (a typed config, not a `FilterConfig` saying `disabled`) turn the
    // filter on there, as in Envoy.
    let before = checks().len();
    assert_eq!(
        get("/grpc-off", &[("host", "shop"), ("x-user", "eve")])
            .await
            .status,
        200
    );
    assert_eq!(checks().len(), before);
    assert_eq!(
        get("/elsewhere", &[("host", "shop"), ("x-user", "eve")])
            .await
            .status,
        403
    );
    assert_eq!(checks().len(), before + 1);
    assert_eq!(outcome(&node, "grpc", "ok"), 3.0);
    assert_eq!(outcome(&node, "grpc", "denied"), 5.0);
    assert_eq!(outcome(&node, "grpc", "error"), 2.0);

    // HTTP, let through: the method, the prefixed path and the allowed headers asked
    // about; the service's allowed header set on the request, another not, the header it
    // names removed; its cookie on the response.
    let a = get(
        "/ok/page?x=1",
        &[
            ("authorization", "Bearer abc"),
            ("x-secret", "s"),
            ("accept", "*/*"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen: Vec<&str> = a.body.lines().collect();
    assert!(seen.contains(&"x-user-id: 7"), "{seen:?}");
    assert!(!seen.iter().any(|l| l.starts_with("x-ignored")), "{seen:?}");
    assert!(!seen.iter().any(|l| l.starts_with("x-secret")), "{seen:?}");
    assert!(seen.contains(&"authorization: Bearer abc"), "{seen:?}");
    assert_eq!(a.header("set-cookie"), Some("session=abc"));
    let (method, path, headers, _) = asked.lock().unwrap()[0].clone();
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/auth/ok/page"));
    assert_eq!(
        headers.get("authorization").map(String::as_str),
        Some("Bearer abc")
    );
    assert_eq!(headers.get("x-from").map(String::as_str), Some("myelin"));
    assert_eq!(headers.get("content-length").map(String::as_str), Some("0"));
    assert!(!headers.contains_key("x-secret"), "not on the allow list");
    assert!(!headers.contains_key("accept"));
    assert_eq!(
        headers.get("host").map(String::as_str),
        Some("web"),
        "the client's host"
    );

    // HTTP, denied: the service's status, body and allowed client headers.
    let a = get("/nope", &[]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body, "<h1>forbidden</h1>");
    assert_eq!(a.header("content-type"), Some("text/html"));
    assert_eq!(a.header("x-reason"), Some("not on the list"));

    // HTTP, the service failing (503): failure_mode_allow lets the request through, marked.
    let a = get("/down", &[]).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body
            .lines()
            .any(|l| l == "x-envoy-auth-failure-mode-allowed: true"),
        "{}",
        a.body
    );
    assert_eq!(outcome(&node, "http", "ok"), 1.0);
    assert_eq!(outcome(&node, "http", "denied"), 1.0);
    assert_eq!(outcome(&node, "http", "failure_mode_allowed"), 1.0);
    assert_eq!(uaex(&node, 403), 4.0);

    // istiod's CUSTOM action: only the requests the shadow rules match are checked, and
    // the service is told the shadow decision.
    let before = checks().len();
    let a = request(&node, ISTIO_PORT, "GET", "/open", &[("x-user", "eve")]).await;
    assert_eq!(a.status, 200, "not a protected path: not checked");
    assert_eq!(checks().len(), before);
    let a = request(&node, ISTIO_PORT, "GET", "/protected", &[("x-user", "eve")]).await;
    assert_eq!(a.status, 403);
    let a = request(
        &node,
        ISTIO_PORT,
        "GET",
        "/protected",
        &[("x-user", "alice")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(checks().len(), before + 2);
    let metadata = checks()
        .last()
        .unwrap()
        .clone()
        .attributes
        .unwrap()
        .metadata_context
        .unwrap();
    let rbac = &metadata.filter_metadata["envoy.filters.http.rbac"].fields;
    let text = |k: &str| match &rbac[k].kind {
        Some(xds_api::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text("istio_ext_authz_shadow_effective_policy_id"),
        "istio-ext-authz-ns[shop]-policy[ext]-rule[0]"
    );
    assert_eq!(text("istio_ext_authz_shadow_engine_result"), "denied");
    assert_eq!(outcome(&node, "istio", "disabled"), 1.0);

    // `clear_route_cache`: the route chosen again with the service's headers (alice gets
    // `x-user-id: 42`); a request the service denies never gets that far.
    let reroute = |user: &'static str| {
        let node = &node;
        async move {
            let headers = [("host", "reroute"), ("x-user", user)];
            request(node, RECOMPUTE_PORT, "GET", "/", &headers).await
        }
    };
    let a = reroute("alice").await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (200, "the authorized route")
    );
    assert_eq!(reroute("bob").await.status, 403);

    // `decoder_header_mutation_rules`: alice's `x-user-id` is refused, her other changes
    // made; with `disallow_is_error` the refusal refuses the answer (500, UAEX).
    let alice = [
        ("host", "shop"),
        ("x-user", "alice"),
        ("x-trace", "client"),
        ("x-secret", "s3cr3t"),
        ("x-user-id", "forged"),
    ];
    let a = request(&node, RULES_PORT, "GET", "/", &alice).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen: Vec<&str> = a.body.lines().skip(1).collect();
    assert!(seen.contains(&"x-user-id: forged"), "{seen:?}");
    assert!(seen.contains(&"x-trace: client,authz"), "{seen:?}");
    assert!(!seen.iter().any(|l| l.starts_with("x-secret")), "{seen:?}");
    assert_eq!(outcome(&node, "rules", "ok"), 1.0);
    let before = hit_count();
    let a = request(&node, STRICT_PORT, "GET", "/", &alice).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.header("x-authz"), None);
    assert_eq!(hit_count(), before, "not sent upstream");
    assert_eq!(outcome(&node, "strict", "invalid"), 1.0);

    // The gRPC service's cluster gone from xDS: an error (500) for the routes that check.
    cp.update(|b| {
        b.remove(type_url::CLUSTER, "grpc-authz");
    });
    let version = cp.version(type_url::CLUSTER);
    node.wait_applied(type_url::CLUSTER, &["web", "http-authz"], &version)
        .await;
    assert_eq!(
        get("/grpc-checked", &[("host", "shop"), ("x-user", "alice")])
            .await
            .status,
        500
    );
}

/// A request to the `bodies` listener as alice, with a body in `chunks` (a chunked body
/// when there is more than one), each sent once `before` says so for its index.
async fn post_in_chunks<F: Fn(usize) -> bool>(
    node: &Node,
    path: &str,
    chunks: &[&'static [u8]],
    before: F,
) -> (u16, String) {
    let stream = node.connect(vip(BODY_PORT)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let mut req = HyperRequest::post(path)
        .header("host", "bodies")
        .header("x-user", "alice");
    if chunks.len() == 1 {
        req = req.header("content-length", chunks[0].len());
    }
    let req = req
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let answer = tokio::spawn(async move {
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    for (i, chunk) in chunks.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while !before(i) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chunk {i} never due"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if tx
            .send(Ok(Frame::data(Bytes::from_static(chunk))))
            .await
            .is_err()
        {
            break; // answered already
        }
    }
    drop(tx);
    answer.await.unwrap()
}

async fn post(node: &Node, path: &str, body: &'static [u8]) -> (u16, String) {
    post_in_chunks(node, path, &[body], |_| true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_to_the_services_with_with_request_body() {
    let hits = Arc::new(AtomicUsize::new(0));
    let web = echo_upstream(hits.clone()).await;
    let authorizer = Arc::new(Authorizer::default());
    let grpc = grpc_service(authorizer.clone()).await;
    let asked: Asked = Arc::default();
    let http = http_service(asked.clone()).await;
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "bodies", &body_listener());
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[web]));
        set(b, "grpc-authz", &h2_cluster("grpc-authz"));
        set(b, "grpc-authz", &endpoints("grpc-authz", &[grpc]));
        set(b, "http-authz", &eds_cluster("http-authz"));
        set(b, "http-authz", &endpoints("http-authz", &[http]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["bodies"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web", "grpc-authz", "http-authz"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    let checks = || authorizer.checks.lock().unwrap().clone();
    // The last check's body, raw body and partial-body header.
    let told = || {
        let http = checks()
            .last()
            .unwrap()
            .clone()
            .attributes
            .unwrap()
            .request
            .unwrap()
            .http
            .unwrap();
        let partial = http.headers.get("x-envoy-auth-partial-body").cloned();
        (http.body, http.raw_body, partial)
    };
    let upstream_got = |answer: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix("body: "))
            .map(str::to_owned)
    };

    // Longer than the 8 bytes told: cut, said to be partial; the whole body goes upstream.
    let (status, answer) = post(&node, "/upload", b"0123456789abcdef").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(upstream_got(&answer).as_deref(), Some("0123456789abcdef"));
    assert_eq!(told(), ("01234567".into(), vec![], Some("true".into())));
    // Within the limit: all of it.
    let (status, answer) = post(&node, "/upload", b"tiny").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(upstream_got(&answer).as_deref(), Some("tiny"));
    assert_eq!(told(), ("tiny".into(), vec![], Some("false".into())));
    // The route's settings: 4 bytes, as bytes.
    let (status, answer) = post(&node, "/raw", b"\x00\x01bin").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        told(),
        (String::new(), b"\x00\x01bi".to_vec(), Some("true".into()))
    );
    // Buffering off on the route: checked without a body.
    let (status, answer) = post(&node, "/streaming", b"abc").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(upstream_got(&answer).as_deref(), Some("abc"));
    assert_eq!(told(), (String::new(), vec![], None));
    // No partial bodies on the route: a longer body is answered 413, not checked, not
    // sent on; one within the limit is checked whole.
    let (before, hits_before) = (checks().len(), hits.load(Ordering::Relaxed));
    let (status, answer) = post(&node, "/strict", b"123456789").await;
    assert_eq!((status, answer.as_str()), (413, "Payload Too Large"));
    assert_eq!(checks().len(), before);
    assert_eq!(hits.load(Ordering::Relaxed), hits_before);
    let (status, answer) = post(&node, "/strict", b"12345678").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(told(), ("12345678".into(), vec![], Some("false".into())));
    // A request without a body: checked without one.
    let a = request(
        &node,
        BODY_PORT,
        "GET",
        "/upload",
        &[("host", "bodies"), ("x-user", "alice")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(told(), (String::new(), vec![], None));

    // A body still coming: the check goes out once 8 bytes are in, before the client sends
    // the rest; all of it reaches the upstream.
    let before = checks().len();
    let (status, answer) = post_in_chunks(&node, "/upload", &[b"0123456789", b"-the-rest"], |i| {
        i == 0 || checks().len() > before
    })
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        upstream_got(&answer).as_deref(),
        Some("0123456789-the-rest")
    );
    assert_eq!(told(), ("01234567".into(), vec![], Some("true".into())));

    // The HTTP service: the body itself, and the partial-body header it allows.
    let (status, answer) = post(&node, "/ok-form", b"name=alice&x=1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(upstream_got(&answer).as_deref(), Some("name=alice&x=1"));
    let (method, path, headers, body) = asked.lock().unwrap().last().unwrap().clone();
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/auth/ok-form"));
    assert_eq!(&body[..], b"name=alice&x=1");
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some("14")
    );
    assert_eq!(
        headers.get("x-envoy-auth-partial-body").map(String::as_str),
        Some("false")
    );
    let asked_before = asked.lock().unwrap().len();
    let (status, _) = post(&node, "/ok-form", b"name=alice&x=1&more=yes").await;
    assert_eq!(status, 413, "longer than 16 bytes, no partial bodies");
    assert_eq!(asked.lock().unwrap().len(), asked_before);
    assert_eq!(outcome(&node, "body", "ok"), 7.0);
}
