//! TLS origination to upstreams outside the mesh, end to end: clusters with an
//! `UpstreamTlsContext` (inline and SDS certificates and trust anchors) in front of real
//! rustls servers on loopback, reached through a captured HTTP listener and a TCP proxy.
//! The servers report what the handshake carried (SNI, ALPN, version, client
//! certificate); refusals are 503 `UF` and never plain text.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::support;
use crate::support::tls::{inline, server_config, tls_upstream, TestCa};
use crate::support::*;
use http::StatusCode;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

/// A STATIC cluster at `addr` with the `UpstreamTlsContext` keys `tls` (YAML at the
/// context's indentation) and more cluster keys `extra`.
fn tls_cluster(name: &str, addr: SocketAddr, tls: &str, extra: &str) -> Cluster {
    let tls: String = tls.lines().map(|l| format!("    {l}\n")).collect();
    yaml(&format!(
        r#"
name: {name}
type: STATIC
connect_timeout: 2s
load_assignment:
  cluster_name: {name}
  endpoints:
  - lb_endpoints:
    - endpoint: {{address: {{socket_address: {{address: "{}", port_value: {}}}}}}}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{tls}{extra}
"#,
        addr.ip(),
        addr.port()
    ))
}

/// A route table sending `/<cluster>/...` to each cluster.
fn routes(clusters: &[&str]) -> RouteConfiguration {
    let routes: String = clusters
        .iter()
        .map(|c| format!("  - match: {{prefix: \"/{c}/\"}}\n    route: {{cluster: {c}}}\n"))
        .collect();
    yaml(&format!(
        "name: r\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n{routes}"
    ))
}

/// A node whose HTTP listener on port 18080 routes `/<cluster>/` to each of `clusters`,
/// once it has them all.
async fn serving_clusters(clusters: &[Cluster]) -> (ControlPlane, Node) {
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "http", &http_listener("http", 18080, "r"));
        set(b, "r", &routes(&names));
        for c in clusters {
            set(b, &c.name, c);
        }
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    wait_http_listener(&node, &cp).await;
    node.wait_applied(type_url::CLUSTER, &names, &cp.version(type_url::CLUSTER))
        .await;
    (cp, node)
}

/// Waits until the node's proxy has the listener `http` and its routes `r`.
async fn wait_http_listener(node: &Node, cp: &ControlPlane) {
    node.wait_applied(
        type_url::LISTENER,
        &["http"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["r"], &cp.version(type_url::ROUTE))
        .await;
}

const H2: &str = r#"typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {}}"#;

#[tokio::test]
async fn clusters_originate_tls_as_envoy_does() {
    let ca = TestCa::new("test CA");
    let other = TestCa::new("another CA");
    let server_cert = ca.leaf(
        &["api.example.com", "*.svc.example.com"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client_cert = ca.leaf(&["client.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let tls13 = &rustls::version::TLS13;
    let tls12 = &rustls::version::TLS12;
    let main = tls_upstream(server_config(&server_cert, &[tls13, tls12], None)).await;
    let mutual = tls_upstream(server_config(&server_cert, &[tls13, tls12], Some(&ca))).await;
    let self_signed = other.leaf(&["legacy.internal"], ExtendedKeyUsagePurpose::ServerAuth);
    let legacy = tls_upstream(server_config(&self_signed, &[tls12], None)).await;
    let plain = http_upstream("plain").await;

    let trusted = format!(
        "common_tls_context:\n  validation_context:\n    trusted_ca: {}\n",
        inline(&ca.pem)
    );
    let san = |t: &str, v: &str| {
        format!(
            "    match_typed_subject_alt_names: [{{san_type: {t}, matcher: {{exact: \"{v}\"}}}}]\n"
        )
    };
    let sds_client =
        "  tls_certificate_sds_secret_configs: [{name: client-cert, sds_config: {ads: {}}}]\n";
    let clusters = vec![
        tls_cluster(
            "verified",
            main.addr,
            &format!("sni: api.example.com\n{trusted}{}", san("DNS", "api.example.com")),
            "",
        ),
        // `*.svc.example.com` covers one label of an exact DNS rule.
        tls_cluster(
            "wildcard",
            main.addr,
            &format!("{trusted}{}", san("DNS", "orders.svc.example.com")),
            "",
        ),
        tls_cluster(
            "h2",
            main.addr,
            &format!("sni: api.example.com\n{trusted}"),
            H2,
        ),
        tls_cluster(
            "wrong-san",
            main.addr,
            &format!("{trusted}{}", san("DNS", "other.example.com")),
            "",
        ),
        tls_cluster(
            "untrusted",
            main.addr,
            &format!(
                "common_tls_context:\n  validation_context:\n    trusted_ca: {}\n",
                inline(&other.pem)
            ),
            "",
        ),
        tls_cluster(
            "mutual",
            mutual.addr,
            &format!("{trusted}{sds_client}"),
            "",
        ),
        tls_cluster("mutual-nocert", mutual.addr, &trusted, ""),
        // No validation context: Envoy does not verify the server, and speaks TLS 1.2.
        tls_cluster("legacy", legacy.addr, "sni: legacy.internal\n", ""),
        // The same server, but TLS 1.3 at least: no common version.
        tls_cluster(
            "legacy-13",
            legacy.addr,
            "common_tls_context:\n  tls_params: {tls_minimum_protocol_version: TLSv1_3}\n",
            "",
        ),
        tls_cluster("plain", plain.addr, &trusted, ""),
        tls_cluster(
            "missing",
            main.addr,
            "common_tls_context:\n  tls_certificate_sds_secret_configs: [{name: not-there, sds_config: {ads: {}}}]\n",
            "",
        ),
    ];
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    let client_secret: Secret = yaml(&format!(
        "name: client-cert\ntls_certificate:\n  certificate_chain: {}\n  private_key: {}\n",
        inline(&client_cert.0),
        inline(&client_cert.1)
    ));
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "http", &http_listener("http", 18080, "r"));
        set(b, "tcp", &tcp_listener("tcp", 18443, "verified"));
        set(b, "r", &routes(&names));
        for c in &clusters {
            set(b, &c.name, c);
        }
        set(b, "client-cert", &client_secret);
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(type_url::ROUTE, &["r"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(type_url::CLUSTER, &names, &cp.version(type_url::CLUSTER))
        .await;
    node.wait_applied(
        type_url::SECRET,
        &["client-cert"],
        &cp.version(type_url::SECRET),
    )
    .await;

    let mut client = node.http_client(vip(18080)).await;
    let mut get = async |path: &str| client.get("app.local", path).await.unwrap();

    // SNI as configured, the codec's ALPN, TLS 1.3; two requests share one handshake.
    for _ in 0..2 {
        let (status, server, body) = get("/verified/a").await;
        assert_eq!((status, server.as_str()), (StatusCode::OK, "tls"), "{body}");
        assert_eq!(
            body,
            "sni=api.example.com alpn=http/1.1 version=TLSv1_3 client=none"
        );
    }
    assert_eq!(
        main.handshakes.load(Ordering::Relaxed),
        1,
        "the connection is pooled"
    );

    let (status, _, body) = get("/wildcard/a").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "sni=none alpn=http/1.1 version=TLSv1_3 client=none");

    let (status, _, body) = get("/h2/a").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "sni=api.example.com alpn=h2 version=TLSv1_3 client=none"
    );

    // The client certificate from SDS is presented; without one the server refuses.
    let (status, _, body) = get("/mutual/a").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("client=yes"), "{body}");

    let (status, _, body) = get("/legacy/a").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "sni=legacy.internal alpn=http/1.1 version=TLSv1_2 client=none"
    );

    let refused_before = main.handshakes.load(Ordering::Relaxed);
    for path in ["/wrong-san/a", "/untrusted/a", "/plain/a", "/legacy-13/a"] {
        let (status, _, body) = get(path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert!(body.contains("TLS handshake failed"), "{path}: {body}");
    }
    // TLS 1.3: the server refuses a missing client certificate after the client's side of
    // the handshake, so the refusal comes as a reset before the response headers (502, as
    // Myelin answers upstream resets).
    let mutual_before = mutual.handshakes.load(Ordering::Relaxed);
    let (status, _, body) = get("/mutual-nocert/a").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.starts_with("upstream connect error"), "{body}");
    assert_eq!(mutual.handshakes.load(Ordering::Relaxed), mutual_before);
    assert_eq!(
        main.handshakes.load(Ordering::Relaxed),
        refused_before,
        "a refused server certificate completed a handshake"
    );
    assert_eq!(
        plain.hits.load(Ordering::Relaxed),
        0,
        "plain text reached a TLS cluster's host"
    );

    // A Secret that has not arrived: no connection at all, the reason counted.
    let (status, _, body) = get("/missing/a").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("upstream TLS is not available"), "{body}");
    assert_eq!(
        node.metric("myelin_proxy_config_misses_total{reason=\"upstream_tls_unavailable\"}"),
        1.0
    );

    // A TCP proxy's bytes inside TLS, with no ALPN (no codec to name).
    let mut tcp = node.connect(vip(18443)).await;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("sni=api.example.com alpn=none version=TLSv1_3 client=none"),
        "{answer}"
    );
}

/// A new version of the SDS client certificate takes effect for new connections, and a
/// Secret that arrives late turns a failing cluster into a working one.
#[tokio::test]
async fn sds_certificates_follow_their_secrets() {
    let ca = TestCa::new("test CA");
    let server_cert = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let client_cert = ca.leaf(&["client.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let tls13 = &rustls::version::TLS13;
    let mutual = tls_upstream(server_config(&server_cert, &[tls13], Some(&ca))).await;
    let cluster = tls_cluster(
        "mutual",
        mutual.addr,
        "common_tls_context:
  validation_context_sds_secret_config: {name: ca, sds_config: {ads: {}}}
  tls_certificate_sds_secret_configs: [{name: client-cert, sds_config: {ads: {}}}]
",
        "",
    );
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "http", &http_listener("http", 18080, "r"));
        set(b, "r", &routes(&["mutual"]));
        set(b, "mutual", &cluster);
    });
    let node = Node::start(&cp, AdsProtocol::Delta).await;
    wait_http_listener(&node, &cp).await;
    node.wait_applied(
        type_url::CLUSTER,
        &["mutual"],
        &cp.version(type_url::CLUSTER),
    )
    .await;
    let mut client = node.http_client(vip(18080)).await;
    let (status, _, body) = client.get("app.local", "/mutual/a").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("upstream TLS is not available"), "{body}");

    let ca_secret: Secret = yaml(&format!(
        "name: ca\nvalidation_context:\n  trusted_ca: {}\n",
        inline(&ca.pem)
    ));
    let client_secret: Secret = yaml(&format!(
        "name: client-cert\ntls_certificate:\n  certificate_chain: {}\n  private_key: {}\n",
        inline(&client_cert.0),
        inline(&client_cert.1)
    ));
    cp.update(|b| {
        set(b, "ca", &ca_secret);
        set(b, "client-cert", &client_secret);
    });
    node.wait_applied(
        type_url::SECRET,
        &["ca", "client-cert"],
        &cp.version(type_url::SECRET),
    )
    .await;
    let (status, _, body) = client.get("app.local", "/mutual/a").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("client=yes"), "{body}");

    // A certificate from a CA the server does not trust: the next connection presents it
    // (the pools keep connections of other TLS settings apart) and the server refuses it
    // (TLS 1.3: after the client's side of the handshake, so as a reset before headers).
    let stranger = TestCa::new("stranger CA")
        .leaf(&["client.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let rotated: Secret = yaml(&format!(
        "name: client-cert\ntls_certificate:\n  certificate_chain: {}\n  private_key: {}\n",
        inline(&stranger.0),
        inline(&stranger.1)
    ));
    cp.update(|b| set(b, "client-cert", &rotated));
    node.wait_applied(
        type_url::SECRET,
        &["client-cert"],
        &cp.version(type_url::SECRET),
    )
    .await;
    let handshakes = mutual.handshakes.load(Ordering::Relaxed);
    let (status, _, body) = client.get("app.local", "/mutual/a").await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.starts_with("upstream connect error"), "{body}");
    assert_eq!(mutual.handshakes.load(Ordering::Relaxed), handshakes);
}

/// `transport_socket_matches` (Istio's `tlsMode` labels, Envoy Gateway's backend TLS): one
/// EDS cluster whose endpoints say by metadata which get TLS; the others are plain.
#[tokio::test]
async fn transport_socket_matches_pick_tls_per_endpoint() {
    let ca = TestCa::new("test CA");
    let server_cert = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let tls = tls_upstream(server_config(
        &server_cert,
        &[&rustls::version::TLS13],
        None,
    ))
    .await;
    let plain = http_upstream("plain").await;
    let cluster: Cluster = yaml(&format!(
        r#"
name: mixed
type: EDS
connect_timeout: 2s
eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
transport_socket_matches:
- name: tls-on
  match: {{tlsMode: istio}}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: api.example.com
      common_tls_context:
        validation_context:
          trusted_ca: {}
"#,
        inline(&ca.pem)
    ));
    let endpoints: xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
        yaml(&format!(
            r#"
cluster_name: mixed
endpoints:
- lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: "{}", port_value: {}}}}}}}
    metadata: {{filter_metadata: {{envoy.transport_socket_match: {{tlsMode: istio}}}}}}
  - endpoint: {{address: {{socket_address: {{address: "{}", port_value: {}}}}}}}
"#,
            tls.addr.ip(),
            tls.addr.port(),
            plain.addr.ip(),
            plain.addr.port()
        ));
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "http", &http_listener("http", 18080, "r"));
        set(b, "r", &routes(&["mixed"]));
        set(b, "mixed", &cluster);
        set(b, "mixed", &endpoints);
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    wait_http_listener(&node, &cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["mixed"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let mut client = node.http_client(vip(18080)).await;
    let mut servers = Vec::new();
    for _ in 0..4 {
        let (status, server, body) = client.get("app.local", "/mixed/a").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        if server == "tls" {
            assert_eq!(
                body,
                "sni=api.example.com alpn=http/1.1 version=TLSv1_3 client=none"
            );
        }
        servers.push(server);
    }
    servers.sort();
    assert_eq!(servers, ["plain", "plain", "tls", "tls"]);
    assert_eq!(tls.handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(plain.hits.load(Ordering::Relaxed), 2);
}

/// `auto_sni` and `auto_san_validation` (Istio's TLS origination without an SNI of its
/// own), and the context's `auto_sni_san_validation`: the SNI is each request's host, the
/// certificate must name it, and connections for different hosts are kept apart.
#[tokio::test]
async fn auto_sni_follows_the_request_host() {
    let ca = TestCa::new("test CA");
    let server_cert = ca.leaf(
        &["api.example.com", "*.svc.example.com"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let main = tls_upstream(server_config(
        &server_cert,
        &[&rustls::version::TLS13],
        None,
    ))
    .await;
    let trusted = format!(
        "common_tls_context:\n  validation_context:\n    trusted_ca: {}\n",
        inline(&ca.pem)
    );
    let auto = |name: &str, extra: &str| {
        tls_cluster(
            name,
            main.addr,
            &trusted,
            &format!(
                r#"typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {{http_protocol_options: {{}}}}
    upstream_http_protocol_options: {{auto_sni: true, auto_san_validation: true{extra}}}"#
            ),
        )
    };
    let clusters = vec![
        auto("auto", ""),
        auto("by-header", ", override_auto_sni_header: x-sni"),
        tls_cluster(
            "pinned-ok",
            main.addr,
            &format!("sni: api.example.com\nauto_sni_san_validation: true\n{trusted}"),
            "",
        ),
        tls_cluster(
            "pinned-bad",
            main.addr,
            &format!("sni: other.example.com\nauto_sni_san_validation: true\n{trusted}"),
            "",
        ),
    ];
    let (_cp, node) = serving_clusters(&clusters).await;
    let mut client = node.http_client(vip(18080)).await;
    for (host, sni) in [
        ("api.example.com", "api.example.com"),
        ("Orders.svc.example.com:8443", "orders.svc.example.com"),
        ("api.example.com", "api.example.com"),
        ("127.0.0.1:8443", "none"),
    ] {
        let (status, _, body) = client.get(host, "/auto/a").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
        assert_eq!(
            body,
            format!("sni={sni} alpn=http/1.1 version=TLSv1_3 client=none"),
            "{host}"
        );
    }
    // One connection per host: the repeated host reused its own.
    assert_eq!(main.handshakes.load(Ordering::Relaxed), 3);
    // A host the certificate does not name.
    let (status, _, body) = client.get("evil.example.com", "/auto/a").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("TLS handshake failed"), "{body}");
    // The host from another header (`app.local`, the authority, is not in the certificate:
    // only the header's host passes the SAN check).
    let (status, server) = client
        .get_with_header("app.local", "/by-header/a", "x-sni", "db.svc.example.com")
        .await
        .unwrap();
    assert_eq!((status, server.as_str()), (StatusCode::OK, "tls"));
    let (status, _, body) = client.get("app.local", "/by-header/a").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _, body) = client.get("app.local", "/pinned-ok/a").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("sni=api.example.com "), "{body}");
    let (status, _, body) = client.get("app.local", "/pinned-bad/a").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("TLS handshake failed"), "{body}");
}

/// `auto_config` (Envoy Gateway's default for backends): over TLS the server's ALPN choice
/// decides HTTP/2 or HTTP/1.1, learned on the first connection and kept; without TLS,
/// HTTP/1.1.
#[tokio::test]
async fn auto_config_speaks_what_alpn_picks() {
    let ca = TestCa::new("test CA");
    let server_cert = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let tls13 = &rustls::version::TLS13;
    let both = tls_upstream(server_config(&server_cert, &[tls13], None)).await;
    let mut h1_only = server_config(&server_cert, &[tls13], None);
    h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h1_only = tls_upstream(h1_only).await;
    let plain = http_upstream("plain").await;
    let auto = r#"typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    auto_config:
      http_protocol_options: {}
      http2_protocol_options: {initial_stream_window_size: 65536}"#;
    let trusted = format!(
        "sni: api.example.com\ncommon_tls_context:\n  validation_context:\n    trusted_ca: {}\n",
        inline(&ca.pem)
    );
    let mut plain_cluster = tls_cluster("plain", plain.addr, "", auto);
    plain_cluster.transport_socket = None;
    let clusters = vec![
        tls_cluster("both", both.addr, &trusted, auto),
        tls_cluster("h1-only", h1_only.addr, &trusted, auto),
        plain_cluster,
    ];
    let (_cp, node) = serving_clusters(&clusters).await;
    let mut client = node.http_client(vip(18080)).await;
    for _ in 0..3 {
        let (status, _, body) = client.get("app.local", "/both/a").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            "sni=api.example.com alpn=h2 version=TLSv1_3 client=none"
        );
        let (status, _, body) = client.get("app.local", "/h1-only/a").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            "sni=api.example.com alpn=http/1.1 version=TLSv1_3 client=none"
        );
        let (status, server, _) = client.get("app.local", "/plain/a").await.unwrap();
        assert_eq!((status, server.as_str()), (StatusCode::OK, "plain"));
    }
    // The first connection (the one that found out) carried every request after it.
    assert_eq!(both.handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(h1_only.handshakes.load(Ordering::Relaxed), 1);
}

/// Health checks go over the cluster's TLS, verified as requests are: a server the context
/// trusts passes HTTP checks over its handshake; one whose name does not match fails them
/// as network failures (nothing in plain text).
#[tokio::test]
async fn health_checks_go_over_the_clusters_tls() {
    let ca = TestCa::new("test CA");
    let cert = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let server = tls_upstream(server_config(&cert, &[&rustls::version::TLS13], None)).await;
    let trusted = |name: &str| {
        format!(
            "sni: {name}\ncommon_tls_context:\n  validation_context:\n    trusted_ca: {}\n    match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: \"{name}\"}}}}]\n",
            inline(&ca.pem)
        )
    };
    let checks = "health_checks:
- timeout: 1s
  interval: 0.1s
  no_traffic_interval: 0.1s
  unhealthy_threshold: 1
  healthy_threshold: 1
  http_health_check: {path: /healthz}";
    let (_cp, node) = serving_clusters(&[
        tls_cluster("good", server.addr, &trusted("api.example.com"), checks),
        tls_cluster("wrong", server.addr, &trusted("other.example.com"), checks),
    ])
    .await;
    let count = |cluster: &str, result: &str| {
        node.metric(&format!(
            "myelin_proxy_health_checks_total{{cluster=\"{cluster}\",result=\"{result}\"}}"
        ))
    };
    eventually("checks over TLS pass", || count("good", "success") >= 3.0).await;
    eventually("checks of a wrong name fail", || {
        count("wrong", "network_failure") >= 3.0
    })
    .await;
    assert_eq!(count("wrong", "success"), 0.0);
    assert_eq!(count("good", "network_failure"), 0.0);
    // One handshake for all of the good cluster's checks (the connection is kept), and none
    // finished for the wrong one.
    assert_eq!(server.handshakes.load(Ordering::Relaxed), 1);
}

/// A cluster's `tls_params` narrow what its handshakes offer: against a TLS 1.2 server
/// that speaks one suite, one group and signs with ECDSA P-256, a cluster whose lists leave
/// any of them out cannot connect (503, nothing in plain text).
#[tokio::test]
async fn cluster_tls_params_narrow_suites_groups_and_signatures() {
    use rustls::crypto::ring::{cipher_suite as cs, kx_group as kx};
    let ca = TestCa::new("test CA");
    let cert = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256];
    p.kx_groups = vec![kx::SECP384R1];
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(support::tls::chain(&cert.0), support::tls::key(&cert.1))
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server = tls_upstream(config).await;
    let ctx = |params: &str| {
        format!(
            "sni: api.example.com\ncommon_tls_context:\n  tls_params: {params}\n  validation_context:\n    trusted_ca: {}\n",
            inline(&ca.pem)
        )
    };
    let cases = [
        ("listed", "{cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-ECDSA-CHACHA20-POLY1305], ecdh_curves: [X25519, P-384]}", true),
        ("signs", "{signature_algorithms: [rsa_pss_rsae_sha256, ecdsa_secp256r1_sha256]}", true),
        ("suite", "{cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256, AES128-SHA]}", false),
        ("group", "{ecdh_curves: [X25519, P-256]}", false),
        ("signature", "{signature_algorithms: [rsa_pss_rsae_sha256, ed25519]}", false),
    ];
    let clusters: Vec<Cluster> = cases
        .iter()
        .map(|(name, params, _)| tls_cluster(name, server.addr, &ctx(params), ""))
        .collect();
    // A server that asks for client certificates: the client's key signs only with the
    // listed scheme.
    let mutual = tls_upstream(server_config(&cert, &[&rustls::version::TLS13], Some(&ca))).await;
    let client_cert = ca.leaf(&["client.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let mut clusters = clusters;
    clusters.push(tls_cluster(
        "mutual",
        mutual.addr,
        &format!(
            "{}  tls_certificates: [{{certificate_chain: {}, private_key: {}}}]\n",
            ctx("{signature_algorithms: [ecdsa_secp256r1_sha256]}"),
            inline(&client_cert.0),
            inline(&client_cert.1)
        ),
        "",
    ));
    let (_cp, node) = serving_clusters(&clusters).await;
    let mut client = node.http_client(vip(18080)).await;
    let (status, _, body) = client.get("any", "/mutual/").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("client=yes"), "{body}");
    for (name, _, ok) in cases {
        let (status, _, body) = client.get("any", &format!("/{name}/")).await.unwrap();
        if ok {
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            assert!(body.contains("version=TLSv1_2"), "{name}: {body}");
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
        }
    }
    assert_eq!(server.handshakes.load(Ordering::Relaxed), 2);
}
