//! The PROXY protocol end to end: listeners from xDS with Envoy's listener filter (as
//! Envoy Gateway's ClientTrafficPolicy writes it, required and optional), a cluster whose
//! transport socket sends a v2 header (as its BackendTrafficPolicy writes it, plus TLVs),
//! and an upstream that reads what it is sent. Real clients write v1 and v2 headers; the
//! test checks the client the proxy takes from them (`x-forwarded-for`, RBAC `source_ip`
//! against `direct_remote_ip`), the header each upstream connection opens with (the
//! downstream's addresses, TLVs passed and added, one connection per downstream client),
//! connections closed for a missing, malformed or late header, the optional listener,
//! `continue_on_listener_filters_timeout`, a TCP proxy, and the metrics.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STRICT_PORT: u16 = 18621;
const OPTIONAL_PORT: u16 = 18622;
const TCP_PORT: u16 = 18623;
const LENIENT_PORT: u16 = 18624;
const PP: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
const UPSTREAM_PP: &str = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// What the upstream read at the start of one connection.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    /// The connection's number (in accept order).
    conn: usize,
    version: &'static str,
    /// `None`: a `LOCAL` header.
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: Vec<(u8, Vec<u8>)>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Reads one PROXY protocol header (v1 or v2) off `stream`: what it said and the bytes
/// read after it.
async fn read_header(stream: &mut TcpStream, conn: usize) -> (Seen, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection ended before its PROXY header");
        buf.extend_from_slice(&chunk[..n]);
        match ppp::HeaderResult::parse(&buf) {
            ppp::HeaderResult::V2(Ok(h)) => {
                let addresses = match h.addresses {
                    ppp::v2::Addresses::IPv4(a) => Some((
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                    )),
                    ppp::v2::Addresses::Unspecified => None,
                    other => panic!("{other:?}"),
                };
                assert_eq!(
                    addresses.is_none(),
                    h.command == ppp::v2::Command::Local,
                    "LOCAL has no addresses"
                );
                let tlvs = h
                    .tlvs()
                    .map(|t| {
                        let t = t.unwrap();
                        (t.kind, t.value.to_vec())
                    })
                    .collect();
                let rest = buf[h.len()..].to_vec();
                let seen = Seen {
                    conn,
                    version: "v2",
                    addresses,
                    tlvs,
                };
                return (seen, rest);
            }
            ppp::HeaderResult::V1(Ok(h)) => {
                let addresses = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => Some((
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                    )),
                    _ => None,
                };
                let rest = buf[h.header.len()..].to_vec();
                let seen = Seen {
                    conn,
                    version: "v1",
                    addresses,
                    tlvs: vec![],
                };
                return (seen, rest);
            }
            r if ppp::PartialResult::is_incomplete(&r) => {}
            r => panic!(
                "not a PROXY header: {r:?} ({:?})",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

/// The upstream: every connection must open with a PROXY header (logged); then HTTP/1.1
/// GETs (answered, keep-alive, with the `x-forwarded-for` they carried and the
/// connection's number), or, for anything else, one line saying which connection it is.
async fn upstream(log: Log) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let (seen, mut buf) = read_header(&mut stream, conn).await;
                log.lock().unwrap().push(seen);
                loop {
                    if !buf.is_empty() && !buf.starts_with(b"GET ") {
                        let line = format!("conn={conn}\n");
                        let _ = stream.write_all(line.as_bytes()).await;
                        return;
                    }
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let xff = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("x-forwarded-for")
                                    .then(|| v.trim().to_owned())
                            })
                            .unwrap_or_else(|| "-".into());
                        let body = format!("conn={conn} xff={xff}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// A captured HTTP listener on `port` with the PROXY protocol filter `pp` (the filter's
/// typed config, YAML flow fields) and `extra` listener fields; its connection manager
/// takes the client as the remote address (`use_remote_address`) and denies, by RBAC,
/// clients of 198.51.100.0/24 and connections whose physical peer is 127.0.0.2.
fn http_listener(
    name: &str,
    port: u16,
    pp: &str,
    extra: &str,
) -> xds_api::pb::envoy::config::listener::v3::Listener {
    yaml(&format!(
        r#"
name: {name}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
bind_to_port: false
{extra}
listener_filters:
- name: envoy.filters.listener.proxy_protocol
  typed_config: {{"@type": {PP}{pp}}}
- name: envoy.filters.listener.tls_inspector
  typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM}
      stat_prefix: {name}
      use_remote_address: true
      rds: {{route_config_name: r, config_source: {{ads: {{}}}}}}
      http_filters:
      - name: envoy.filters.http.rbac
        typed_config:
          "@type": {RBAC}
          rules:
            action: DENY
            policies:
              blocked-clients:
                permissions: [{{any: true}}]
                principals: [{{source_ip: {{address_prefix: 198.51.100.0, prefix_len: 24}}}}]
              blocked-balancer:
                permissions: [{{any: true}}]
                principals: [{{direct_remote_ip: {{address_prefix: 127.0.0.2, prefix_len: 32}}}}]
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    ))
}

fn tcp_listener() -> xds_api::pb::envoy::config::listener::v3::Listener {
    yaml(&format!(
        r#"
name: tcp
address: {{socket_address: {{address: 0.0.0.0, port_value: {TCP_PORT}}}}}
bind_to_port: false
listener_filters:
- name: envoy.filters.listener.proxy_protocol
  typed_config: {{"@type": {PP}}}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: web}}
"#
    ))
}

/// The cluster `web`: a v2 header on every connection, with a TLV of its own and the
/// downstream's TLVs of type 0xE0.
fn web() -> xds_api::pb::envoy::config::cluster::v3::Cluster {
    yaml(&format!(
        r#"
name: web
type: EDS
eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
connect_timeout: 1s
transport_socket:
  name: envoy.transport_sockets.upstream_proxy_protocol
  typed_config:
    "@type": {UPSTREAM_PP}
    config:
      version: V2
      pass_through_tlvs: {{match_type: INCLUDE, tlv_type: [224]}}
      added_tlvs: [{{type: 234, value: bXllbGlu}}]
    transport_socket:
      name: envoy.transport_sockets.raw_buffer
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}
"#
    ))
}

fn v1(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

fn v2(src: &str, dst: &str, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut b = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (s, d),
    );
    for (k, v) in tlvs {
        b = b.write_tlv(*k, v).unwrap();
    }
    b.build().unwrap()
}

/// A connection to the captured `port` from `from` that opens with `header`, then speaks
/// HTTP/1.1.
async fn client_from(node: &Node, from: &str, port: u16, header: &[u8]) -> Client {
    let mut stream = node
        .connect_from(from.parse().unwrap(), vip(port))
        .await
        .unwrap();
    stream.write_all(header).await.unwrap();
    Client::over(stream).await
}

async fn client(node: &Node, port: u16, header: &[u8]) -> Client {
    client_from(node, "127.0.0.1", port, header).await
}

/// Whether the proxy closes `stream` (no answer) within `within`.
async fn closed(mut stream: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => false,
    }
}

fn last(log: &Log) -> Seen {
    log.lock()
        .unwrap()
        .last()
        .cloned()
        .expect("no upstream connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_a_proxy_protocol_header_names_is_served_and_passed_on() {
    let log: Log = Arc::default();
    let up = upstream(log.clone()).await;
    let listeners = vec![
        http_listener(
            "strict",
            STRICT_PORT,
            ", pass_through_tlvs: {}",
            "listener_filters_timeout: 0.3s",
        ),
        http_listener(
            "optional",
            OPTIONAL_PORT,
            ", allow_requests_without_proxy_protocol: true, disallowed_versions: [V1], stat_prefix: opt",
            "",
        ),
        tcp_listener(),
        http_listener(
            "lenient",
            LENIENT_PORT,
            "",
            "listener_filters_timeout: 0.3s\ncontinue_on_listener_filters_timeout: true",
        ),
    ];
    let (_cp, node) = serving_with(listeners, route_to("r", "web"), web(), up).await;
    let strict = vip(STRICT_PORT);

    // v1: the client is the header's; the upstream connection opens with a v2 header
    // naming it and the address it connected to, with the cluster's own TLV.
    let mut c = client(
        &node,
        STRICT_PORT,
        &v1("203.0.113.7:41000", "10.9.8.7:8443"),
    )
    .await;
    let (status, _, body) = c.get("web", "/").await.unwrap();
    assert_eq!(status, 200);
    let first = last(&log);
    assert!(body.ends_with("xff=203.0.113.7"), "{body}");
    assert_eq!(
        first,
        Seen {
            conn: first.conn,
            version: "v2",
            addresses: Some((
                "203.0.113.7:41000".parse().unwrap(),
                "10.9.8.7:8443".parse().unwrap()
            )),
            tlvs: vec![(234, b"myelin".to_vec())],
        }
    );
    // The same client's next request: the same upstream connection.
    let (_, _, body) = c.get("web", "/").await.unwrap();
    assert!(body.starts_with(&format!("conn={} ", first.conn)), "{body}");

    // v2 with TLVs: another client, so another upstream connection; the listener passes
    // every TLV on, the cluster only 0xE0's, after its own.
    let mut c2 = client(
        &node,
        STRICT_PORT,
        &v2(
            "192.0.2.44:5555",
            "10.9.8.7:8443",
            &[(0xE0, b"keep"), (0xE1, b"drop")],
        ),
    )
    .await;
    let (status, _, body) = c2.get("web", "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.ends_with("xff=192.0.2.44"), "{body}");
    let second = last(&log);
    assert_ne!(second.conn, first.conn);
    assert_eq!(
        second.addresses,
        Some((
            "192.0.2.44:5555".parse().unwrap(),
            "10.9.8.7:8443".parse().unwrap()
        ))
    );
    assert_eq!(
        second.tlvs,
        vec![(234, b"myelin".to_vec()), (0xE0, b"keep".to_vec())]
    );

    // RBAC: `source_ip` is the header's client; `direct_remote_ip` the physical peer.
    let mut denied = client(
        &node,
        STRICT_PORT,
        &v1("198.51.100.9:1000", "10.9.8.7:8443"),
    )
    .await;
    assert_eq!(denied.get("web", "/").await.unwrap().0, 403);
    let mut balancer = client_from(
        &node,
        "127.0.0.2",
        STRICT_PORT,
        &v1("203.0.113.8:1000", "10.9.8.7:8443"),
    )
    .await;
    assert_eq!(balancer.get("web", "/").await.unwrap().0, 403);

    // No header, a malformed one, one that stops halfway: closed without an answer (the
    // last after the listener's 0.3 s).
    let mut plain = node.connect(strict).await;
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    assert!(closed(plain, Duration::from_secs(5)).await, "no header");
    let mut bad = node.connect(strict).await;
    bad.write_all(b"PROXY TCP4 203.0.113.7 10.9.8.7 41000\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(closed(bad, Duration::from_secs(5)).await, "malformed");
    let mut stalled = node.connect(strict).await;
    stalled.write_all(b"PROXY TCP4 203.0.113.7").await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed(stalled, Duration::from_secs(5)).await, "late");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // Optional: plain HTTP is served, the upstream header naming the connection itself;
    // a v2 header is still read.
    let optional = vip(OPTIONAL_PORT);
    let mut p = Client::over(node.connect(optional).await).await;
    let (status, _, body) = p.get("web", "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.ends_with("xff=127.0.0.1"), "{body}");
    let seen = last(&log);
    assert_eq!(seen.addresses.unwrap().0.ip().to_string(), "127.0.0.1");
    assert_eq!(seen.addresses.unwrap().1, optional);
    assert_eq!(seen.tlvs, vec![(234, b"myelin".to_vec())]);
    let mut o = client(
        &node,
        OPTIONAL_PORT,
        &v2("192.0.2.9:9", "10.9.8.7:80", &[(0xE0, b"x")]),
    )
    .await;
    let (_, _, body) = o.get("web", "/").await.unwrap();
    assert!(body.ends_with("xff=192.0.2.9"), "{body}");
    // This listener keeps no TLVs (no `pass_through_tlvs`): only the cluster's own.
    assert_eq!(last(&log).tlvs, vec![(234, b"myelin".to_vec())]);

    // A TCP proxy: the upstream connection opens with the header naming the client.
    let mut t = node.connect(vip(TCP_PORT)).await;
    t.write_all(&v1("203.0.113.20:4000", "10.9.8.7:5432"))
        .await
        .unwrap();
    t.write_all(b"PING\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut line))
        .await
        .unwrap()
        .unwrap();
    let seen = last(&log);
    assert_eq!(line, format!("conn={}\n", seen.conn));
    assert_eq!(
        seen.addresses,
        Some((
            "203.0.113.20:4000".parse().unwrap(),
            "10.9.8.7:5432".parse().unwrap()
        ))
    );

    // continue_on_listener_filters_timeout: a client silent past the timeout is served
    // as it is once it speaks.
    let mut late = node.connect(vip(LENIENT_PORT)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    late.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), late.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("xff=127.0.0.1"), "{text}");

    // Counted per listener filter, version and outcome.
    let m = |labels: &str| node.metric(&format!("myelin_proxy_proxy_protocol_total{{{labels}}}"));
    assert_eq!(m(r#"stat_prefix="",version="v1",outcome="found""#), 4.0);
    assert_eq!(m(r#"stat_prefix="",version="v2",outcome="found""#), 1.0);
    assert_eq!(m(r#"stat_prefix="",version="none",outcome="invalid""#), 1.0);
    assert_eq!(m(r#"stat_prefix="",version="v1",outcome="invalid""#), 1.0);
    assert_eq!(m(r#"stat_prefix="",version="none",outcome="timeout""#), 2.0);
    assert_eq!(
        m(r#"stat_prefix="opt",version="none",outcome="not_found_allowed""#),
        1.0
    );
    assert_eq!(m(r#"stat_prefix="opt",version="v2",outcome="found""#), 1.0);
}
