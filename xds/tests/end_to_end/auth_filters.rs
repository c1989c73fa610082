//! Envoy's basic auth (`envoy.filters.http.basic_auth`) and CSRF (`envoy.filters.http.csrf`)
//! filters end to end, as Envoy Gateway writes a SecurityPolicy's `basicAuth` and
//! `csrf`: the filters in the connection manager (basic auth disabled there, CSRF at 0 %)
//! turned on per route, a captured connection through them, and an upstream that echoes
//! the forwarded user name.

use crate::support::*;
use base64::Engine;
use http::StatusCode;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

const PORT: u16 = 18551;
const BASIC: &str = "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute";
const FILTER: &str = "envoy.filters.http.basic_auth/securitypolicy/default/policy";

/// htpasswd text as inline bytes (base64 in YAML, as Envoy Gateway writes it).
fn users(lines: &[&str]) -> String {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn listener() -> Listener {
    filtered_listener(
        "guarded",
        PORT,
        &format!(
            r#"
- name: {FILTER}
  disabled: true
  typed_config:
    "@type": {BASIC}
    users: {{inline_bytes: {}}}
    forward_username_header: x-echo-user
"#,
            // user1 / pass1
            users(&[
                "# the gateway's users",
                "",
                "user1:{SHA}8FePHnF0saQcTqjG4X96ijuIySo="
            ]),
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
  - match: {{prefix: /private}}
    route: {{cluster: web}}
    typed_per_filter_config:
      {FILTER}:
        "@type": {PER_ROUTE}
        users: {{inline_bytes: {}}}
  - match: {{prefix: /gateway}}
    route: {{cluster: web}}
    typed_per_filter_config:
      {FILTER}:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: false
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#,
        // user2 / pass2, admin / s3cret
        users(&[
            "user2:{SHA}i+UhJqb95FCnFio2UdWJu1HpV50=",
            "admin:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg="
        ]),
    ))
}

async fn send(node: &Node, path: &str, auth: Option<&str>) -> Answer {
    send_to(node, PORT, "GET", path, &[("authorization", auth)]).await
}

/// A request with the headers that have a value.
async fn send_to(
    node: &Node,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, Option<&str>)],
) -> Answer {
    let set: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((*k, (*v)?)))
        .collect();
    request(node, port, method, path, &set).await
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_auth_per_route_as_envoy_gateway_writes_it() {
    let upstream = http_upstream("web").await;
    let (_cp, node) = serving(vec![listener()], routes(), upstream.addr).await;

    // Not enabled on this route.
    let a = send(&node, "/public", None).await;
    assert_eq!(a.status, StatusCode::OK);

    // Refusals: 401, Envoy's bodies, a challenge naming the request's URI.
    let cases = [
        (
            None,
            "User authentication failed. Missing username and password.",
        ),
        (
            Some("Bearer abc".to_owned()),
            "User authentication failed. Expected 'Basic' authentication scheme.",
        ),
        (
            Some("Basic !!!".to_owned()),
            "User authentication failed. Invalid basic credential format.",
        ),
        (
            Some(basic("user2", "wrong")),
            "User authentication failed. Invalid username/password combination.",
        ),
        // The route's users replace the filter's.
        (
            Some(basic("user1", "pass1")),
            "User authentication failed. Invalid username/password combination.",
        ),
    ];
    for (auth, body) in &cases {
        let a = send(&node, "/private/x?y=1", auth.as_deref()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(a.body, *body);
        assert_eq!(
            a.headers["www-authenticate"],
            "Basic realm=\"http://web/private/x?y=1\""
        );
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::Relaxed), 1);

    // The route's users pass, and their name goes upstream; unpadded base64 too.
    let a = send(&node, "/private", Some(&basic("user2", "pass2"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-echo-user"], "user2");
    let unpadded = basic("admin", "s3cret").trim_end_matches('=').to_owned();
    let a = send(&node, "/private", Some(&unpadded)).await;
    assert_eq!(
        (a.status, &a.headers["x-echo-user"]),
        (StatusCode::OK, &"admin".parse().unwrap())
    );

    // Turned on without settings of its own: the filter's users.
    assert_eq!(
        send(&node, "/gateway", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = send(&node, "/gateway", Some(&basic("user1", "pass1"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-echo-user"], "user1");

    let count = |outcome: &str| {
        node.metric(&format!(
            "myelin_proxy_basic_auth_total{{outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(count("allowed"), 3.0);
    assert_eq!(count("no_credential"), 2.0);
    assert_eq!(count("invalid_scheme"), 1.0);
    assert_eq!(count("invalid_format"), 1.0);
    assert_eq!(count("invalid_credential"), 2.0);
}

const CSRF_PORT: u16 = 18552;
const CSRF: &str = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy";

fn csrf_listener() -> Listener {
    filtered_listener(
        "csrf",
        CSRF_PORT,
        &format!(
            r#"
- name: envoy.filters.http.csrf
  typed_config:
    "@type": {CSRF}
    filter_enabled: {{default_value: {{numerator: 0}}}}
"#
        ),
    )
}

fn csrf_routes() -> RouteConfiguration {
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {{prefix: /app}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.csrf:
        "@type": {CSRF}
        filter_enabled: {{default_value: {{numerator: 100}}}}
        additional_origins: [{{exact: www.example.com}}, {{suffix: .trusted.com}}]
  - match: {{prefix: /shadow}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.csrf:
        "@type": {CSRF}
        filter_enabled: {{default_value: {{numerator: 0}}}}
        shadow_enabled: {{default_value: {{numerator: 10000, denominator: TEN_THOUSAND}}}}
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

/// A request (method, path, headers) and the status it must get.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, Option<&'static str>)],
    u16,
);

#[tokio::test]
async fn csrf_refuses_state_changes_from_other_origins() {
    let upstream = http_upstream("web").await;
    let (_cp, node) = serving(vec![csrf_listener()], csrf_routes(), upstream.addr).await;
    let cases: [Case; 9] = [
        // Reads are not checked.
        ("GET", "/app", &[("origin", Some("https://evil.com"))], 200),
        ("POST", "/app", &[], 403),
        ("POST", "/app", &[("origin", Some("http://web"))], 200),
        ("PUT", "/app", &[("origin", Some("https://evil.com"))], 403),
        (
            "PATCH",
            "/app",
            &[("origin", Some("https://api.trusted.com"))],
            200,
        ),
        (
            "POST",
            "/app",
            &[("referer", Some("https://www.example.com/page?x=1"))],
            200,
        ),
        // Shadowed: counted, not refused.
        (
            "DELETE",
            "/shadow",
            &[("origin", Some("https://evil.com"))],
            200,
        ),
        // The filter's own policy: off.
        (
            "POST",
            "/other",
            &[("origin", Some("https://evil.com"))],
            200,
        ),
        (
            "DELETE",
            "/app",
            &[("origin", Some("https://web.evil.com"))],
            403,
        ),
    ];
    for (method, path, headers, want) in cases {
        let a = send_to(&node, CSRF_PORT, method, path, headers).await;
        assert_eq!(a.status.as_u16(), want, "{method} {path} {headers:?}");
        if want == 403 {
            assert_eq!(a.body, "Invalid origin");
        }
    }
    let count =
        |outcome: &str| node.metric(&format!("myelin_proxy_csrf_total{{outcome=\"{outcome}\"}}"));
    assert_eq!(count("valid"), 3.0);
    assert_eq!(count("invalid"), 3.0);
    assert_eq!(count("missing_source_origin"), 1.0);
}

const API_KEY_PORT: u16 = 18553;
const API_KEY: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth";
const API_KEY_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute";

/// Envoy Gateway's API key auth: the filter without keys, routes with theirs (a header on
/// one, a query parameter on another) and the clients they allow, the client's name
/// forwarded and the key hidden.
fn api_key_listener() -> Listener {
    filtered_listener(
        "keyed",
        API_KEY_PORT,
        &format!(
            r#"
- name: envoy.filters.http.api_key_auth
  typed_config: {{"@type": {API_KEY}}}
"#
        ),
    )
}

fn api_key_routes() -> RouteConfiguration {
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {{prefix: /header}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.api_key_auth:
        "@type": {API_KEY_ROUTE}
        allowed_clients: [client-1]
        credentials: [{{client: client-1, key: key1}}, {{client: client-2, key: key2}}]
        key_sources: [{{header: X-Echo-Key}}]
        forwarding: {{header: X-Echo-Client, hide_credentials: true}}
  - match: {{prefix: /query}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.api_key_auth:
        "@type": {API_KEY_ROUTE}
        credentials: [{{client: client-2, key: key2}}]
        key_sources: [{{query: api-key}}]
        forwarding: {{header: X-Echo-Client}}
  - match: {{prefix: /}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.api_key_auth:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: true
"#
    ))
}

#[tokio::test]
async fn api_keys_per_route_as_envoy_gateway_writes_them() {
    let upstream = http_upstream("web").await;
    let (_cp, node) = serving(vec![api_key_listener()], api_key_routes(), upstream.addr).await;
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        request(&node, API_KEY_PORT, "GET", path, headers)
    };

    // A known key of an allowed client: its name goes upstream, the key does not.
    let a = get("/header", &[("x-echo-key", "key1")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-echo-client"), Some("client-1"));
    assert_eq!(a.header("x-echo-key"), None, "hidden");
    // A known key of a client the route does not allow; none; an unknown one.
    let a = get("/header", &[("x-echo-key", "key2")]).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (403, "Client is forbidden.")
    );
    let a = get("/header", &[]).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (401, "Client authentication failed.")
    );
    assert_eq!(get("/header", &[("x-echo-key", "key3")]).await.status, 401);
    // The key in the query; kept (no `hide_credentials`), so upstream sees it.
    let a = get("/query?api-key=key2", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-echo-client"), Some("client-2"));
    assert_eq!(a.body, "web /query?api-key=key2");
    assert_eq!(get("/query?api-key=key1", &[]).await.status, 401);
    // The filter is off elsewhere.
    assert_eq!(get("/", &[]).await.status, 200);
    let count = |o: &str| {
        node.metric(&format!(
            "myelin_proxy_api_key_auth_total{{outcome=\"{o}\"}}"
        ))
    };
    assert_eq!(
        (count("allowed"), count("unauthorized"), count("forbidden")),
        (2.0, 3.0, 1.0)
    );
}
