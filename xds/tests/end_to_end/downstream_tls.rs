//! TLS terminated on listeners' filter chains, end to end: a captured listener whose
//! chains are picked by the ClientHello's SNI (Envoy's `tls_inspector`), each with its own
//! `DownstreamTlsContext` (inline and SDS certificates, ALPN, client certificates), in
//! front of an HTTP connection manager or a TCP proxy. The clients are real rustls
//! clients that verify the proxy's certificate against the test CA and the name they
//! asked for, speaking HTTP/1.1 or HTTP/2 as ALPN decides.

use std::sync::Arc;

use crate::support::tls::{
    chain as pem_chain, inline, key as pem_key, provider, server_config, tls_upstream, TestCa,
};
use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

/// A TLS client connection through the node to `vip(port)`: SNI `sni` (verified against
/// `ca`), ALPN `alpn`, and a client certificate when given.
async fn tls_connect(
    node: &Node,
    port: u16,
    ca: &TestCa,
    sni: &str,
    alpn: &[&str],
    client: Option<&(String, String)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = node.connect(vip(port)).await;
    tls_over(tcp, ca, sni, alpn, client).await
}

/// The client side of TLS over `tcp` (see [`tls_connect`]).
async fn tls_over(
    tcp: TcpStream,
    ca: &TestCa,
    sni: &str,
    alpn: &[&str],
    client: Option<&(String, String)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_chain(&ca.pem) {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(pem_chain(cert), pem_key(key))
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
}

/// One GET over `tls`, HTTP/2 when ALPN chose `h2`: status, `x-server`, and the protocol.
async fn get(
    tls: TlsStream<TcpStream>,
    host: &str,
) -> anyhow::Result<(StatusCode, String, &'static str)> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), io)
                .await?;
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}/x"))
            .body(Empty::new())
            .unwrap();
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await?;
        tokio::spawn(conn);
        let req = Request::get("/x")
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        sender.send_request(req).await?
    };
    let status = resp.status();
    let server = resp
        .headers()
        .get("x-server")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    resp.into_body().collect().await?;
    Ok((status, server, if h2 { "h2" } else { "http/1.1" }))
}

const TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// A filter chain for `names` terminating TLS with the context keys `tls` (YAML at the
/// context's indentation), serving `filter` (YAML of one network filter).
fn chain(names: &[&str], tls: &str, filter: &str) -> String {
    let tls: String = tls.lines().map(|l| format!("      {l}\n")).collect();
    let filter: String = filter.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "- filter_chain_match: {{server_names: {names:?}}}\n  filters:\n{filter}  transport_socket:\n    name: envoy.transport_sockets.tls\n    typed_config:\n      \"@type\": {TLS_TYPE}\n{tls}"
    )
}

fn listener(name: &str, port: u16, chains: &[String]) -> Listener {
    yaml(&format!(
        r#"
name: {name}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
bind_to_port: false
listener_filters:
- name: envoy.filters.listener.tls_inspector
  typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
filter_chains:
{}"#,
        chains.concat()
    ))
}

fn hcm() -> String {
    format!(
        r#"- name: envoy.filters.network.http_connection_manager
  typed_config:
    "@type": {HCM_TYPE}
    stat_prefix: https
    rds: {{route_config_name: r, config_source: {{ads: {{}}}}}}
    http_filters:
    - name: envoy.filters.http.router
      typed_config: {{"@type": {ROUTER_TYPE}}}
"#
    )
}

#[tokio::test]
async fn listeners_terminate_tls_as_envoy_does() {
    let ca = TestCa::new("test CA");
    let clients_ca = TestCa::new("clients CA");
    let stranger_ca = TestCa::new("stranger CA");
    let api = ca.leaf(
        &["api.example.com", "mtls.example.com"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let shop = ca.leaf(&["*.shop.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let client = clients_ca.leaf(&["client.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let other_client = clients_ca.leaf(
        &["intruder.example.com"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger = stranger_ca.leaf(&["client.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let web = http_upstream("web").await;
    let (echo, _echo_task) = tcp_upstream("echo").await;

    let api_cert = format!(
        "tls_certificates:\n- certificate_chain: {}\n  private_key: {}\n",
        inline(&api.0),
        inline(&api.1)
    );
    let https = listener(
        "https",
        18443,
        &[
            chain(
                &["api.example.com"],
                &format!("common_tls_context:\n  alpn_protocols: [h2, http/1.1]\n{}", indent(&api_cert)),
                &hcm(),
            ),
            // The certificate from SDS; no ALPN: the decrypted bytes tell HTTP/1 from HTTP/2.
            chain(
                &["*.shop.example.com"],
                "common_tls_context:\n  tls_certificate_sds_secret_configs: [{name: shop-cert, sds_config: {ads: {}}}]\n",
                &hcm(),
            ),
            chain(
                &["mtls.example.com"],
                &format!(
                    "require_client_certificate: true\ncommon_tls_context:\n{}  validation_context:\n    trusted_ca: {}\n    match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: client.example.com}}}}]\n",
                    indent(&api_cert),
                    inline(&clients_ca.pem)
                ),
                &hcm(),
            ),
            chain(
                &["broken.example.com"],
                "common_tls_context:\n  tls_certificate_sds_secret_configs: [{name: never-sent, sds_config: {ads: {}}}]\n",
                &hcm(),
            ),
        ],
    );
    let tcp = listener(
        "tls-tcp",
        18444,
        &[chain(
            &[],
            &format!("common_tls_context:\n{}", indent(&api_cert)),
            &format!(
                "- name: envoy.filters.network.tcp_proxy\n  typed_config: {{\"@type\": {TCP_TYPE}, stat_prefix: t, cluster: echo}}\n"
            ),
        )],
    );
    let shop_secret: Secret = yaml(&format!(
        "name: shop-cert\ntls_certificate:\n  certificate_chain: {}\n  private_key: {}\n",
        inline(&shop.0),
        inline(&shop.1)
    ));
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "https", &https);
        set(b, "tls-tcp", &tcp);
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[web.addr]));
        set(b, "echo", &eds_cluster("echo"));
        set(b, "echo", &endpoints("echo", &[echo]));
        set(b, "shop-cert", &shop_secret);
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(
        type_url::LISTENER,
        &["https", "tls-tcp"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web", "echo"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(
        type_url::SECRET,
        &["shop-cert"],
        &cp.version(type_url::SECRET),
    )
    .await;

    // ALPN picks the protocol; the certificate is the one for the SNI (the client checks
    // the name against the CA's certificate).
    for (alpn, want) in [
        (&["h2", "http/1.1"][..], "h2"),
        (&["http/1.1"][..], "http/1.1"),
    ] {
        let tls = tls_connect(&node, 18443, &ca, "api.example.com", alpn, None)
            .await
            .unwrap();
        let (status, server, proto) = get(tls, "api.example.com").await.unwrap();
        assert_eq!(
            (status, server.as_str(), proto),
            (StatusCode::OK, "web", want)
        );
    }
    let tls = tls_connect(&node, 18443, &ca, "orders.shop.example.com", &[], None)
        .await
        .expect("the SDS certificate for *.shop.example.com");
    let (status, _, proto) = get(tls, "orders.shop.example.com").await.unwrap();
    assert_eq!((status, proto), (StatusCode::OK, "http/1.1"));

    // Client certificates: from the clients' CA with the right name, else refused.
    let tls = tls_connect(&node, 18443, &ca, "mtls.example.com", &[], Some(&client))
        .await
        .unwrap();
    assert_eq!(
        get(tls, "mtls.example.com").await.unwrap().0,
        StatusCode::OK
    );
    let refused_before =
        node.metric("myelin_proxy_downstream_tls_handshake_errors_total{reason=\"failed\"}");
    for cert in [None, Some(&other_client), Some(&stranger)] {
        // TLS 1.3: the client's side of the handshake completes; the refusal arrives as an
        // alert on the first read.
        let refused = match tls_connect(&node, 18443, &ca, "mtls.example.com", &[], cert).await {
            Err(_) => true,
            Ok(tls) => get(tls, "mtls.example.com").await.is_err(),
        };
        assert!(refused, "a client certificate {cert:?} was accepted");
    }
    eventually("three refused handshakes counted", || {
        node.metric("myelin_proxy_downstream_tls_handshake_errors_total{reason=\"failed\"}")
            == refused_before + 3.0
    })
    .await;

    // No chain for the SNI: closed before any handshake.
    assert!(
        tls_connect(&node, 18443, &ca, "other.example.com", &[], None)
            .await
            .is_err()
    );
    assert_eq!(
        node.metric("myelin_proxy_config_misses_total{reason=\"no_filter_chain\"}"),
        1.0
    );
    // A chain whose certificate has not arrived: closed, the reason counted.
    assert!(
        tls_connect(&node, 18443, &ca, "broken.example.com", &[], None)
            .await
            .is_err()
    );
    assert_eq!(
        node.metric("myelin_proxy_config_misses_total{reason=\"downstream_tls_unavailable\"}"),
        1.0
    );

    // A TCP proxy behind terminated TLS: the upstream gets the plain bytes.
    let mut tls = tls_connect(&node, 18444, &ca, "api.example.com", &[], None)
        .await
        .unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"echo:hello");
}

/// Indents YAML lines by two spaces.
fn indent(yaml: &str) -> String {
    yaml.lines().map(|l| format!("  {l}\n")).collect()
}

/// Chains matched by SNI without TLS of their own pass the client's TLS through untouched
/// (Envoy Gateway's TLSRoute passthrough, Istio's `PASSTHROUGH` gateways): the backend
/// answers the handshake and ALPN. And a listener that binds its own port (a gateway, not
/// captured traffic) terminates TLS the same way.
#[tokio::test]
async fn sni_passthrough_and_bound_listeners() {
    let ca = TestCa::new("test CA");
    let api = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let backend_cert = ca.leaf(&["db.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let backend = tls_upstream(server_config(
        &backend_cert,
        &[&rustls::version::TLS13],
        None,
    ))
    .await;
    let web = http_upstream("web").await;
    let api_tls = format!(
        "common_tls_context:\n  alpn_protocols: [h2, http/1.1]\n  tls_certificates:\n  - certificate_chain: {}\n    private_key: {}\n",
        inline(&api.0),
        inline(&api.1)
    );
    let passthrough = format!(
        "- filter_chain_match: {{server_names: [db.example.com]}}\n  filters:\n  - name: envoy.filters.network.tcp_proxy\n    typed_config: {{\"@type\": {TCP_TYPE}, stat_prefix: db, cluster: db}}\n"
    );
    let captured = listener(
        "tls",
        18443,
        &[chain(&["api.example.com"], &api_tls, &hcm()), passthrough],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bound = listener("gateway", port, &[chain(&[], &api_tls, &hcm())]);
    bound.bind_to_port = Some(true.into());
    if let Some(a) = bound.address.as_mut() {
        *a = yaml::<xds_api::pb::envoy::config::core::v3::Address>(&format!(
            "socket_address: {{address: 127.0.0.1, port_value: {port}}}"
        ));
    }
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "tls", &captured);
        set(b, "gateway", &bound);
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[web.addr]));
        set(b, "db", &eds_cluster("db"));
        set(b, "db", &endpoints("db", &[backend.addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(
        type_url::LISTENER,
        &["tls", "gateway"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web", "db"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    // Passthrough: the backend's certificate (the client checks it names db.example.com)
    // and the backend's ALPN and answer.
    let tls = tls_connect(
        &node,
        18443,
        &ca,
        "db.example.com",
        &["h2", "http/1.1"],
        None,
    )
    .await
    .expect("the backend's own handshake");
    let (status, server, proto) = get(tls, "db.example.com").await.unwrap();
    assert_eq!(
        (status, server.as_str(), proto),
        (StatusCode::OK, "tls", "h2")
    );
    assert_eq!(
        backend
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The same listener terminates for its other name.
    let tls = tls_connect(&node, 18443, &ca, "api.example.com", &["http/1.1"], None)
        .await
        .unwrap();
    let (status, server, _) = get(tls, "api.example.com").await.unwrap();
    assert_eq!((status, server.as_str()), (StatusCode::OK, "web"));

    // The bound listener: a plain TCP connection to its port (bound by the agent once the
    // listener arrives).
    let mut tcp = None;
    for _ in 0..100 {
        if let Ok(t) = TcpStream::connect(("127.0.0.1", port)).await {
            tcp = Some(t);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let tls = tls_over(
        tcp.expect("the listener's port"),
        &ca,
        "api.example.com",
        &["h2"],
        None,
    )
    .await
    .unwrap();
    let (status, server, proto) = get(tls, "api.example.com").await.unwrap();
    assert_eq!(
        (status, server.as_str(), proto),
        (StatusCode::OK, "web", "h2")
    );
}

/// A client of its own: TLS 1.2 and 1.3 with these TLS 1.2 suites and groups (`None`:
/// rustls' defaults).
async fn tls_client_with(
    node: &Node,
    port: u16,
    ca: &TestCa,
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
    groups: Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(s) = suites {
        p.cipher_suites = s;
    }
    if let Some(g) = groups {
        p.kx_groups = g;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_chain(&ca.pem).remove(0)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(p))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = node.connect(vip(port)).await;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("api.example.com").unwrap(), tcp)
        .await
}

/// A listener's `tls_params`: TLS 1.2 with only the suites and groups listed (in the
/// server's order), and handshakes that cannot agree on them fail.
#[tokio::test]
async fn listener_tls_params_narrow_suites_and_groups() {
    use rustls::crypto::ring::{cipher_suite as cs, kx_group as kx};
    let ca = TestCa::new("test CA");
    let api = ca.leaf(&["api.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    let web = http_upstream("web").await;
    let tls = format!(
        "common_tls_context:\n  tls_params:\n    tls_maximum_protocol_version: TLSv1_2\n    cipher_suites: [AES128-SHA, ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-ECDSA-AES256-GCM-SHA384]\n    ecdh_curves: [P-384, P-521]\n    signature_algorithms: [ecdsa_secp256r1_sha256]\n  tls_certificates:\n  - certificate_chain: {}\n    private_key: {}\n",
        inline(&api.0),
        inline(&api.1)
    );
    let https = listener("https", 18445, &[chain(&["api.example.com"], &tls, &hcm())]);
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "https", &https);
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[web.addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["https"][..]),
        (type_url::ENDPOINT, &["web"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }

    // rustls' defaults: the server's first listed suite it speaks, its only group it speaks.
    let tls = tls_client_with(&node, 18445, &ca, None, None)
        .await
        .unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        conn.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
    assert_eq!(
        conn.negotiated_key_exchange_group().unwrap().name(),
        rustls::NamedGroup::secp384r1
    );
    let (status, server, _) = get(tls, "api.example.com").await.unwrap();
    assert_eq!((status, server.as_str()), (StatusCode::OK, "web"));
    // The other listed suite, when the client has only that one.
    let tls = tls_client_with(
        &node,
        18445,
        &ca,
        Some(vec![cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    // A suite or a group that is not listed: no handshake.
    assert!(tls_client_with(
        &node,
        18445,
        &ca,
        Some(vec![cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]),
        None
    )
    .await
    .is_err());
    assert!(tls_client_with(
        &node,
        18445,
        &ca,
        None,
        Some(vec![kx::X25519, kx::SECP256R1])
    )
    .await
    .is_err());
    assert_eq!(
        node.metric("myelin_proxy_downstream_tls_handshake_errors_total{reason=\"failed\"}"),
        2.0
    );
}
