//! Request mirroring end to end: routes from xDS with `request_mirror_policies` (Istio's
//! VirtualService `mirror` and `mirrorPercentage`), a captured connection, the route's
//! upstream and a mirror upstream that records what it got and answers slowly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::net::TcpListener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

const PORT: u16 = 18531;

/// What the mirror got: method, host, path, body.
type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// An HTTP/1.1 upstream that records each request and answers after `delay`.
async fn recording_upstream(delay: Duration) -> (std::net::SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let method = req.method().to_string();
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let path = req.uri().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        s.lock().unwrap().push((
                            method,
                            host,
                            path,
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"shadow"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn routes() -> RouteConfiguration {
    yaml(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {prefix: /mirrored}
    route:
      cluster: web
      request_mirror_policies: [{cluster: shadow}]
  - match: {prefix: /keep-host}
    route:
      cluster: web
      request_mirror_policies: [{cluster: shadow, disable_shadow_host_suffix_append: true}]
  - match: {prefix: /half}
    route:
      cluster: web
      request_mirror_policies:
      - cluster: shadow
        runtime_fraction: {default_value: {numerator: 50}, runtime_key: mirror.half}
  - match: {prefix: /nowhere}
    route:
      cluster: web
      request_mirror_policies: [{cluster: no-such-cluster}]
- name: mirrored-host
  domains: [mirrored-host]
  request_mirror_policies: [{cluster: shadow}]
  routes:
  - match: {prefix: /by-header}
    route:
      cluster: web
      request_mirror_policies: [{cluster_header: x-mirror-to}]
  - match: {prefix: /}
    route: {cluster: web}
- name: plain-host
  domains: [plain-host]
  routes:
  - match: {prefix: /}
    route: {cluster: web}
request_mirror_policies: [{cluster_header: x-mirror-to, disable_shadow_host_suffix_append: true}]
"#,
    )
}

async fn send(node: &Node, method: &str, path: &str, body: &'static str) -> (StatusCode, Duration) {
    let stream = node.connect(vip(PORT)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let started = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_mirror_requests_without_waiting_for_the_copies() {
    let web = http_upstream("web").await;
    // The mirror answers after half a second: the requests must not wait for it.
    let (shadow, seen) = recording_upstream(Duration::from_millis(500)).await;
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(
            b,
            "mirror",
            &http_listener_with(
                "mirror",
                PORT,
                "r",
                &["upgrade_configs: [{upgrade_type: websocket}]"],
            ),
        );
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[web.addr]));
        set(b, "shadow", &eds_cluster("shadow"));
        set(b, "shadow", &endpoints("shadow", &[shadow]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(
        type_url::LISTENER,
        &["mirror"],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(type_url::ROUTE, &["r"], &cp.version(type_url::ROUTE))
        .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web", "shadow"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    let count = || seen.lock().unwrap().len();

    // A request with a body: answered by its route's cluster, copied to the mirror with the
    // body and a `-shadow` host.
    let (status, took) = send(&node, "POST", "/mirrored/a?x=1", "hello mirror").await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(400),
        "the request waited for its copy: {took:?}"
    );
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    eventually("the copy arrived", || count() == 1).await;
    assert_eq!(
        seen.lock().unwrap()[0],
        (
            "POST".to_owned(),
            "web-shadow".to_owned(),
            "/mirrored/a?x=1".to_owned(),
            "hello mirror".to_owned()
        )
    );

    // disable_shadow_host_suffix_append keeps the host.
    send(&node, "GET", "/keep-host", "").await;
    eventually("the second copy arrived", || count() == 2).await;
    assert_eq!(seen.lock().unwrap()[1].1, "web");

    // A mirror to a cluster that does not exist is skipped; the request is not affected.
    let (status, _) = send(&node, "GET", "/nowhere", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        node.metric("myelin_proxy_mirrored_requests_total{outcome=\"skipped\"}"),
        1.0
    );

    // An upgrade is not mirrored (the bytes after its head would be a tunnel's).
    let stream = node.connect(vip(PORT)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/mirrored/ws")
        .header("host", "web")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let hits = web.hits.load(std::sync::atomic::Ordering::Relaxed);
    let _ = sender.send_request(req).await.unwrap();
    assert_eq!(
        web.hits.load(std::sync::atomic::Ordering::Relaxed),
        hits + 1,
        "the upgrade went to the route's cluster"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(), 2, "no copy of the upgrade");

    // Half of the requests (+- 6 sigma of 200).
    for _ in 0..200 {
        send(&node, "GET", "/half", "").await;
    }
    eventually("the half's copies arrived", || {
        node.metric("myelin_proxy_mirrored_requests_total{outcome=\"answered\"}") as usize
            == count()
    })
    .await;
    let halves = count() - 2;
    assert!((58..=142).contains(&halves), "{halves} of 200 mirrored");
    assert_eq!(
        node.metric("myelin_proxy_mirrored_requests_total{outcome=\"failed\"}"),
        0.0
    );

    // A virtual host's mirrors, for its routes without their own.
    let before = count();
    assert_eq!(send_to(&node, "mirrored-host", "/x", &[]).await, 200);
    eventually("the virtual host's copy arrived", || count() == before + 1).await;
    assert_eq!(seen.lock().unwrap()[before].1, "mirrored-host-shadow");
    // A route's own replace them: here its cluster comes from a header, so without the
    // header nothing is mirrored.
    let skipped = || node.metric("myelin_proxy_mirrored_requests_total{outcome=\"skipped\"}");
    let skipped0 = skipped();
    send_to(&node, "mirrored-host", "/by-header", &[]).await;
    assert_eq!(skipped(), skipped0 + 1.0);
    send_to(
        &node,
        "mirrored-host",
        "/by-header",
        &[("x-mirror-to", "nothing-here")],
    )
    .await;
    assert_eq!(skipped(), skipped0 + 2.0);
    send_to(
        &node,
        "mirrored-host",
        "/by-header",
        &[("x-mirror-to", "shadow")],
    )
    .await;
    eventually("the header's copy arrived", || count() == before + 2).await;
    // The route table's, for a virtual host with none (here by header, host kept).
    send_to(&node, "plain-host", "/t", &[("x-mirror-to", "shadow")]).await;
    eventually("the table's copy arrived", || count() == before + 3).await;
    assert_eq!(seen.lock().unwrap()[before + 2].1, "plain-host");
    send_to(&node, "plain-host", "/t", &[]).await;
    assert_eq!(skipped(), skipped0 + 3.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(), before + 3);
}

/// A GET of `path` with `Host: host` and `headers`: the status.
async fn send_to(node: &Node, host: &str, path: &str, headers: &[(&str, &str)]) -> StatusCode {
    let stream = node.connect(vip(PORT)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}
