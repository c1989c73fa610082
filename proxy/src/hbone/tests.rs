//! HBONE client and server on loopback: tunnels carry bytes both ways, the destination
//! reports the source principal (per request when the tunnel carries HTTP), refusals
//! and client failures are answered and counted by reason, trace context reaches the
//! server, and concurrent tunnels share pooled connections.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::model::Workload;
use crate::tls::ca::Ca;

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);
/// The destination pod's address (any 127/8 address is on loopback).
const POD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

async fn echo_pod() -> SocketAddr {
    let l = TcpListener::bind((POD_IP, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

struct Bed {
    ca: Ca,
    client: Client,
    source_ids: Arc<Identities>,
    key: PoolKey,
    pod: SocketAddr,
    /// The server's counters.
    metrics: Arc<HboneMetrics>,
    /// The client's (its failures).
    client_metrics: Arc<HboneMetrics>,
    registry: Registry,
    _signal: drain::Signal,
}

async fn bed(policy: InboundPolicy, max_streams: usize) -> Bed {
    bed_with(policy, max_streams, ProxyConfig::default().sniff_timeout).await
}

async fn bed_with(policy: InboundPolicy, max_streams: usize, sniff_timeout: Duration) -> Bed {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db) = (id("shop", "web"), id("shop", "db"));
    let source_ids = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    source_ids.insert(&ca.issue(&web, HOUR).unwrap()).unwrap();
    let dest_ids = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    dest_ids.insert(&ca.issue(&db, HOUR).unwrap()).unwrap();
    let pod = echo_pod().await;
    let mut config = ProxyConfig::new(vec![Workload {
        name: "db".into(),
        namespace: "shop".into(),
        service_account: "db".into(),
        ip: POD_IP,
    }])
    .unwrap()
    .with_inbound_policy(policy);
    config.sniff_timeout = sniff_timeout;
    let mut registry = Registry::default();
    let metrics = Arc::new(HboneMetrics::new(&mut registry));
    let golden = Arc::new(GoldenMetrics::new(
        &mut registry,
        crate::golden::Naming::Myelin,
        Default::default(),
    ));
    let server = Server::new(dest_ids, Arc::new(config), metrics.clone(), golden);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = listener.local_addr().unwrap();
    let (signal, watch) = drain::channel();
    tokio::spawn(async move { server.serve(listener, watch).await });
    let client_metrics = Arc::new(HboneMetrics::new(&mut Registry::default()));
    let client = Client::new(
        source_ids.clone(),
        ClientConfig {
            max_streams,
            ..ClientConfig::default()
        },
    )
    .with_metrics(client_metrics.clone());
    Bed {
        ca,
        client,
        source_ids,
        key: PoolKey {
            source: web,
            node,
            expected: db,
        },
        pod,
        metrics,
        client_metrics,
        registry,
        _signal: signal,
    }
}

async fn round_trip(t: &mut Tunnel, msg: &[u8]) -> Vec<u8> {
    t.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut buf))
        .await
        .expect("echo within 5 s")
        .unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_carries_bytes_and_the_destination_knows_the_source() {
    let b = bed(InboundPolicy::default(), 100).await;
    let mut headers = HeaderMap::new();
    headers.insert("baggage", baggage("shop", "web").unwrap());
    let mut t = b.client.connect(&b.key, b.pod, headers).await.unwrap();
    assert_eq!(
        round_trip(&mut t, b"hello over hbone").await,
        b"hello over hbone"
    );
    drop(t);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = crate::metrics::prometheus_text(&b.registry);
    let opened = text
        .lines()
        .find(|l| l.starts_with("myelin_tcp_connections_opened_total{"))
        .unwrap_or_else(|| panic!("no destination TCP series in\n{text}"));
    for label in [
        "reporter=\"destination\"",
        "source_workload=\"web\"",
        "source_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
        "destination_workload=\"db\"",
        "destination_principal=\"spiffe://cluster.local/ns/shop/sa/db\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(opened.contains(label), "{label} missing in {opened}");
    }
    assert!(opened.ends_with(" 1"), "{opened}");
    assert_eq!(b.metrics.tunnels.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_answered_and_counted() {
    let denied_source = id("shop", "web");
    let mut policy = InboundPolicy::default();
    // Only `admin` may reach shop/db: web is refused.
    policy
        .allow
        .insert("shop/db".into(), vec![id("shop", "admin")]);
    let b = bed(policy, 100).await;
    let status = |r: Result<Tunnel, TunnelError>| match r {
        Err(TunnelError::Refused { status, .. }) => status.as_u16(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(b.key.source, denied_source);
    let r = b.client.connect(&b.key, b.pod, HeaderMap::new()).await;
    assert_eq!(status(r), 403);
    assert_eq!(b.metrics.refused_count("denied"), 1);

    // Not a pod of this node.
    let elsewhere: SocketAddr = "127.0.0.3:80".parse().unwrap();
    let r = b.client.connect(&b.key, elsewhere, HeaderMap::new()).await;
    assert_eq!(status(r), 404);
    assert_eq!(b.metrics.refused_count("unknown_destination"), 1);

    // An expired client certificate: refused at the handshake, counted as such.
    let now = SystemTime::now();
    b.source_ids
        .insert(
            &b.ca
                .issue_between(&b.key.source, now - 2 * HOUR, now - HOUR)
                .unwrap(),
        )
        .unwrap();
    let fresh = Client::new(b.source_ids.clone(), ClientConfig::default());
    let r = fresh.connect(&b.key, b.pod, HeaderMap::new()).await;
    assert!(r.is_err(), "an expired certificate was accepted");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.metrics.refused_count("expired"), 1);

    // The node is not the identity expected: the client refuses it.
    let wrong = PoolKey {
        expected: id("shop", "payments"),
        ..b.key.clone()
    };
    b.source_ids
        .insert(&b.ca.issue(&b.key.source, HOUR).unwrap())
        .unwrap();
    match b.client.connect(&wrong, b.pod, HeaderMap::new()).await {
        // The server has no certificate for that SNI: the handshake fails.
        Err(e @ TunnelError::Tls { .. }) => assert_eq!(e.reason(), "tls"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert_eq!(b.client_metrics.tunnel_failure_count("refused"), 2);
    assert_eq!(b.client_metrics.tunnel_failure_count("tls"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_share_pooled_connections() {
    let b = Arc::new(bed(InboundPolicy::default(), 10).await);
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = b
                .client
                .connect(&b.key, b.pod, HeaderMap::new())
                .await
                .unwrap();
            let msg = format!("tunnel {i}");
            let got = round_trip(&mut t, msg.as_bytes()).await;
            assert_eq!(got, msg.as_bytes());
            // Hold every tunnel until all are open, so the cap is what bounds sharing.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conns = b.client.connections();
    assert!(
        (10..=12).contains(&conns),
        "100 tunnels at 10 streams per connection used {conns} connections"
    );
    assert_eq!(b.metrics.handshakes.get() as usize, conns);
    assert_eq!(b.metrics.tunnels.get(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_source_certificate_is_used_by_the_next_tunnel() {
    let b = bed(InboundPolicy::default(), 100).await;
    let mut old = b
        .client
        .connect(&b.key, b.pod, HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut old, b"before").await, b"before");
    assert_eq!(b.metrics.handshakes.get(), 1);
    // Rotation: a new certificate for the source. New tunnels open a new connection that
    // presents it; the tunnel already open keeps working on the old one.
    b.source_ids
        .insert(&b.ca.issue(&b.key.source, HOUR).unwrap())
        .unwrap();
    let mut new = b
        .client
        .connect(&b.key, b.pod, HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut new, b"after").await, b"after");
    assert_eq!(
        b.metrics.handshakes.get(),
        2,
        "a new handshake with the new certificate"
    );
    assert_eq!(round_trip(&mut old, b"still").await, b"still");
}

/// A node that presents a certificate of our CA for another identity than the one the
/// client expects there: the client refuses it, counted as `wrong_identity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_presenting_the_wrong_identity_is_refused_and_counted() {
    let b = bed(InboundPolicy::default(), 100).await;
    let impostor = b.ca.issue(&id("shop", "payments"), HOUR).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::store::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![impostor.cert.clone()], impostor.private_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = acceptor.accept(s).await;
        }
    });
    let key = PoolKey {
        node,
        ..b.key.clone()
    };
    match b.client.connect(&key, b.pod, HeaderMap::new()).await {
        Err(e @ TunnelError::Tls { .. }) => assert_eq!(e.reason(), "wrong_identity", "{e}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert_eq!(b.client_metrics.tunnel_failure_count("wrong_identity"), 1);

    // Nothing listening on the node's port.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let key = PoolKey {
        node: closed.local_addr().unwrap(),
        ..b.key.clone()
    };
    drop(closed);
    let e = b
        .client
        .connect(&key, b.pod, HeaderMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "connect", "{e}");
    // A source identity this node has no certificate for.
    let key = PoolKey {
        source: id("shop", "nobody"),
        ..b.key.clone()
    };
    let e = b
        .client
        .connect(&key, b.pod, HeaderMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "no_identity", "{e}");
    let text = crate::metrics::prometheus_text(&{
        let mut r = Registry::default();
        let m = HboneMetrics::new(&mut r);
        m.tunnel_failed("wrong_identity");
        r
    });
    assert!(
        text.contains("hbone_tunnel_failures_total{reason=\"wrong_identity\"} 1"),
        "{text}"
    );
    for reason in ["connect", "no_identity"] {
        assert_eq!(b.client_metrics.tunnel_failure_count(reason), 1, "{reason}");
    }
}

#[test]
fn traceparent_table() {
    let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tp = TraceParent::parse(ok).unwrap();
    assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
    assert_eq!(tp.flags, 1);
    assert_eq!(tp.to_string(), ok);
    let cases: &[(&str, bool)] = &[
        (ok, true),
        // A later version may append fields.
        (
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            true,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            false,
        ),
        (
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            false,
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            false,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            false,
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            false,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            false,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            false,
        ),
        (
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            false,
        ),
        ("", false),
        ("garbage", false),
    ];
    for (value, valid) in cases {
        assert_eq!(TraceParent::parse(value).is_some(), *valid, "{value:?}");
    }
    let fresh = TraceParent::new();
    assert_eq!(TraceParent::parse(&fresh.to_string()), Some(fresh));
    assert_ne!(fresh, TraceParent::new(), "a new trace per tunnel");
}

#[test]
fn the_source_namespace_comes_from_the_certificate() {
    let web = id("shop", "web");
    let headers = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert("baggage", HeaderValue::from_str(v).unwrap());
        h
    };
    let cases: &[(&str, &str)] = &[
        ("k8s.namespace.name=shop,k8s.workload.name=web", "web"),
        ("k8s.workload.name=web;prop=1, other=x", "web"),
        // Another namespace than the certificate's: the name is not believed.
        ("k8s.namespace.name=bank,k8s.workload.name=vault", "unknown"),
        ("nothing=here", "unknown"),
    ];
    for (baggage, workload) in cases {
        let s = tunnel_source(&headers(baggage), &web);
        assert_eq!(&*s.workload, *workload, "{baggage}");
        assert_eq!(&*s.namespace, "shop", "{baggage}");
        assert_eq!(&*s.principal, "spiffe://cluster.local/ns/shop/sa/web");
    }
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The server logs each tunnel's trace id with its source; a malformed `traceparent` is
/// ignored and the tunnel works. One thread, so the scoped subscriber sees every task.
#[tokio::test(flavor = "current_thread")]
async fn the_server_sees_the_trace_context_and_ignores_a_malformed_one() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let b = bed(InboundPolicy::default(), 100).await;
    let lines = |needle: &str| -> Vec<String> {
        String::from_utf8_lossy(&lock(&captured.0))
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    };

    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = HeaderMap::new();
    headers.insert("baggage", baggage("shop", "web").unwrap());
    headers.insert(TRACEPARENT, HeaderValue::from_static(given));
    let mut t = b.client.connect(&b.key, b.pod, headers).await.unwrap();
    assert_eq!(round_trip(&mut t, b"traced").await, b"traced");
    let accepted = lines("HBONE tunnel accepted");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    for part in [
        "trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
        "source_workload=web",
        "source_namespace=shop",
        "source_principal=spiffe://cluster.local/ns/shop/sa/web",
    ] {
        assert!(
            accepted[0].contains(part),
            "{part} missing in {}",
            accepted[0]
        );
    }

    // No traceparent given: the client starts a trace of its own.
    let mut t = b
        .client
        .connect(&b.key, b.pod, HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut t, b"fresh").await, b"fresh");
    let accepted = lines("HBONE tunnel accepted");
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    assert!(!accepted[1].contains("trace_id=-"), "{}", accepted[1]);
    assert!(!accepted[1].contains(&given[3..35]), "{}", accepted[1]);

    // Malformed: logged, ignored, and the tunnel carries bytes all the same.
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, HeaderValue::from_static("00-not-a-trace-01"));
    let mut t = b.client.connect(&b.key, b.pod, headers).await.unwrap();
    assert_eq!(round_trip(&mut t, b"untraced").await, b"untraced");
    assert_eq!(lines("malformed traceparent ignored").len(), 1);
    let accepted = lines("HBONE tunnel accepted");
    assert!(accepted[2].contains("trace_id=-"), "{}", accepted[2]);
    assert_eq!(b.metrics.tunnel_count(), 3);
}

/// The pod's HTTP servers: HTTP/1.1 and h2c (prior knowledge). `/status/N` answers N
/// with a 6-byte body; `/grpc` a gRPC response whose trailers say status 5.
async fn http_pods() -> (SocketAddr, SocketAddr) {
    use http_body_util::{BodyExt, Full};
    async fn answer(
        req: Request<Incoming>,
    ) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
        let path = req.uri().path().to_owned();
        // Read the request to its end.
        let _ = req.into_body().collect().await;
        if path == "/grpc" {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("5"));
            let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
                .with_trailers(async move { Some(Ok(trailers)) });
            let mut resp = Response::new(body.boxed());
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            return Ok(resp);
        }
        let code = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"teapot")).boxed());
        *resp.status_mut() = StatusCode::from_u16(code).unwrap();
        Ok(resp)
    }
    let h1 = TcpListener::bind((POD_IP, 0)).await.unwrap();
    let h2 = TcpListener::bind((POD_IP, 0)).await.unwrap();
    let (h1_addr, h2_addr) = (h1.local_addr().unwrap(), h2.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((s, _)) = h1.accept().await {
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(answer)),
            );
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = h2.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(answer)),
            );
        }
    });
    (h1_addr, h2_addr)
}

/// The first sample line of `name` with all of `labels`.
fn sample<'a>(text: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
}

/// HTTP/1.1 and h2c through tunnels: the destination records each request (reporter
/// `destination`, the source principal from the certificate, `mutual_tls`, codes and
/// gRPC status), and no opaque TCP connection for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_in_a_tunnel_is_recorded_per_request_at_the_destination() {
    use http_body_util::{BodyExt, Full};
    let b = bed(InboundPolicy::default(), 100).await;
    let (h1_pod, h2_pod) = http_pods().await;
    let mut headers = HeaderMap::new();
    headers.insert("baggage", baggage("shop", "web").unwrap());

    // HTTP/1.1: two requests on one tunnel.
    let t = b
        .client
        .connect(&b.key, h1_pod, headers.clone())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(t))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (path, code) in [("/status/418", 418), ("/status/200", 200)] {
        send.ready().await.unwrap();
        let req = Request::post(path)
            .header("host", "db.shop")
            .body(Full::new(Bytes::from_static(b"ping")))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), code);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"teapot");
    }

    // h2c: a gRPC call.
    let t = b.client.connect(&b.key, h2_pod, headers).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://db.shop/grpc")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().and_then(|t| t.get("grpc-status")),
        Some(&HeaderValue::from_static("5"))
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    let text = crate::metrics::prometheus_text(&b.registry);
    let common = [
        "reporter=\"destination\"",
        "source_workload=\"web\"",
        "source_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
        "destination_workload=\"db\"",
        "destination_namespace=\"shop\"",
        "destination_principal=\"spiffe://cluster.local/ns/shop/sa/db\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        common.iter().chain(extra).copied().collect()
    };
    for (extra, what) in [
        (
            with(&[
                "request_protocol=\"http\"",
                "response_code=\"418\"",
                "grpc_status=\"-\"",
            ]),
            "HTTP/1.1 418",
        ),
        (
            with(&["request_protocol=\"http\"", "response_code=\"200\""]),
            "HTTP/1.1 200",
        ),
        (
            with(&[
                "request_protocol=\"grpc\"",
                "response_code=\"200\"",
                "grpc_status=\"5\"",
            ]),
            "h2c gRPC",
        ),
    ] {
        let line = sample(&text, "myelin_requests_total", &extra)
            .unwrap_or_else(|| panic!("no {what} series in\n{text}"));
        assert!(line.ends_with(" 1"), "{line}");
    }
    // Sizes and durations of the 418: a 4-byte request, a 6-byte response.
    let sum = |name: &str| {
        sample(&text, name, &with(&["response_code=\"418\""]))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(sum("myelin_request_bytes_sum"), Some(4.0), "{text}");
    assert_eq!(sum("myelin_response_bytes_sum"), Some(6.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "myelin_request_duration_seconds_count",
            &with(&["response_code=\"418\""])
        )
        .map(|l| l.ends_with(" 1")),
        Some(true),
        "{text}"
    );
    assert!(
        sample(&text, "myelin_tcp_connections_opened_total", &[]).is_none(),
        "HTTP tunnels are not opaque connections:\n{text}"
    );
    assert_eq!(b.metrics.tunnel_count(), 2);
}

/// A pod that speaks first (an SMTP-like greeting) is not kept waiting for the client's
/// first bytes: the tunnel is opaque as soon as the pod speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_speaks_first_is_not_kept_waiting_for_the_sniff() {
    // A sniff timeout far beyond the read below: only the pod speaking ends the sniff.
    let b = bed_with(InboundPolicy::default(), 100, Duration::from_secs(60)).await;
    let greeter = TcpListener::bind((POD_IP, 0)).await.unwrap();
    let pod = greeter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = greeter.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 db ready\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap();
                s.write_all(&buf[..n]).await.unwrap();
            });
        }
    });
    let mut t = b
        .client
        .connect(&b.key, pod, HeaderMap::new())
        .await
        .unwrap();
    let mut greeting = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut greeting))
        .await
        .expect("the greeting within 5 s, not after the 60 s sniff timeout")
        .unwrap();
    assert_eq!(&greeting, b"220 db ready\r\n");
    assert_eq!(round_trip(&mut t, b"HELO web").await, b"HELO web");
}
