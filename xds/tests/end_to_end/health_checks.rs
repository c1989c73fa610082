//! Active health checking end to end: clusters from xDS with `health_checks` (HTTP, TCP
//! and gRPC, as Envoy Gateway and Istio write them), real backends on loopback whose health
//! the tests switch, and requests through the proxy that must avoid a host its checks fail
//! and come back to it when they pass again.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

const PORT: u16 = 8080;

/// What a backend saw of one health-check request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    host: String,
    user_agent: String,
}

/// An HTTP/1 backend: `/healthz` answers 200 `ok` while `healthy`, else 503; anything else
/// answers with its name in `x-server`.
struct Backend {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    checks: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(name: &'static str, healthy: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let flag = Arc::new(AtomicBool::new(healthy));
        let checks = Arc::new(Mutex::new(Vec::new()));
        let (f, c) = (flag.clone(), checks.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (f, c) = (f.clone(), c.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .map(|v| v.to_str().unwrap_or("").to_owned())
                                    .unwrap_or_default()
                            };
                            let resp = if req.uri().path() == "/healthz" {
                                c.lock().unwrap().push(Seen {
                                    method: req.method().to_string(),
                                    path: req.uri().path().to_owned(),
                                    host: header("host"),
                                    user_agent: header("user-agent"),
                                });
                                let ok = f.load(Ordering::SeqCst);
                                Response::builder()
                                    .status(if ok { 200 } else { 503 })
                                    .body(Full::new(Bytes::from_static(if ok {
                                        b"ok"
                                    } else {
                                        b"no"
                                    })))
                                    .unwrap()
                            } else {
                                Response::builder()
                                    .header("x-server", name)
                                    .body(Full::new(Bytes::from(name)))
                                    .unwrap()
                            };
                            async move { Ok::<_, Infallible>(resp) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            healthy: flag,
            checks,
            task,
        }
    }

    fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::SeqCst);
    }

    fn checks(&self) -> Vec<Seen> {
        self.checks.lock().unwrap().clone()
    }
}

/// An EDS cluster `web` with these `health_checks` (YAML list items, indented by two) and
/// extra top-level keys.
fn web(health_checks: &str, extra: &str) -> Cluster {
    yaml(&format!(
        "name: web\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{eds_config: {{ads: {{}}}}}}\n{extra}\nhealth_checks:\n{health_checks}\n"
    ))
}

/// Endpoints of `web`: each address with its `health_check_config` (a YAML flow mapping,
/// or empty).
fn web_endpoints(eps: &[(SocketAddr, &str)]) -> ClusterLoadAssignment {
    let lines: Vec<String> = eps
        .iter()
        .map(|(a, hc)| {
            let hc = if hc.is_empty() {
                String::new()
            } else {
                format!(", health_check_config: {hc}")
            };
            format!(
                "    - endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}{hc}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    yaml(&format!(
        "cluster_name: web\nendpoints:\n  - lb_endpoints:\n{}\n",
        lines.join("\n")
    ))
}

/// A node serving `web` on the VIP's port 8080.
async fn node_with(cluster: Cluster, eps: ClusterLoadAssignment) -> (ControlPlane, Node) {
    let cp = ControlPlane::start().await;
    let listener = http_listener("l", PORT, "r");
    cp.update(|b| {
        set(b, "l", &listener);
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &cluster);
        set(b, "web", &eps);
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["l"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    (cp, node)
}

/// The servers that answer `n` requests, in order.
async fn answers(node: &Node, n: usize) -> Vec<String> {
    let mut client = node.http_client(vip(PORT)).await;
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, server, _) = client.get("web", "/").await.unwrap();
        assert_eq!(status, 200);
        out.push(server);
    }
    out
}

/// Waits (bounded: 10 s) until `n` requests are answered by exactly the servers `want`.
async fn until_served_by(node: &Node, n: usize, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let mut last = BTreeSet::new();
    for _ in 0..100 {
        last = answers(node, n).await.into_iter().collect();
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("requests never went to exactly {want:?}; last {last:?}");
}

fn transitions(node: &Node, to: &str) -> f64 {
    node.metric(&format!(
        "myelin_proxy_health_check_transitions_total{{cluster=\"web\",result=\"{to}\"}}"
    ))
}

const HTTP_CHECK: &str = "- timeout: 1s
  interval: 0.1s
  no_traffic_interval: 0.1s
  unhealthy_threshold: 2
  healthy_threshold: 2
  http_health_check: {path: /healthz}";

/// A backend whose `/healthz` turns 503 (not an expected or retriable status: failed at
/// once) takes no more requests; once it answers 200 twice in a row it takes them again.
/// The checks are GETs of the path with the cluster's name as `Host` and Envoy's user
/// agent.
#[tokio::test]
async fn http_checks_take_a_failing_host_out_and_back() {
    let a = Backend::start("a", true).await;
    let b = Backend::start("b", true).await;
    let (_cp, node) = node_with(
        web(HTTP_CHECK, ""),
        web_endpoints(&[(a.addr, ""), (b.addr, "")]),
    )
    .await;
    until_served_by(&node, 20, &["a", "b"]).await;
    assert_eq!(
        transitions(&node, "healthy"),
        2.0,
        "each passed its first check"
    );

    b.set_healthy(false);
    until_served_by(&node, 40, &["a"]).await;
    assert_eq!(transitions(&node, "unhealthy"), 1.0);
    // Stays out while it fails.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(answers(&node, 40).await.iter().all(|s| s == "a"));

    b.set_healthy(true);
    until_served_by(&node, 20, &["a", "b"]).await;
    assert_eq!(transitions(&node, "healthy"), 3.0);
    assert!(
        node.metric("myelin_proxy_health_checks_total{cluster=\"web\",result=\"failure\"}") >= 1.0
    );
    assert!(
        node.metric("myelin_proxy_health_checks_total{cluster=\"web\",result=\"success\"}") >= 4.0
    );

    let seen = b.checks();
    assert!(seen.len() >= 4, "{seen:?}");
    for s in &seen {
        assert_eq!(
            (
                s.method.as_str(),
                s.path.as_str(),
                s.host.as_str(),
                s.user_agent.as_str()
            ),
            ("GET", "/healthz", "web", "Envoy/HC")
        );
    }
}

/// A host that fails from the start never takes traffic once its first check is in; one
/// whose checks are disabled by its endpoint (`disable_active_health_check`) always does,
/// and is never checked.
#[tokio::test]
async fn new_hosts_wait_for_their_first_pass_and_disabled_ones_are_not_checked() {
    let a = Backend::start("a", true).await;
    let bad = Backend::start("bad", false).await;
    let off = Backend::start("off", false).await;
    let (_cp, node) = node_with(
        web(HTTP_CHECK, ""),
        web_endpoints(&[
            (a.addr, ""),
            (bad.addr, ""),
            (off.addr, "{disable_active_health_check: true}"),
        ]),
    )
    .await;
    until_served_by(&node, 60, &["a", "off"]).await;
    assert!(off.checks().is_empty(), "a disabled endpoint was checked");
    // The bad one: a failed first check, then two passes to come in.
    bad.set_healthy(true);
    until_served_by(&node, 60, &["a", "bad", "off"]).await;
}

/// A TCP server that answers `pong` to every `ping` while healthy and closes the
/// connection otherwise; it counts the connections it accepts.
async fn ping_server(healthy: Arc<AtomicBool>) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                while s.read_exact(&mut buf).await.is_ok() {
                    if &buf != b"ping" || !healthy.load(Ordering::SeqCst) {
                        return;
                    }
                    if s.write_all(b"pong").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, task)
}

/// TCP checks with a payload, sent to another port of each endpoint
/// (`health_check_config.port_value`): a connection kept between checks, a host out when
/// its checker closes on it, back when it answers again.
#[tokio::test]
async fn tcp_checks_on_a_port_of_their_own() {
    let a = Backend::start("a", true).await;
    let b = Backend::start("b", true).await;
    let (ha, accepted_a, _ta) = ping_server(Arc::new(AtomicBool::new(true))).await;
    let b_ok = Arc::new(AtomicBool::new(true));
    let (hb, _, _tb) = ping_server(b_ok.clone()).await;
    let check = "- timeout: 0.5s
  interval: 0.1s
  no_traffic_interval: 0.1s
  unhealthy_threshold: 1
  healthy_threshold: 1
  tcp_health_check: {send: {text: \"70696e67\"}, receive: [{text: \"706f6e67\"}]}";
    let (_cp, node) = node_with(
        web(check, ""),
        web_endpoints(&[
            (a.addr, &format!("{{port_value: {}}}", ha.port())),
            (b.addr, &format!("{{port_value: {}}}", hb.port())),
        ]),
    )
    .await;
    until_served_by(&node, 20, &["a", "b"]).await;
    b_ok.store(false, Ordering::SeqCst);
    until_served_by(&node, 40, &["a"]).await;
    b_ok.store(true, Ordering::SeqCst);
    until_served_by(&node, 20, &["a", "b"]).await;
    // Many checks of a, one connection (reuse_connection defaults to true).
    eventually("six passed checks", || {
        node.metric("myelin_proxy_health_checks_total{cluster=\"web\",result=\"success\"}") >= 6.0
    })
    .await;
    assert_eq!(accepted_a.load(Ordering::SeqCst), 1);
    // The HTTP backends saw no health check.
    assert!(a.checks().is_empty() && b.checks().is_empty());
}

/// A gRPC health server (`grpc.health.v1.Health/Check` over HTTP/2): `SERVING` while
/// healthy, `NOT_SERVING` otherwise; it records the service names and authorities asked.
async fn grpc_health_server(
    healthy: Arc<AtomicBool>,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<(String, String)>>>,
    JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (healthy, seen) = (healthy.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (healthy, seen) = (healthy.clone(), seen.clone());
                    async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        assert_eq!(req.headers()["content-type"], "application/grpc");
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // [0][len][0x0a][n][service]
                        let service = if body.len() > 7 {
                            String::from_utf8_lossy(&body[7..]).into_owned()
                        } else {
                            String::new()
                        };
                        seen.lock().unwrap().push((service, authority));
                        let status = if healthy.load(Ordering::SeqCst) {
                            1u8
                        } else {
                            2
                        };
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                            Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let resp = Response::builder()
                            .header("content-type", "application/grpc")
                            .body(StreamBody::new(futures_util::stream::iter(frames)))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, asked, task)
}

/// gRPC checks: the service name and authority as configured; `NOT_SERVING` takes the host
/// out at once, `SERVING` brings it back.
#[tokio::test]
async fn grpc_checks_follow_the_serving_status() {
    let a = Backend::start("a", true).await;
    let b = Backend::start("b", true).await;
    let (ga, _, _t1) = grpc_health_server(Arc::new(AtomicBool::new(true))).await;
    let b_ok = Arc::new(AtomicBool::new(true));
    let (gb, asked, _t2) = grpc_health_server(b_ok.clone()).await;
    let check = "- timeout: 1s
  interval: 0.1s
  no_traffic_interval: 0.1s
  unhealthy_threshold: 3
  healthy_threshold: 1
  grpc_health_check: {service_name: my-service, authority: grpc.example}";
    let (_cp, node) = node_with(
        web(check, ""),
        web_endpoints(&[
            (a.addr, &format!("{{port_value: {}}}", ga.port())),
            (b.addr, &format!("{{port_value: {}}}", gb.port())),
        ]),
    )
    .await;
    until_served_by(&node, 20, &["a", "b"]).await;
    b_ok.store(false, Ordering::SeqCst);
    until_served_by(&node, 40, &["a"]).await;
    assert_eq!(transitions(&node, "unhealthy"), 1.0);
    b_ok.store(true, Ordering::SeqCst);
    until_served_by(&node, 20, &["a", "b"]).await;
    let asked = asked.lock().unwrap().clone();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|(s, a)| s == "my-service" && a == "grpc.example"),
        "{asked:?}"
    );
}

/// EDS drops a host that passes its checks: without `ignore_health_on_host_removal` it keeps
/// taking requests (Envoy's default) until it fails a check; with it, it is gone at once.
#[tokio::test]
async fn removed_hosts_stay_while_they_pass_unless_told_otherwise() {
    for ignore in [false, true] {
        let a = Backend::start("a", true).await;
        let b = Backend::start("b", true).await;
        let extra = format!("ignore_health_on_host_removal: {ignore}");
        let (cp, node) = node_with(
            web(HTTP_CHECK, &extra),
            web_endpoints(&[(a.addr, ""), (b.addr, "")]),
        )
        .await;
        until_served_by(&node, 20, &["a", "b"]).await;
        cp.update(|batch| set(batch, "web", &web_endpoints(&[(a.addr, "")])));
        node.wait_applied(
            type_url::ENDPOINT,
            &["web"],
            &cp.version(type_url::ENDPOINT),
        )
        .await;
        if ignore {
            assert!(answers(&node, 40).await.iter().all(|s| s == "a"));
            continue;
        }
        let got: BTreeSet<String> = answers(&node, 40).await.into_iter().collect();
        assert_eq!(got, ["a".to_string(), "b".to_string()].into());
        b.set_healthy(false);
        until_served_by(&node, 40, &["a"]).await;
        // Gone for good: passing again does not bring a removed host back.
        let checks = b.checks().len();
        b.set_healthy(true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(answers(&node, 40).await.iter().all(|s| s == "a"));
        assert_eq!(
            b.checks().len(),
            checks,
            "a removed, failed host is still checked"
        );
        // Nor does a config change elsewhere (here a route) revive it.
        cp.update(|batch| set(batch, "r", &route_to("r", "web")));
        node.wait_applied(type_url::ROUTE, &["r"], &cp.version(type_url::ROUTE))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(answers(&node, 40).await.iter().all(|s| s == "a"));
        assert_eq!(
            b.checks().len(),
            checks,
            "a config change revived a removed host"
        );
    }
}

/// An HTTP/1.1 server that answers the first request of each connection and closes the
/// connection at the second without answering it (a server whose keep-alive ran out);
/// it counts the requests it answered.
async fn one_request_per_connection() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let n = answered.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                let mut requests = 0;
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..k]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        requests += 1;
                        if requests > 1 {
                            return;
                        }
                        n.fetch_add(1, Ordering::SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, answered, task)
}

/// A kept connection that the server drops at the next check is no failure of the host:
/// the check goes again on a new connection.
#[tokio::test]
async fn a_kept_connection_closed_by_the_server_is_not_a_failure() {
    let a = Backend::start("a", true).await;
    let (hc, answered, _t) = one_request_per_connection().await;
    let check = "- timeout: 1s
  interval: 0.05s
  no_traffic_interval: 0.05s
  unhealthy_threshold: 1
  healthy_threshold: 1
  http_health_check: {path: /healthz}";
    let (_cp, node) = node_with(
        web(check, ""),
        web_endpoints(&[(a.addr, &format!("{{port_value: {}}}", hc.port()))]),
    )
    .await;
    eventually("six answered checks", || {
        answered.load(Ordering::SeqCst) >= 6
    })
    .await;
    let count = |result: &str| {
        node.metric(&format!(
            "myelin_proxy_health_checks_total{{cluster=\"web\",result=\"{result}\"}}"
        ))
    };
    assert_eq!(count("network_failure"), 0.0);
    assert_eq!(transitions(&node, "unhealthy"), 0.0);
}

/// Until the cluster has had a request, hosts are checked at `no_traffic_interval`; after
/// one, at `interval` (from the end of the wait already running, as in Envoy).
#[tokio::test]
async fn checks_slow_down_until_the_cluster_has_traffic() {
    let a = Backend::start("a", true).await;
    let check = "- timeout: 1s
  interval: 0.1s
  no_traffic_interval: 1s
  unhealthy_threshold: 2
  healthy_threshold: 2
  http_health_check: {path: /healthz}";
    let (_cp, node) = node_with(web(check, ""), web_endpoints(&[(a.addr, "")])).await;
    eventually("the first check", || !a.checks().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        a.checks().len(),
        1,
        "checked again within the no-traffic interval"
    );
    assert_eq!(answers(&node, 1).await, ["a"]);
    // The running 1 s wait ends, then checks every 0.1 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = a.checks().len();
    assert!(n >= 5, "only {n} checks after traffic started");
}
