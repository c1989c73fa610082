//! The timeouts of the connection manager, the route and the TCP proxy, end to end over
//! the real config path with raw sockets on both sides (so a stalled byte stream is
//! exactly what the test wrote): the route timeout also covers the response body, the
//! stream idle and request timeouts answer 408, an idle downstream connection is closed
//! while a slow request in flight keeps it, an idle TCP proxy connection is closed while a
//! chatty one is not, and so is an idle upgraded HTTP/1.1 connection (a tunnel).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use xds_api::pb::envoy::config::listener::v3::Listener;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A captured-traffic HTTP listener on `port` with extra HCM fields (`hcm`, YAML flow
/// mapping entries) and an inline route to cluster `web` with route `timeout`.
fn hcm_listener(port: u16, hcm: &str, timeout: &str) -> Listener {
    yaml(&format!(
        r#"
name: l{port}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM_TYPE}
      stat_prefix: l{port}
      {hcm}
      route_config:
        name: r{port}
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: {{prefix: "/"}}
            route: {{cluster: web, timeout: {timeout}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": {ROUTER_TYPE}}}
"#
    ))
}

/// An upstream that reads a request head, then writes `answer` and keeps the connection
/// open without another byte until the test ends (or `delay` first, then `answer`).
/// Reads an HTTP/1.1 head (through its blank line, with whatever came after it in the same
/// reads); `None` when the peer closes first.
async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Writes a byte every 100 ms for 1.2 s (three idle timeouts of 0.4 s) and checks each
/// comes back from the echo server behind `s`, after `prefix`.
async fn chat(s: &mut TcpStream, prefix: &[u8]) {
    let mut buf = [0u8; 64];
    for i in 0..12u8 {
        s.write_all(&[b'a' + i]).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("echo")
            .unwrap();
        assert_eq!(&buf[..n], [prefix, &[b'a' + i]].concat(), "round {i}");
        tokio::time::sleep(ms(100)).await;
    }
}

async fn stalling(answer: &'static [u8], delay: Duration) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = read_head(&mut s).await;
            tokio::time::sleep(delay).await;
            let _ = s.write_all(answer).await;
            open.push(s);
        }
    });
    (addr, task)
}

async fn node_with(cp: &ControlPlane, listener: Listener, upstream: SocketAddr) -> Node {
    cp.update(|b| {
        b.set(&listener.name.clone(), &listener);
        b.set("web", &eds_cluster("web"));
        b.set("web", &endpoints("web", &[upstream]));
    });
    let node = Node::start(cp, AdsProtocol::StateOfTheWorld).await;
    node.wait_applied(
        type_url::LISTENER,
        &[&listener.name],
        &cp.version(type_url::LISTENER),
    )
    .await;
    node.wait_applied(
        type_url::ENDPOINT,
        &["web"],
        &cp.version(type_url::ENDPOINT),
    )
    .await;
    node
}

/// Reads until EOF, an error or `limit`: what arrived, and whether the peer ended it
/// (EOF or reset) within the limit.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// The value of the golden request counter whose labels include all of `labels`.
fn requests_with(node: &Node, labels: &[&str]) -> f64 {
    node.scrape()
        .lines()
        .filter(|l| l.starts_with("myelin_requests_total{") && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The route timeout runs until the response is complete: an upstream that sends the
/// headers and part of the body, then stalls, has its stream cut at the timeout (the
/// client sees the 200 and a truncated body, then the close), flagged `UT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_covers_the_response_body() {
    let (up, _t) = stalling(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial...",
        Duration::ZERO,
    )
    .await;
    let cp = ControlPlane::start().await;
    let node = node_with(&cp, hcm_listener(18300, "", "0.3s"), up).await;
    let mut s = node.connect(vip(18300)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got:?}");
    assert!(got.ends_with("partial..."), "{got:?}");
    assert!(closed, "the stalled response was never cut");
    assert!(started.elapsed() >= ms(250), "cut before the timeout");
    tokio::time::sleep(ms(50)).await;
    assert_eq!(
        requests_with(&node, &["response_code=\"200\"", "response_flags=\"UT\""]),
        1.0,
        "{}",
        node.scrape()
    );
}

/// No byte either way for `stream_idle_timeout` before the response starts: 408
/// `stream timeout`, flagged `SI` (the route timeout is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_answers_408() {
    let (up, _t) = stalling(b"", Duration::ZERO).await;
    let cp = ControlPlane::start().await;
    let node = node_with(
        &cp,
        hcm_listener(18301, "stream_idle_timeout: 0.3s", "0s"),
        up,
    )
    .await;
    let mut s = node.connect(vip(18301)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.ends_with("stream timeout\n"), "{got:?}");
    assert!(started.elapsed() >= ms(250));
    tokio::time::sleep(ms(50)).await;
    assert_eq!(
        requests_with(&node, &["response_code=\"408\"", "response_flags=\"SI\""]),
        1.0
    );
}

/// A request body that has not fully arrived within `request_timeout`: 408 `request
/// timeout`, although the upstream is waiting for the rest of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_408() {
    let (up, _t) = stalling(b"", Duration::ZERO).await;
    let cp = ControlPlane::start().await;
    let node = node_with(&cp, hcm_listener(18302, "request_timeout: 0.3s", "5s"), up).await;
    let mut s = node.connect(vip(18302)).await;
    s.write_all(b"POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf))
        .await
        .expect("no answer before the route timeout")
        .unwrap();
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.ends_with("request timeout\n"), "{got:?}");
}

/// A keep-alive connection with no request in flight is closed after the connection
/// manager's `idle_timeout`; a request that takes longer than it keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_downstream_connection_is_closed_but_not_a_busy_one() {
    let (up, _t) = stalling(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", ms(700)).await;
    let cp = ControlPlane::start().await;
    let node = node_with(
        &cp,
        hcm_listener(
            18303,
            "common_http_protocol_options: {idle_timeout: 0.3s}",
            "5s",
        ),
        up,
    )
    .await;
    let mut s = node.connect(vip(18303)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.ends_with(b"ok") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the slow response (700 ms, idle timeout 300 ms) never came")
            .unwrap();
        assert!(n > 0, "closed while a request was in flight");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    let idle_from = Instant::now();
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "idle connection kept: {rest:?}");
    let after = idle_from.elapsed();
    assert!(
        after >= ms(250) && after < Duration::from_secs(3),
        "{after:?}"
    );
}

/// A TCP proxy connection with no bytes for its `idle_timeout` is closed; one that keeps
/// talking more often than that lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_idle_timeout() {
    let (echo, _t) = tcp_upstream("e").await;
    let cp = ControlPlane::start().await;
    let listener: Listener = yaml(&format!(
        r#"
name: t18304
address: {{socket_address: {{address: 0.0.0.0, port_value: 18304}}}}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: {{"@type": {TCP_TYPE}, stat_prefix: t, cluster: web, idle_timeout: 0.4s}}
"#
    ));
    let node = node_with(&cp, listener, echo).await;
    let mut s = node.connect(vip(18304)).await;
    chat(&mut s, b"e:").await;
    let idle_from = Instant::now();
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed && rest.is_empty(),
        "idle TCP connection kept: {rest:?}"
    );
    assert!(idle_from.elapsed() >= ms(250), "{:?}", idle_from.elapsed());
}

/// An upstream that answers an HTTP/1.1 upgrade with `101` and then echoes every byte.
async fn upgrading_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let mut buf = [0u8; 1024];
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
                if s.write_all(switched).await.is_err() {
                    return;
                }
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
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

/// An upgraded HTTP/1.1 connection is a stream to the connection manager, as in Envoy: a
/// tunnel with no bytes either way for `stream_idle_timeout` is closed on both sides, one
/// that carries a byte more often than that lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upgraded_connection_is_closed() {
    let (up, _t) = upgrading_echo().await;
    let cp = ControlPlane::start().await;
    let node = node_with(
        &cp,
        hcm_listener(
            18305,
            "stream_idle_timeout: 0.4s\n      upgrade_configs: [{upgrade_type: websocket}]",
            "0s",
        ),
        up,
    )
    .await;
    let mut s = node.connect(vip(18305)).await;
    s.write_all(
        b"GET /chat HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut s))
        .await
        .expect("the 101")
        .expect("closed before the 101");
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    chat(&mut s, b"").await;
    let idle_from = Instant::now();
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "idle tunnel kept: {rest:?}");
    assert!(idle_from.elapsed() >= ms(250), "{:?}", idle_from.elapsed());
}

/// An upstream that reads request heads, reports each, and never answers.
async fn recording_stall() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                // Hold the connection, silent, until the proxy gives up on it.
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Sends `request` on a new connection to `port` and reads the answer's first bytes: the
/// answer and how long it took.
async fn answer_to(node: &Node, port: u16, request: &[u8]) -> (String, Duration) {
    let mut s = node.connect(vip(port)).await;
    s.write_all(request).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    (
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        started.elapsed(),
    )
}

/// A route's `max_stream_duration`, as Envoy applies it: the route `timeout` (5 s here) no
/// longer holds; the stream may last 400 ms from its start (504 once the request was
/// complete, 408 while it is still coming), and with `grpc_timeout_header_max` a request's
/// `grpc-timeout` sets that bound instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_bounds_the_stream() {
    let (up, _heads) = recording_stall().await;
    let cp = ControlPlane::start().await;
    let node = node_with(
        &cp,
        hcm_listener(
            18306,
            "",
            "5s, max_stream_duration: {max_stream_duration: 0.4s, grpc_timeout_header_max: 0s}",
        ),
        up,
    )
    .await;
    let (got, took) = answer_to(&node, 18306, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 504"), "{got:?}");
    assert!(got.ends_with("downstream duration timeout\n"), "{got:?}");
    assert!(took >= ms(350) && took < ms(3000), "{took:?}");
    let (got, took) = answer_to(
        &node,
        18306,
        b"POST /pkg.Svc/Call HTTP/1.1\r\nhost: web\r\ncontent-type: application/grpc\r\ngrpc-timeout: 150m\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    // A gRPC request gets Envoy's gRPC local reply: DEADLINE_EXCEEDED.
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(got.contains("grpc-status: 4\r\n"), "{got:?}");
    assert!(
        got.contains("grpc-message: downstream duration timeout\r\n"),
        "{got:?}"
    );
    assert!(
        took >= ms(100) && took < ms(350),
        "grpc-timeout 150m: {took:?}"
    );
    let (got, took) = answer_to(
        &node,
        18306,
        b"POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(took >= ms(350), "{took:?}");
    // Envoy flags none of them.
    assert_eq!(
        requests_with(&node, &["response_code=\"504\"", "response_flags=\"-\""]),
        1.0
    );
    assert_eq!(
        requests_with(
            &node,
            &[
                "response_code=\"200\"",
                "grpc_status=\"4\"",
                "response_flags=\"-\""
            ]
        ),
        1.0
    );
}

/// The deprecated `max_grpc_timeout`: a gRPC request's route timeout is its `grpc-timeout`
/// (`UT` when it passes: a gRPC local reply, UNAVAILABLE), capped at the maximum, and the upstream is told the timeout
/// it gets; a request that is not gRPC keeps the route's `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_grpc_timeout_takes_the_clients_deadline() {
    let (up, mut heads) = recording_stall().await;
    let cp = ControlPlane::start().await;
    let node = node_with(
        &cp,
        hcm_listener(18307, "", "0.6s, max_grpc_timeout: 1s"),
        up,
    )
    .await;
    let grpc = |timeout: &str| {
        format!(
            "POST /pkg.Svc/Call HTTP/1.1\r\nhost: web\r\ncontent-type: application/grpc\r\n{timeout}content-length: 0\r\n\r\n"
        )
    };
    let (got, took) = answer_to(&node, 18307, grpc("grpc-timeout: 200m\r\n").as_bytes()).await;
    // The route timeout's gRPC local reply: UNAVAILABLE, as Envoy maps a 504.
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(got.contains("grpc-status: 14\r\n"), "{got:?}");
    assert!(took >= ms(150) && took < ms(550), "{took:?}");
    let head = heads.recv().await.unwrap();
    assert!(head.contains("grpc-timeout: 200m\r\n"), "{head}");
    // Above the cap: the cap, told upstream.
    let (got, took) = answer_to(&node, 18307, grpc("grpc-timeout: 30S\r\n").as_bytes()).await;
    assert!(got.contains("grpc-status: 14\r\n"), "{got:?}");
    assert!(took >= ms(900) && took < ms(3000), "{took:?}");
    let head = heads.recv().await.unwrap();
    assert!(head.contains("grpc-timeout: 1000m\r\n"), "{head}");
    // Not gRPC: the route timeout.
    let (got, took) = answer_to(&node, 18307, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 504"), "{got:?}");
    assert!(took >= ms(550) && took < ms(3000), "{took:?}");
    assert_eq!(
        requests_with(&node, &["response_code=\"504\"", "response_flags=\"UT\""]),
        1.0
    );
    assert_eq!(
        requests_with(
            &node,
            &[
                "response_code=\"200\"",
                "grpc_status=\"14\"",
                "response_flags=\"UT\""
            ]
        ),
        2.0
    );
}

/// A route's `idle_timeout` replaces the connection manager's `stream_idle_timeout` for the
/// requests it takes (Envoy Gateway writes one with every route timeout); zero turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_idle_timeout_replaces_the_connection_managers() {
    // The route's 0.3 s under the connection manager's default 5 min: 408.
    let (stalled, _t) = stalling(b"", Duration::ZERO).await;
    let cp = ControlPlane::start().await;
    let node = node_with(
        &cp,
        hcm_listener(18308, "stream_idle_timeout: 300s", "0s, idle_timeout: 0.3s"),
        stalled,
    )
    .await;
    let (answer, took) = answer_to(&node, 18308, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took >= ms(250) && took < ms(3000), "{took:?}");

    // Zero: no idle timeout, although the connection manager's is 0.3 s; the answer comes
    // after 0.7 s of silence.
    let (slow, _t) = stalling(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", ms(700)).await;
    let cp = ControlPlane::start().await;
    let node = node_with(
        &cp,
        hcm_listener(18309, "stream_idle_timeout: 0.3s", "0s, idle_timeout: 0s"),
        slow,
    )
    .await;
    let (answer, took) = answer_to(&node, 18309, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(took >= ms(650), "{took:?}");
}
