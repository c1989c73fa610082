//! End-to-end tests: real servers, real proxy, real client sockets on 127.0.0.1.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Channel};
use hyper_util::rt::TokioIo;
use myelin_proxy::drain::Drained;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn get(path: &str) -> Request<ClientBody> {
    Request::get(path)
        .header(header::HOST, "upstream.test")
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn http_keep_alive_get_and_post_on_one_connection() -> anyhow::Result<()> {
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(server.addr).await?).await?;

    for i in 0..3 {
        let resp = client.send_request(get("/hello")).await?;
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        // Every request reused the one upstream connection.
        assert_eq!(resp.headers()["x-conn-id"], "0");
        assert_eq!(body_string(resp).await?, "hello");

        let post = Request::post("/echo")
            .header(header::HOST, "upstream.test")
            .body(full(format!("post body {i}")))?;
        let resp = client.send_request(post).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-request-te"], "none");
        assert_eq!(body_string(resp).await?, format!("post body {i}"));
    }
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let labels = r#"source_workload="client",source_namespace="test-ns",response_code="200",response_flags="-""#;
    assert_eq!(
        proxy.sample(&format!("myelin_proxy_requests_total{{{labels}}}")),
        Some(6.0)
    );
    assert_eq!(
        proxy.sample(&format!(
            "myelin_proxy_request_duration_seconds_count{{{labels}}}"
        )),
        Some(6.0)
    );
    assert_eq!(
        proxy.sample(r#"myelin_proxy_connections_opened_total{protocol="http1"}"#),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn http_pipelined_requests_answered_in_order() -> anyhow::Result<()> {
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut stream = proxy.connect(server.addr).await?;
    // Three requests in one write, before reading anything.
    stream
        .write_all(
            b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nsecond\
              GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    let out = String::from_utf8(out)?;
    let hello = out.find("hello").expect("first response");
    let second = out.find("second").expect("second response");
    let not_found = out.find("404 Not Found").expect("third response");
    assert!(hello < second && second < not_found, "{out}");
    Ok(())
}

/// The plain requests a connection starts with are served by the proxy's own HTTP/1.1
/// server (`h1server`): each response framed as hyper's strict client expects it.
#[tokio::test]
async fn http_plain_requests_keep_their_framing() -> anyhow::Result<()> {
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(server.addr).await?).await?;
    // A body of unknown length goes out chunked.
    let resp = client.send_request(get("/chunked")).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::TRANSFER_ENCODING], "chunked");
    assert_eq!(body_string(resp).await?, "one,two,three");
    // HEAD (the test server has no HEAD route: its 404 without the body): no body, and
    // the next response follows at once.
    let head = Request::head("/hello")
        .header(header::HOST, "upstream.test")
        .body(empty())?;
    let resp = client.send_request(head).await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The length a GET would get ("not found").
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "9");
    assert_eq!(body_string(resp).await?, "");
    // A known length goes out as content-length; a local 404 too.
    let resp = client.send_request(get("/hello")).await?;
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "5");
    assert_eq!(body_string(resp).await?, "hello");
    let resp = client.send_request(get("/nope")).await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_string(resp).await?, "not found");
    for (code, n) in [("200", 2.0), ("404", 2.0)] {
        let labels = format!(
            r#"source_workload="client",source_namespace="test-ns",response_code="{code}",response_flags="-""#
        );
        assert_eq!(
            proxy.sample(&format!("myelin_proxy_requests_total{{{labels}}}")),
            Some(n)
        );
    }
    Ok(())
}

/// `Expect: 100-continue`: the client that waits for `100 Continue` before its body gets
/// it (and the connection serves on after the answer); a request answered without its
/// body gets no `100 Continue`, and its connection closes after the answer.
#[tokio::test]
async fn http_expect_100_continue() -> anyhow::Result<()> {
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut stream = proxy.connect(server.addr).await?;
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await?;
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
        .await
        .expect("no 100 Continue while the client waited")?;
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream
        .write_all(b"hello\r\nGET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await?;
    let out = read_to_close(&mut stream).await?;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
    assert!(!out.contains(" 100 "), "{out}");
    assert!(out.ends_with("hello"), "{out}");
    let echoed = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(echoed.starts_with("hello"), "{out}");

    let refused = refused_addr().await?;
    let mut stream = proxy.connect(refused).await?;
    stream
        .write_all(
            b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await?;
    let out = read_to_close(&mut stream).await?;
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    Ok(())
}

/// `connection: close` from the client, a client that half-closes after its request,
/// HTTP/1.0, and bytes that are no HTTP at all: each answered, and the connection closed.
#[tokio::test]
async fn http_connection_endings_from_the_client() -> anyhow::Result<()> {
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let exchange = |request: &'static [u8], half_close: bool| {
        let proxy = &proxy;
        async move {
            let mut stream = proxy.connect(server.addr).await?;
            stream.write_all(request).await?;
            if half_close {
                stream.shutdown().await?;
            }
            read_to_close(&mut stream).await
        }
    };
    let out = exchange(
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    )
    .await?;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
    assert_eq!(out.matches("connection: close\r\n").count(), 1, "{out}");
    assert!(out.ends_with("hello"), "{out}");
    let out = exchange(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n", true).await?;
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("hello"),
        "{out}"
    );
    let out = exchange(b"GET /hello HTTP/1.0\r\nHost: a\r\n\r\n", false).await?;
    assert!(out.ends_with("hello"), "{out}");
    let out = exchange(b"NOT HTTP\r\n\r\n", false).await?;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    Ok(())
}

/// A request body the proxy never read (the upstream refused the connection) is not taken
/// for the next request: the answer, then the connection closes. A client that goes away
/// in the middle of its body gets `400` `DC`.
#[tokio::test]
async fn http_request_bodies_left_unread_or_cut_short() -> anyhow::Result<()> {
    let refused = refused_addr().await?;
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut stream = proxy.connect(refused).await?;
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 23\r\n\r\n\
              GET /hello HTTP/1.1\r\n\r\n",
        )
        .await?;
    let out = read_to_close(&mut stream).await?;
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");

    let mut stream = proxy.connect(server.addr).await?;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await?;
    stream.shutdown().await?;
    let out = read_to_close(&mut stream).await?;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    proxy
        .wait_for_sample(
            r#"myelin_proxy_requests_total{source_workload="client",source_namespace="test-ns",response_code="400",response_flags="DC"}"#,
            1.0,
        )
        .await;
    Ok(())
}

#[tokio::test]
async fn http_chunked_bodies_stream_both_ways() -> anyhow::Result<()> {
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(server.addr).await?).await?;

    // Chunked request, echoed back chunk by chunk: the reply to the first chunk must
    // arrive before the second is sent, which proves nothing is buffered.
    let (mut tx, body) = Channel::<Bytes>::new(1);
    let req = Request::post("/echo")
        .header(header::HOST, "upstream.test")
        .body(body.boxed())?;
    let resp = client.send_request(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-te"], "chunked");
    assert_eq!(resp.headers()[header::TRANSFER_ENCODING], "chunked");
    let mut body = resp.into_body();
    for chunk in ["first chunk;", "second chunk;", "third"] {
        tx.send_data(Bytes::from_static(chunk.as_bytes())).await?;
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = body.frame().await.expect("body ended early")?;
            got.extend_from_slice(&frame.into_data().expect("data frame"));
        }
        assert_eq!(got, chunk.as_bytes());
    }
    drop(tx);
    assert!(body.frame().await.is_none());

    // A chunked response from the server.
    let resp = client.send_request(get("/chunked")).await?;
    assert_eq!(resp.headers()[header::TRANSFER_ENCODING], "chunked");
    assert_eq!(body_string(resp).await?, "one,two,three");
    Ok(())
}

#[tokio::test]
async fn http_upgrade_passes_bytes_both_ways() -> anyhow::Result<()> {
    let server = http_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(server.addr).await?).await?;
    let upgrade_to = |path: &str| {
        Request::get(path)
            .header(header::HOST, "upstream.test")
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "echo")
            .body(empty())
    };
    // A plain request first: its upstream connection goes back to the pool idle. An upgrade
    // the upstream refuses (a plain answer) takes it, gets its whole answer, and the
    // connection is closed after it (never pooled: hyper's client owns it).
    let resp = client.send_request(get("/hello")).await?;
    assert_eq!(resp.headers()["x-conn-id"], "0");
    assert_eq!(body_string(resp).await?, "hello");
    let resp = client.send_request(upgrade_to("/hello")?).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-conn-id"], "0");
    assert_eq!(body_string(resp).await?, "hello");
    // A new connection, pooled, which the accepted upgrade below takes over.
    let resp = client.send_request(get("/hello")).await?;
    assert_eq!(resp.headers()["x-conn-id"], "1");
    assert_eq!(body_string(resp).await?, "hello");

    let resp = client.send_request(upgrade_to("/upgrade")?).await?;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[header::UPGRADE], "echo");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await?);
    for msg in [
        &b"ping"[..],
        b"\x00\x01binary\xff",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        io.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        io.read_exact(&mut buf).await?;
        assert_eq!(buf, msg);
    }
    // Half-close through the tunnel: the server answers EOF with "bye".
    io.shutdown().await?;
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await?;
    assert_eq!(rest, b"bye");

    let flags = r#"response_code="101",response_flags="-""#;
    assert!(proxy.scrape().contains(flags), "{}", proxy.scrape());
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    Ok(())
}

#[tokio::test]
async fn http_upstream_refused_is_503_uf() -> anyhow::Result<()> {
    let dst = refused_addr().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(dst).await?).await?;

    for _ in 0..2 {
        let resp = client.send_request(get("/")).await?;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body_string(resp).await?.contains("connection refused"));
    }
    assert_eq!(
        proxy.sample(
            r#"myelin_proxy_requests_total{source_workload="client",source_namespace="test-ns",response_code="503",response_flags="UF"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        proxy.sample(
            r#"myelin_proxy_upstream_connect_errors_total{protocol="http1",reason="refused"}"#
        ),
        Some(2.0)
    );
    Ok(())
}

#[tokio::test]
async fn http_upstream_reset_is_502_uc() -> anyhow::Result<()> {
    // Reads the request head, then closes without answering.
    let dst = tcp_server(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
    })
    .await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(dst).await?).await?;
    let resp = client.send_request(get("/")).await?;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        proxy.sample(
            r#"myelin_proxy_requests_total{source_workload="client",source_namespace="test-ns",response_code="502",response_flags="UC"}"#
        ),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn http_reconnects_after_upstream_closes_idle_connection() -> anyhow::Result<()> {
    // Answers one request per connection, then closes it (without saying so).
    let dst = tcp_server(|mut s| async move {
        let mut buf = [0u8; 1024];
        if s.read(&mut buf).await.unwrap_or(0) > 0 {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(dst).await?).await?;
    for _ in 0..3 {
        let resp = client.send_request(get("/")).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_string(resp).await?, "ok");
    }
    Ok(())
}

#[tokio::test]
async fn missing_orig_dst_closes_and_counts() -> anyhow::Result<()> {
    let proxy = TestProxy::start(config()).await?;
    let mut stream = proxy.connect_uncaptured().await?;
    let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    let mut buf = [0u8; 16];
    match stream.read(&mut buf).await {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection closed, read {n} bytes"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
    assert_eq!(
        proxy.sample("myelin_proxy_orig_dst_missing_total"),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn opaque_echo_of_several_mib() -> anyhow::Result<()> {
    const LEN: usize = 4 * 1024 * 1024 + 17;
    let dst = echo_server().await?;
    let proxy = TestProxy::start(config()).await?;
    let stream = proxy.connect(dst).await?;
    let (mut r, mut w) = stream.into_split();
    // Starts with a byte no HTTP method starts with, so detection decides at once.
    let mut data = pattern(LEN, 42);
    data[0] = 0;
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await?;
        io::Result::Ok(())
    });
    let mut got = Vec::with_capacity(LEN);
    r.read_to_end(&mut got).await?;
    writer.await??;
    assert_eq!(got.len(), LEN);
    assert!(got == data, "echoed bytes differ");

    let labels = r#"source_workload="client",source_namespace="test-ns""#;
    for dir in ["sent", "received"] {
        assert_eq!(
            proxy.sample(&format!(
                "myelin_proxy_tcp_bytes_total{{direction=\"{dir}\",{labels}}}"
            )),
            Some(LEN as f64),
            "{dir}"
        );
    }
    assert_eq!(
        proxy.sample(r#"myelin_proxy_connections_opened_total{protocol="opaque"}"#),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn opaque_half_close_reaches_server_and_reply_comes_back() -> anyhow::Result<()> {
    // Reads until EOF, then replies with what it got.
    let dst = tcp_server(|mut s| async move {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_ok() {
            let reply = format!("got {} bytes: {}", got.len(), String::from_utf8_lossy(&got));
            let _ = s.write_all(reply.as_bytes()).await;
        }
    })
    .await?;
    let proxy = TestProxy::start(config()).await?;
    let mut stream = proxy.connect(dst).await?;
    stream.write_all(b"hello, server").await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    assert_eq!(reply, "got 13 bytes: hello, server");
    Ok(())
}

#[tokio::test]
async fn server_first_banner_arrives_without_client_bytes() -> anyhow::Result<()> {
    let dst = tcp_server(|mut s| async move {
        let _ = s.write_all(b"220 smtp.test ESMTP ready\r\n").await;
        let mut buf = [0u8; 64];
        // Then echo one line back.
        if let Ok(n) = s.read(&mut buf).await {
            let _ = s.write_all(&buf[..n]).await;
        }
    })
    .await?;
    let mut cfg = config();
    cfg.sniff_timeout = Duration::from_millis(20);
    let proxy = TestProxy::start(cfg).await?;
    let mut stream = proxy.connect(dst).await?;
    let mut banner = [0u8; 27];
    stream.read_exact(&mut banner).await?;
    assert_eq!(&banner, b"220 smtp.test ESMTP ready\r\n");
    // The client talks after the banner, with bytes that look like HTTP: too late, the
    // connection is opaque.
    stream.write_all(b"GET / HTTP/1.1\r\n").await?;
    let mut echo = [0u8; 16];
    stream.read_exact(&mut echo).await?;
    assert_eq!(&echo, b"GET / HTTP/1.1\r\n");
    assert_eq!(
        proxy.sample(r#"myelin_proxy_protocol_detect_duration_seconds_count{protocol="opaque"}"#),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn opaque_connect_refused_resets_client() -> anyhow::Result<()> {
    let dst = refused_addr().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut stream = proxy.connect(dst).await?;
    stream.write_all(b"\x00binary protocol").await?;
    let mut buf = [0u8; 16];
    let err = stream
        .read(&mut buf)
        .await
        .expect_err("the proxy should reset the connection");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        proxy.sample(
            r#"myelin_proxy_upstream_connect_errors_total{protocol="opaque",reason="refused"}"#
        ),
        Some(1.0)
    );
    proxy
        .wait_for_sample(
            r#"myelin_proxy_connections_closed_total{protocol="opaque"}"#,
            1.0,
        )
        .await;
    Ok(())
}

#[tokio::test]
async fn drain_stops_accepting_and_lets_requests_finish() -> anyhow::Result<()> {
    let server = http_server().await?;
    let mut proxy = TestProxy::start(config()).await?;
    let mut client = http_client(proxy.connect(server.addr).await?).await?;
    // One request completes, one is in flight when the drain starts.
    let resp = client.send_request(get("/hello")).await?;
    assert_eq!(body_string(resp).await?, "hello");
    let in_flight = tokio::spawn(client.send_request(get("/wait")));
    // Wait until the request has reached the server (it is parked on `release`).
    while server.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let signal = proxy.take_signal();
    let drained = tokio::spawn(signal.drain(Duration::from_secs(30)));

    // The listener is closed: new connections are refused.
    let refused = async {
        loop {
            match TcpStream::connect(proxy.addr).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                // Raced the listener's close: caught in the backlog, then reset.
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("the proxy kept accepting after the drain signal");

    // The in-flight request still completes, then the proxy returns.
    assert!(!proxy.task.is_finished());
    server.release.notify_one();
    let resp = in_flight.await??;
    assert_eq!(resp.status(), StatusCode::OK);
    // The client learns that the connection ends with this response.
    assert_eq!(resp.headers()[header::CONNECTION], "close");
    assert_eq!(body_string(resp).await?, "released");
    (&mut proxy.task).await??;
    assert_eq!(drained.await?, Drained::Complete);
    Ok(())
}

#[tokio::test]
async fn drain_deadline_closes_lingering_connections() -> anyhow::Result<()> {
    let dst = echo_server().await?;
    let mut cfg = config();
    cfg.drain_deadline = Duration::from_millis(50);
    let mut proxy = TestProxy::start(cfg).await?;
    let mut stream = proxy.connect(dst).await?;
    stream.write_all(b"\x00still here").await?;
    let mut buf = [0u8; 11];
    stream.read_exact(&mut buf).await?;

    let drained = tokio::spawn(proxy.take_signal().drain(Duration::from_secs(30)));
    (&mut proxy.task).await??;
    assert_eq!(drained.await?, Drained::Complete);
    // The opaque connection was closed by force at the deadline.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    Ok(())
}

#[tokio::test]
async fn metrics_scrape_has_names_and_labels() -> anyhow::Result<()> {
    let server = http_server().await?;
    let echo = echo_server().await?;
    let proxy = TestProxy::start(config()).await?;

    let mut client = http_client(proxy.connect(server.addr).await?).await?;
    let resp = client.send_request(get("/hello")).await?;
    body_string(resp).await?;
    drop(client);

    let mut tcp = proxy.connect(echo).await?;
    tcp.write_all(b"\x01abc").await?;
    tcp.shutdown().await?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await?;

    let mut uncaptured = proxy.connect_uncaptured().await?;
    let _ = uncaptured.read(&mut [0u8; 1]).await;

    proxy
        .wait_for_sample(
            r#"myelin_proxy_connections_closed_total{protocol="opaque"}"#,
            1.0,
        )
        .await;
    let text = proxy.scrape();
    for want in [
        "# TYPE myelin_proxy_connections_opened counter",
        r#"myelin_proxy_connections_opened_total{protocol="http1"} 1"#,
        r#"myelin_proxy_connections_opened_total{protocol="opaque"} 1"#,
        r#"myelin_proxy_connections_closed_total{protocol="opaque"} 1"#,
        "# TYPE myelin_proxy_protocol_detect_duration_seconds histogram",
        "# UNIT myelin_proxy_protocol_detect_duration_seconds seconds",
        r#"myelin_proxy_protocol_detect_duration_seconds_count{protocol="http1"} 1"#,
        "myelin_proxy_orig_dst_missing_total 1",
        r#"myelin_proxy_requests_total{source_workload="client",source_namespace="test-ns",response_code="200",response_flags="-"} 1"#,
        "# TYPE myelin_proxy_request_duration_seconds histogram",
        r#"myelin_proxy_request_duration_seconds_bucket{le="+Inf",source_workload="client",source_namespace="test-ns",response_code="200",response_flags="-"} 1"#,
        r#"myelin_proxy_tcp_bytes_total{direction="sent",source_workload="client",source_namespace="test-ns"} 4"#,
        r#"myelin_proxy_tcp_bytes_total{direction="received",source_workload="client",source_namespace="test-ns"} 4"#,
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    Ok(())
}

#[tokio::test]
async fn unknown_source_workload_is_labelled_unknown() -> anyhow::Result<()> {
    let server = http_server().await?;
    // No workloads configured.
    let proxy = TestProxy::start(myelin_proxy::model::ProxyConfig::default()).await?;
    let mut client = http_client(proxy.connect(server.addr).await?).await?;
    let req = Request::builder()
        .method(Method::GET)
        .uri("/hello")
        .header(header::HOST, "x")
        .body(empty())?;
    body_string(client.send_request(req).await?).await?;
    assert_eq!(
        proxy.sample(
            r#"myelin_proxy_requests_total{source_workload="unknown",source_namespace="unknown",response_code="200",response_flags="-"}"#
        ),
        Some(1.0)
    );
    Ok(())
}
