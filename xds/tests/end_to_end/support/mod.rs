//! The harness of the end-to-end config-path tests: Envoy resources written as YAML, real
//! upstream servers on loopback, and a node (ADS client, store, feed, real proxy) whose
//! captured connections are simulated: the client binds its socket first and records the
//! original destination it "was going to" (a service VIP on loopback that nothing else
//! uses) in the lookup the proxy consults.

#![allow(dead_code)] // each test file uses a different part

pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use myelin_proxy::drain;
use myelin_proxy::metrics::ProxyMetrics;
use myelin_proxy::model::ProxyConfig;
use myelin_proxy::traffic::TrafficHandle;
use myelin_proxy::{OrigDstLookup, Proxy};
use myelin_xds::ads::{type_url, AdsClient, AdsConfig, AdsProtocol};
use myelin_xds::convert::json;
use myelin_xds::store::{ConfigStore, Snapshot};
use myelin_xds::testing::{ControlPlane, WAIT};
use prometheus_client::registry::Registry;
use prost::{Message, Name};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::Node as NodePb;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

/// The service VIP the clients "dial"; only the proxy's listeners know it. On loopback,
/// so that a connection passed through (no listener) stays on this machine.
pub const VIP: &str = "127.0.0.11";

// ---- resources, as Envoy YAML -------------------------------------------------------------

pub fn yaml<T: DeserializeOwned + Name>(text: &str) -> T {
    let v: serde_json::Value = serde_yaml::from_str(text).expect("test YAML parses");
    json::from_value(v).expect("test YAML is a valid Envoy resource")
}

pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub const TCP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// A captured-traffic listener (`bind_to_port: false`) on `0.0.0.0:port` whose HTTP
/// connection manager takes its routes from RDS `route`.
pub fn http_listener(name: &str, port: u16, route: &str) -> Listener {
    http_listener_with(name, port, route, &[])
}

/// [`http_listener`] with more connection manager keys: YAML lines, each indented relative
/// to the connection manager's own keys (e.g. `"http2_protocol_options:"`,
/// `"  allow_connect: true"`).
pub fn http_listener_with(name: &str, port: u16, route: &str, hcm: &[&str]) -> Listener {
    let mut keys = format!("rds: {{route_config_name: {route}, config_source: {{ads: {{}}}}}}\n");
    for l in hcm {
        keys.push_str(l);
        keys.push('\n');
    }
    hcm_listener(name, port, &keys)
}

/// A captured-traffic listener (`bind_to_port: false`) on `0.0.0.0:port` with an HTTP
/// connection manager whose keys (routes included, RDS or inline) are the YAML `hcm`,
/// written at the connection manager's own indentation; the router filter is added.
pub fn hcm_listener(name: &str, port: u16, hcm: &str) -> Listener {
    let hcm: String = hcm
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("      {l}\n"))
        .collect();
    yaml(&format!(
        r#"
name: {name}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM_TYPE}
      stat_prefix: {name}
{hcm}      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": {ROUTER_TYPE}}}
"#
    ))
}

/// A captured-traffic listener on `0.0.0.0:port` whose connection manager (RDS `r`) has
/// `filters` (YAML list items, written unindented) before its router.
pub fn filtered_listener(name: &str, port: u16, filters: &str) -> Listener {
    let filters: String = filters
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("      {l}\n"))
        .collect();
    yaml(&format!(
        r#"
name: {name}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM_TYPE}
      stat_prefix: {name}
      rds: {{route_config_name: r, config_source: {{ads: {{}}}}}}
      http_filters:
{filters}      - name: envoy.filters.http.router
        typed_config: {{"@type": {ROUTER_TYPE}}}
"#
    ))
}

/// A listener bound on `addr` (a plain reverse proxy).
pub fn bound_http_listener(name: &str, addr: SocketAddr, route: &str) -> Listener {
    yaml(&format!(
        r#"
name: {name}
address: {{socket_address: {{address: "{}", port_value: {}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM_TYPE}
      stat_prefix: {name}
      rds: {{route_config_name: {route}, config_source: {{ads: {{}}}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": {ROUTER_TYPE}}}
"#,
        addr.ip(),
        addr.port()
    ))
}

pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> Listener {
    yaml(&format!(
        r#"
name: {name}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: {{"@type": {TCP_TYPE}, stat_prefix: {name}, cluster: {cluster}}}
"#
    ))
}

/// All requests for any host go to `cluster`.
pub fn route_to(name: &str, cluster: &str) -> RouteConfiguration {
    yaml(&format!(
        r#"
name: {name}
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: "/"}}
    route: {{cluster: {cluster}}}
"#
    ))
}

pub fn eds_cluster(name: &str) -> Cluster {
    yaml(&format!(
        r#"
name: {name}
type: EDS
connect_timeout: 1s
eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
"#
    ))
}

/// An EDS cluster whose endpoints speak HTTP/2 (h2c).
pub fn h2_cluster(name: &str) -> Cluster {
    yaml(&format!(
        r#"
name: {name}
type: EDS
connect_timeout: 1s
eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {{http2_protocol_options: {{}}}}
"#
    ))
}

pub fn endpoints(cluster: &str, addrs: &[SocketAddr]) -> ClusterLoadAssignment {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                "    - endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    yaml(&format!(
        "cluster_name: {cluster}\nendpoints:\n  - lb_endpoints:\n{}\n",
        eps.join("\n")
    ))
}

// ---- upstream servers -----------------------------------------------------------------------

/// An HTTP/1 server that answers every request with its name and the request path (and
/// the `Host` fields it got in `x-host`, comma separated; request headers named `x-echo-*`
/// sent back), and counts the requests it served.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn http_upstream(name: &'static str) -> HttpUpstream {
    http_upstream_on(name, "127.0.0.1:0").await
}

pub async fn http_upstream_on(name: &'static str, bind: &str) -> HttpUpstream {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let body = format!("{name} {}", req.uri());
                    let hosts: Vec<_> = req
                        .headers()
                        .get_all(http::header::HOST)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    let mut resp = Response::builder()
                        .header("x-server", name)
                        .header("x-host", hosts.join(","));
                    for (k, v) in req.headers() {
                        if k.as_str().starts_with("x-echo-") {
                            resp = resp.header(k, v);
                        }
                    }
                    let resp = resp.body(Full::new(Bytes::from(body))).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    HttpUpstream { addr, hits, task }
}

/// An HTTP/1 server that answers with the request's URI and its headers, one per line (its
/// body, when it has one, last as `body: ...`), with the response header `x-upstream: echo`,
/// and counts the requests in `hits`.
pub async fn echo_upstream(hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    let mut body = format!("{}\n", req.uri());
                    for (k, v) in req.headers() {
                        body.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
                    }
                    async move {
                        // The request's body, when it has one, last.
                        let sent = req.into_body().collect().await.unwrap().to_bytes();
                        if !sent.is_empty() {
                            body.push_str(&format!("body: {}\n", String::from_utf8_lossy(&sent)));
                        }
                        let resp = Response::builder()
                            .header("x-upstream", "echo")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP server that answers each chunk it reads with `name:` and the chunk.
pub async fn tcp_upstream(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = format!("{name}:").into_bytes();
                            out.extend_from_slice(&buf[..n]);
                            if stream.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

// ---- the node: ADS client, store, feed, proxy -----------------------------------------------

#[derive(Default)]
pub struct MapLookup(Mutex<HashMap<SocketAddr, SocketAddr>>);

impl OrigDstLookup for MapLookup {
    fn original_dst(&self, peer: SocketAddr, _local: SocketAddr) -> Option<SocketAddr> {
        self.0.lock().unwrap().get(&peer).copied()
    }
}

pub struct Node {
    pub proxy: SocketAddr,
    lookup: Arc<MapLookup>,
    pub store: Arc<ConfigStore>,
    /// The proxy's config, which `feed` keeps in step with the store.
    traffic: TrafficHandle,
    registry: Registry,
    _signal: drain::Signal,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Node {
    pub async fn start(cp: &ControlPlane, protocol: AdsProtocol) -> Node {
        Self::start_with(cp, protocol, ProxyConfig::default()).await
    }

    /// With a proxy config (local workloads, for source and destination labels).
    pub async fn start_with(
        cp: &ControlPlane,
        protocol: AdsProtocol,
        proxy_config: ProxyConfig,
    ) -> Node {
        let store = Arc::new(ConfigStore::new());
        let mut config = AdsConfig::new(
            cp.uri(),
            NodePb {
                id: "node-1".into(),
                ..Default::default()
            },
        );
        config.protocol = protocol;
        let mut registry = Registry::default();
        let metrics = Arc::new(ProxyMetrics::new(
            registry.sub_registry_with_prefix("myelin"),
        ));
        let golden = Arc::new(myelin_proxy::golden::GoldenMetrics::new(
            &mut registry,
            myelin_proxy::golden::Naming::Myelin,
            Default::default(),
        ));
        let lookup = Arc::new(MapLookup::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        let (signal, watch) = drain::channel();
        let proxy = Proxy::new(Arc::new(proxy_config), lookup.clone(), metrics).with_golden(golden);
        let traffic = proxy.traffic();
        let tasks = vec![
            tokio::spawn(AdsClient::new(config, store.clone()).run()),
            tokio::spawn(myelin_xds::feed::feed(store.clone(), traffic.clone())),
            tokio::spawn(async move {
                proxy.serve(listener, watch).await.unwrap();
            }),
        ];
        Node {
            proxy: proxy_addr,
            lookup,
            store,
            traffic,
            registry,
            _signal: signal,
            tasks,
        }
    }

    /// A TCP connection to the proxy, captured as if it had been going to `dst`.
    pub async fn connect(&self, dst: SocketAddr) -> TcpStream {
        self.try_connect(dst).await.unwrap()
    }

    /// [`Node::connect`], for a connection the proxy may reset at once.
    pub async fn try_connect(&self, dst: SocketAddr) -> std::io::Result<TcpStream> {
        self.connect_from("127.0.0.1".parse().unwrap(), dst).await
    }

    /// [`Node::try_connect`] from another loopback address (another client).
    pub async fn connect_from(
        &self,
        from: std::net::IpAddr,
        dst: SocketAddr,
    ) -> std::io::Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(from, 0))?;
        self.lookup
            .0
            .lock()
            .unwrap()
            .insert(sock.local_addr()?, dst);
        sock.connect(self.proxy).await
    }

    pub async fn http_client(&self, dst: SocketAddr) -> Client {
        Client::over(self.connect(dst).await).await
    }

    /// The Prometheus text exposition of everything the node's proxy records.
    pub fn scrape(&self) -> String {
        myelin_proxy::metrics::prometheus_text(&self.registry)
    }

    pub fn metric(&self, series: &str) -> f64 {
        let out = self.scrape();
        out.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (bounded) until the store holds `version` of every resource of `type_url`
    /// named in `names`, and the proxy's config was built from that snapshot or a later one.
    pub async fn wait_applied(&self, type_url: &str, names: &[&str], version: &str) {
        self.wait_store(
            &format!("{type_url} {names:?} at version {version}"),
            |snap| {
                names
                    .iter()
                    .all(|n| snap.version(type_url, n) == Some(version))
            },
        )
        .await;
    }

    /// Waits (bounded) until the store's snapshot satisfies `done`, then until the proxy's
    /// config was built from that snapshot or a later one (`feed` builds it after the
    /// store's publish, on its own task).
    pub async fn wait_store(&self, what: &str, done: impl Fn(&Snapshot) -> bool) {
        let mut changes = self.store.subscribe();
        let stored = tokio::time::timeout(WAIT, async {
            loop {
                changes.borrow_and_update();
                let snap = self.store.snapshot();
                if done(&snap) {
                    return snap.generation;
                }
                changes.changed().await.unwrap();
            }
        })
        .await;
        let Ok(generation) = stored else {
            panic!(
                "the store never had {what}; last NACKs: {:?}",
                self.store
                    .snapshot()
                    .last_nacks
                    .values()
                    .map(|n| n.message())
                    .collect::<Vec<_>>()
            );
        };
        let mut built = self.traffic.subscribe();
        let applied = tokio::time::timeout(WAIT, built.wait_for(|g| *g >= generation)).await;
        assert!(
            matches!(applied, Ok(Ok(_))),
            "the proxy never got the store's generation {generation} with {what} (it has {})",
            self.traffic.generation()
        );
    }
}

/// A keep-alive HTTP/1 client connection.
pub struct Client {
    sender: SendRequest<Empty<Bytes>>,
    _conn: JoinHandle<()>,
}

impl Client {
    pub async fn over(stream: TcpStream) -> Client {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client {
            sender,
            _conn: conn,
        }
    }

    /// GET `path` with `Host: host` and one more header: status and `x-server`.
    pub async fn get_with_header(
        &mut self,
        host: &str,
        path: &str,
        name: &str,
        value: &str,
    ) -> anyhow::Result<(StatusCode, String)> {
        self.sender.ready().await.context("connection not ready")?;
        let req = Request::get(path)
            .header("host", host)
            .header(name, value)
            .body(Empty::new())
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .context("request failed")?;
        let status = resp.status();
        let server = resp
            .headers()
            .get("x-server")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        resp.into_body().collect().await?;
        Ok((status, server))
    }

    /// GET `path` with `Host: host`: status, `x-server` header and body.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
    ) -> anyhow::Result<(StatusCode, String, String)> {
        self.sender.ready().await.context("connection not ready")?;
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .context("request failed")?;
        let status = resp.status();
        let server = resp
            .headers()
            .get("x-server")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, server, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A response read whole, and how long its head took.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
    /// The body as it came (`body` is it as text).
    pub body_bytes: Bytes,
    pub took: Duration,
}

impl Answer {
    /// `resp` read whole; its head took `took`.
    pub async fn read(resp: http::Response<hyper::body::Incoming>, took: Duration) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            body_bytes: body,
            took,
        }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A keep-alive HTTP/1.1 connection through the node from `from` to `dst`.
pub async fn h1_sender(
    node: &Node,
    from: std::net::IpAddr,
    dst: SocketAddr,
) -> SendRequest<Empty<Bytes>> {
    let stream = node
        .connect_from(from, dst)
        .await
        .expect("the proxy accepts");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One request on `sender`: `Host: web` unless `headers` name one.
pub async fn send_on(
    sender: &mut SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    sender.ready().await.unwrap();
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "web");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let started = std::time::Instant::now();
    let resp = sender
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    Answer::read(resp, started.elapsed()).await
}

/// One request on a connection of its own from 127.0.0.1 to the captured `vip(port)`.
pub async fn request(
    node: &Node,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut sender = h1_sender(node, "127.0.0.1".parse().unwrap(), vip(port)).await;
    send_on(&mut sender, method, path, headers).await
}

/// A node whose control plane serves `listeners`, the route table `routes` (named `r`)
/// and the cluster `web` at `upstream`, once it has applied them all; the control plane
/// lives as long as the caller keeps it.
pub async fn serving(
    listeners: Vec<Listener>,
    routes: RouteConfiguration,
    upstream: SocketAddr,
) -> (ControlPlane, Node) {
    serving_with(listeners, routes, eds_cluster("web"), upstream).await
}

/// [`serving`] with a cluster `web` of the caller's (an HTTP/2 one, say).
pub async fn serving_with(
    listeners: Vec<Listener>,
    routes: RouteConfiguration,
    web: Cluster,
    upstream: SocketAddr,
) -> (ControlPlane, Node) {
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        for l in &listeners {
            set(b, &l.name, l);
        }
        set(b, "r", &routes);
        set(b, "web", &web);
        set(b, "web", &endpoints("web", &[upstream]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    for (url, names) in [
        (type_url::LISTENER, &names[..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    (cp, node)
}

pub fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), port)
}

pub fn set<M: Message + Name>(b: &mut myelin_xds::testing::Batch, name: &str, m: &M) {
    b.set(name, m);
}

/// Waits (bounded: 4 s) until `cond` holds.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} never happened");
}
