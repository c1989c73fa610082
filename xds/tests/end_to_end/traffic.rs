//! The whole config path with real traffic: the in-process control plane serves Envoy
//! resources (written as Envoy YAML) over real gRPC, the ADS client feeds the
//! `ConfigStore`, `feed` publishes each snapshot to the real proxy, and HTTP and TCP
//! clients send traffic through the proxy to real upstream servers on loopback.
//!
//! Captured connections are simulated as in the proxy's own tests: the client binds its
//! socket first and records the original destination it "was going to" (a service VIP
//! that does not exist) in the lookup the proxy consults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::{ControlPlane, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

// ---- tests ----------------------------------------------------------------------------------

/// Routes flip between two clusters while clients on keep-alive connections send a
/// steady stream of requests: every request succeeds, and each flip takes effect on the
/// open connections.
async fn routes_change_under_steady_load(protocol: AdsProtocol) {
    let a = http_upstream("a").await;
    let b = http_upstream("b").await;
    let cp = ControlPlane::start().await;
    cp.update(|batch| {
        set(
            batch,
            "outbound-80",
            &http_listener("outbound-80", 18080, "web"),
        );
        set(batch, "web", &route_to("web", "a"));
        set(batch, "a", &eds_cluster("a"));
        set(batch, "b", &eds_cluster("b"));
        set(batch, "a", &endpoints("a", &[a.addr]));
        set(batch, "b", &endpoints("b", &[b.addr]));
    });
    let node = Node::start(&cp, protocol).await;
    let v = cp.version(type_url::ROUTE);
    node.wait_applied(type_url::ROUTE, &["web"], &v).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["a", "b"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = node.http_client(vip(18080)).await;
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match client.get("web.default.svc", "/x").await {
                    Ok((StatusCode::OK, server, _)) => {
                        *served.lock().unwrap().entry(server).or_default() += 1;
                    }
                    Ok((status, _, body)) => {
                        failures.lock().unwrap().push(format!("{status} {body}"))
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{e:#}")),
                }
                n += 1;
            }
            n
        }));
    }
    // Flip the route 10 times; after each flip, wait until both upstreams' counters show
    // the new cluster is being served.
    for flip in 0..10 {
        let (to, upstream) = if flip % 2 == 0 { ("b", &b) } else { ("a", &a) };
        let before = upstream.hits.load(Ordering::Relaxed);
        cp.set("web", &route_to("web", to));
        let deadline = Instant::now() + WAIT;
        while upstream.hits.load(Ordering::Relaxed) < before + 20 {
            assert!(
                Instant::now() < deadline,
                "flip {flip} to {to} never took effect"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The last flip (to "a") holds: no request reaches "b" any more.
    let b_hits = b.hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        b.hits.load(Ordering::Relaxed) <= b_hits + 4,
        "requests still reach b after the route moved to a"
    );
    let served = served.lock().unwrap();
    assert!(served["a"] > 0 && served["b"] > 0, "{served:?}");
    assert!(total > 200, "only {total} requests in the whole run");
    assert_eq!(
        node.metric("myelin_proxy_config_misses_total{reason=\"no_route\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_routes_change_under_steady_load_with_zero_failures() {
    routes_change_under_steady_load(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_routes_change_under_steady_load_with_zero_failures() {
    routes_change_under_steady_load(AdsProtocol::Delta).await;
}

/// An EDS change moves new connections and new requests to the new endpoint, and leaves
/// open connections alone (an opaque TCP connection keeps talking to the old endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_change_keeps_open_connections() {
    let (t1, _t1) = tcp_upstream("one").await;
    let (t2, _t2) = tcp_upstream("two").await;
    let h1 = http_upstream("h1").await;
    let h2 = http_upstream("h2").await;
    let cp = ControlPlane::start().await;
    cp.update(|batch| {
        set(batch, "tcp-9000", &tcp_listener("tcp-9000", 19000, "db"));
        set(batch, "db", &eds_cluster("db"));
        set(batch, "db", &endpoints("db", &[t1]));
        set(
            batch,
            "outbound-80",
            &http_listener("outbound-80", 18080, "web"),
        );
        set(batch, "web", &route_to("web", "web"));
        set(batch, "web", &eds_cluster("web"));
        set(batch, "web", &endpoints("web", &[h1.addr]));
    });
    let node = Node::start(&cp, AdsProtocol::Delta).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["db", "web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;

    let mut old = node.connect(vip(19000)).await;
    assert_eq!(exchange(&mut old, "hello").await, "one:hello");
    let mut http = node.http_client(vip(18080)).await;
    assert_eq!(http.get("web", "/").await.unwrap().1, "h1");

    cp.update(|batch| {
        set(batch, "db", &endpoints("db", &[t2]));
        set(batch, "web", &endpoints("web", &[h2.addr]));
    });
    node.wait_applied(
        type_url::ENDPOINT,
        &["db", "web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    // The open TCP connection still reaches its endpoint; a new one goes to the new one.
    assert_eq!(exchange(&mut old, "again").await, "one:again");
    let mut new = node.connect(vip(19000)).await;
    assert_eq!(exchange(&mut new, "hi").await, "two:hi");
    // The keep-alive HTTP connection's next request goes to the new endpoint.
    assert_eq!(http.get("web", "/").await.unwrap().1, "h2");
    assert_eq!(h1.hits.load(Ordering::Relaxed), 1);
    // The TCP listener declares its protocol (TCP proxy chains only): its connections
    // are not sniffed; the HTTP listener's are.
    assert_eq!(
        node.metric("myelin_proxy_connections_opened_total{protocol=\"opaque\"}"),
        2.0
    );
    assert_eq!(
        node.metric("myelin_proxy_protocol_detect_duration_seconds_count{protocol=\"opaque\"}"),
        0.0
    );
    assert_eq!(
        node.metric("myelin_proxy_protocol_detect_duration_seconds_count{protocol=\"http1\"}"),
        1.0
    );
}

async fn exchange(stream: &mut TcpStream, msg: &str) -> String {
    stream.write_all(msg.as_bytes()).await.unwrap();
    let want = msg.len() + 4;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < want {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf[got..]))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "connection closed after {got} bytes");
        got += n;
    }
    String::from_utf8_lossy(&buf[..got]).into_owned()
}

/// The control plane goes away: traffic keeps flowing on the last config. It comes back
/// on the same address: the client re-subscribes (a new stream), and a change made there
/// is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_keeps_traffic_and_resyncs() {
    let a = http_upstream("a").await;
    let b = http_upstream("b").await;
    let cp = ControlPlane::start().await;
    let resources = |batch: &mut myelin_xds::testing::Batch, to: &str| {
        set(
            batch,
            "outbound-80",
            &http_listener("outbound-80", 18080, "web"),
        );
        set(batch, "web", &route_to("web", to));
        set(batch, "a", &eds_cluster("a"));
        set(batch, "b", &eds_cluster("b"));
        set(batch, "a", &endpoints("a", &[a.addr]));
        set(batch, "b", &endpoints("b", &[b.addr]));
    };
    cp.update(|batch| resources(batch, "a"));
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["a", "b"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let streams_before = cp.streams();

    cp.kill().await;
    let mut client = node.http_client(vip(18080)).await;
    for _ in 0..50 {
        let (status, server, _) = client.get("web", "/").await.unwrap();
        assert_eq!((status, server.as_str()), (StatusCode::OK, "a"));
    }
    // New connections too.
    for _ in 0..5 {
        let mut c = node.http_client(vip(18080)).await;
        assert_eq!(c.get("web", "/").await.unwrap().1, "a");
    }

    cp.restart().await;
    cp.update(|batch| resources(batch, "b"));
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, server, _) = client.get("web", "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        if server == "b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted control plane's route never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cp.streams() > streams_before,
        "the client never re-subscribed"
    );
}

/// One response carries a bad cluster and a good one: the good one serves traffic, the
/// bad one is NACKed by name and reason and never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_is_nacked_good_one_serves() {
    let good = http_upstream("good").await;
    let cp = ControlPlane::start().await;
    let bad: Cluster = yaml(
        r#"
name: bad
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
lb_policy: CLUSTER_PROVIDED
"#,
    );
    cp.update(|batch| {
        set(
            batch,
            "outbound-80",
            &http_listener("outbound-80", 18080, "web"),
        );
        set(batch, "web", &route_to("web", "good"));
        set(batch, "good", &eds_cluster("good"));
        set(batch, "bad", &bad);
        set(batch, "good", &endpoints("good", &[good.addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    let nack = cp
        .wait_for_request(|r| r.type_url == type_url::CLUSTER && r.is_nack())
        .await;
    assert!(
        nack.error_message().contains("bad"),
        "{}",
        nack.error_message()
    );
    assert!(
        nack.error_message().contains("lb_policy"),
        "{}",
        nack.error_message()
    );
    node.wait_applied(
        type_url::ENDPOINT,
        &["good"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    let snap = node.store.snapshot();
    assert!(snap.cluster("good").is_some() && snap.cluster("bad").is_none());
    let mut client = node.http_client(vip(18080)).await;
    let (status, server, body) = client.get("web", "/p").await.unwrap();
    assert_eq!(
        (status, server.as_str(), body.as_str()),
        (StatusCode::OK, "good", "good /p")
    );
}

/// Delta removal of the route configuration: requests get Envoy's 404 `NR`; removal of a
/// cluster: 503 `NC`; removal of the listener: new connections go straight through to
/// their original destination, where a server does listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_removal_removes_resources() {
    let a = http_upstream("a").await;
    let direct = http_upstream_on("direct", &format!("{VIP}:0")).await;
    let port = direct.addr.port();
    let cp = ControlPlane::start().await;
    cp.update(|batch| {
        set(
            batch,
            "outbound-80",
            &http_listener("outbound-80", port, "web"),
        );
        set(batch, "web", &route_to("web", "a"));
        set(batch, "a", &eds_cluster("a"));
        set(batch, "a", &endpoints("a", &[a.addr]));
    });
    let node = Node::start(&cp, AdsProtocol::Delta).await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(type_url::ENDPOINT, &["a"], &cp.version(type_url::ENDPOINT))
        .await;
    let mut client = node.http_client(vip(port)).await;
    assert_eq!(client.get("web", "/").await.unwrap().1, "a");

    cp.remove(type_url::ROUTE, "web");
    node.wait_store("no route web", |snap| {
        snap.route_configurations.get("web").is_none()
    })
    .await;
    assert_eq!(
        client.get("web", "/").await.unwrap().0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        node.metric("myelin_proxy_config_misses_total{reason=\"no_route_config\"}"),
        1.0
    );

    cp.update(|batch| {
        set(batch, "web", &route_to("web", "a"));
    });
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    assert_eq!(client.get("web", "/").await.unwrap().0, StatusCode::OK);
    cp.remove(type_url::CLUSTER, "a");
    node.wait_store("no cluster a", |snap| snap.cluster("a").is_none())
        .await;
    let (status, _, body) = client.get("web", "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "cluster not found\n"),
        "{}",
        serde_json::to_string_pretty(&node.store.config_dump()).unwrap()
    );

    cp.remove(type_url::LISTENER, "outbound-80");
    node.wait_store("no listener outbound-80", |snap| {
        snap.listener("outbound-80").is_none()
    })
    .await;
    let mut fresh = node.http_client(vip(port)).await;
    let (status, server, _) = fresh.get("web", "/").await.unwrap();
    assert_eq!((status, server.as_str()), (StatusCode::OK, "direct"));
    assert_eq!(a.hits.load(Ordering::Relaxed), 2);
}

async fn wait_for(pred: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A `bind_to_port` listener pushed over xDS is bound and serves as a plain reverse proxy;
/// removing it closes the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_listener_comes_and_goes_with_the_config() {
    let a = http_upstream("a").await;
    // A free port: bind and release (the proxy binds it with SO_REUSEADDR).
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cp = ControlPlane::start().await;
    cp.update(|batch| {
        set(
            batch,
            "ingress",
            &bound_http_listener("ingress", addr, "web"),
        );
        set(batch, "web", &route_to("web", "a"));
        set(batch, "a", &eds_cluster("a"));
        set(batch, "a", &endpoints("a", &[a.addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(type_url::ENDPOINT, &["a"], &cp.version(type_url::ENDPOINT))
        .await;

    let stream = connect_retry(addr).await;
    let mut client = Client::over(stream).await;
    let (status, server, body) = client.get("anything", "/via-bound").await.unwrap();
    assert_eq!(
        (status, server.as_str(), body.as_str()),
        (StatusCode::OK, "a", "a /via-bound")
    );

    cp.remove(type_url::LISTENER, "ingress");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the removed listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.metric("myelin_proxy_listener_bind_errors_total"), 0.0);
}

async fn connect_retry(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "listener {addr} never bound: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What a route can do, end to end: direct responses, redirects, prefix rewrites, header
/// mutations, header-based matching, round robin over endpoints with unhealthy ones
/// skipped, weighted clusters, 404 `NR` without a matching route, 503 `UH` for a cluster
/// without a healthy endpoint, and a connection no filter chain takes is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_actions_end_to_end() {
    let e1 = http_upstream("e1").await;
    let e2 = http_upstream("e2").await;
    let sick = http_upstream("sick").await;
    let w = http_upstream("w").await;
    let routes: RouteConfiguration = yaml(
        r#"
name: web
response_headers_to_add:
- header: {key: x-config, value: "1"}
virtual_hosts:
- name: api
  domains: ["api.example.com", "api.example.com:*"]
  request_headers_to_add:
  - header: {key: x-vhost, value: api}
  routes:
  - match: {prefix: "/health"}
    direct_response: {status: 200, body: {inline_string: "ok"}}
  - match: {prefix: "/old/"}
    redirect: {prefix_rewrite: "/new/", response_code: FOUND}
  - match:
      prefix: "/"
      headers: [{name: x-canary, string_match: {exact: "1"}}]
    route: {cluster: missing}
  - match: {prefix: "/tls"}
    route: {cluster: tls}
  - match: {prefix: "/v1/"}
    route: {cluster: rr, prefix_rewrite: "/"}
    response_headers_to_add:
    - header: {key: x-route, value: v1}
  - match: {prefix: "/w"}
    request_headers_to_add:
    - header: {key: x-echo-backend, value: route}
      append_action: ADD_IF_ABSENT
    - header: {key: x-echo-drop, value: "1"}
    route:
      weighted_clusters:
        clusters:
        - name: rr
          weight: 1
          response_headers_to_add: [{header: {key: x-weighted, value: rr}}]
        - name: w
          weight: 3
          host_rewrite_literal: w.internal
          request_headers_to_add: [{header: {key: x-echo-backend, value: w}}]
          response_headers_to_add: [{header: {key: x-weighted, value: w}}]
          response_headers_to_remove: [x-echo-drop]
- name: fallback
  domains: ["*"]
  routes:
  - match: {path: "/only"}
    route: {cluster: empty}
"#,
    );
    let rr_endpoints: ClusterLoadAssignment = yaml(&format!(
        r#"
cluster_name: rr
endpoints:
- lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
    health_status: UNHEALTHY
"#,
        e1.addr.port(),
        e2.addr.port(),
        sick.addr.port()
    ));
    let empty: ClusterLoadAssignment = yaml(
        r#"
cluster_name: empty
endpoints:
- lb_endpoints: []
"#,
    );
    let only_port_1: Listener = yaml(
        r#"
name: narrow
address: {socket_address: {address: 0.0.0.0, port_value: 18081}}
bind_to_port: false
filter_chains:
- filter_chain_match: {prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: narrow, cluster: rr}
"#,
    );
    // A TLS cluster whose endpoint speaks plain HTTP: the handshake fails, nothing is sent
    // in plain text (`upstream_tls.rs` has the working cases).
    let tls: Cluster = yaml(&format!(
        r#"
name: tls
type: STATIC
load_assignment:
  cluster_name: tls
  endpoints:
  - lb_endpoints:
    - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: e1.example.com
"#,
        e1.addr.port()
    ));
    let cp = ControlPlane::start().await;
    cp.update(|batch| {
        set(
            batch,
            "outbound-80",
            &http_listener("outbound-80", 18080, "web"),
        );
        set(batch, "narrow", &only_port_1);
        set(batch, "tls", &tls);
        set(batch, "web", &routes);
        for c in ["rr", "w", "empty"] {
            set(batch, c, &eds_cluster(c));
        }
        set(batch, "rr", &rr_endpoints);
        set(batch, "w", &endpoints("w", &[w.addr]));
        set(batch, "empty", &empty);
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    // The listener too: a request that beats it is passed through, not routed.
    node.wait_applied(
        type_url::LISTENER,
        &["outbound-80"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["rr", "w", "empty"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    let stream = node.connect(vip(18080)).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut get = async |host: &str, path: &str, canary: bool| {
        sender.ready().await.unwrap();
        let mut req = Request::get(path).header("host", host);
        if canary {
            req = req.header("x-canary", "1");
        }
        let resp = sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    };

    let (status, headers, body) = get("api.example.com", "/healthz", false).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(headers["x-config"], "1");

    let (status, _, body) = get("api.example.com", "/tls", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("TLS handshake failed"), "{body}");
    assert_eq!(
        e1.hits.load(Ordering::Relaxed),
        0,
        "plaintext reached a TLS cluster's endpoint"
    );

    let (status, headers, _) = get("api.example.com", "/old/page?q=1", false).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "http://api.example.com/new/page?q=1");

    // Round robin over the two healthy endpoints; the path prefix is rewritten.
    let mut seen = HashMap::new();
    for _ in 0..10 {
        let (status, headers, body) = get("api.example.com:8080", "/v1/items?id=7", false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-route"], "v1");
        let server = headers["x-server"].to_str().unwrap().to_owned();
        assert_eq!(body, format!("{server} /items?id=7"));
        *seen.entry(server).or_insert(0) += 1;
    }
    assert_eq!(seen.get("e1"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("e2"), Some(&5), "{seen:?}");
    assert_eq!(sick.hits.load(Ordering::Relaxed), 0);

    // Weighted 1:3 between rr and w, over 400 requests; each cluster's own header changes
    // and `Host` (w's) go with it, its request headers before the route's.
    for _ in 0..400 {
        let (status, headers, _) = get("api.example.com", "/w", false).await;
        assert_eq!(status, StatusCode::OK);
        let to_w = headers["x-server"] == "w";
        let (weighted, backend, host) = match to_w {
            true => ("w", "w", "w.internal"),
            false => ("rr", "route", "api.example.com"),
        };
        assert_eq!(headers["x-weighted"], weighted);
        assert_eq!(headers["x-echo-backend"], backend);
        assert_eq!(headers["x-host"], host);
        assert_eq!(
            headers.contains_key("x-echo-drop"),
            !to_w,
            "removed by w only"
        );
    }
    let to_w = w.hits.load(Ordering::Relaxed);
    assert!(
        (240..=360).contains(&to_w),
        "{to_w} of 400 went to the weight-3 cluster"
    );

    // A header match routes to a cluster that does not exist: 503 NC.
    let (status, _, body) = get("api.example.com", "/", true).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "cluster not found\n")
    );
    // Fallback virtual host: exact path only; its cluster has no endpoint (503 UH).
    let (status, _, body) = get("other", "/only", false).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n")
    );
    let (status, _, _) = get("other", "/only/not", false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (reason, n) in [
        ("no_route", 1.0),
        ("no_cluster", 1.0),
        ("no_healthy_upstream", 1.0),
    ] {
        assert_eq!(
            node.metric(&format!(
                "myelin_proxy_config_misses_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    assert_eq!(
        node.metric("myelin_proxy_requests_total{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"404\",response_flags=\"NR\"}"),
        1.0
    );

    // Port 18081 only has a chain for 10.0.0.0/8; the VIP is 127.0.0.11: no chain, reset.
    // The listener declares TCP (no sniffing), so the reset can come before `connect`
    // even returns.
    if let Ok(mut s) = node.try_connect(vip(18081)).await {
        let _ = s.write_all(b"hello").await;
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    wait_for(|| node.metric("myelin_proxy_config_misses_total{reason=\"no_filter_chain\"}") == 1.0)
        .await;
}

/// A cluster as Envoy Gateway writes one (in proto3 JSON's camelCase; an empty
/// `common_lb_config`, `ignore_health_on_host_removal`, the enum policy and the typed one
/// with locality weighting, which wins), with EDS localities as it writes a route's
/// weighted backends: traffic splits by locality weight, and a locality without weight gets
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_weights_split_an_envoy_gateway_cluster() {
    let heavy = http_upstream("heavy").await;
    let light = http_upstream("light").await;
    let unweighted = http_upstream("unweighted").await;
    let cluster: Cluster = yaml(
        r#"
name: web
type: EDS
connectTimeout: 10s
edsClusterConfig: {edsConfig: {ads: {}, resourceApiVersion: V3}, serviceName: web}
commonLbConfig: {}
ignoreHealthOnHostRemoval: true
lbPolicy: LEAST_REQUEST
loadBalancingPolicy:
  policies:
  - typedExtensionConfig:
      name: envoy.load_balancing_policies.least_request
      typedConfig:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest
        localityLbConfig: {localityWeightedLbConfig: {}}
perConnectionBufferLimitBytes: 32768
"#,
    );
    let assignment: ClusterLoadAssignment = yaml(&format!(
        r#"
cluster_name: web
endpoints:
- locality: {{region: web/backend/0}}
  load_balancing_weight: 3
  lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
    load_balancing_weight: 1
- locality: {{region: web/backend/1}}
  load_balancing_weight: 1
  lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
    load_balancing_weight: 1
- locality: {{region: web/backend/2}}
  lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
"#,
        heavy.addr.port(),
        light.addr.port(),
        unweighted.addr.port()
    ));
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "weights", &http_listener("weights", 18099, "r"));
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &cluster);
        set(b, "web", &assignment);
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["r"], &cp.version(type_url::ROUTE))
        .await;
    let mut client = node.http_client(vip(18099)).await;
    for _ in 0..400 {
        assert_eq!(client.get("web", "/").await.unwrap().0, StatusCode::OK);
    }
    let to_heavy = heavy.hits.load(Ordering::Relaxed);
    assert!(
        (260..=340).contains(&to_heavy),
        "{to_heavy} of 400 went to the locality of weight 3"
    );
    assert_eq!(to_heavy + light.hits.load(Ordering::Relaxed), 400);
    assert_eq!(unweighted.hits.load(Ordering::Relaxed), 0);
}
