//! HBONE client and server on loopback: tunnels carry bytes both ways, the destination
//! reports the source principal, refusals are answered and counted by reason, and
//! concurrent tunnels share pooled connections.

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
    metrics: Arc<HboneMetrics>,
    registry: Registry,
    _signal: drain::Signal,
}

async fn bed(policy: InboundPolicy, max_streams: usize) -> Bed {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db) = (id("shop", "web"), id("shop", "db"));
    let source_ids = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    source_ids.insert(&ca.issue(&web, HOUR).unwrap()).unwrap();
    let dest_ids = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    dest_ids.insert(&ca.issue(&db, HOUR).unwrap()).unwrap();
    let pod = echo_pod().await;
    let config = ProxyConfig::new(vec![Workload {
        name: "db".into(),
        namespace: "shop".into(),
        service_account: "db".into(),
        ip: POD_IP,
    }])
    .unwrap();
    let mut registry = Registry::default();
    let metrics = Arc::new(HboneMetrics::new(&mut registry));
    let golden = Arc::new(GoldenMetrics::new(
        &mut registry,
        crate::golden::Naming::Myelin,
        Default::default(),
    ));
    let server = Server::new(dest_ids, Arc::new(config), policy, metrics.clone(), golden);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = listener.local_addr().unwrap();
    let (signal, watch) = drain::channel();
    tokio::spawn(async move { server.serve(listener, watch).await });
    let client = Client::new(
        source_ids.clone(),
        ClientConfig {
            max_streams,
            ..ClientConfig::default()
        },
    );
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
    match fresh.connect(&wrong, b.pod, HeaderMap::new()).await {
        // The server has no certificate for that SNI: the handshake fails.
        Err(TunnelError::Tls { .. }) => {}
        other => panic!("expected a TLS failure, got {other:?}"),
    }
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
