//! How long upstream connections live, end to end: clusters from xDS with
//! `common_http_protocol_options` (`max_requests_per_connection`, `idle_timeout`,
//! `max_connection_duration`, as istiod writes a DestinationRule's `connectionPool`), HTTP/1.1
//! and HTTP/2 upstreams that count the connections they accept and see close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::net::TcpListener;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
}

impl Counts {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.closed.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }
}

/// An upstream (HTTP/1.1, or HTTP/2 prior knowledge) that answers every request and counts
/// connections accepted and ended, and requests.
async fn counting_upstream(h2: bool) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let per_request = c.clone();
                let svc = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                    per_request.requests.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

/// An EDS cluster speaking `protocol` (`http1` or `http2`) with these
/// `common_http_protocol_options` (a YAML flow mapping).
fn cluster(name: &str, protocol: &str, common: &str) -> Cluster {
    let explicit = match protocol {
        "http2" => "{http2_protocol_options: {}}",
        _ => "{http_protocol_options: {}}",
    };
    yaml(&format!(
        r#"
name: {name}
type: EDS
connect_timeout: 1s
eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: {common}
    explicit_http_config: {explicit}
"#
    ))
}

const CASES: [(&str, &str, &str); 5] = [
    ("h1-max", "http1", "{max_requests_per_connection: 2}"),
    ("h1-idle", "http1", "{idle_timeout: 0.3s}"),
    ("h2-max", "http2", "{max_requests_per_connection: 2}"),
    ("h2-age", "http2", "{max_connection_duration: 0.3s}"),
    ("h2-idle", "http2", "{idle_timeout: 0.3s}"),
];

fn routes() -> RouteConfiguration {
    let routes: String = CASES
        .iter()
        .map(|(name, ..)| {
            format!("  - match: {{prefix: /{name}}}\n    route: {{cluster: {name}}}\n")
        })
        .collect();
    yaml(&format!(
        "name: r\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n{routes}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limits_on_upstream_connection_life() {
    let mut upstreams = Vec::new();
    for (_, protocol, _) in CASES {
        upstreams.push(counting_upstream(protocol == "http2").await);
    }
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "life", &http_listener("life", 18521, "r"));
        set(b, "r", &routes());
        for ((name, protocol, common), (addr, _)) in CASES.iter().zip(&upstreams) {
            set(b, name, &cluster(name, protocol, common));
            set(b, name, &endpoints(name, &[*addr]));
        }
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    let names: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    node.wait_applied(
        type_url::LISTENER,
        &["life"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["r"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(type_url::CLUSTER, &names, &cp.version(type_url::CLUSTER))
        .await;
    node.wait_applied(type_url::ENDPOINT, &names, &cp.version(type_url::ENDPOINT))
        .await;
    let counts = |i: usize| upstreams[i].1.get();
    let mut client = node.http_client(vip(18521)).await;
    macro_rules! get {
        ($path:expr) => {{
            let (status, ..) = client.get("web", $path).await.unwrap();
            assert_eq!(status, 200, "{}", $path);
        }};
    }

    // max_requests_per_connection: 2 per connection, the third opens another.
    for _ in 0..5 {
        get!("/h1-max");
    }
    let (accepted, _, requests) = counts(0);
    assert_eq!(
        (accepted, requests),
        (3, 5),
        "HTTP/1.1: 5 requests, 2 per connection"
    );
    // The full ones were closed after their last response.
    eventually("two full HTTP/1.1 connections closed", || counts(0).1 == 2).await;

    for _ in 0..5 {
        get!("/h2-max");
    }
    let (accepted, _, requests) = counts(2);
    assert_eq!(
        (accepted, requests),
        (3, 5),
        "HTTP/2: 5 streams, 2 per connection"
    );
    eventually("two full HTTP/2 connections closed", || counts(2).1 == 2).await;

    // idle_timeout: an idle connection is closed by the sweeper, the next request opens
    // another.
    get!("/h1-idle");
    get!("/h1-idle");
    assert_eq!(
        counts(1).0,
        1,
        "within the idle timeout the connection is reused"
    );
    eventually("the idle HTTP/1.1 connection closed", || counts(1).1 == 1).await;
    get!("/h1-idle");
    assert_eq!(counts(1).0, 2);

    get!("/h2-idle");
    get!("/h2-idle");
    assert_eq!(counts(4).0, 1);
    eventually("the idle HTTP/2 connection closed", || counts(4).1 == 1).await;
    get!("/h2-idle");
    assert_eq!(counts(4).0, 2);

    // max_connection_duration: a connection that old takes no new request.
    get!("/h2-age");
    get!("/h2-age");
    assert_eq!(counts(3).0, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    get!("/h2-age");
    assert_eq!(counts(3).0, 2, "an old connection takes no new stream");
    eventually("the old HTTP/2 connection closed", || counts(3).1 == 1).await;
}
