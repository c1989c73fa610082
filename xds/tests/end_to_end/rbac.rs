//! Envoy's RBAC filters end to end: the HTTP filter (`envoy.filters.http.rbac`) as istiod
//! writes an AuthorizationPolicy (policies of permissions and principals, shadow rules)
//! and as Envoy Gateway writes a client CIDR authorization (a matcher per route), and the
//! network filter (`envoy.filters.network.rbac`) before a TCP proxy. Two clients on
//! loopback: 127.0.0.1 is the workload `frontend` of this node (its SPIFFE ID is the
//! identity RBAC sees), 127.0.0.2 is nobody.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use crate::support::tls::{chain as pem_chain, inline, key as pem_key, provider, TestCa};
use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use myelin_proxy::model::{ProxyConfig, Workload};
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

const HTTP_PORT: u16 = 18561;
const TCP_PORT: u16 = 18562;
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const PER_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn frontend_ip() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn stranger_ip() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

/// istiod's shape: frontend may GET `/api/*`; anyone with `x-debug: on` may do anything
/// (a header principal); POSTs are counted by a shadow DENY policy.
fn http_listener() -> Listener {
    filtered_listener(
        "shop",
        HTTP_PORT,
        &format!(
            r#"
- name: envoy.filters.http.rbac
  typed_config:
    "@type": {RBAC}
    rules:
      policies:
        ns[shop]-policy[api]-rule[0]:
          permissions:
          - and_rules:
              rules:
              - header: {{name: ":method", string_match: {{exact: GET}}}}
              - url_path: {{path: {{prefix: /api/}}}}
          principals:
          - authenticated: {{principal_name: {{exact: "{FRONTEND}"}}}}
        ns[shop]-policy[debug]-rule[0]:
          permissions: [{{any: true}}]
          principals: [{{header: {{name: x-debug, string_match: {{exact: "on"}}}}}}]
    shadow_rules:
      action: DENY
      policies:
        no-posts:
          permissions: [{{header: {{name: ":method", string_match: {{exact: POST}}}}}}]
          principals: [{{any: true}}]
"#
        ),
    )
}

/// `/open`: the filter off (`RBACPerRoute` without `rbac`); `/edge`: Envoy Gateway's
/// client CIDR matcher (the client is the last `x-forwarded-for` address, Envoy's default
/// without `use_remote_address`); the rest: the filter's own rules.
fn routes() -> RouteConfiguration {
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: shop
  domains: ["*"]
  routes:
  - match: {{prefix: /open}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.rbac: {{"@type": {PER_ROUTE}}}
  - match: {{prefix: /edge}}
    route: {{cluster: web}}
    typed_per_filter_config:
      envoy.filters.http.rbac:
        "@type": {PER_ROUTE}
        rbac:
          matcher:
            matcher_list:
              matchers:
              - predicate:
                  single_predicate:
                    input:
                      name: client_ip
                      typed_config: {{"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput}}
                    custom_match:
                      name: ip_matcher
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip
                        cidr_ranges: [{{address_prefix: 10.1.0.0, prefix_len: 16}}]
                        stat_prefix: client_ip
                on_match:
                  action:
                    name: office
                    typed_config: {{"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: office, action: ALLOW}}
            on_no_match:
              action:
                name: default
                typed_config: {{"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: default, action: DENY}}
  - match: {{prefix: /direct}}
    direct_response: {{status: 200, body: {{inline_string: secret}}}}
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

/// istiod's pair before a TCP proxy: a DENY filter (nobody denied), then the ALLOW one
/// (frontend only).
fn tcp_listener() -> Listener {
    yaml(&format!(
        r#"
name: db
address: {{socket_address: {{address: 0.0.0.0, port_value: {TCP_PORT}}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.rbac
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
      stat_prefix: tcp.
      rules: {{action: DENY, policies: {{}}}}
  - name: envoy.filters.network.rbac
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
      stat_prefix: tcp.
      rules:
        policies:
          ns[db]-policy[clients]-rule[0]:
            permissions: [{{destination_port: {TCP_PORT}}}]
            principals: [{{authenticated: {{principal_name: {{prefix: "spiffe://cluster.local/ns/shop/"}}}}}}]
  - name: envoy.filters.network.tcp_proxy
    typed_config: {{"@type": {TCP_TYPE}, stat_prefix: db, cluster: db}}
"#
    ))
}

async fn node_with_frontend(cp: &ControlPlane) -> Node {
    let frontend = Workload {
        name: "frontend".into(),
        namespace: "shop".into(),
        service_account: "frontend".into(),
        ip: frontend_ip(),
    };
    Node::start_with(
        cp,
        AdsProtocol::StateOfTheWorld,
        ProxyConfig::new(vec![frontend]).unwrap(),
    )
    .await
}

/// A request (client, method, path, headers) and the status it must get.
type Case = (
    IpAddr,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
);

async fn send(
    node: &Node,
    from: IpAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut sender = h1_sender(node, from, vip(HTTP_PORT)).await;
    send_on(&mut sender, method, path, headers).await
}

#[tokio::test]
async fn http_rbac_policies_matchers_and_shadow_rules() {
    let upstream = http_upstream("web").await;
    let cp = ControlPlane::start().await;
    let listener = http_listener();
    cp.update(|b| {
        set(b, "shop", &listener);
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[upstream.addr]));
    });
    let node = node_with_frontend(&cp).await;
    for (url, names) in [
        (type_url::LISTENER, &["shop"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }

    let cases: &[Case] = &[
        // The ALLOW policy: frontend's identity, GET, `/api/` (query aside).
        (frontend_ip(), "GET", "/api/items?page=2", &[], 200),
        (frontend_ip(), "POST", "/api/items", &[], 403),
        (frontend_ip(), "GET", "/admin", &[], 403),
        // No identity: refused, unless the header policy lets it through.
        (stranger_ip(), "GET", "/api/items", &[], 403),
        (stranger_ip(), "DELETE", "/admin", &[("x-debug", "on")], 200),
        // The route turns the filter off.
        (stranger_ip(), "POST", "/open/x", &[], 200),
        // The route's matcher replaces the filter's rules: the client address from
        // `x-forwarded-for` decides, whoever connects.
        (
            stranger_ip(),
            "GET",
            "/edge",
            &[("x-forwarded-for", "10.1.2.3")],
            200,
        ),
        (
            frontend_ip(),
            "GET",
            "/edge",
            &[("x-forwarded-for", "10.2.0.1")],
            403,
        ),
        (frontend_ip(), "GET", "/edge", &[], 403),
        // A route that answers itself is guarded too.
        (stranger_ip(), "GET", "/direct", &[], 403),
        (stranger_ip(), "GET", "/direct", &[("x-debug", "on")], 200),
    ];
    for (from, method, path, headers, want) in cases {
        let a = send(&node, *from, method, path, headers).await;
        assert_eq!(
            a.status.as_u16(),
            *want,
            "{from} {method} {path} {headers:?}"
        );
        if *want == 403 {
            assert_eq!(a.body, "RBAC: access denied");
        }
    }
    let allowed = cases
        .iter()
        .filter(|c| c.4 == 200 && c.2 != "/direct")
        .count();
    assert_eq!(upstream.hits.load(Ordering::Relaxed), allowed);

    let count = |result: &str| {
        node.metric(&format!(
            "myelin_proxy_rbac_total{{filter=\"http\",result=\"{result}\"}}"
        ))
    };
    // `/open` enforces nothing and counts nothing.
    assert_eq!(count("allowed"), 4.0);
    assert_eq!(count("denied"), 6.0);
    // The shadow rules run where the filter's own settings apply (seven requests): one
    // POST among them.
    assert_eq!(count("shadow_denied"), 1.0);
    assert_eq!(count("shadow_allowed"), 6.0);
    // Refusals are recorded as such in the golden metrics.
    let scraped = node.scrape();
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("myelin_requests_total")
                && l.contains("response_code=\"403\"")
                && l.contains("response_flags=\"RBAC\"")),
        "{scraped}"
    );
}

async fn echo_through(node: &Node, from: IpAddr) -> std::io::Result<Vec<u8>> {
    let mut s = node.connect_from(from, vip(TCP_PORT)).await?;
    s.write_all(b"select 1").await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    // Up to the echo, or to the close of a refused connection.
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the proxy answers or closes")?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"select 1") {
            return Ok(out);
        }
    }
}

#[tokio::test]
async fn network_rbac_closes_connections_it_denies() {
    let (db, _task) = tcp_upstream("db").await;
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "db", &tcp_listener());
        set(b, "db", &eds_cluster("db"));
        set(b, "db", &endpoints("db", &[db]));
    });
    let node = node_with_frontend(&cp).await;
    node.wait_applied(type_url::LISTENER, &["db"], &cp.version(type_url::LISTENER))
        .await;
    node.wait_applied(type_url::ENDPOINT, &["db"], &cp.version(type_url::ENDPOINT))
        .await;

    assert_eq!(
        echo_through(&node, frontend_ip()).await.unwrap(),
        b"db:select 1"
    );
    // Nobody: closed before anything reaches the database.
    let refused = echo_through(&node, stranger_ip()).await.unwrap_or_default();
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));

    let count = |result: &str| {
        node.metric(&format!(
            "myelin_proxy_rbac_total{{filter=\"network\",result=\"{result}\"}}"
        ))
    };
    // Both connections pass the DENY filter; the ALLOW filter lets one through.
    assert_eq!(count("allowed"), 3.0);
    assert_eq!(count("denied"), 1.0);
}

const TLS_PORT: u16 = 18563;

/// A TLS client connection to `vip(TLS_PORT)` with SNI `api.example.com` (verified
/// against `ca`) and the client certificate `client`.
async fn tls_client(
    node: &Node,
    ca: &TestCa,
    client: &(String, String),
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = node.connect(vip(TLS_PORT)).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_chain(&ca.pem) {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(pem_chain(&client.0), pem_key(&client.1))
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("api.example.com").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Behind TLS the listener terminates, the identity is the client certificate's (its URI
/// SAN, else its DNS SAN) and `requested_server_name` is the SNI; the network filter
/// decides after the handshake.
#[tokio::test]
async fn identities_come_from_client_certificates() {
    let upstream = http_upstream("web").await;
    let ca = TestCa::new("server CA");
    let clients = TestCa::new("clients CA");
    let server = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let frontend = clients.uri_leaf("spiffe://example.org/ns/shop/sa/frontend");
    let other = clients.leaf(&["other.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let listener: Listener = yaml(&format!(
        r#"
name: https
address: {{socket_address: {{address: 0.0.0.0, port_value: {TLS_PORT}}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.rbac
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
      stat_prefix: tls.
      rules:
        policies:
          authenticated:
            permissions: [{{requested_server_name: {{exact: api.example.com}}}}]
            principals: [{{authenticated: {{}}}}]
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM_TYPE}
      stat_prefix: https
      rds: {{route_config_name: r, config_source: {{ads: {{}}}}}}
      http_filters:
      - name: envoy.filters.http.rbac
        typed_config:
          "@type": {RBAC}
          rules:
            policies:
              frontend:
                permissions: [{{requested_server_name: {{exact: api.example.com}}}}]
                principals:
                - authenticated: {{principal_name: {{exact: "spiffe://example.org/ns/shop/sa/frontend"}}}}
              by-dns-name:
                permissions: [{{url_path: {{path: {{exact: /dns}}}}}}]
                principals:
                - authenticated: {{principal_name: {{exact: other.example.com}}}}
      - name: envoy.filters.http.router
        typed_config: {{"@type": {ROUTER_TYPE}}}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      require_client_certificate: true
      common_tls_context:
        tls_certificates: [{{certificate_chain: {}, private_key: {}}}]
        validation_context: {{trusted_ca: {}}}
"#,
        inline(&server.0),
        inline(&server.1),
        inline(&clients.pem),
    ));
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "https", &listener);
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[upstream.addr]));
    });
    // No workloads: an identity can only come from a certificate.
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["https"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }

    let get = |client: &'static (String, String), path: &'static str| {
        let (node, ca) = (&node, &ca);
        async move {
            let tls = tls_client(node, ca, client).await;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::get(path)
                .header("host", "api.example.com")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(req).await.unwrap().status().as_u16()
        }
    };
    let frontend: &'static (String, String) = Box::leak(Box::new(frontend));
    let other: &'static (String, String) = Box::leak(Box::new(other));
    assert_eq!(get(frontend, "/x").await, 200);
    assert_eq!(get(other, "/x").await, 403);
    assert_eq!(get(other, "/dns").await, 200);
    assert_eq!(upstream.hits.load(Ordering::Relaxed), 2);
    let count = |filter: &str, result: &str| {
        node.metric(&format!(
            "myelin_proxy_rbac_total{{filter=\"{filter}\",result=\"{result}\"}}"
        ))
    };
    assert_eq!(count("network", "allowed"), 3.0);
    assert_eq!(count("http", "allowed"), 2.0);
    assert_eq!(count("http", "denied"), 1.0);
}
