//! What a connection manager does to headers itself, end to end: a captured connection
//! through listeners from xDS to an upstream that answers with the request headers it got
//! (`x-forwarded-*`, `x-request-id`, the `x-envoy-*` clean-up, `via`, `server`), with
//! Envoy's defaults and with the fields istiod and edge proxies set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

/// An HTTP/1.1 upstream answering every request with its headers, one `name: value` line
/// each, and a `server: upstream` header of its own.
async fn header_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let lines: String = req
                        .headers()
                        .iter()
                        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                        .collect();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("server", "upstream")
                                .body(Full::new(Bytes::from(lines)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(256)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// What one exchange showed: the headers the upstream got (the last value of each name),
/// and the response's headers.
struct Seen {
    upstream: HashMap<String, String>,
    response: http::HeaderMap,
}

async fn exchange(node: &Node, port: u16, headers: &[(&str, &str)]) -> Seen {
    let stream = node.connect(vip(port)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", "web");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let response = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let upstream = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Seen { upstream, response }
}

fn is_uuid_v4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && parts[2].starts_with('4')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_manager_header_rules() {
    let (upstream, _task) = header_echo().await;
    let (_cp, node) = serving(
        vec![
            http_listener("plain", 18501, "r"),
            http_listener_with(
                "edge",
                18502,
                "r",
                &[
                    "use_remote_address: true",
                    "via: 1.1 node-a",
                    "always_set_request_id_in_response: true",
                    "server_name: istio-envoy",
                    "server_header_transformation: APPEND_IF_ABSENT",
                    "request_id_extension:",
                    "  typed_config:",
                    "    \"@type\": type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                    "    use_request_id_for_trace_sampling: true",
                ],
            ),
            http_listener_with(
                "internal",
                18503,
                "r",
                &[
                    "use_remote_address: true",
                    "forward_client_cert_details: ALWAYS_FORWARD_ONLY",
                    "internal_address_config:",
                    "  cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]",
                ],
            ),
        ],
        route_to("r", "web"),
        upstream,
    )
    .await;

    // Defaults: an ID and the scheme added, the steering headers of a client that is not
    // internal removed, x-forwarded-for left alone, and the server named.
    let seen = exchange(
        &node,
        18501,
        &[
            ("x-envoy-retry-on", "5xx"),
            ("x-forwarded-for", "192.0.2.7"),
            (
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/x/sa/admin",
            ),
        ],
    )
    .await;
    let id = &seen.upstream["x-request-id"];
    assert!(is_uuid_v4(id), "{id}");
    assert_eq!(seen.upstream["x-forwarded-proto"], "http");
    assert_eq!(seen.upstream["x-forwarded-for"], "192.0.2.7");
    assert!(!seen.upstream.contains_key("x-envoy-retry-on"));
    assert!(!seen.upstream.contains_key("x-envoy-external-address"));
    // A plain-text client cannot vouch for an identity: its XFCC goes (Envoy's SANITIZE).
    assert!(!seen.upstream.contains_key("x-forwarded-client-cert"));
    assert_eq!(seen.response["server"], "myelin");
    assert!(seen.response.get("x-request-id").is_none());
    // A new ID per request, and a caller's own kept.
    let again = exchange(&node, 18501, &[]).await;
    assert_ne!(&again.upstream["x-request-id"], id);
    let mine = exchange(&node, 18501, &[("x-request-id", "trace-me")]).await;
    assert_eq!(mine.upstream["x-request-id"], "trace-me");

    // Edge: the peer appended and named as the external address, the outside's ID
    // replaced and returned, via both ways, the upstream's server name kept.
    let seen = exchange(
        &node,
        18502,
        &[
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "from-outside"),
            ("x-envoy-downstream-service-cluster", "spoofed"),
        ],
    )
    .await;
    assert_eq!(seen.upstream["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
    assert_eq!(seen.upstream["x-forwarded-proto"], "http");
    assert_eq!(seen.upstream["x-envoy-external-address"], "127.0.0.1");
    assert!(!seen
        .upstream
        .contains_key("x-envoy-downstream-service-cluster"));
    assert_eq!(seen.upstream["via"], "1.1 node-a");
    let id = &seen.upstream["x-request-id"];
    assert!(is_uuid_v4(id), "{id}");
    assert_eq!(seen.response["x-request-id"], id.as_str());
    assert_eq!(seen.response["via"], "1.1 node-a");
    assert_eq!(seen.response["server"], "upstream");

    // Internal: the client keeps its steering headers and its ID, and is told internal.
    let seen = exchange(
        &node,
        18503,
        &[
            ("x-envoy-retry-on", "5xx"),
            ("x-request-id", "inside"),
            ("x-forwarded-client-cert", "URI=spiffe://a"),
        ],
    )
    .await;
    assert_eq!(seen.upstream["x-forwarded-client-cert"], "URI=spiffe://a");
    assert_eq!(seen.upstream["x-envoy-internal"], "true");
    assert_eq!(seen.upstream["x-envoy-retry-on"], "5xx");
    assert_eq!(seen.upstream["x-request-id"], "inside");
    assert_eq!(seen.upstream["x-forwarded-for"], "127.0.0.1");
    assert!(!seen.upstream.contains_key("x-envoy-external-address"));
}

/// The status of a GET with one header of `size` bytes, over HTTP/1.1 (a fresh connection).
async fn status_with_header_of(node: &Node, port: u16, size: usize) -> u16 {
    let stream = node.connect(vip(port)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "web")
        .header("x-big", "a".repeat(size))
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

/// The same over h2c: statuses of requests with one header of each size, on one connection.
async fn h2_statuses_with_headers_of(node: &Node, port: u16, sizes: &[usize]) -> Vec<u16> {
    let stream = node.connect(vip(port)).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for size in sizes {
        let req = Request::get("http://web/")
            .header("x-big", "a".repeat(*size))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        statuses.push(sender.send_request(req).await.unwrap().status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_above_the_connection_managers_limit_are_431() {
    let (upstream, _task) = header_echo().await;
    let (_cp, node) = serving(
        vec![
            http_listener("default", 18511, "r"),
            http_listener_with("small", 18512, "r", &["max_request_headers_kb: 2"]),
        ],
        route_to("r", "web"),
        upstream,
    )
    .await;
    // 2 KiB: a head of a little more is refused, a little less served.
    assert_eq!(status_with_header_of(&node, 18512, 1500).await, 200);
    assert_eq!(status_with_header_of(&node, 18512, 2100).await, 431);
    // Envoy's default, 60 KiB: 40 KiB pass, 70 do not.
    assert_eq!(status_with_header_of(&node, 18511, 40 << 10).await, 200);
    assert_eq!(status_with_header_of(&node, 18511, 70 << 10).await, 431);
    // HTTP/2: the stream is answered 431, the connection goes on.
    assert_eq!(
        h2_statuses_with_headers_of(&node, 18512, &[1500, 2100, 100]).await,
        [200, 431, 200]
    );
    // Above the 16 KiB Myelin's HTTP/2 server allowed before: Envoy's 60 KiB hold.
    assert_eq!(
        h2_statuses_with_headers_of(&node, 18511, &[40 << 10, 70 << 10]).await,
        [200, 431]
    );
}

/// GET `/` with `Host: host`: the status, and the `host` the upstream got.
async fn host_seen(node: &Node, port: u16, host: &str) -> (u16, Option<String>) {
    let stream = node.connect(vip(port)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").header("host", host);
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let host = String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned));
    (status, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_apply_before_routing() {
    let (upstream, _task) = header_echo().await;
    // Only `web` is routed: a host with a port or a trailing dot finds no route unless the
    // connection manager's rules take them off.
    let routes: RouteConfiguration = yaml(
        r#"
name: r
virtual_hosts:
- name: web
  domains: [web]
  routes:
  - match: {prefix: "/"}
    route: {cluster: web}
"#,
    );
    let (_cp, node) = serving(
        vec![
            http_listener("plain", 18504, "r"),
            http_listener_with(
                "any",
                18505,
                "r",
                &["strip_any_host_port: true", "strip_trailing_host_dot: true"],
            ),
            http_listener_with("matching", 18506, "r", &["strip_matching_host_port: true"]),
        ],
        routes,
        upstream,
    )
    .await;

    // Envoy's default: the host as it came, so these find no route.
    assert_eq!(host_seen(&node, 18504, "web:8080").await.0, 404);
    assert_eq!(host_seen(&node, 18504, "web.").await.0, 404);
    assert_eq!(host_seen(&node, 18504, "web").await.0, 200);
    // Any port and a trailing dot taken off, for routing and upstream.
    for host in ["web:8080", "web.", "web.:18505"] {
        assert_eq!(
            host_seen(&node, 18505, host).await,
            (200, Some("web".to_owned())),
            "{host}"
        );
    }
    // Only the port the request came to (the listener's).
    assert_eq!(
        host_seen(&node, 18506, "web:18506").await,
        (200, Some("web".to_owned()))
    );
    assert_eq!(host_seen(&node, 18506, "web:8080").await.0, 404);
}

/// A GET of `path` on host `web` with `headers`, on a new connection to the node's `port`:
/// over HTTP/2 (h2c, `:scheme http`) when `h2`, else HTTP/1.1.
async fn get_web(
    node: &Node,
    port: u16,
    path: &str,
    h2: bool,
    headers: &[(&str, &str)],
) -> Response<hyper::body::Incoming> {
    let stream = node.connect(vip(port)).await;
    let mut req = if h2 {
        Request::get(format!("http://web{path}"))
    } else {
        Request::get(path).header("host", "web")
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    }
}

/// Status of a GET with `extra` header fields beyond `host` (over HTTP/2 when `h2`), and
/// the header names the upstream got.
async fn with_fields(
    node: &Node,
    port: u16,
    extra: &[(String, String)],
    h2: bool,
) -> (u16, Vec<String>) {
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let resp = get_web(node, port, "/", h2, &extra).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let names = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_owned()))
        .collect();
    (status, names)
}

fn fields(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("x-f{i}"), "v".to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_counts_and_underscores() {
    let (upstream, _task) = header_echo().await;
    let (_cp, node) = serving(
        vec![
            http_listener("default", 18507, "r"),
            http_listener_with(
                "many",
                18508,
                "r",
                &[
                    "common_http_protocol_options:",
                    "  max_headers_count: 150",
                    "  headers_with_underscores_action: DROP_HEADER",
                ],
            ),
            http_listener_with(
                "few",
                18509,
                "r",
                &[
                    "common_http_protocol_options:",
                    "  max_headers_count: 5",
                    "  headers_with_underscores_action: REJECT_REQUEST",
                ],
            ),
        ],
        route_to("r", "web"),
        upstream,
    )
    .await;
    for h2 in [false, true] {
        // Envoy's default: 100 fields (`host` is one over HTTP/1.1).
        assert_eq!(with_fields(&node, 18507, &fields(90), h2).await.0, 200);
        assert_eq!(with_fields(&node, 18507, &fields(110), h2).await.0, 431);
        // Raised to 150; and lowered to 5.
        assert_eq!(with_fields(&node, 18508, &fields(120), h2).await.0, 200);
        assert_eq!(with_fields(&node, 18508, &fields(160), h2).await.0, 431);
        assert_eq!(with_fields(&node, 18509, &fields(3), h2).await.0, 200);
        assert_eq!(with_fields(&node, 18509, &fields(8), h2).await.0, 431);

        // Underscores: kept by default, dropped or refused when configured.
        let under = vec![("x_user".to_owned(), "admin".to_owned())];
        let (status, names) = with_fields(&node, 18507, &under, h2).await;
        assert_eq!(status, 200);
        assert!(names.contains(&"x_user".to_owned()), "{names:?}");
        let (status, names) = with_fields(&node, 18508, &under, h2).await;
        assert_eq!(status, 200);
        assert!(!names.contains(&"x_user".to_owned()), "{names:?}");
        assert_eq!(with_fields(&node, 18509, &under, h2).await.0, 400);
    }
    assert_eq!(
        node.metric("myelin_proxy_headers_with_underscores_total{action=\"dropped\"}"),
        2.0
    );
    assert_eq!(
        node.metric("myelin_proxy_headers_with_underscores_total{action=\"rejected\"}"),
        2.0
    );
}

/// Sends the start of a request head and nothing more: what comes back before the
/// connection closes, and how long that took (`None`: still open after `wait`).
async fn partial_head(node: &Node, port: u16, wait: Duration) -> Option<(String, Duration)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = node.connect(vip(port)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nx-slow: 1")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut got)).await {
        Ok(_) => Some((
            String::from_utf8_lossy(&got).into_owned(),
            started.elapsed(),
        )),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_bounded_by_the_connection_managers_timeouts() {
    let (upstream, _task) = header_echo().await;
    let (_cp, node) = serving(
        vec![
            http_listener("default", 18513, "r"),
            http_listener_with("headers", 18514, "r", &["request_headers_timeout: 0.3s"]),
            http_listener_with("request", 18515, "r", &["request_timeout: 0.3s"]),
            http_listener_with("idle", 18516, "r", &["stream_idle_timeout: 0.3s"]),
        ],
        route_to("r", "web"),
        upstream,
    )
    .await;
    let wait = Duration::from_secs(3);
    // `request_headers_timeout`: closed with nothing said, as Envoy does.
    let (got, took) = partial_head(&node, 18514, wait).await.expect("closed");
    assert_eq!(got, "");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // `request_timeout` and `stream_idle_timeout` count from the head's first byte too:
    // a 408.
    for port in [18515, 18516] {
        let (got, took) = partial_head(&node, port, wait).await.expect("closed");
        assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
        assert!(took >= Duration::from_millis(250), "{took:?}");
    }
    assert_eq!(
        node.metric("myelin_proxy_request_head_timeouts_total{timeout=\"request_headers\"}"),
        1.0
    );
    assert_eq!(
        node.metric("myelin_proxy_request_head_timeouts_total{timeout=\"stream_idle\"}"),
        1.0
    );
    // A partial head that came behind a whole request (pipelined) is bounded too: the
    // first request answered, then the connection closed.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = node.connect(vip(18514)).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\nGET / HTTP/1.1\r\nhost: w")
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(wait, stream.read_to_end(&mut got))
            .await
            .expect("closed")
            .unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
    }
    // Envoy's defaults: 5 minutes of stream idle time, so still open.
    assert!(partial_head(&node, 18513, Duration::from_millis(800))
        .await
        .is_none());
}

/// GET `path` with `Host: host`: status, headers and body.
async fn get_on(node: &Node, port: u16, host: &str, path: &str) -> (u16, http::HeaderMap, String) {
    let stream = node.connect(vip(port)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host);
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_are_rewritten_by_the_connection_manager() {
    let (upstream, _task) = header_echo().await;
    let routes: RouteConfiguration = yaml(
        r#"
name: r
virtual_hosts:
- name: web
  domains: [web]
  routes:
  - match: {path: /direct}
    direct_response: {status: 503, body: {inline_string: down}}
  - match: {prefix: "/"}
    route: {cluster: web}
"#,
    );
    let (_cp, node) = serving(
        vec![http_listener_with(
            "replies",
            18517,
            "r",
            &[
                "local_reply_config:",
                "  mappers:",
                "  - filter: {response_flag_filter: {flags: [NR]}}",
                "    status_code: 410",
                "    body: {inline_string: gone}",
                "    headers_to_add: [{header: {key: x-mapped, value: nr}}]",
                "  body_format:",
                "    json_format:",
                "      code: \"%RESPONSE_CODE%\"",
                "      message: \"%LOCAL_REPLY_BODY%\"",
                "      flags: \"%RESPONSE_FLAGS%\"",
                "      path: \"%REQ(:path)%\"",
            ],
        )],
        routes,
        upstream,
    )
    .await;
    // No route: the mapper's status, body and header, in the JSON format.
    let (status, headers, body) = get_on(&node, 18517, "other", "/x").await;
    assert_eq!(status, 410);
    assert_eq!(headers["x-mapped"], "nr");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body,
        "{\"code\":410,\"flags\":\"NR\",\"message\":\"gone\",\"path\":\"/x\"}\n"
    );
    // A direct response is a local reply too: formatted, its status kept.
    let (status, _, body) = get_on(&node, 18517, "web", "/direct").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "{\"code\":503,\"flags\":\"-\",\"message\":\"down\",\"path\":\"/direct\"}\n"
    );
    // What the upstream answers is its own.
    let (status, headers, body) = get_on(&node, 18517, "web", "/").await;
    assert_eq!(status, 200);
    assert!(headers.get("content-type").is_none());
    assert!(body.contains("host: web"), "{body}");
}

/// An HTTP/2 (h2c) upstream answering every request with the `:scheme` it got.
async fn h2_scheme_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let scheme = req.uri().scheme_str().unwrap_or("none").to_owned();
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            scheme,
                        ))))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    (addr, task)
}

/// [`get_web`]: status, `location`, body.
async fn fetch(
    node: &Node,
    port: u16,
    path: &str,
    h2: bool,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let resp = get_web(node, port, path, h2, headers).await;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A request's scheme as Envoy has it (`:scheme`): what routes match, what a redirect
/// keeps and what an HTTP/2 upstream is told. HTTP/2's own, else `x-forwarded-proto`'s;
/// `scheme_header_transformation` overwrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_scheme_is_matched_kept_by_redirects_and_forwarded() {
    let (upstream, _task) = h2_scheme_echo().await;
    let routes: RouteConfiguration = yaml(
        r#"
name: r
virtual_hosts:
- name: web
  domains: [web]
  routes:
  - match:
      prefix: /matched
      headers: [{name: ":scheme", string_match: {exact: https}}]
    direct_response: {status: 200, body: {inline_string: "matched https"}}
  - match: {prefix: /matched}
    direct_response: {status: 200, body: {inline_string: "not https"}}
  - match: {prefix: /old}
    redirect: {path_redirect: /new}
  - match: {prefix: /}
    route: {cluster: web}
"#,
    );
    let (_cp, node) = serving_with(
        vec![
            http_listener("own", 18518, "r"),
            http_listener_with(
                "https",
                18519,
                "r",
                &["scheme_header_transformation: {scheme_to_overwrite: https}"],
            ),
            http_listener_with(
                "upstream",
                18520,
                "r",
                &["scheme_header_transformation: {match_upstream: true}"],
            ),
        ],
        routes,
        h2_cluster("web"),
        upstream,
    )
    .await;
    let https = [("x-forwarded-proto", "https")];
    let body = |r: (u16, Option<String>, String)| {
        assert_eq!(r.0, 200);
        r.2
    };

    // HTTP/1.1: the scheme `x-forwarded-proto` names (trusted without
    // `use_remote_address`, as in Envoy), else `http`.
    assert_eq!(
        body(fetch(&node, 18518, "/matched", false, &[]).await),
        "not https"
    );
    assert_eq!(
        body(fetch(&node, 18518, "/matched", false, &https).await),
        "matched https"
    );
    assert_eq!(
        fetch(&node, 18518, "/old", false, &https)
            .await
            .1
            .as_deref(),
        Some("https://web/new")
    );
    assert_eq!(
        fetch(&node, 18518, "/old", false, &[]).await.1.as_deref(),
        Some("http://web/new")
    );
    // ... and that is the `:scheme` an HTTP/2 upstream gets.
    assert_eq!(
        body(fetch(&node, 18518, "/up", false, &https).await),
        "https"
    );
    assert_eq!(body(fetch(&node, 18518, "/up", false, &[]).await), "http");
    // HTTP/2: its own `:scheme`, whatever `x-forwarded-proto` says.
    assert_eq!(
        body(fetch(&node, 18518, "/matched", true, &https).await),
        "not https"
    );
    assert_eq!(body(fetch(&node, 18518, "/up", true, &https).await), "http");

    // Overwritten to `https`, for every request.
    for h2 in [false, true] {
        assert_eq!(
            body(fetch(&node, 18519, "/matched", h2, &[]).await),
            "matched https",
            "h2={h2}"
        );
        assert_eq!(
            fetch(&node, 18519, "/old", h2, &[("x-forwarded-proto", "http")])
                .await
                .1
                .as_deref(),
            Some("https://web/new"),
            "h2={h2}"
        );
        assert_eq!(
            body(fetch(&node, 18519, "/up", h2, &[]).await),
            "https",
            "h2={h2}"
        );
    }

    // Matched to the upstream connection (plain here) for the upstream only; routes still
    // see the request's own.
    assert_eq!(
        body(fetch(&node, 18520, "/up", false, &https).await),
        "http"
    );
    assert_eq!(
        body(fetch(&node, 18520, "/matched", false, &https).await),
        "matched https"
    );
}

/// Envoy Gateway's `clientIPDetection.customHeader`: the client's address comes from a
/// header (here trusted: an address in the internal ranges makes the request internal), and
/// a request without one is refused with the configured status and no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_comes_from_a_custom_header() {
    let (upstream, _task) = header_echo().await;
    let (_cp, node) = serving(
        vec![http_listener_with(
            "custom",
            18522,
            "r",
            &[
                "internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
                "original_ip_detection_extensions:",
                "- name: envoy.extensions.http.original_ip_detection.custom_header",
                "  typed_config:",
                "    \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig",
                "    header_name: X-Real-Client-IP",
                "    allow_extension_to_set_address_as_trusted: true",
                "    reject_with_status: {code: Forbidden}",
            ],
        )],
        route_to("r", "web"),
        upstream,
    )
    .await;
    let seen = exchange(&node, 18522, &[("x-real-client-ip", "10.7.7.7")]).await;
    assert_eq!(
        seen.upstream.get("x-envoy-internal").map(String::as_str),
        Some("true")
    );
    let seen = exchange(&node, 18522, &[("x-real-client-ip", "192.0.2.7")]).await;
    assert_eq!(seen.upstream.get("x-envoy-internal"), None);
    let resp = get_web(&node, 18522, "/", false, &[]).await;
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty(), "{body:?}");
}

/// HTTP/1.0, as Envoy's codec takes it: refused with 426 unless the connection manager
/// `accept_http_10`, and then a request without `Host` gets `default_host_for_http_10`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_is_refused_unless_accepted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, _task) = header_echo().await;
    let (_cp, node) = serving(
        vec![
            http_listener("plain", 18523, "r"),
            http_listener_with(
                "http10",
                18524,
                "r",
                &["http_protocol_options: {accept_http_10: true, default_host_for_http_10: web.example}"],
            ),
        ],
        route_to("r", "web"),
        upstream,
    )
    .await;
    let answer = |port: u16| {
        let node = &node;
        async move {
            let mut s = node.connect(vip(port)).await;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .expect("closed within 5 s")
                .unwrap();
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let refused = answer(18523).await;
    assert!(
        refused.starts_with("HTTP/1.0 426") || refused.starts_with("HTTP/1.1 426"),
        "{refused}"
    );
    let served = answer(18524).await;
    assert!(served.contains(" 200 "), "{served}");
    assert!(served.contains("host: web.example"), "{served}");
}
