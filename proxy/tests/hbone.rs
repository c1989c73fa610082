//! The source side of HBONE in process: a proxy whose config lists a meshed workload on
//! another node sends captured connections to it (opaque TCP and HTTP alike) through an
//! mTLS tunnel to that node's HBONE server, as the source workload; both sides' golden
//! metrics say `mutual_tls` with the peer's principal (per request on both sides for
//! HTTP). Loopback stands in for the two nodes: 127.0.0.1 is the client's node,
//! 127.0.0.2 the remote pod.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use myelin_proxy::golden::{GoldenMetrics, Naming};
use myelin_proxy::hbone::{self, HboneMetrics, InboundPolicy};
use myelin_proxy::metrics::ProxyMetrics;
use myelin_proxy::model::{ProxyConfig, RemoteWorkload, Workload};
use myelin_proxy::tls::ca::Ca;
use myelin_proxy::tls::{Identities, SpiffeId};
use myelin_proxy::{drain, Proxy};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use support::{body_string, client_workload, empty, http_client, MapLookup};

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
        InboundPolicy::default(),
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
