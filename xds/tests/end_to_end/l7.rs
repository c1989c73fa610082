//! HTTP/2 through the proxy, end to end over the real config path: an h2c (prior
//! knowledge) client, per-request balancing of one client connection over several HTTP/2
//! endpoints, trailers (the gRPC status) passed through, HTTP/1 clients served by an
//! HTTP/2 cluster and HTTP/2 clients by an HTTP/1 cluster, and HTTP/1 upstream
//! connections pooled across client connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

/// An HTTP/2 (h2c) server: answers with its name in `x-server`, echoes the request body
/// and the protocol it saw, and ends every response with a `grpc-status: 0` trailer. It
/// counts accepted connections.
struct H2Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn h2_upstream(name: &'static str) -> H2Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            conns.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let authority = req.uri().authority().map(|a| a.to_string());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut resp = Response::new(StreamBody::new(futures_util_stream(frames)));
                    resp.headers_mut()
                        .insert("x-server", HeaderValue::from_static(name));
                    resp.headers_mut()
                        .insert("x-version", HeaderValue::from_str(&version).unwrap());
                    if let Some(a) = authority {
                        resp.headers_mut()
                            .insert("x-authority", HeaderValue::from_str(&a).unwrap());
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    H2Upstream {
        addr,
        connections,
        task,
    }
}

/// A stream over a vector of frames (no extra dependency for two items).
fn futures_util_stream<T: Unpin>(items: Vec<T>) -> impl tokio_stream::Stream<Item = T> + Unpin {
    tokio_stream::iter(items)
}

/// An h2c client connection to the proxy, captured as if going to `dst`.
async fn h2_client(
    node: &Node,
    dst: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = node.connect(dst).await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn start(cp: &ControlPlane) -> Node {
    let node = Node::start(cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(type_url::CLUSTER, &["web"], &cp.version(type_url::CLUSTER))
        .await;
    node
}

/// One h2c client connection, 30 concurrent requests: spread evenly over 3 HTTP/2
/// endpoints (per-request balancing), each endpoint reached over ONE upstream connection,
/// bodies and the `grpc-status` trailer passed through, `:authority` kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_of_one_connection_are_balanced_per_request() {
    let ups = [
        h2_upstream("e1").await,
        h2_upstream("e2").await,
        h2_upstream("e3").await,
    ];
    let cp = ControlPlane::start().await;
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    cp.update(|b| {
        b.set("outbound", &http_listener("outbound", 18090, "web"));
        b.set("web", &route_to("web", "web"));
        b.set("web", &h2_cluster("web"));
        b.set("web", &endpoints("web", &addrs));
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    let sender = h2_client(&node, vip(18090)).await;
    let mut calls = Vec::new();
    for i in 0..30 {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            let req = Request::post("http://greeter.default.svc/helloworld.Greeter/SayHello")
                .header("content-type", "application/grpc")
                .body(Full::new(Bytes::from(format!("call-{i}"))))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (parts, collected.to_bytes(), trailers, i)
        }));
    }
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for call in calls {
        let (parts, body, trailers, i) = call.await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, format!("call-{i}"));
        assert_eq!(trailers["grpc-status"], "0", "trailers of call {i}");
        assert_eq!(parts.headers["x-version"], "HTTP/2.0");
        assert_eq!(parts.headers["x-authority"], "greeter.default.svc");
        *per_server
            .entry(parts.headers["x-server"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_server.len(), 3, "{per_server:?}");
    for (server, n) in &per_server {
        assert_eq!(*n, 10, "{server}: {per_server:?}");
    }
    for u in &ups {
        assert_eq!(
            u.connections.load(Ordering::Relaxed),
            1,
            "one multiplexed connection per endpoint"
        );
    }
    assert_eq!(
        node.metric("myelin_proxy_connections_opened_total{protocol=\"http2\"}"),
        1.0
    );
}

/// An HTTP/1 client through an HTTP/2 cluster, and an h2c client through an HTTP/1 cluster:
/// the proxy translates, keeping the authority (`Host` <-> `:authority`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocols_are_translated_both_ways() {
    let h2 = h2_upstream("h2").await;
    let h1 = http_upstream("h1").await;
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set("to-h2", &http_listener("to-h2", 18091, "web"));
        b.set("to-h1", &http_listener("to-h1", 18092, "h1routes"));
        b.set("web", &route_to("web", "web"));
        b.set("h1routes", &route_to("h1routes", "h1"));
        b.set("web", &h2_cluster("web"));
        b.set("h1", &eds_cluster("h1"));
        b.set("web", &endpoints("web", &[h2.addr]));
        b.set("h1", &endpoints("h1", &[h1.addr]));
    });
    let node = start(&cp).await;
    node.wait_applied(type_url::ROUTE, &["h1routes"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web", "h1"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    let mut http1 = node.http_client(vip(18091)).await;
    let (status, server, _) = http1.get("api.example.com", "/x").await.unwrap();
    assert_eq!((status, server.as_str()), (StatusCode::OK, "h2"));

    let mut sender = h2_client(&node, vip(18092)).await;
    let resp = sender
        .send_request(
            Request::get("http://shop.example.com/cart?id=1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-server"], "h1");
    // One `Host`, from `:authority`.
    assert_eq!(resp.headers()["x-host"], "shop.example.com");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    // The HTTP/1 upstream saw an origin-form target.
    assert_eq!(body, "h1 /cart?id=1");
}

/// A listener whose connection manager announces `streams` as its HTTP/2 stream cap.
fn h2_settings_listener(streams: u32, keepalive: &str) -> Listener {
    http_listener_with(
        "l",
        18095,
        "web",
        &[
            "http2_protocol_options:",
            &format!("  max_concurrent_streams: {streams}"),
            "  initial_stream_window_size: 131072",
            "  max_outbound_frames: 5000",
            &format!("  {keepalive}"),
        ],
    )
}

/// The stream cap an h2c client (the `h2` crate's) reads from the proxy's SETTINGS, after
/// one request through it.
async fn announced_streams(node: &Node) -> usize {
    let stream = node.connect(vip(18095)).await;
    let (client, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client
        .send_request(Request::get("http://svc.test/s").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    client.current_max_send_streams()
}

/// The connection manager's `http2_protocol_options` are what an h2c client is told (a
/// control plane that sets them gets its listener, not a NACK), and a listener update
/// changes them for new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_come_from_the_connection_manager() {
    let up = http_upstream("up").await;
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set("l", &h2_settings_listener(3, ""));
        b.set("web", &route_to("web", "web"));
        b.set("web", &eds_cluster("web"));
        b.set("web", &endpoints("web", &[up.addr]));
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    assert_eq!(announced_streams(&node).await, 3);
    cp.update(|b| {
        b.set(
            "l",
            &h2_settings_listener(
                5,
                "connection_keepalive: {interval: 0.2s, timeout: 0.3s, interval_jitter: {value: 0}}",
            ),
        );
    });
    node.wait_applied(type_url::LISTENER, &["l"], &cp.version(type_url::LISTENER))
        .await;
    assert_eq!(announced_streams(&node).await, 5);

    // The keepalive: a client that says nothing after its SETTINGS gets a PING after the
    // interval and, not answering it, loses the connection after the timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = node.connect(vip(18095)).await;
    let start = std::time::Instant::now();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    let mut pinged = None;
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the connection ends within 5 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        read.extend_from_slice(&buf[..n]);
        // Frames: 3 bytes length, type, flags, 4 bytes stream, payload.
        let mut at = 0;
        while read.len() >= at + 9 {
            let len = (usize::from(read[at]) << 16)
                | (usize::from(read[at + 1]) << 8)
                | usize::from(read[at + 2]);
            if read.len() < at + 9 + len {
                break;
            }
            if read[at + 3] == 0x6 && read[at + 4] & 1 == 0 && pinged.is_none() {
                pinged = Some(start.elapsed());
            }
            at += 9 + len;
        }
    }
    let closed = start.elapsed();
    let pinged = pinged.expect("a PING from the proxy");
    assert!(
        pinged >= std::time::Duration::from_millis(200),
        "{pinged:?}"
    );
    assert!(
        closed >= pinged + std::time::Duration::from_millis(300),
        "closed {closed:?} after the PING at {pinged:?}"
    );
}

/// An HTTP/2 cluster's `http2_protocol_options` apply to its connections: with
/// `max_concurrent_streams: 2`, six requests in flight at once go over three upstream
/// connections (Envoy's meaning: the streams this proxy opens per connection), and the
/// connections are reused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_cluster_caps_streams_per_connection() {
    use tokio::io::AsyncWriteExt;
    let up = h2_upstream("capped").await;
    let cp = ControlPlane::start().await;
    let capped: Cluster = yaml(
        r#"
name: web
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options:
        max_concurrent_streams: 2
        initial_stream_window_size: 1048576
        connection_keepalive: {interval: 10s, timeout: 5s}
"#,
    );
    cp.update(|b| {
        b.set("outbound", &http_listener("outbound", 18096, "web"));
        b.set("web", &route_to("web", "web"));
        b.set("web", &capped);
        b.set("web", &endpoints("web", &[up.addr]));
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    // Six requests whose bodies have not come yet: the upstream answers only at a body's
    // end, so all six streams stay open.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = node.connect(vip(18096)).await;
        c.write_all(b"POST /p HTTP/1.1\r\nhost: svc.test\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        clients.push(c);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while up.connections.load(Ordering::Relaxed) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} upstream connections for six open streams",
            up.connections.load(Ordering::Relaxed)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("body{i}").as_bytes()).await.unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let got = read_until(c, &format!("body{i}")).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    // Streams done: the next requests reuse the three connections.
    let mut c = node.http_client(vip(18096)).await;
    for _ in 0..4 {
        let (status, server, _) = c.get("svc.test", "/again").await.unwrap();
        assert_eq!((status, server.as_str()), (StatusCode::OK, "capped"));
    }
    assert_eq!(up.connections.load(Ordering::Relaxed), 3);
}

/// Reads from `c` until `needle` has come (5 s at most): what came.
async fn read_until(c: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in time: {}", String::from_utf8_lossy(&got)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Envoy's meaning when an HTTP/2 endpoint's streams are all taken and `max_connections`
/// allows no other connection: the request waits as a pending request (one here; the next
/// is 503 `UO`) and takes the first stream that ends, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_http2_endpoint_queues_requests_as_pending() {
    use tokio::io::AsyncWriteExt;
    let up = h2_upstream("full").await;
    let cp = ControlPlane::start().await;
    let full: Cluster = yaml(
        r#"
name: web
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}}}
circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 1}]}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options: {max_concurrent_streams: 2}
"#,
    );
    cp.update(|b| {
        b.set("outbound", &http_listener("outbound", 18097, "web"));
        b.set("web", &route_to("web", "web"));
        b.set("web", &full);
        b.set("web", &endpoints("web", &[up.addr]));
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let post = b"POST /p HTTP/1.1\r\nhost: svc.test\r\ncontent-length: 5\r\n\r\n";
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(300));

    // Two streams open (their bodies have not come: the upstream answers at a body's end).
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = node.connect(vip(18097)).await;
        c.write_all(post).await.unwrap();
        open.push(c);
    }
    settle().await;
    // The third waits, pending; the fourth finds the pending place taken.
    let mut third = node.connect(vip(18097)).await;
    third.write_all(post).await.unwrap();
    settle().await;
    let mut fourth = node.connect(vip(18097)).await;
    fourth.write_all(post).await.unwrap();
    fourth.write_all(b"body4").await.unwrap();
    let got = read_until(&mut fourth, "\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");

    // The first stream ends: the third takes its place and is answered; then the second.
    open[0].write_all(b"body0").await.unwrap();
    assert!(read_until(&mut open[0], "body0")
        .await
        .starts_with("HTTP/1.1 200"));
    third.write_all(b"body3").await.unwrap();
    assert!(read_until(&mut third, "body3")
        .await
        .starts_with("HTTP/1.1 200"));
    open[1].write_all(b"body1").await.unwrap();
    assert!(read_until(&mut open[1], "body1")
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(up.connections.load(Ordering::Relaxed), 1);
}

/// HTTP/1 upstream connections are pooled across client connections: sequential requests
/// on separate client connections reuse one upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_connections_are_shared_across_clients() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"pooled"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set("outbound", &http_listener("outbound", 18093, "web"));
        b.set("web", &route_to("web", "web"));
        b.set("web", &eds_cluster("web"));
        b.set("web", &endpoints("web", &[addr]));
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    for _ in 0..5 {
        let mut c = node.http_client(vip(18093)).await;
        let (status, _, body) = c.get("web", "/").await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "pooled"));
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "upstream connections were not reused"
    );
    server.abort();
}

/// An HTTP/1 server whose answer to its n-th request (0-based, counted across all
/// connections) is decided by `script`: (status, delay before answering). It echoes the
/// request body and counts requests.
struct Scripted {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted(
    name: &'static str,
    script: impl Fn(usize) -> (u16, std::time::Duration) + Send + Sync + 'static,
) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let accepted = connections.clone();
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (counter, script) = (counter.clone(), script.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let (status, delay) = script(n);
                    let attempt = req.headers().get("x-envoy-attempt-count").cloned();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        tokio::time::sleep(delay).await;
                        let mut resp = Response::new(Full::new(body));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        resp.headers_mut()
                            .insert("x-server", HeaderValue::from_static(name));
                        if let Some(a) = attempt {
                            resp.headers_mut().insert("x-seen-attempt-count", a);
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Scripted {
        addr,
        requests,
        connections,
        task,
    }
}

/// All requests to `cluster`, with this retry policy and route timeout (YAML fragments).
fn route_with(
    name: &str,
    cluster: &str,
    retry_policy: &str,
    timeout: &str,
) -> xds_api::pb::envoy::config::route::v3::RouteConfiguration {
    yaml(&format!(
        r#"
name: {name}
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: "/"}}
    route:
      cluster: {cluster}
      timeout: {timeout}
      retry_policy: {retry_policy}
"#
    ))
}

async fn post(node: &Node, port: u16, body: impl Into<Bytes>) -> (StatusCode, String) {
    let stream = node.connect(vip(port)).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::post("/submit")
                .header("host", "web")
                .body(Full::new(body.into()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn retry_node(
    cp: &ControlPlane,
    port: u16,
    route: xds_api::pb::envoy::config::route::v3::RouteConfiguration,
    cluster: Cluster,
    eps: &[SocketAddr],
) -> Node {
    cp.update(|b| {
        b.set("outbound", &http_listener("outbound", port, "web"));
        b.set("web", &route);
        b.set("web", &cluster);
        b.set("web", &endpoints("web", eps));
    });
    let node = start(cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node
}

/// A server failing the first N attempts: with N <= num_retries the client gets the
/// success (and the POST body arrived intact on the attempt that succeeded); with
/// N > num_retries it gets the last failure, flagged `URX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_success_or_exhaustion() {
    let ms = std::time::Duration::from_millis;
    let fails_twice = scripted(
        "s",
        move |n| if n < 2 { (503, ms(0)) } else { (200, ms(0)) },
    )
    .await;
    let cp = ControlPlane::start().await;
    let policy = "{retry_on: \"5xx\", num_retries: 2}";
    let node = retry_node(
        &cp,
        18100,
        route_with("web", "web", policy, "5s"),
        eds_cluster("web"),
        &[fails_twice.addr],
    )
    .await;
    let (status, body) = post(&node, 18100, "payload-1").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "payload-1"));
    assert_eq!(fails_twice.requests.load(Ordering::SeqCst), 3);
    assert_eq!(node.metric("myelin_proxy_retries_total"), 2.0);

    let always = scripted("s", move |_| (503, ms(0))).await;
    cp.update(|b| {
        b.set("web", &endpoints("web", &[always.addr]));
    });
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let (status, _) = post(&node, 18100, "payload-2").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        always.requests.load(Ordering::SeqCst),
        3,
        "1 try + 2 retries"
    );
    assert_eq!(
        node.metric("myelin_proxy_requests_total{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"503\",response_flags=\"URX\"}"),
        1.0
    );
}

/// A retried request's body is kept up to the route's (else its virtual host's)
/// `per_request_buffer_limit_bytes` under the listener's `per_connection_buffer_limit_bytes`
/// (1 MiB by default), as Envoy's router keeps it: a request whose body is longer is not
/// retried, and its first answer stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_bodies_are_kept_up_to_the_buffer_limits() {
    use xds_api::pb::google::protobuf::UInt32Value;
    let ms = std::time::Duration::from_millis;
    // Every request's first try fails; tries 1, 4 and 8 are the retries below, which
    // succeed.
    let server = scripted("s", move |n| {
        if [1, 4, 8].contains(&n) {
            (200, ms(0))
        } else {
            (503, ms(0))
        }
    })
    .await;
    let tries = || server.requests.load(Ordering::SeqCst);
    let cp = ControlPlane::start().await;
    let policy = "{retry_on: \"5xx\", num_retries: 1}";
    let mut route = route_with("web", "web", policy, "5s");
    let node = retry_node(
        &cp,
        18634,
        route.clone(),
        eds_cluster("web"),
        &[server.addr],
    )
    .await;
    let limit = |n| Some(UInt32Value { value: n });

    // 256 KiB, more than the 64 KiB Myelin kept before it read the limits: within the
    // listener's default 1 MiB, so it is retried whole.
    let big = "b".repeat(256 * 1024);
    let (status, body) = post(&node, 18634, big.clone()).await;
    assert_eq!(
        (status, body.len(), tries()),
        (StatusCode::OK, big.len(), 2)
    );
    assert!(body == big, "the retry sent the body as the client did");

    // The route's limit: 2,000 bytes are more than it keeps, 500 are not.
    route.virtual_hosts[0].routes[0].per_request_buffer_limit_bytes = limit(1000);
    apply(&cp, &node, &route, None).await;
    let (status, _) = post(&node, 18634, "x".repeat(2000)).await;
    assert_eq!((status, tries()), (StatusCode::SERVICE_UNAVAILABLE, 3));
    let (status, body) = post(&node, 18634, "y".repeat(500)).await;
    assert_eq!((status, body.len(), tries()), (StatusCode::OK, 500, 5));

    // The virtual host's, for a route without one.
    route.virtual_hosts[0].routes[0].per_request_buffer_limit_bytes = None;
    route.virtual_hosts[0].per_request_buffer_limit_bytes = limit(1000);
    apply(&cp, &node, &route, None).await;
    let (status, _) = post(&node, 18634, "x".repeat(2000)).await;
    assert_eq!((status, tries()), (StatusCode::SERVICE_UNAVAILABLE, 6));

    // The listener's, which a route's larger limit does not raise.
    route.virtual_hosts[0].per_request_buffer_limit_bytes = None;
    route.virtual_hosts[0].routes[0].per_request_buffer_limit_bytes = limit(1 << 20);
    let mut listener = http_listener("outbound", 18634, "web");
    listener.per_connection_buffer_limit_bytes = limit(1000);
    apply(&cp, &node, &route, Some(&listener)).await;
    let (status, _) = post(&node, 18634, "x".repeat(2000)).await;
    assert_eq!((status, tries()), (StatusCode::SERVICE_UNAVAILABLE, 7));
    let (status, body) = post(&node, 18634, "y".repeat(500)).await;
    assert_eq!((status, body.len(), tries()), (StatusCode::OK, 500, 9));
}

/// Gives the node `route` as `web` (and `listener` as `outbound`) and waits until it holds
/// them.
async fn apply(
    cp: &ControlPlane,
    node: &Node,
    route: &RouteConfiguration,
    listener: Option<&Listener>,
) {
    cp.update(|b| {
        b.set("web", route);
        if let Some(l) = listener {
            b.set("outbound", l);
        }
    });
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    if listener.is_some() {
        let version = cp.version(type_url::LISTENER);
        node.wait_applied(type_url::LISTENER, &["outbound"], &version)
            .await;
    }
}

/// `include_request_attempt_count` (Istio sets it on every virtual host) and
/// `include_attempt_count_in_response`: each try carries its number, and the answer the
/// number of tries made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_counts_go_upstream_and_back() {
    let ms = std::time::Duration::from_millis;
    let fails_twice = scripted(
        "s",
        move |n| if n < 2 { (503, ms(0)) } else { (200, ms(0)) },
    )
    .await;
    let cp = ControlPlane::start().await;
    let route: xds_api::pb::envoy::config::route::v3::RouteConfiguration = yaml(
        r#"
name: web
virtual_hosts:
- name: all
  domains: ["*"]
  include_request_attempt_count: true
  include_attempt_count_in_response: true
  routes:
  - match: {prefix: "/"}
    route: {cluster: web, retry_policy: {retry_on: 5xx, num_retries: 2}}
"#,
    );
    let node = retry_node(&cp, 18103, route, eds_cluster("web"), &[fails_twice.addr]).await;
    let stream = node.connect(vip(18103)).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::post("/submit")
                .header("host", "web")
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The third try said it was the third, and the answer says three were made.
    assert_eq!(resp.headers()["x-seen-attempt-count"], "3");
    assert_eq!(resp.headers()["x-envoy-attempt-count"], "3");
}

/// A first attempt slower than the per-try timeout is abandoned and retried; a route
/// timeout shorter than the server's delay answers 504 `UT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_and_route_timeouts() {
    let ms = std::time::Duration::from_millis;
    let slow_first = scripted("s", move |n| {
        if n == 0 {
            (200, ms(3000))
        } else {
            (200, ms(0))
        }
    })
    .await;
    let cp = ControlPlane::start().await;
    let policy = "{retry_on: \"5xx\", num_retries: 1, per_try_timeout: 0.2s}";
    let node = retry_node(
        &cp,
        18101,
        route_with("web", "web", policy, "5s"),
        eds_cluster("web"),
        &[slow_first.addr],
    )
    .await;
    let started = std::time::Instant::now();
    let (status, body) = post(&node, 18101, "again").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "again"));
    assert!(
        started.elapsed() < ms(2500),
        "the slow first try was waited for"
    );

    let slow = scripted("s", move |_| (200, ms(2000))).await;
    cp.update(|b| {
        b.set(
            "web",
            &route_with("web", "web", "{retry_on: \"connect-failure\"}", "0.2s"),
        );
        b.set("web", &endpoints("web", &[slow.addr]));
    });
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let (status, body) = post(&node, 18101, "late").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n")
    );
}

/// With `retry_previous_hosts` a retry avoids the endpoint that just failed; the
/// `max_retries` circuit breaker stops a retry storm (retries beyond it are not made and
/// are counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_hosts_and_retry_budget() {
    let ms = std::time::Duration::from_millis;
    let bad = scripted("bad", move |_| (503, ms(0))).await;
    let good = scripted("good", move |_| (200, ms(0))).await;
    let cp = ControlPlane::start().await;
    let policy = "{retry_on: \"5xx\", num_retries: 1, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]}";
    let node = retry_node(
        &cp,
        18102,
        route_with("web", "web", policy, "5s"),
        eds_cluster("web"),
        &[bad.addr],
    )
    .await;
    // Weighted 3:1, round robin goes bad, bad, bad, good: a retry that ignored the
    // previous host would land on `bad` again.
    let weighted: xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment = yaml(&format!(
        r#"
cluster_name: web
endpoints:
- lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
    load_balancing_weight: 3
  - endpoint: {{address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}}}
    load_balancing_weight: 1
"#,
        bad.addr.port(),
        good.addr.port()
    ));
    cp.update(|b| {
        b.set("web", &weighted);
    });
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    for i in 0..12 {
        let (status, _) = post(&node, 18102, "x").await;
        assert_eq!(status, StatusCode::OK, "request {i}");
    }
    assert!(
        bad.requests.load(Ordering::SeqCst) >= 6,
        "the weighted endpoint was not tried first"
    );

    // Every request fails and would be retried 3 times; at most 1 retry may be in flight.
    let slow_fail = scripted("down", move |_| (503, ms(100))).await;
    let tight: Cluster = yaml(
        r#"
name: web
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}}}
circuit_breakers: {thresholds: [{max_retries: 1}]}
"#,
    );
    cp.update(|b| {
        b.set(
            "web",
            &route_with("web", "web", "{retry_on: \"5xx\", num_retries: 3}", "5s"),
        );
        b.set("web", &tight);
        b.set("web", &endpoints("web", &[slow_fail.addr]));
    });
    node.wait_applied(type_url::CLUSTER, &["web"], &cp.version(type_url::CLUSTER))
        .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(post(&node, 18102, "storm"));
    }
    let results = futures_util::future::join_all(calls).await;
    assert!(results
        .iter()
        .all(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE));
    let attempts = slow_fail.requests.load(Ordering::SeqCst);
    assert!(
        attempts < 40,
        "{attempts} attempts: the retry storm was not stopped"
    );
    assert!(node.metric("myelin_proxy_retry_overflow_total") >= 1.0);
}

/// Golden metrics after a known mix of traffic: labels and values per workload pair, gRPC
/// status from trailers, sizes, opaque TCP bytes and connections; and the exposition
/// passes `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_metrics_after_a_known_mix() {
    let ms = std::time::Duration::from_millis;
    let h2 = h2_upstream("grpc-server").await;
    let ok = scripted("ok", move |_| (200, ms(0))).await;
    let (echo, _echo_task) = tcp_echo().await;
    let cp = ControlPlane::start().await;
    let routes: xds_api::pb::envoy::config::route::v3::RouteConfiguration = yaml(
        r#"
name: web
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/teapot"}
    direct_response: {status: 418}
  - match: {prefix: "/helloworld."}
    route: {cluster: "outbound|9090||greeter.default.svc.cluster.local"}
  - match: {prefix: "/"}
    route: {cluster: "outbound|80||web.default.svc.cluster.local"}
"#,
    );
    let grpc_cluster = "outbound|9090||greeter.default.svc.cluster.local";
    let web_cluster = "outbound|80||web.default.svc.cluster.local";
    let mut h2c = h2_cluster(grpc_cluster);
    h2c.name = grpc_cluster.into();
    let mut web = eds_cluster(web_cluster);
    web.name = web_cluster.into();
    let mut tcp = eds_cluster("db");
    tcp.name = "db".into();
    cp.update(|b| {
        b.set("outbound", &http_listener("outbound", 18110, "web"));
        b.set("db-listener", &tcp_listener("db-listener", 18111, "db"));
        b.set("web", &routes);
        b.set(grpc_cluster, &h2c);
        b.set(web_cluster, &web);
        b.set("db", &tcp);
        b.set(grpc_cluster, &endpoints(grpc_cluster, &[h2.addr]));
        b.set(web_cluster, &endpoints(web_cluster, &[ok.addr]));
        b.set("db", &endpoints("db", &[echo]));
    });
    // The client (127.0.0.1) and the HTTP/1 server's address belong to local workloads.
    let workloads = vec![myelin_proxy::model::Workload {
        name: "client".into(),
        namespace: "shop".into(),
        service_account: "client-sa".into(),
        ip: "127.0.0.1".parse().unwrap(),
    }];
    let node = Node::start_with(
        &cp,
        AdsProtocol::StateOfTheWorld,
        myelin_proxy::model::ProxyConfig::new(workloads).unwrap(),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["web"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &[grpc_cluster, web_cluster, "db"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    // 3 HTTP/1 requests with 5-byte bodies, 2 teapots, 4 gRPC calls, 1 TCP connection.
    for _ in 0..3 {
        assert_eq!(post(&node, 18110, "hello").await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        let mut c = node.http_client(vip(18110)).await;
        assert_eq!(
            c.get("web", "/teapot").await.unwrap().0,
            StatusCode::IM_A_TEAPOT
        );
    }
    let mut sender = h2_client(&node, vip(18110)).await;
    for _ in 0..4 {
        let resp = sender
            .send_request(
                Request::post("http://greeter/helloworld.Greeter/SayHello")
                    .header("content-type", "application/grpc")
                    .body(Full::new(Bytes::from_static(b"0123456789")))
                    .unwrap(),
            )
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
    }
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = node.connect(vip(18111)).await;
        s.write_all(b"ping!").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping!");
    }

    // Every upstream listens on 127.0.0.1 too, which is the client workload's address: the
    // destination of routed requests is that workload; a direct response has none.
    let src = "reporter=\"source\",source_workload=\"client\",source_namespace=\"shop\",source_principal=\"spiffe://cluster.local/ns/shop/sa/client-sa\"";
    let common = format!("{src},destination_workload=\"client\",destination_namespace=\"shop\"");
    let local = format!("{src},destination_workload=\"unknown\",destination_namespace=\"unknown\"");
    let want = [
        (format!("myelin_requests_total{{{common},destination_service=\"web.default.svc.cluster.local\",destination_principal=\"unknown\",request_protocol=\"http\",response_code=\"200\",grpc_status=\"-\",response_flags=\"-\",connection_security_policy=\"none\"}}"), 3.0),
        (format!("myelin_requests_total{{{local},destination_service=\"web\",destination_principal=\"unknown\",request_protocol=\"http\",response_code=\"418\",grpc_status=\"-\",response_flags=\"-\",connection_security_policy=\"none\"}}"), 2.0),
        (format!("myelin_requests_total{{{common},destination_service=\"greeter.default.svc.cluster.local\",destination_principal=\"unknown\",request_protocol=\"grpc\",response_code=\"200\",grpc_status=\"0\",response_flags=\"-\",connection_security_policy=\"none\"}}"), 4.0),
        (format!("myelin_request_bytes_sum{{{common},destination_service=\"greeter.default.svc.cluster.local\",destination_principal=\"unknown\",request_protocol=\"grpc\",response_code=\"200\",grpc_status=\"0\",response_flags=\"-\",connection_security_policy=\"none\"}}"), 40.0),
        (format!("myelin_response_bytes_sum{{{common},destination_service=\"greeter.default.svc.cluster.local\",destination_principal=\"unknown\",request_protocol=\"grpc\",response_code=\"200\",grpc_status=\"0\",response_flags=\"-\",connection_security_policy=\"none\"}}"), 40.0),
        (format!("myelin_request_bytes_sum{{{common},destination_service=\"web.default.svc.cluster.local\",destination_principal=\"unknown\",request_protocol=\"http\",response_code=\"200\",grpc_status=\"-\",response_flags=\"-\",connection_security_policy=\"none\"}}"), 15.0),
        (format!("myelin_tcp_sent_bytes_total{{{common},destination_service=\"db\",destination_principal=\"unknown\",connection_security_policy=\"none\"}}"), 5.0),
        (format!("myelin_tcp_received_bytes_total{{{common},destination_service=\"db\",destination_principal=\"unknown\",connection_security_policy=\"none\"}}"), 5.0),
        (format!("myelin_tcp_connections_opened_total{{{common},destination_service=\"db\",destination_principal=\"unknown\",connection_security_policy=\"none\"}}"), 1.0),
    ];
    // Recorded when each response (or connection) has ended: wait for the last ones.
    let deadline = std::time::Instant::now() + myelin_xds::testing::WAIT;
    loop {
        let missing: Vec<_> = want
            .iter()
            .filter(|(series, value)| node.metric(series) != *value)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not as expected: {missing:#?}\n{}",
            node.scrape()
        );
        tokio::time::sleep(ms(20)).await;
    }
    let closed = format!("myelin_tcp_connections_closed_total{{{common},destination_service=\"db\",destination_principal=\"unknown\",connection_security_policy=\"none\"}}");
    let deadline = std::time::Instant::now() + myelin_xds::testing::WAIT;
    while node.metric(&closed) != 1.0 {
        assert!(std::time::Instant::now() < deadline, "{}", node.scrape());
        tokio::time::sleep(ms(20)).await;
    }
    promtool_check(&node.scrape());
}

/// `promtool check metrics` on an exposition (the `prometheus` Debian package). Missing
/// promtool fails under CI and skips with a note elsewhere.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not available ({e}); run scripts/setup.sh");
            return;
        }
        Err(e) => panic!("promtool is required under CI: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP echo server.
async fn tcp_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

/// Ring hash by a request header: each user sticks to one endpoint, users spread out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_by_header_is_sticky() {
    let ms = std::time::Duration::from_millis;
    let servers = [
        scripted("r1", move |_| (200, ms(0))).await,
        scripted("r2", move |_| (200, ms(0))).await,
        scripted("r3", move |_| (200, ms(0))).await,
    ];
    let routes: xds_api::pb::envoy::config::route::v3::RouteConfiguration = yaml(
        r#"
name: web
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route:
      cluster: web
      hash_policy: [{header: {header_name: x-user}}]
"#,
    );
    let cluster: Cluster = yaml(
        r#"
name: web
type: EDS
lb_policy: RING_HASH
eds_cluster_config: {eds_config: {ads: {}}}
"#,
    );
    let cp = ControlPlane::start().await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let node = retry_node(&cp, 18120, routes, cluster, &addrs).await;
    let mut owners = HashMap::new();
    for user in 0..12 {
        let mut c = node.http_client(vip(18120)).await;
        for _ in 0..5 {
            let (status, server) = get_with(&mut c, "x-user", &format!("user-{user}")).await;
            assert_eq!(status, StatusCode::OK);
            let owner = owners.entry(user).or_insert_with(|| server.clone());
            assert_eq!(*owner, server, "user-{user} moved");
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(distinct.len() >= 2, "{owners:?}");
}

async fn get_with(c: &mut Client, header: &str, value: &str) -> (StatusCode, String) {
    c.get_with_header("web", "/", header, value).await.unwrap()
}

/// Outlier detection: an endpoint answering 503 is ejected after 3 in a row and gets no
/// traffic, then comes back after the ejection time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_and_recovery() {
    let ms = std::time::Duration::from_millis;
    let bad = scripted("bad", move |_| (503, ms(0))).await;
    let good = scripted("good", move |_| (200, ms(0))).await;
    let cluster: Cluster = yaml(
        r#"
name: web
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
outlier_detection:
  consecutive_5xx: 3
  base_ejection_time: 0.5s
  max_ejection_percent: 50
  enforcing_success_rate: 0
"#,
    );
    let cp = ControlPlane::start().await;
    let node = retry_node(
        &cp,
        18121,
        route_to("web", "web"),
        cluster,
        &[bad.addr, good.addr],
    )
    .await;
    let mut c = node.http_client(vip(18121)).await;
    // Round robin: the bad endpoint gets every other request until its third 503.
    for _ in 0..6 {
        c.get("web", "/").await.unwrap();
    }
    assert_eq!(bad.requests.load(Ordering::SeqCst), 3);
    for _ in 0..10 {
        assert_eq!(
            c.get("web", "/").await.unwrap().0,
            StatusCode::OK,
            "ejected host still used"
        );
    }
    assert_eq!(bad.requests.load(Ordering::SeqCst), 3);
    tokio::time::sleep(ms(600)).await;
    for _ in 0..4 {
        c.get("web", "/").await.unwrap();
    }
    assert!(
        bad.requests.load(Ordering::SeqCst) > 3,
        "the host never came back"
    );
}

/// The `max_requests` circuit breaker: beyond it requests get 503 `UO` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow() {
    let ms = std::time::Duration::from_millis;
    let slow = scripted("slow", move |_| (200, ms(300))).await;
    let cluster: Cluster = yaml(
        r#"
name: web
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
circuit_breakers: {thresholds: [{max_requests: 2}]}
"#,
    );
    let cp = ControlPlane::start().await;
    let node = retry_node(&cp, 18122, route_to("web", "web"), cluster, &[slow.addr]).await;
    let calls: Vec<_> = (0..6).map(|_| post(&node, 18122, "x")).collect();
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let overflow = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::SERVICE_UNAVAILABLE && b.contains("overflow"))
        .count();
    assert_eq!((ok, overflow), (2, 4), "{results:?}");
    assert_eq!(node.metric("myelin_proxy_request_overflow_total"), 4.0);
}

/// `max_connections: 1` with `max_pending_requests: 1`: of three concurrent requests
/// (each on its own client connection) one gets the only upstream connection, one waits
/// for it and is then served on it, and the third gets 503 `UO` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_breakers_queue_then_overflow() {
    let ms = std::time::Duration::from_millis;
    let slow = scripted("slow", move |_| (200, ms(400))).await;
    let cluster: Cluster = yaml(
        r#"
name: web
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 1}]}
"#,
    );
    let cp = ControlPlane::start().await;
    let node = retry_node(&cp, 18123, route_to("web", "web"), cluster, &[slow.addr]).await;
    let node = Arc::new(node);
    let mut calls = Vec::new();
    for i in 0..3u64 {
        let node = node.clone();
        calls.push(tokio::spawn(async move {
            // In order: the first takes the connection, the second waits, the third
            // finds the pending queue full.
            tokio::time::sleep(ms(100 * i)).await;
            let started = std::time::Instant::now();
            let (status, body) = post(&node, 18123, "x").await;
            (status, body, started.elapsed())
        }));
    }
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    let statuses: Vec<u16> = results.iter().map(|r| r.0.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 503], "{results:?}");
    assert!(results[2].1.contains("overflow"), "{results:?}");
    assert!(
        results[1].2 >= ms(500),
        "the second request did not wait for the connection: {results:?}"
    );
    assert_eq!(
        slow.connections.load(Ordering::SeqCst),
        1,
        "max_connections"
    );
    assert_eq!(node.metric("myelin_proxy_pending_overflow_total"), 1.0);
}

/// An h2c client (the `h2` crate's) to `port` that has read the proxy's SETTINGS: it has
/// had the answer to one plain GET, which comes after them.
async fn h2c_after_settings(node: &Node, port: u16) -> h2::client::SendRequest<Bytes> {
    let (client, conn) = h2::client::handshake(node.connect(vip(port)).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client
        .send_request(Request::get("http://web/s").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    client
}

/// Extended CONNECT (WebSocket over HTTP/2) follows the connection manager: with
/// `allow_connect` it is announced, and a request for it is an upgrade of its `:protocol`'s
/// type, refused with 403 unless `upgrade_configs` lists it; a listed one goes upstream as
/// an HTTP/1.1 upgrade, where a 2xx without the switch is no tunnel (502) and a refusal
/// passes through; an accepted one is a tunnel in the stream, under the stream's idle
/// timeout. (WebSocket end to end, with the key exchange: `conformance/tests/suites/l7.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_follows_the_connection_manager() {
    let ms = std::time::Duration::from_millis;
    // Each connection's first request is a plain GET; of the two upgrades that reach the
    // server (its fourth request) the second is refused.
    let server = scripted("s", move |n| (if n == 3 { 403 } else { 200 }, ms(0))).await;
    let listener = |upgrades: &[&str]| -> Listener {
        let mut hcm = vec!["http2_protocol_options: {allow_connect: true}"];
        hcm.extend_from_slice(upgrades);
        http_listener_with("l", 18131, "web", &hcm)
    };
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set("l", &listener(&[]));
        b.set("web", &route_to("web", "web"));
        b.set("web", &eds_cluster("web"));
        b.set("web", &endpoints("web", &[server.addr]));
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let connect = |client: &mut h2::client::SendRequest<Bytes>| {
        let req = Request::connect("http://web/chat")
            .extension(h2::ext::Protocol::from_static("websocket"))
            .body(())
            .unwrap();
        let (resp, _body) = client.send_request(req, false).unwrap();
        resp
    };
    let mut client = h2c_after_settings(&node, 18131).await;
    assert!(client.is_extended_connect_protocol_enabled());
    let resp = connect(&mut client).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "not in upgrade_configs"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "the GET only");

    cp.update(|b| {
        b.set(
            "l",
            &listener(&["upgrade_configs: [{upgrade_type: websocket}]"]),
        );
    });
    node.wait_applied(type_url::LISTENER, &["l"], &cp.version(type_url::LISTENER))
        .await;
    let mut client = h2c_after_settings(&node, 18131).await;
    let resp = connect(&mut client).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_GATEWAY,
        "a 200 without switching protocols is no tunnel"
    );
    let resp = connect(&mut client).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "the server's own answer"
    );
    assert_eq!(resp.headers()["x-server"], "s");
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);

    // A tunnel: an upstream that switches and echoes. The client's own key goes up as it is
    // and the upstream's accept comes back (the client's to check); the bytes go both ways
    // in the stream's DATA, and a tunnel quiet for `stream_idle_timeout` is reset.
    let echo = upgrade_echo().await;
    cp.update(|b| {
        b.set(
            "l",
            &listener(&[
                "upgrade_configs: [{upgrade_type: websocket}]",
                "stream_idle_timeout: 0.5s",
            ]),
        );
        b.set("web", &endpoints("web", &[echo]));
    });
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(type_url::LISTENER, &["l"], &cp.version(type_url::LISTENER))
        .await;
    let mut client = h2c_after_settings(&node, 18131).await;
    let req = Request::connect("http://web/chat")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .body(())
        .unwrap();
    let (resp, mut up) = client.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(resp.headers()["sec-websocket-accept"], "yours to check");
    assert!(!resp.headers().contains_key("upgrade"));
    let mut down = resp.into_body();
    let mut echoed = Vec::new();
    for msg in [&b"hello"[..], &b" through"[..], &b" the tunnel"[..]] {
        up.send_data(Bytes::from_static(msg), false).unwrap();
        while echoed.len() < msg.len() {
            let chunk = down.data().await.expect("echo").unwrap();
            down.flow_control().release_capacity(chunk.len()).unwrap();
            echoed.extend_from_slice(&chunk);
        }
        assert_eq!(&echoed[..], msg);
        echoed.clear();
    }
    let quiet = std::time::Instant::now();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), down.data())
        .await
        .expect("the idle tunnel is ended");
    assert!(matches!(end, None | Some(Err(_))), "no more data: {end:?}");
    assert!(
        quiet.elapsed() >= ms(450),
        "after the idle timeout: {:?}",
        quiet.elapsed()
    );
}

/// An HTTP/1.1 upstream that switches to any upgrade asked of it (answering the key it got
/// as `x-key`) and echoes the tunnel's bytes; a `CONNECT` gets 200 (its target in
/// `x-connect`) and the same echo; a plain request gets 200.
async fn upgrade_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.method() == http::Method::CONNECT {
                        let target = req.uri().to_string();
                        tokio::spawn(async move {
                            let io = hyper::upgrade::on(&mut req).await.unwrap();
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        resp.headers_mut()
                            .insert("x-connect", HeaderValue::from_str(&target).unwrap());
                        return Ok::<_, Infallible>(resp);
                    }
                    if !req.headers().contains_key("upgrade") {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())));
                    }
                    let key = req.headers()["sec-websocket-key"].clone();
                    tokio::spawn(async move {
                        let io = hyper::upgrade::on(&mut req).await.unwrap();
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    let h = resp.headers_mut();
                    h.insert("upgrade", HeaderValue::from_static("websocket"));
                    h.insert("connection", HeaderValue::from_static("upgrade"));
                    h.insert(
                        "sec-websocket-accept",
                        HeaderValue::from_static("yours to check"),
                    );
                    h.insert("x-key", key);
                    Ok(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Sends the HTTP/1.1 request `head` on a new connection captured as going to
/// `vip(port)`: the response head (up to the blank line, or what came before the
/// connection closed) and the connection, for what follows it.
async fn exchange_head(node: &Node, port: u16, head: &str) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = node.connect(vip(port)).await;
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        got.push(b[0]);
    }
    (String::from_utf8(got).unwrap(), s)
}

/// `CONNECT` as Envoy routes it: only a `connect_matcher` route takes one (a `prefix: /`
/// route does not: 404). A route with `connect_config` terminates it: 200 once the
/// upstream's TCP connection is up, then the client's bytes reach the upstream as they are,
/// over HTTP/1.1 (the connection becomes the tunnel; a half-close passes through) and over
/// HTTP/2 (the stream's DATA); an upstream that cannot be reached is a 503. A route without
/// it passes the `CONNECT` on to its upstream, which opens the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_terminated_or_passed_on_by_its_route() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (echo, _echo_task) = tcp_upstream("echo").await;
    let web = upgrade_echo().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let routes: RouteConfiguration = yaml(
        r#"
name: web
virtual_hosts:
- name: terminate
  domains: ["echo.test:7"]
  routes:
  - match: {connect_matcher: {}}
    route:
      cluster: echo
      upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]
- name: unreachable
  domains: ["dead.test:7"]
  routes:
  - match: {connect_matcher: {}}
    route:
      cluster: dead
      upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]
- name: no-connect-route
  domains: ["plain.test:7"]
  routes:
  - match: {prefix: "/"}
    route: {cluster: web}
- name: pass-on
  domains: ["*"]
  routes:
  - match: {connect_matcher: {}}
    route: {cluster: web}
  - match: {prefix: "/"}
    route: {cluster: web}
"#,
    );
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set(
            "l",
            &http_listener_with(
                "l",
                18141,
                "web",
                &[
                    "http2_protocol_options: {allow_connect: true}",
                    "upgrade_configs: [{upgrade_type: CONNECT}]",
                ],
            ),
        );
        b.set("web", &routes);
        for (name, addr) in [("echo", echo), ("web", web), ("dead", dead)] {
            b.set(name, &eds_cluster(name));
            b.set(name, &endpoints(name, &[addr]));
        }
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["echo", "web", "dead"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    // HTTP/1.1: the status line of the answer to a CONNECT for `target`, and the connection.
    let connect_h1 = |target: &'static str| {
        let node = &node;
        async move {
            let head = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n");
            exchange_head(node, 18141, &head).await
        }
    };
    let (head, mut s) = connect_h1("echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 9];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"echo:ping", "raw TCP to the upstream and back");
    // The client's half-close reaches the upstream, whose close comes back.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the upstream's close comes back")
        .unwrap();
    assert_eq!(n, 0);

    let (head, _) = connect_h1("dead.test:7").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let (head, _) = connect_h1("plain.test:7").await;
    assert!(
        head.starts_with("HTTP/1.1 404"),
        "only connect_matcher takes a CONNECT: {head}"
    );

    // Without `connect_config` the CONNECT goes to the upstream, which opens the tunnel.
    let (head, mut s) = connect_h1("other.test:9").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("x-connect: other.test:9"), "{head}");
    s.write_all(b"through the upstream's tunnel").await.unwrap();
    let mut got = [0u8; 29];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"through the upstream's tunnel");

    // HTTP/2: the tunnel is the stream.
    let (mut client, conn) = h2::client::handshake(node.connect(vip(18141)).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let connect_h2 = |client: &mut h2::client::SendRequest<Bytes>, target: &str| {
        let req = Request::builder()
            .method(http::Method::CONNECT)
            .uri(target)
            .body(())
            .unwrap();
        client.send_request(req, false).unwrap()
    };
    client = client.ready().await.unwrap();
    let (resp, mut up) = connect_h2(&mut client, "echo.test:7");
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut down = resp.into_body();
    for msg in ["one", "two"] {
        up.send_data(Bytes::from(msg), false).unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < msg.len() + 5 {
            let chunk = down.data().await.expect("echo").unwrap();
            down.flow_control().release_capacity(chunk.len()).unwrap();
            echoed.extend_from_slice(&chunk);
        }
        assert_eq!(echoed, format!("echo:{msg}").into_bytes());
    }
    // END_STREAM half-closes the upstream side; its close ends the answer.
    up.send_data(Bytes::new(), true).unwrap();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut rest = Vec::new();
        while let Some(chunk) = down.data().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        rest
    })
    .await
    .expect("the answer ends");
    assert!(rest.is_empty(), "{rest:?}");
    client = client.ready().await.unwrap();
    let (resp, _up) = connect_h2(&mut client, "plain.test:7");
    assert_eq!(resp.await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        node.metric(
            r#"myelin_proxy_upstream_connect_errors_total{protocol="http1",reason="refused"}"#
        ),
        1.0,
        "{}",
        node.scrape()
    );
}

/// TCP tunnelled over HTTP `CONNECT` both ways, as Envoy's `encapsulate_in_http2_connect`
/// and `terminate_http2_connect` examples chain them: a TCP proxy with `tunneling_config`
/// sends each connection's bytes inside a `CONNECT` (HTTP/2, streams of a pooled connection,
/// or HTTP/1.1, as its cluster speaks; the hostname filled in from the connection,
/// `headers_to_add` on it) to a
/// listener of the agent that terminates it into raw TCP to the echo server. Clients'
/// own `CONNECT`s (HTTP/1.1 and HTTP/2) are passed on to that listener over HTTP/2 and
/// HTTP/1.1 (Envoy's `proxy_connect` example). A `CONNECT` the far side refuses (no route
/// without the header) fails the client's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_is_tunnelled_in_connect_and_back_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (echo, _echo_task) = tcp_upstream("echo").await;
    let edge: SocketAddr = "127.0.0.1:18151".parse().unwrap();
    let edge_listener: Listener = yaml(&format!(
        r#"
name: edge
address: {{socket_address: {{address: "127.0.0.1", port_value: {}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM_TYPE}
      stat_prefix: edge
      http2_protocol_options: {{allow_connect: true}}
      upgrade_configs: [{{upgrade_type: CONNECT}}]
      route_config:
        name: edge
        virtual_hosts:
        - name: echo
          domains: ["echo.test:18152", "echo.test:18153", "echo.test:18154", "*.via.test:7"]
          routes:
          - match:
              connect_matcher: {{}}
              headers: [{{name: x-tunnel, string_match: {{exact: "yes"}}}}]
            route:
              cluster: echo
              upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": {ROUTER_TYPE}}}
"#,
        edge.port()
    ));
    let tunnel_listener = |name: &str, port: u16, cluster: &str, headers: &str| -> Listener {
        yaml(&format!(
            r#"
name: {name}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": {TCP_TYPE}
      stat_prefix: {name}
      cluster: {cluster}
      tunneling_config:
        hostname: "echo.test:%DOWNSTREAM_LOCAL_PORT%"
        headers_to_add: [{headers}]
"#
        ))
    };
    let with_header = "{header: {key: x-tunnel, value: 'yes'}}";
    // CONNECT passed on (no `connect_config`) to the terminating listener, over each of
    // its clusters' protocols.
    let passing = hcm_listener(
        "passing",
        18155,
        &format!(
            r#"http2_protocol_options: {{allow_connect: true}}
upgrade_configs: [{{upgrade_type: CONNECT}}]
route_config:
  name: passing
  request_headers_to_add: [{with_header}]
  virtual_hosts:
  - name: h2
    domains: ["h2.via.test:7"]
    routes:
    - match: {{connect_matcher: {{}}}}
      route: {{cluster: edge-h2}}
  - name: h1
    domains: ["h1.via.test:7"]
    routes:
    - match: {{connect_matcher: {{}}}}
      route: {{cluster: edge-h1}}"#
        ),
    );
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set("edge", &edge_listener);
        b.set(
            "over-h2",
            &tunnel_listener("over-h2", 18152, "edge-h2", with_header),
        );
        b.set(
            "over-h1",
            &tunnel_listener("over-h1", 18153, "edge-h1", with_header),
        );
        b.set("refused", &tunnel_listener("refused", 18154, "edge-h2", ""));
        b.set("passing", &passing);
        b.set("echo", &eds_cluster("echo"));
        b.set("echo", &endpoints("echo", &[echo]));
        b.set("edge-h2", &h2_cluster("edge-h2"));
        b.set("edge-h2", &endpoints("edge-h2", &[edge]));
        b.set("edge-h1", &eds_cluster("edge-h1"));
        b.set("edge-h1", &endpoints("edge-h1", &[edge]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["echo", "edge-h2", "edge-h1"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(
        type_url::LISTENER,
        &["edge", "over-h2", "over-h1", "refused", "passing"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    // The bound listener is up once it accepts.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(edge).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for port in [18152, 18153] {
        let mut s = node.connect(vip(port)).await;
        for msg in ["first", "second"] {
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut got = vec![0u8; msg.len() + 5];
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
                .await
                .unwrap_or_else(|_| panic!("port {port}: no echo"))
                .unwrap();
            assert_eq!(got, format!("echo:{msg}").into_bytes(), "port {port}");
        }
        // A half-close travels both tunnels; the echo server's close comes back.
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed")
            .unwrap();
        assert_eq!(n, 0, "port {port}");
    }
    // The tunnels of an HTTP/2 cluster are streams of its pooled connections, as Envoy
    // multiplexes them: two at once open no connection beside the one the first tunnel
    // above left in the pool (the edge listener counts what it accepts).
    let h2_accepted = || node.metric("myelin_proxy_connections_opened_total{protocol=\"http2\"}");
    let before = h2_accepted();
    assert!(
        before >= 1.0,
        "the first HTTP/2 tunnel's connection was not counted"
    );
    let mut pair = [
        node.connect(vip(18152)).await,
        node.connect(vip(18152)).await,
    ];
    for (i, s) in pair.iter_mut().enumerate() {
        s.write_all(format!("t{i}").as_bytes()).await.unwrap();
    }
    for (i, s) in pair.iter_mut().enumerate() {
        let mut got = [0u8; 7];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("tunnel {i}: no echo"))
            .unwrap();
        assert_eq!(got, *format!("echo:t{i}").as_bytes());
    }
    assert_eq!(
        h2_accepted(),
        before,
        "a tunnel opened its own HTTP/2 connection"
    );
    drop(pair);
    // A client's CONNECT passed on to an HTTP/2 and an HTTP/1.1 upstream that terminates it,
    // from an HTTP/1.1 client (its connection becomes the tunnel) and from an HTTP/2 client
    // (the stream's DATA).
    for target in ["h2.via.test:7", "h1.via.test:7"] {
        let head = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n");
        let (head, mut s) = exchange_head(&node, 18155, &head).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{target}: {head}");
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 9];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{target}: no echo"))
            .unwrap();
        assert_eq!(&got, b"echo:ping", "{target}");
    }
    let (client, conn) = h2::client::handshake(node.connect(vip(18155)).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    for target in ["h2.via.test:7", "h1.via.test:7"] {
        let mut client = client.clone().ready().await.unwrap();
        let req = Request::builder()
            .method(http::Method::CONNECT)
            .uri(target)
            .body(())
            .unwrap();
        let (resp, mut up) = client.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{target}");
        let mut down = resp.into_body();
        up.send_data(Bytes::from_static(b"pong"), false).unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < 9 {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), down.data())
                .await
                .unwrap_or_else(|_| panic!("{target}: no echo"))
                .expect("echo")
                .unwrap();
            down.flow_control().release_capacity(chunk.len()).unwrap();
            echoed.extend_from_slice(&chunk);
        }
        assert_eq!(echoed, b"echo:pong", "{target}");
    }

    // Without the header the far side has no route (404): no tunnel, the client's
    // connection fails without a byte.
    // The reset may come before `connect` returns (the refusal is that quick here).
    if let Ok(mut s) = node.try_connect(vip(18154)).await {
        let _ = s.write_all(b"lost").await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the connection ends");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let scrape = node.scrape();
    assert!(
        scrape.contains(r#"response_code="404",grpc_status="-",response_flags="NR""#),
        "{scrape}"
    );
}

/// An HTTP/2 upstream that takes extended CONNECT (RFC 8441): a CONNECT gets 200 with its
/// `:protocol` in `x-protocol` and the stream's bytes echoed; anything else gets 200.
async fn extended_connect_h2_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    if req.method() == http::Method::CONNECT {
                        let protocol = req
                            .extensions()
                            .get::<hyper::ext::Protocol>()
                            .map_or("none".to_owned(), |p| p.as_str().to_owned());
                        resp.headers_mut()
                            .insert("x-protocol", HeaderValue::from_str(&protocol).unwrap());
                        tokio::spawn(async move {
                            let io = hyper::upgrade::on(&mut req).await.unwrap();
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Upgrades to an HTTP/2 cluster with `allow_connect` go as extended CONNECT (RFC 8441), as
/// Envoy sends them: an HTTP/1.1 WebSocket upgrade becomes a CONNECT with `:protocol
/// websocket` whose 200 the client gets as a 101 with the `Sec-WebSocket-Accept` for its
/// key (which the HTTP/2 hop does not carry), an HTTP/2 client's extended CONNECT goes as
/// it is; both then tunnel. Without `allow_connect` an HTTP/1.1 upgrade goes as a plain
/// request (no switch) and an extended CONNECT is a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_to_an_h2_cluster_go_as_extended_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = extended_connect_h2_echo().await;
    let listener = hcm_listener(
        "ws",
        18161,
        r#"http2_protocol_options: {allow_connect: true}
upgrade_configs: [{upgrade_type: websocket}]
route_config:
  name: ws
  virtual_hosts:
  - name: connect
    domains: ["a.test"]
    routes: [{match: {prefix: "/"}, route: {cluster: h2-connect}}]
  - name: plain
    domains: ["b.test"]
    routes: [{match: {prefix: "/"}, route: {cluster: h2-plain}}]"#,
    );
    let connect_cluster: Cluster = yaml(
        r#"
name: h2-connect
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {allow_connect: true}}
"#,
    );
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set("ws", &listener);
        b.set("h2-connect", &connect_cluster);
        b.set("h2-connect", &endpoints("h2-connect", &[upstream]));
        b.set("h2-plain", &h2_cluster("h2-plain"));
        b.set("h2-plain", &endpoints("h2-plain", &[upstream]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["h2-connect", "h2-plain"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node.wait_applied(type_url::LISTENER, &["ws"], &cp.version(type_url::LISTENER))
        .await;

    let upgrade_h1 = |host: &'static str| {
        let node = &node;
        async move {
            let head = format!(
                "GET /chat HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\n\
                 connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 sec-websocket-version: 13\r\n\r\n"
            );
            let (head, s) = exchange_head(node, 18161, &head).await;
            (head.to_ascii_lowercase(), s)
        }
    };
    let (head, mut s) = upgrade_h1("a.test").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-protocol: websocket"), "{head}");
    // RFC 6455's example key and its accept.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"frame bytes").await.unwrap();
    let mut got = [0u8; 11];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo")
        .unwrap();
    assert_eq!(&got, b"frame bytes");

    let (head, _) = upgrade_h1("b.test").await;
    assert!(
        head.starts_with("http/1.1 200"),
        "no switch without allow_connect: {head}"
    );
    assert!(!head.contains("x-protocol"), "{head}");

    let (client, conn) = h2::client::handshake(node.connect(vip(18161)).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client
        .send_request(Request::get("http://a.test/").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    let extended = |host: &str| {
        Request::connect(format!("http://{host}/chat"))
            .extension(h2::ext::Protocol::from_static("websocket"))
            .body(())
            .unwrap()
    };
    let (resp, mut up) = client.send_request(extended("a.test"), false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-protocol"], "websocket");
    let mut down = resp.into_body();
    up.send_data(Bytes::from_static(b"over h2 both ways"), false)
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 17 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), down.data())
            .await
            .expect("echo")
            .unwrap()
            .unwrap();
        down.flow_control().release_capacity(chunk.len()).unwrap();
        echoed.extend_from_slice(&chunk);
    }
    assert_eq!(echoed, b"over h2 both ways");
    let (resp, _up) = client.send_request(extended("b.test"), false).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::BAD_GATEWAY);
}

/// An upgrade the connection manager's `upgrade_configs` does not list is refused with
/// 403 (as in Envoy) and never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_upgrade_is_refused() {
    let ms = std::time::Duration::from_millis;
    let server = scripted("s", move |_| (200, ms(0))).await;
    let cp = ControlPlane::start().await;
    let node = retry_node(
        &cp,
        18130,
        route_to("web", "web"),
        eds_cluster("web"),
        &[server.addr],
    )
    .await;
    let stream = node.connect(vip(18130)).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn.with_upgrades());
    let resp = sender
        .send_request(
            Request::get("/chat")
                .header("host", "web")
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
}

/// A route's own `upgrade_configs` decide before the connection manager's: a route that
/// enables a type the connection manager does not list passes it, one that disables a
/// listed type refuses it (403, never upstream), a route that says nothing follows the
/// connection manager, and so does a route that answers directly (before its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_upgrade_configs_override_the_connection_manager() {
    let ms = std::time::Duration::from_millis;
    let server = scripted("s", move |_| (200, ms(0))).await;
    let cp = ControlPlane::start().await;
    // The connection manager lists only `websocket`.
    let routes: xds_api::pb::envoy::config::route::v3::RouteConfiguration = yaml(
        r#"
name: web
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/custom"}
    route: {cluster: web, upgrade_configs: [{upgrade_type: Custom-Proto}]}
  - match: {prefix: "/answered"}
    direct_response: {status: 200}
  - match: {prefix: "/no-ws"}
    route: {cluster: web, upgrade_configs: [{upgrade_type: websocket, enabled: false}]}
  - match: {prefix: "/"}
    route: {cluster: web}
"#,
    );
    let listener = http_listener_with(
        "l",
        18132,
        "web",
        &["upgrade_configs: [{upgrade_type: websocket}]"],
    );
    cp.update(|b| {
        b.set("l", &listener);
        b.set("web", &routes);
        b.set("web", &eds_cluster("web"));
        b.set("web", &endpoints("web", &[server.addr]));
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let upgrade = |path: &'static str, kind: &'static str| {
        let node = &node;
        async move {
            let stream = node.connect(vip(18132)).await;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn.with_upgrades());
            let resp = sender
                .send_request(
                    Request::get(path)
                        .header("host", "web")
                        .header("connection", "upgrade")
                        .header("upgrade", kind)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            resp.status()
        }
    };
    // The server answers 200 (it does not switch): what matters is that it was asked.
    assert_eq!(upgrade("/custom", "custom-proto").await, StatusCode::OK);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert_eq!(upgrade("/no-ws", "websocket").await, StatusCode::FORBIDDEN);
    assert_eq!(
        upgrade("/other", "custom-proto").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert_eq!(upgrade("/other", "websocket").await, StatusCode::OK);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
    // A route that answers itself has no say: the connection manager refuses first.
    assert_eq!(
        upgrade("/answered", "custom-proto").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(upgrade("/answered", "websocket").await, StatusCode::OK);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

/// The connection manager's path normalization, as Istio configures it (`normalize_path`,
/// `merge_slashes`) and with each `path_with_escaped_slashes_action` that answers locally:
/// the normalized path is what routes match and what the upstream gets, the query as it
/// came; a refused path is a 400 (a gRPC local reply to a gRPC client) and a path with
/// escaped slashes is redirected to its unescaped form, counted like other local answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalized_before_routing() {
    let b = http_upstream("b").await;
    let web = http_upstream("web").await;
    let routes: RouteConfiguration = yaml(
        r#"
name: web
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/b/c"}
    route: {cluster: b}
  - match: {prefix: "/"}
    route: {cluster: web}
"#,
    );
    let cp = ControlPlane::start().await;
    cp.update(|batch| {
        let listeners = [
            (18410, &["normalize_path: true", "merge_slashes: true"][..]),
            (
                18411,
                &["path_with_escaped_slashes_action: REJECT_REQUEST"][..],
            ),
            (
                18412,
                &[
                    "normalize_path: true",
                    "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
                ][..],
            ),
        ];
        for (port, keys) in listeners {
            let name = format!("l{port}");
            batch.set(&name, &http_listener_with(&name, port, "web", keys));
        }
        batch.set("web", &routes);
        for (name, addr) in [("b", b.addr), ("web", web.addr)] {
            batch.set(name, &eds_cluster(name));
            batch.set(name, &endpoints(name, &[addr]));
        }
    });
    let node = start(&cp).await;
    node.wait_applied(
        type_url::LISTENER,
        &["l18410", "l18411", "l18412"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["b", "web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;

    // normalize_path + merge_slashes: routed by, and sent upstream as, `/b/c`.
    let mut c = node.http_client(vip(18410)).await;
    for (path, seen) in [
        ("/a/../b//c", "b /b/c"),
        ("/./b/%63", "b /b/c"),
        ("/x/..//b/c?q=../y//z", "b /b/c?q=../y//z"),
        ("/b/c/../../d", "web /d"),
    ] {
        let (status, _, body) = c.get("web", path).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, seen), "{path}");
    }
    // A NUL cannot be normalized: 400, the upstreams never asked.
    let hits = b.hits.load(Ordering::SeqCst) + web.hits.load(Ordering::SeqCst);
    let (head, _) = exchange_head(&node, 18410, "GET /b/c%00 HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");

    // REJECT_REQUEST: any escaped slash in the path is a 400; in the query it is fine.
    let mut c = node.http_client(vip(18411)).await;
    for path in ["/b%2Fc", "/b%5cc", "/a%2f..%2fb/c"] {
        let (status, _, _) = c.get("web", path).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
    }
    let (status, _, body) = c.get("web", "/b/c?next=%2Fx").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "b /b/c?next=%2Fx")
    );
    let (status, _, body) = c.get("web", "/b/../b/c").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web /b/../b/c"),
        "no normalize_path: dot segments are left alone"
    );
    // A gRPC client gets the 400 as a gRPC status: INTERNAL.
    let (head, _) = exchange_head(
        &node,
        18411,
        "POST /b%2Fc HTTP/1.1\r\nhost: web\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("grpc-status: 13\r\n"), "{head}");
    assert_eq!(
        b.hits.load(Ordering::SeqCst) + web.hits.load(Ordering::SeqCst),
        hits + 2,
        "only the two allowed requests went upstream"
    );

    // UNESCAPE_AND_REDIRECT: 307 to the unescaped and normalized path, query kept; a path
    // without escaped slashes is forwarded, normalized.
    let (head, _) = exchange_head(
        &node,
        18412,
        "GET /x%2F..%2Fb/./c?q=%2F HTTP/1.1\r\nhost: web\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 307 "), "{head}");
    assert!(head.contains("location: /b/c?q=%2F\r\n"), "{head}");
    let mut c = node.http_client(vip(18412)).await;
    let (status, _, body) = c.get("web", "/b/x/../c").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b /b/c"));
    // To a gRPC client, which cannot follow it, the redirect is a 400 too.
    let (head, _) = exchange_head(
        &node,
        18412,
        "POST /b%2Fc HTTP/1.1\r\nhost: web\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(head.contains("grpc-status: 13\r\n"), "{head}");

    // Counted like the other local answers: no response flag of Envoy's says why.
    let series = |code: u16| {
        format!(
            "myelin_proxy_requests_total{{source_workload=\"unknown\",source_namespace=\"unknown\",response_code=\"{code}\",response_flags=\"-\"}}"
        )
    };
    assert_eq!(node.metric(&series(400)), 4.0, "{}", node.scrape());
    assert_eq!(node.metric(&series(307)), 1.0, "{}", node.scrape());
}
