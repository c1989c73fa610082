//! The source side of HBONE in process: a proxy whose config lists a meshed workload on
//! another node sends captured connections to it (opaque TCP and HTTP alike) through an
//! mTLS tunnel to that node's HBONE server, as the source workload; both sides' golden
//! metrics say `mutual_tls` with the peer's principal (per request on both sides for
//! HTTP). Loopback stands in for the two nodes: 127.0.0.1 is the client's node,
//! 127.0.0.2 the remote pod.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use myelin_proxy::golden::{GoldenMetrics, Naming};
use myelin_proxy::hbone::{self, HboneMetrics};
use myelin_proxy::metrics::ProxyMetrics;
use myelin_proxy::model::{ProxyConfig, RemoteWorkload, Workload};
use myelin_proxy::tls::ca::Ca;
use myelin_proxy::tls::{Identities, SpiffeId};
use myelin_proxy::{drain, Proxy};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use crate::support::{body_string, client_workload, empty, http_client, MapLookup};

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);
const POD_IP: &str = "127.0.0.2";

fn db_workload() -> Workload {
    Workload {
        name: "db".into(),
        namespace: "test-ns".into(),
        service_account: "db".into(),
        ip: POD_IP.parse().unwrap(),
    }
}

/// The remote pod's servers: an echo on one port, HTTP on another.
async fn pod_servers() -> (SocketAddr, SocketAddr) {
    let echo = TcpListener::bind((POD_IP, 0)).await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let web = TcpListener::bind((POD_IP, 0)).await.unwrap();
    let web_addr = web.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = web.accept().await {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"db says hi",
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    (echo_addr, web_addr)
}

fn text(registry: &Registry) -> String {
    myelin_proxy::metrics::prometheus_text(registry)
}

/// The first line of `name` whose labels include all of `labels`.
fn series<'a>(text: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_traffic_to_a_remote_workload_goes_through_hbone() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let client_id = SpiffeId::new(TD, "test-ns", "client-sa").unwrap();
    let db_id = SpiffeId::new(TD, "test-ns", "db").unwrap();

    // The remote node: its HBONE server for the db pod.
    let b_ids = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    b_ids.insert(&ca.issue(&db_id, HOUR).unwrap()).unwrap();
    let mut b_registry = Registry::default();
    let b_hbone = Arc::new(HboneMetrics::new(&mut b_registry));
    let b_golden = Arc::new(GoldenMetrics::new(
        &mut b_registry,
        Naming::Myelin,
        Default::default(),
    ));
    let server = hbone::Server::new(
        b_ids,
        Arc::new(ProxyConfig::new(vec![db_workload()]).unwrap()),
        b_hbone.clone(),
        b_golden,
    );
    let hbone_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_b = hbone_listener.local_addr().unwrap();
    let (_b_signal, b_watch) = drain::channel();
    tokio::spawn(async move { server.serve(hbone_listener, b_watch).await });
    let (echo, web) = pod_servers().await;

    // This node: the client workload, and db known as a remote workload on node B.
    let a_ids = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    a_ids.insert(&ca.issue(&client_id, HOUR).unwrap()).unwrap();
    let config = ProxyConfig::new(vec![client_workload()])
        .unwrap()
        .with_remote(vec![RemoteWorkload {
            name: "db".into(),
            namespace: "test-ns".into(),
            service_account: "db".into(),
            ip: POD_IP.parse::<IpAddr>().unwrap(),
            node: node_b,
        }])
        .unwrap();
    let mut a_registry = Registry::default();
    let metrics = Arc::new(ProxyMetrics::new(
        a_registry.sub_registry_with_prefix("myelin"),
    ));
    let a_golden = Arc::new(GoldenMetrics::new(
        &mut a_registry,
        Naming::Myelin,
        Default::default(),
    ));
    let lookup = Arc::new(MapLookup::default());
    let client = Arc::new(hbone::Client::new(a_ids, hbone::ClientConfig::default()));
    let proxy = Proxy::new(Arc::new(config), lookup.clone(), metrics)
        .with_golden(a_golden)
        .with_hbone(client.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let (_a_signal, a_watch) = drain::channel();
    tokio::spawn(proxy.serve(listener, a_watch));
    let connect = |dst: SocketAddr| {
        let lookup = lookup.clone();
        async move {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            lookup.insert(sock.local_addr().unwrap(), dst);
            sock.connect(proxy_addr).await.unwrap()
        }
    };

    // Opaque TCP.
    let mut s = connect(echo).await;
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
    drop(s);

    // HTTP, twice on one keep-alive connection (the upstream connection, a tunnel, is
    // pooled for this source).
    let mut http = http_client(connect(web).await).await.unwrap();
    for _ in 0..2 {
        let req = Request::get("/")
            .header(header::HOST, "db.test-ns")
            .body(empty())
            .unwrap();
        // The previous response may not be fully processed by the client yet.
        http.ready().await.unwrap();
        let resp = http.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_string(resp).await.unwrap(), "db says hi");
    }
    drop(http);
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(
        b_hbone.tunnel_count(),
        2,
        "one tunnel for TCP, one for the pooled HTTP connection"
    );
    assert_eq!(
        client.connections(),
        1,
        "both tunnels share one mTLS connection"
    );
    let a = text(&a_registry);
    let mtls = "connection_security_policy=\"mutual_tls\"";
    let db_principal = "destination_principal=\"spiffe://cluster.local/ns/test-ns/sa/db\"";
    let req = series(
        &a,
        "myelin_requests_total",
        &[
            mtls,
            db_principal,
            "destination_workload=\"db\"",
            "response_code=\"200\"",
        ],
    )
    .unwrap_or_else(|| panic!("no mTLS request series on the source side:\n{a}"));
    assert!(req.ends_with(" 2"), "{req}");
    assert!(
        series(
            &a,
            "myelin_tcp_connections_opened_total",
            &[mtls, db_principal, "reporter=\"source\""]
        )
        .is_some(),
        "no mTLS TCP series on the source side:\n{a}"
    );
    let b = text(&b_registry);
    assert!(
        series(
            &b,
            "myelin_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "source_principal=\"spiffe://cluster.local/ns/test-ns/sa/client-sa\"",
                "source_workload=\"client\"",
                mtls,
            ]
        )
        .is_some(),
        "no destination-side series:\n{b}"
    );
    // The tunnel that carried HTTP: per request at the destination too.
    let req = series(
        &b,
        "myelin_requests_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/test-ns/sa/client-sa\"",
            "source_workload=\"client\"",
            db_principal,
            "request_protocol=\"http\"",
            "response_code=\"200\"",
            mtls,
        ],
    )
    .unwrap_or_else(|| panic!("no destination-side request series:\n{b}"));
    assert!(req.ends_with(" 2"), "{req}");
}

/// Pod to pod on one node with mutual TLS on: no tunnel, but the destination's work is
/// done by the same proxy. The inbound policy lets only `client-sa` reach db: another
/// workload (`intruder`) is refused with Envoy's RBAC answer (HTTP) or a reset before the
/// pod sees a connection (TCP), and so is a source that is not a workload; allowed
/// traffic is reported by both reporters, with both principals and `mutual_tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_traffic_is_authorized_and_reported_by_both_sides() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let client_id = SpiffeId::new(TD, "test-ns", "client-sa").unwrap();
    let ids = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    ids.insert(&ca.issue(&client_id, HOUR).unwrap()).unwrap();
    let intruder = Workload {
        name: "intruder".into(),
        namespace: "test-ns".into(),
        service_account: "intruder".into(),
        ip: "127.0.0.3".parse().unwrap(),
    };
    let mut policy = hbone::InboundPolicy::default();
    policy
        .allow
        .insert("test-ns/db".into(), vec![client_id.clone()]);
    let config = ProxyConfig::new(vec![client_workload(), db_workload(), intruder])
        .unwrap()
        .with_inbound_policy(policy);
    let (echo, web) = pod_servers().await;
    let mut registry = Registry::default();
    let metrics = Arc::new(ProxyMetrics::new(
        registry.sub_registry_with_prefix("myelin"),
    ));
    let golden = Arc::new(GoldenMetrics::new(
        &mut registry,
        Naming::Myelin,
        Default::default(),
    ));
    let lookup = Arc::new(crate::support::MapLookup::default());
    let client = Arc::new(hbone::Client::new(ids, hbone::ClientConfig::default()));
    let proxy = Proxy::new(Arc::new(config), lookup.clone(), metrics.clone())
        .with_golden(golden)
        .with_hbone(client.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let (_signal, watch) = drain::channel();
    tokio::spawn(proxy.serve(listener, watch));
    let connect = |from: &'static str, dst: SocketAddr| {
        let lookup = lookup.clone();
        async move {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
            lookup.insert(sock.local_addr().unwrap(), dst);
            sock.connect(proxy_addr).await.unwrap()
        }
    };
    let get = |from: &'static str| {
        let connect = &connect;
        async move {
            let mut http = http_client(connect(from, web).await).await.unwrap();
            let req = Request::get("/")
                .header(header::HOST, "db.test-ns")
                .body(empty())
                .unwrap();
            let resp = http.send_request(req).await.unwrap();
            let status = resp.status();
            (status, body_string(resp).await.unwrap())
        }
    };
    let echo_once = |from: &'static str| {
        let connect = &connect;
        async move {
            let mut s = connect(from, echo).await;
            s.write_all(b"ping").await.unwrap();
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
                .await
                .expect("an answer or a close within 5 s")
                .map(|_| buf)
        }
    };

    // Allowed: the client workload.
    assert_eq!(
        get("127.0.0.1").await,
        (StatusCode::OK, "db says hi".into())
    );
    let mut s = connect("127.0.0.1", echo).await;
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop(s);
    // Denied: another workload, and a source that is not a workload.
    for from in ["127.0.0.3", "127.0.0.4"] {
        assert_eq!(
            get(from).await,
            (StatusCode::FORBIDDEN, "RBAC: access denied".into()),
            "{from}"
        );
        match echo_once(from).await {
            Ok(bytes) => assert!(bytes.is_empty(), "{from}: no echo expected: {bytes:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{from}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(client.connections(), 0, "same node: no HBONE connection");
    assert_eq!(metrics.local_refused_count("denied"), 2);
    assert_eq!(metrics.local_refused_count("no_identity"), 2);
    let t = text(&registry);
    let refused = series(
        &t,
        "myelin_proxy_local_refused_total",
        &["reason=\"denied\""],
    )
    .unwrap_or_else(|| panic!("no refusal series:\n{t}"));
    assert!(refused.ends_with(" 2"), "{refused}");
    let mtls = "connection_security_policy=\"mutual_tls\"";
    let client_principal = "source_principal=\"spiffe://cluster.local/ns/test-ns/sa/client-sa\"";
    let db_principal = "destination_principal=\"spiffe://cluster.local/ns/test-ns/sa/db\"";
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        let ok = series(
            &t,
            "myelin_requests_total",
            &[
                reporter,
                client_principal,
                db_principal,
                mtls,
                "response_code=\"200\"",
            ],
        )
        .unwrap_or_else(|| panic!("no allowed request series with {reporter}:\n{t}"));
        assert!(ok.ends_with(" 1"), "{ok}");
        let denied = series(
            &t,
            "myelin_requests_total",
            &[
                reporter,
                "source_principal=\"spiffe://cluster.local/ns/test-ns/sa/intruder\"",
                db_principal,
                "response_code=\"403\"",
                "response_flags=\"RBAC\"",
            ],
        )
        .unwrap_or_else(|| panic!("no denied request series with {reporter}:\n{t}"));
        assert!(denied.ends_with(" 1"), "{denied}");
        for name in [
            "myelin_tcp_connections_opened_total",
            "myelin_tcp_connections_closed_total",
        ] {
            let tcp = series(&t, name, &[reporter, client_principal, db_principal, mtls])
                .unwrap_or_else(|| panic!("no {name} series with {reporter}:\n{t}"));
            assert!(tcp.ends_with(" 1"), "{tcp}");
        }
        let sent = series(
            &t,
            "myelin_tcp_sent_bytes_total",
            &[reporter, client_principal, db_principal],
        )
        .unwrap_or_else(|| panic!("no sent bytes with {reporter}:\n{t}"));
        assert!(sent.ends_with(" 4"), "{sent}");
    }
    // Refused connections never reached the pod, so no TCP series names the intruder.
    assert!(
        !t.lines()
            .any(|l| l.starts_with("myelin_tcp_") && l.contains("sa/intruder")),
        "{t}"
    );
}
