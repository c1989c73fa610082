//! Envoy's JWT authentication filter (`envoy.filters.http.jwt_authn`) end to end: a
//! listener from xDS with the filter as istiod writes a RequestAuthentication (inline JWKS,
//! rules) and as Envoy Gateway writes a SecurityPolicy's JWT (a remote JWKS behind a
//! cluster, `requirement_map` and per-route `requirement_name`), ES256 tokens signed here,
//! requests through a captured connection, and an upstream that echoes what reached it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

const PORT: u16 = 18591;
const FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";

/// A P-256 signing key and its JWK.
struct Key {
    pair: EcdsaKeyPair,
    jwk: Value,
}

fn key(kid: &str) -> Key {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    Key { pair, jwk }
}

fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// An ES256 token of `claims` signed by `key`.
fn token(key: &Key, claims: Value) -> String {
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": key.jwk["kid"]});
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key
        .pair
        .sign(&SystemRandom::new(), message.as_bytes())
        .unwrap();
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HTTP/1.1 server of one JWKS document that counts its fetches.
async fn jwks_server(doc: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (doc, counter) = (doc.clone(), counter.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        assert_eq!(req.uri().path(), "/keys");
                        counter.fetch_add(1, Ordering::Relaxed);
                        let resp = http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(doc.clone())))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, fetches)
}

/// The filter: istiod's provider (inline JWKS, a header of its own, claims copied into
/// headers, the token removed) and Envoy Gateway's (remote JWKS, forwarded), rules by path
/// and named requirements for routes.
fn listener(local_jwks: &str) -> Listener {
    let inline = serde_json::to_string(local_jwks).unwrap();
    filtered_listener(
        "jwt",
        PORT,
        &format!(
            r#"
- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": {FILTER}
    bypass_cors_preflight: true
    providers:
      istio:
        issuer: https://istio.example
        audiences: [web]
        local_jwks: {{inline_string: {inline}}}
        from_headers: [{{name: x-echo-token, value_prefix: "Bearer "}}]
        forward_payload_header: x-echo-payload
        claim_to_headers: [{{header_name: x-echo-sub, claim_name: sub}}]
        payload_in_metadata: https://istio.example
      gateway:
        issuer: https://gateway.example
        forward: true
        remote_jwks:
          http_uri: {{uri: "http://jwks.example/keys", cluster: jwks, timeout: 1s}}
          cache_duration: 300s
    rules:
    - match: {{prefix: /public}}
    - match: {{prefix: /either}}
      requires:
        requires_any:
          requirements: [{{provider_name: istio}}, {{provider_name: gateway}}]
    - match: {{prefix: /optional}}
      requires: {{allow_missing: {{}}}}
    - match: {{prefix: /}}
      requires: {{provider_name: istio}}
    requirement_map:
      gateway-only: {{provider_name: gateway}}
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
  - match: {{prefix: /named}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.jwt_authn: {{"@type": {PER_ROUTE}, requirement_name: gateway-only}}
  - match: {{prefix: /off}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.jwt_authn: {{"@type": {PER_ROUTE}, disabled: true}}
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

fn jwks_cluster() -> Cluster {
    eds_cluster("jwks")
}

fn outcome(node: &Node, outcome: &str) -> f64 {
    node.metric(&format!(
        "myelin_proxy_jwt_authn_total{{outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_authentication_over_xds() {
    let istio_key = key("istio-1");
    let gateway_key = key("gw-1");
    let upstream = http_upstream("web").await;
    let (jwks_addr, fetches) = jwks_server(jwks(&[&gateway_key])).await;
    let cp = ControlPlane::start().await;
    let l = listener(&jwks(&[&istio_key]));
    cp.update(|b| {
        set(b, &l.name, &l);
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[upstream.addr]));
        set(b, "jwks", &jwks_cluster());
        set(b, "jwks", &endpoints("jwks", &[jwks_addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["jwt"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web", "jwks"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    let hits = || upstream.hits.load(Ordering::Relaxed);
    let get = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let node = &node;
        async move {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(node, PORT, "GET", path, &hs).await
        }
    };
    let istio = |claims: Value| token(&istio_key, claims);
    let claims = |iss: &str, aud: &str, exp: u64| json!({"iss": iss, "aud": aud, "sub": "alice", "exp": exp});
    let good = istio(claims("https://istio.example", "web", now() + 600));
    let bearer = |t: &str| format!("Bearer {t}");

    // No token where one is required: 401 with Envoy's message and challenge, never
    // upstream.
    let a = get("/", vec![]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body, "Jwt is missing");
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"http://web/\"")
    );
    assert_eq!(hits(), 0);

    // A valid token: upstream gets its claims and payload, not the token itself.
    let a = get("/", vec![("x-echo-token", bearer(&good))]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-echo-sub"), Some("alice"));
    assert_eq!(a.header("x-echo-token"), None, "the token is not forwarded");
    let payload = URL_SAFE_NO_PAD
        .decode(a.header("x-echo-payload").unwrap())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["sub"],
        "alice"
    );

    // Tokens that fail, each with its reason.
    for (t, status, body) in [
        (
            istio(claims("https://istio.example", "web", now() - 3600)),
            401,
            "Jwt is expired",
        ),
        (
            istio(claims("https://istio.example", "api", now() + 600)),
            403,
            "Audiences in Jwt are not allowed",
        ),
        (
            istio(claims("https://elsewhere", "web", now() + 600)),
            401,
            "Jwt issuer is not configured",
        ),
        (
            token(
                &key("istio-1"),
                claims("https://istio.example", "web", now() + 600),
            ),
            401,
            "Jwt verification fails",
        ),
        (
            token(
                &key("istio-2"),
                claims("https://istio.example", "web", now() + 600),
            ),
            401,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
    ] {
        let a = get("/", vec![("x-echo-token", bearer(&t))]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (status, body));
        if status == 401 {
            assert_eq!(
                a.header("www-authenticate"),
                Some("Bearer realm=\"http://web/\", error=\"invalid_token\"")
            );
        }
    }
    assert_eq!(hits(), 1, "failed requests never reach the upstream");

    // Rules: a path with no requirement; one that takes either provider (the gateway's
    // keys fetched once from its cluster, then cached; its token forwarded); one where a
    // token is optional but must be good when there is one.
    assert_eq!(get("/public", vec![]).await.status, 200);
    let gw = token(
        &gateway_key,
        json!({"iss": "https://gateway.example", "exp": now() + 600}),
    );
    for _ in 0..2 {
        let a = get("/either", vec![("authorization", bearer(&gw))]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(fetches.load(Ordering::Relaxed), 1, "the JWKS is cached");
    assert_eq!(
        get("/either", vec![("x-echo-token", bearer(&good))])
            .await
            .status,
        200
    );
    assert_eq!(get("/either", vec![]).await.status, 401);
    assert_eq!(get("/optional", vec![]).await.status, 200);
    let expired = istio(claims("https://istio.example", "web", now() - 3600));
    assert_eq!(
        get("/optional", vec![("x-echo-token", bearer(&expired))])
            .await
            .status,
        401
    );

    // Routes: a named requirement (the gateway's, so the istio token is no token here),
    // and the filter off.
    let a = get("/named", vec![("x-echo-token", bearer(&good))]).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (401, "Jwt is missing")
    );
    assert_eq!(
        get("/named", vec![("authorization", bearer(&gw))])
            .await
            .status,
        200
    );
    assert_eq!(get("/off", vec![]).await.status, 200);

    // A CORS preflight passes unchecked.
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
    ];
    let a = request(&node, PORT, "OPTIONS", "/", &preflight).await;
    assert_eq!(a.status, 200, "{}", a.body);

    assert_eq!(outcome(&node, "allowed"), 6.0);
    assert_eq!(outcome(&node, "cors_preflight_bypassed"), 1.0);
    assert_eq!(outcome(&node, "denied"), 9.0);
}

const RECOMPUTE_PORT: u16 = 18592;
const KEEP_PORT: u16 = 18593;
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// Envoy Gateway's `recomputeRoute`: a provider with `claim_to_headers` and
/// `clear_route_cache` on one listener, the same without it on another, then a fault
/// filter configured per route; routes by the claim's header.
fn claim_listener(name: &str, port: u16, jwks: &str, clear: bool) -> Listener {
    let inline = serde_json::to_string(jwks).unwrap();
    filtered_listener(
        name,
        port,
        &format!(
            r#"
- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": {FILTER}
    providers:
      eg:
        issuer: https://gateway.example
        local_jwks: {{inline_string: {inline}}}
        claim_to_headers: [{{header_name: x-echo-team, claim_name: team}}]
        clear_route_cache: {clear}
    rules:
    - match: {{prefix: /}}
      requires: {{provider_name: eg}}
- name: envoy.filters.http.fault
  typed_config: {{"@type": {FAULT}}}
"#
        ),
    )
}

fn claim_routes() -> RouteConfiguration {
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {{prefix: /, headers: [{{name: x-echo-team, string_match: {{exact: blue}}}}]}}
    route: {{cluster: web}}
    request_headers_to_add: [{{header: {{key: x-echo-route, value: blue}}}}]
  - match: {{prefix: /, headers: [{{name: x-echo-team, string_match: {{exact: red}}}}]}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": {FAULT}
        abort: {{http_status: 418, percentage: {{numerator: 100}}}}
  - match: {{prefix: /}}
    route: {{cluster: web}}
    request_headers_to_add: [{{header: {{key: x-echo-route, value: default}}}}]
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_choose_the_route_again_with_clear_route_cache() {
    let k = key("eg-1");
    let upstream = http_upstream("web").await;
    let listeners = vec![
        claim_listener("recompute", RECOMPUTE_PORT, &jwks(&[&k]), true),
        claim_listener("keep", KEEP_PORT, &jwks(&[&k]), false),
    ];
    let (_cp, node) = serving(listeners, claim_routes(), upstream.addr).await;
    let team = |t: &str| {
        let jwt = token(
            &k,
            json!({"iss": "https://gateway.example", "team": t, "exp": now() + 600}),
        );
        format!("Bearer {jwt}")
    };
    let get = |port: u16, auth: String| {
        let node = &node;
        async move { request(node, port, "GET", "/", &[("authorization", auth.as_str())]).await }
    };

    // Chosen again with the claim's header: the blue route (its header added upstream).
    let a = get(RECOMPUTE_PORT, team("blue")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-echo-team"), Some("blue"));
    assert_eq!(a.header("x-echo-route"), Some("blue"));
    // The red route's fault filter settings apply to the filter after JWT.
    assert_eq!(get(RECOMPUTE_PORT, team("red")).await.status, 418);
    // Other teams: the default route.
    let a = get(RECOMPUTE_PORT, team("green")).await;
    assert_eq!(a.header("x-echo-route"), Some("default"));

    // Without `clear_route_cache` the route stays the one chosen before the claims.
    let a = get(KEEP_PORT, team("blue")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-echo-team"), Some("blue"));
    assert_eq!(a.header("x-echo-route"), Some("default"));
    assert_eq!(get(KEEP_PORT, team("red")).await.status, 200);
}
