//! The HTTP/2 server against the `h2` crate's client (through hyper) and against frames
//! written by hand where a well-behaved client cannot go (malformed requests, floods).

use std::sync::atomic::AtomicUsize;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, DuplexStream};

use super::*;

type TestBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// Answers `/echo` with the request body (and its trailers) as the response body,
/// `/trailers` with a body and `grpc-status` trailers, anything else with `hello` and the
/// request's method, authority, path and cookie in headers.
async fn service(req: Request<RequestBody>) -> Response<TestBody> {
    match req.uri().path() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/trailers" => {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, BodyError>(Frame::data(Bytes::from_static(b"msg"))),
                Ok(Frame::trailers(t)),
            ];
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        _ => {
            let mut resp = Response::new(
                Full::new(Bytes::from_static(b"hello"))
                    .map_err(|e| match e {})
                    .boxed(),
            );
            let h = resp.headers_mut();
            h.insert("x-method", req.method().as_str().parse().unwrap());
            h.insert("x-path", req.uri().path().parse().unwrap());
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            h.insert("x-authority", authority.parse().unwrap());
            if let Some(c) = req.headers().get(header::COOKIE) {
                h.insert("x-cookie", c.clone());
            }
            if let Some(p) = req.extensions().get::<ConnectProtocol>() {
                h.insert("x-protocol", p.as_str().parse().unwrap());
            }
            let fields: Vec<String> = req
                .headers()
                .iter()
                .filter(|(n, _)| *n != header::COOKIE)
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?")))
                .collect();
            h.insert("x-fields", fields.join(",").parse().unwrap());
            resp
        }
    }
}

fn start_server(limits: Limits) -> DuplexStream {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve(server, limits, service, Never));
    client
}

async fn client(io: DuplexStream) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    send
}

fn get(path: &str) -> Request<TestBody> {
    Request::get(format!("http://svc.test{path}"))
        .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        .unwrap()
}

#[tokio::test]
async fn get_requests_multiplexed_on_one_connection() {
    let send = client(start_server(Limits::default())).await;
    let mut all = Vec::new();
    for i in 0..64 {
        let mut send = send.clone();
        all.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            let resp = send.send_request(get(&format!("/r{i}?q=1"))).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-method"], "GET");
            assert_eq!(resp.headers()["x-path"], format!("/r{i}").as_str());
            assert_eq!(resp.headers()["x-authority"], "svc.test");
            assert_eq!(
                resp.headers()["content-length"],
                "5",
                "the body's known size"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }));
    }
    for t in all {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_body_larger_than_every_window_is_echoed_whole() {
    // 3 MiB each way: beyond the client's default 64 KiB stream window and ours of 1 MiB,
    // so both directions wait for WINDOW_UPDATEs.
    let mut send = client(start_server(Limits::default())).await;
    let payload: Bytes = (0..3 << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let chunks: Vec<Result<Frame<Bytes>, BodyError>> = payload
        .chunks(100_000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = Request::post("http://svc.test/echo")
        .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), payload.len());
    assert!(body == payload, "the echoed body differs");
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    let mut send = client(start_server(Limits::default())).await;
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from_static("42"));
    let frames = vec![
        Ok::<_, BodyError>(Frame::data(Bytes::from_static(b"ping"))),
        Ok(Frame::trailers(t)),
    ];
    let req = Request::post("http://svc.test/echo")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "42");
    assert_eq!(&collected.to_bytes()[..], b"ping");

    let resp = send.send_request(get("/trailers")).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"msg");
}

#[tokio::test]
async fn a_client_reset_stops_the_handler() {
    let started = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(AtomicUsize::new(0));
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (c, s) = tokio::io::duplex(1 << 16);
    let (st, dr) = (started.clone(), dropped.clone());
    tokio::spawn(serve(
        s,
        Limits::default(),
        move |_req: Request<RequestBody>| {
            let (st, guard) = (st.clone(), OnDrop(dr.clone()));
            async move {
                let _guard = guard;
                st.notify_one();
                std::future::pending::<()>().await;
                Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            }
        },
        Never,
    ));
    let mut send = client(c).await;
    let pending = send.send_request(get("/slow"));
    let task = tokio::spawn(pending);
    started.notified().await;
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    task.abort();
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the handler was not dropped after the client reset its stream");
}

/// Closes when told to.
struct CloseOn(tokio::sync::oneshot::Receiver<()>);

impl Signals for CloseOn {
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

#[tokio::test]
async fn a_graceful_close_finishes_the_stream_in_flight() {
    let (c, s) = tokio::io::duplex(1 << 16);
    let (close, closed) = tokio::sync::oneshot::channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let (rel, st) = (release.clone(), started.clone());
    let server = tokio::spawn(serve(
        s,
        Limits::default(),
        move |_req: Request<RequestBody>| {
            let (rel, st) = (rel.clone(), st.clone());
            async move {
                st.notify_one();
                rel.notified().await;
                Response::new(
                    Full::new(Bytes::from_static(b"done"))
                        .map_err(|e| match e {})
                        .boxed(),
                )
            }
        },
        CloseOn(closed),
    ));
    let mut send = client(c).await;
    let in_flight = tokio::spawn(send.send_request(get("/a")));
    started.notified().await;
    close.send(()).unwrap();
    // The GOAWAY reaches the client: it opens no new stream.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        send.ready().await.is_err() || send.send_request(get("/b")).await.is_err(),
        "a new stream was taken after the GOAWAY"
    );
    release.notify_one();
    let resp = in_flight.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    let ended = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended, Ended::Closed), "{ended:?}");
}

// Frames by hand.

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    head(&mut out, payload.len(), kind, flags, id);
    out.put_slice(payload);
    out.to_vec()
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut enc = loona_hpack::Encoder::new();
    enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", "svc.test"),
    (":path", "/"),
];

/// Reads the next frame (within 5 s): (type, flags, stream, payload).
async fn read_frame(io: &mut DuplexStream) -> (u8, u8, u32, Vec<u8>) {
    let mut h = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut h))
        .await
        .expect("a frame in time")
        .expect("a frame");
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let mut p = vec![0; len];
    io.read_exact(&mut p).await.unwrap();
    (h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]), p)
}

/// Reads frames until one of `kind` comes: (flags, stream, payload).
async fn until(io: &mut DuplexStream, kind: u8) -> (u8, u32, Vec<u8>) {
    loop {
        let (k, flags, sid, p) = read_frame(io).await;
        if k == kind {
            return (flags, sid, p);
        }
    }
}

/// A raw client past the preface that has acknowledged the server's SETTINGS (without
/// reading them: they are always sent first, and the ACK keeps the connection from ending
/// with SETTINGS_TIMEOUT on the paused clock).
async fn raw_client() -> DuplexStream {
    let mut io = start_server(Limits::default());
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    io
}

fn code(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

#[tokio::test]
async fn malformed_requests_are_reset_and_the_connection_goes_on() {
    let mut io = raw_client().await;
    let bad: [&[(&str, &str)]; 4] = [
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("X-Upper", "1"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("connection", "close"),
        ],
        &[(":method", "GET"), (":scheme", "http")],
        &[
            (":method", "GET"),
            ("a", "1"),
            (":scheme", "http"),
            (":path", "/"),
        ],
    ];
    // One HPACK context for the connection.
    let mut enc = loona_hpack::Encoder::new();
    let mut id = 1;
    for fields in bad {
        let b = enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, id, &b))
            .await
            .unwrap();
        let (_, sid, p) = until(&mut io, RST_STREAM).await;
        assert_eq!((sid, code(&p, 0)), (id, reason::PROTOCOL_ERROR));
        id += 2;
    }
    let b = enc.encode(GET.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, id, &b))
        .await
        .unwrap();
    let (flags, sid, _) = until(&mut io, HEADERS).await;
    assert_eq!(sid, id);
    assert_eq!(flags & END_STREAM, 0, "hello has a body");
}

#[tokio::test]
async fn a_header_list_above_the_limit_is_answered_431() {
    let mut io = raw_client().await;
    let big = "x".repeat(20 << 10);
    let mut fields = GET.to_vec();
    fields.push(("x-big", &big));
    let b = block(&fields);
    // Split across HEADERS and CONTINUATION frames of 16 KiB.
    let (first, rest) = b.split_at(16 << 10);
    io.write_all(&frame(HEADERS, END_STREAM, 1, first))
        .await
        .unwrap();
    io.write_all(&frame(CONTINUATION, END_HEADERS, 1, rest))
        .await
        .unwrap();
    let (flags, sid, p) = until(&mut io, HEADERS).await;
    assert_eq!(sid, 1);
    assert_ne!(flags & END_STREAM, 0);
    let mut dec = loona_hpack::Decoder::new();
    let fields = dec.decode(&p).unwrap();
    assert_eq!(fields[0], (b":status".to_vec(), b"431".to_vec()));
}

#[tokio::test]
async fn rapid_resets_close_the_connection() {
    let (c, s) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(serve(
        s,
        Limits::default(),
        |_req: Request<RequestBody>| async {
            std::future::pending::<()>().await;
            Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        },
        Never,
    ));
    let mut io = c;
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut enc = loona_hpack::Encoder::new();
    let mut id = 1;
    for _ in 0..150 {
        let b = enc.encode(GET.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, id, &b);
        burst.extend(frame(RST_STREAM, 0, id, &reason::CANCEL.to_be_bytes()));
        if io.write_all(&burst).await.is_err() {
            // The server has closed: its GOAWAY is in what is left to read.
            break;
        }
        id += 2;
    }
    let (_, _, p) = until(&mut io, GOAWAY).await;
    assert_eq!(code(&p, 4), reason::ENHANCE_YOUR_CALM);
    let ended = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended, Ended::Error(e) if e.code == reason::ENHANCE_YOUR_CALM));
}

#[tokio::test]
async fn a_wrong_preface_ends_the_connection_with_protocol_error() {
    let mut io = start_server(Limits::default());
    io.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (_, _, p) = until(&mut io, GOAWAY).await;
    assert_eq!(code(&p, 4), reason::PROTOCOL_ERROR);
}

#[tokio::test]
async fn ping_is_answered_and_cookies_are_joined() {
    let mut io = raw_client().await;
    io.write_all(&frame(PING, 0, 0, b"12345678")).await.unwrap();
    let (flags, _, p) = until(&mut io, PING).await;
    assert_eq!((flags, &p[..]), (ACK, &b"12345678"[..]));
    let mut fields = GET.to_vec();
    fields.push(("cookie", "a=1"));
    fields.push(("cookie", "b=2"));
    io.write_all(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &block(&fields),
    ))
    .await
    .unwrap();
    let (_, _, p) = until(&mut io, HEADERS).await;
    let mut dec = loona_hpack::Decoder::new();
    let got = dec.decode(&p).unwrap();
    assert!(
        got.contains(&(b"x-cookie".to_vec(), b"a=1; b=2".to_vec())),
        "{got:?}"
    );
}

/// A raw client of a server with `limits` past the preface, and the settings the server
/// announced to it: (id, value).
async fn raw_client_with(limits: Limits) -> (DuplexStream, Vec<(u16, u32)>) {
    let mut io = start_server(limits);
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let (flags, _, p) = until(&mut io, SETTINGS).await;
    assert_eq!(flags, 0);
    let settings = p
        .chunks_exact(6)
        .map(|s| (u16::from_be_bytes([s[0], s[1]]), code(s, 2)))
        .collect();
    (io, settings)
}

/// RFC 8441: `:protocol` is taken only when announced, only on CONNECT and only with the
/// usual pseudo-headers; the request then carries it. Everything else is malformed (the
/// stream reset, the connection going on).
#[tokio::test]
async fn extended_connect_only_when_announced() {
    const WS: &[(&str, &str)] = &[
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":authority", "chat.test"),
        (":path", "/socket"),
    ];
    // Not allowed (the default): not announced, and a stream that uses it is reset.
    let (mut io, settings) = raw_client_with(Limits::default()).await;
    assert!(
        !settings
            .iter()
            .any(|(id, _)| *id == SETTINGS_ENABLE_CONNECT_PROTOCOL),
        "{settings:?}"
    );
    io.write_all(&frame(HEADERS, END_HEADERS, 1, &block(WS)))
        .await
        .unwrap();
    let (_, sid, p) = until(&mut io, RST_STREAM).await;
    assert_eq!((sid, code(&p, 0)), (1, reason::PROTOCOL_ERROR));

    // Allowed.
    let (mut io, settings) = raw_client_with(Limits {
        extended_connect: true,
        ..Limits::default()
    })
    .await;
    assert!(
        settings.contains(&(SETTINGS_ENABLE_CONNECT_PROTOCOL, 1)),
        "{settings:?}"
    );
    let mut enc = loona_hpack::Encoder::new();
    let mut dec = loona_hpack::Decoder::new();
    io.write_all(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &enc.encode(WS.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
    ))
    .await
    .unwrap();
    let (flags, sid, p) = until(&mut io, HEADERS).await;
    assert_eq!((sid, flags & END_STREAM), (1, 0));
    let got = dec.decode(&p).unwrap();
    for want in [
        ("x-method", "CONNECT"),
        ("x-protocol", "websocket"),
        ("x-authority", "chat.test"),
        ("x-path", "/socket"),
    ] {
        assert!(
            got.contains(&(want.0.as_bytes().to_vec(), want.1.as_bytes().to_vec())),
            "{want:?} in {got:?}"
        );
    }
    // The answer is complete while the client's side is open: the stream is reset with
    // NO_ERROR (RFC 9113 8.1), which ends a tunnel whose upstream has closed.
    let (_, sid, p) = until(&mut io, RST_STREAM).await;
    assert_eq!((sid, code(&p, 0)), (1, reason::NO_ERROR));
    let bad: [&[(&str, &str)]; 4] = [
        // On another method.
        &[
            (":method", "GET"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":authority", "chat.test"),
            (":path", "/"),
        ],
        // Without :path.
        &[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":authority", "chat.test"),
        ],
        // Empty.
        &[
            (":method", "CONNECT"),
            (":protocol", ""),
            (":scheme", "http"),
            (":authority", "chat.test"),
            (":path", "/"),
        ],
        // Twice.
        &[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":authority", "chat.test"),
            (":path", "/"),
        ],
    ];
    let mut id = 3;
    for fields in bad {
        let b = enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, id, &b))
            .await
            .unwrap();
        let (_, sid, p) = until(&mut io, RST_STREAM).await;
        assert_eq!(
            (sid, code(&p, 0)),
            (id, reason::PROTOCOL_ERROR),
            "{fields:?}"
        );
        id += 2;
    }
    // A plain CONNECT is still one (no :scheme, no :path), without the extension.
    let plain = [(":method", "CONNECT"), (":authority", "db.test:5432")];
    io.write_all(&frame(
        HEADERS,
        END_HEADERS,
        id,
        &enc.encode(plain.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
    ))
    .await
    .unwrap();
    let (_, sid, p) = until(&mut io, HEADERS).await;
    assert_eq!(sid, id);
    let got = dec.decode(&p).unwrap();
    assert!(got.iter().all(|(n, _)| n != b"x-protocol"), "{got:?}");
}

/// Fields that repeat from the connection's last request are shared rather than parsed
/// again: each request still gets exactly its own fields, and a repeat that is malformed
/// now (an uppercase name, `te` other than trailers) is still refused.
#[tokio::test]
async fn repeated_fields_are_reused_and_still_checked() {
    let mut io = raw_client().await;
    // One decoder for all the responses: the server's encoder keeps a dynamic table.
    let mut dec = loona_hpack::Decoder::new();
    // The request's fields beside GET's, and the `x-fields` echoed (none: refused).
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: [Case<'_>; 7] = [
        (
            &[("user-agent", "t/1"), ("x-a", "1")],
            Some("user-agent=t/1,x-a=1"),
        ),
        (
            &[("user-agent", "t/1"), ("x-a", "1")],
            Some("user-agent=t/1,x-a=1"),
        ),
        (
            &[("x-a", "2"), ("user-agent", "t/1")],
            Some("x-a=2,user-agent=t/1"),
        ),
        (&[("X-A", "2")], None),
        (&[("te", "trailers")], Some("te=trailers")),
        (&[("te", "gzip")], None),
        (&[("user-agent", "t/1")], Some("user-agent=t/1")),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        let mut fields = GET.to_vec();
        fields.extend_from_slice(extra);
        io.write_all(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &block(&fields),
        ))
        .await
        .unwrap();
        match want {
            Some(want) => {
                let (_, stream, p) = until(&mut io, HEADERS).await;
                assert_eq!(stream, id);
                let got = dec.decode(&p).unwrap();
                let x = got
                    .iter()
                    .find(|(n, _)| n == b"x-fields")
                    .expect("x-fields");
                assert_eq!(String::from_utf8_lossy(&x.1), *want, "request {i}");
            }
            None => {
                let (_, stream, p) = until(&mut io, RST_STREAM).await;
                assert_eq!((stream, code(&p, 0)), (id, reason::PROTOCOL_ERROR));
            }
        }
    }
}

#[tokio::test]
async fn data_beyond_the_stream_window_is_a_flow_control_error() {
    let (mut io, s) = tokio::io::duplex(1 << 20);
    let limits = Limits {
        stream_window: 65_535,
        ..Limits::default()
    };
    // A handler that neither reads the body nor answers: the window is never given back.
    tokio::spawn(serve(
        s,
        limits,
        |req: Request<RequestBody>| async move {
            let _body = req.into_body();
            std::future::pending::<()>().await;
            Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        },
        Never,
    ));
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut fields = GET.to_vec();
    fields[0] = (":method", "POST");
    io.write_all(&frame(HEADERS, END_HEADERS, 1, &block(&fields)))
        .await
        .unwrap();
    let chunk = vec![0u8; 16_383];
    for _ in 0..4 {
        io.write_all(&frame(DATA, 0, 1, &chunk)).await.unwrap();
    }
    // 65,532 sent: 3 bytes of window left, and 4 more.
    io.write_all(&frame(DATA, 0, 1, b"1234")).await.unwrap();
    let (_, sid, p) = until(&mut io, RST_STREAM).await;
    assert_eq!((sid, code(&p, 0)), (1, reason::FLOW_CONTROL_ERROR));
    // The connection goes on: a PING is answered.
    io.write_all(&frame(PING, 0, 0, b"abcdefgh")).await.unwrap();
    let (flags, _, p) = until(&mut io, PING).await;
    assert_eq!((flags, &p[..]), (ACK, &b"abcdefgh"[..]));
}

/// The connection manager's `http2_protocol_options` as the client sees them: in SETTINGS,
/// the connection window raised to its size, a stream above the cap refused, and a smaller
/// HPACK table holding from the client's acknowledgement on (before it, the client may
/// still use the protocol's 4,096 bytes).
#[tokio::test]
async fn settings_follow_the_limits_and_a_smaller_table_holds_from_the_ack() {
    let limits = Limits {
        max_concurrent_streams: 1,
        stream_window: 100_000,
        conn_window: 200_000,
        header_table: 0,
        ..Limits::default()
    };
    let (mut io, settings) = raw_client_with(limits).await;
    for want in [
        (SETTINGS_MAX_CONCURRENT_STREAMS, 1),
        (SETTINGS_INITIAL_WINDOW_SIZE, 100_000),
        (SETTINGS_HEADER_TABLE_SIZE, 0),
    ] {
        assert!(settings.contains(&want), "{want:?} in {settings:?}");
    }
    let (_, sid, p) = until(&mut io, WINDOW_UPDATE).await;
    assert_eq!((sid, code(&p, 0)), (0, 200_000 - 65_535));

    // Not acknowledged yet: a table size update to the default is within bounds. Stream 1
    // stays open (a body is coming), so stream 3 is one too many.
    let mut post = vec![0x3f, 0xe1, 0x1f]; // size update to 4,096 (RFC 7541 6.3)
    post.extend(block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "svc.test"),
        (":path", "/echo"),
    ]));
    io.write_all(&frame(HEADERS, END_HEADERS, 1, &post))
        .await
        .unwrap();
    io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(GET)))
        .await
        .unwrap();
    let (_, sid, p) = until(&mut io, RST_STREAM).await;
    assert_eq!((sid, code(&p, 0)), (3, reason::REFUSED_STREAM));
    io.write_all(&frame(DATA, END_STREAM, 1, b"body"))
        .await
        .unwrap();
    let (_, sid, _) = until(&mut io, HEADERS).await;
    assert_eq!(sid, 1);
    let (flags, sid, p) = until(&mut io, DATA).await;
    assert_eq!(
        (flags & END_STREAM, sid, &p[..]),
        (END_STREAM, 1, &b"body"[..])
    );

    // Acknowledged: a block that shrinks the table to 0 is served, one that grows it
    // beyond 0 ends the connection.
    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    let mut get = vec![0x20]; // size update to 0
    get.extend(block(GET));
    io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &get))
        .await
        .unwrap();
    let (_, sid, _) = until(&mut io, HEADERS).await;
    assert_eq!(sid, 5);
    let mut grow = vec![0x3f, 0xe1, 0x1f];
    grow.extend(block(GET));
    io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &grow))
        .await
        .unwrap();
    let (_, _, p) = until(&mut io, GOAWAY).await;
    assert_eq!(code(&p, 4), reason::COMPRESSION_ERROR);
}

/// A handler that wakes itself each time it is polled (not through tokio, which would defer
/// the wake) does not keep the connection's task from yielding: another task on the same
/// single-threaded runtime still runs.
#[test]
fn a_handler_that_wakes_itself_does_not_starve_the_runtime() {
    struct Spin;
    impl Future for Spin {
        type Output = Response<TestBody>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    let (ran, probe) = std::sync::mpsc::channel();
    // Its own thread: if the connection never yields, that thread spins on and the test
    // fails by the timeout below instead of hanging.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut io, s) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve(
                s,
                Limits::default(),
                |_req: Request<RequestBody>| Spin,
                Never,
            ));
            io.write_all(PREFACE).await.unwrap();
            io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
            io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(GET)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = ran.send(());
            drop(io);
        });
    });
    probe
        .recv_timeout(Duration::from_secs(10))
        .expect("the other task ran");
}

/// Reads the next frame, however long it takes (for tests on the paused clock, where a
/// read timeout would be the earliest timer and fire first).
async fn next_frame(io: &mut DuplexStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut h = [0u8; 9];
    io.read_exact(&mut h).await.ok()?;
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let mut p = vec![0; len];
    io.read_exact(&mut p).await.ok()?;
    Some((h[3], h[4], p))
}

/// The next PING the server sends (not an ACK), and when it came.
async fn next_ping(io: &mut DuplexStream) -> (Vec<u8>, tokio::time::Instant) {
    loop {
        let (kind, flags, p) = next_frame(io).await.expect("a PING before the end");
        if kind == PING && flags & ACK == 0 {
            return (p, tokio::time::Instant::now());
        }
    }
}

/// `connection_keepalive` as Envoy does it: a PING each interval counted from the last
/// ACK, the connection aborted when the ACK is late, the wait restarted by anything the
/// client sends; none without the setting.
#[tokio::test(start_paused = true)]
async fn keepalive_pings_and_closes_a_silent_connection() {
    let keepalive = |jitter_bp| {
        Some(Http2Keepalive {
            interval: Some(Duration::from_secs(10)),
            timeout: Duration::from_secs(2),
            interval_jitter_bp: jitter_bp,
        })
    };
    let (mut io, server) = tokio::io::duplex(1 << 16);
    let limits = Limits {
        keepalive: keepalive(0),
        ..Limits::default()
    };
    let served = tokio::spawn(serve(server, limits, service, Never));
    let start = tokio::time::Instant::now();
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();

    // The first PING an interval after the start, answered: the next an interval after the
    // answer.
    let (payload, at) = next_ping(&mut io).await;
    assert_eq!(at - start, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    io.write_all(&frame(PING, ACK, 0, &payload)).await.unwrap();
    let answered = tokio::time::Instant::now();
    let (payload2, at) = next_ping(&mut io).await;
    assert_eq!(at - answered, Duration::from_secs(10));
    assert_ne!(payload, payload2, "each PING has its own payload");

    // Unanswered, but the client speaks 1.5 s after it (an ACK of another payload does not
    // count as the answer): the connection lives until 2 s after that, then is aborted
    // without a GOAWAY.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    io.write_all(&frame(PING, ACK, 0, b"notours!"))
        .await
        .unwrap();
    let spoke = tokio::time::Instant::now();
    loop {
        match next_frame(&mut io).await {
            None => break,
            Some((kind, ..)) => assert_ne!(kind, GOAWAY, "an abort, not a GOAWAY"),
        }
    }
    assert_eq!(tokio::time::Instant::now() - spoke, Duration::from_secs(2));
    match served.await.unwrap() {
        Ended::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        other => panic!("{other:?}"),
    }

    // With jitter: the interval plus up to 50 % of it.
    let (mut io, server) = tokio::io::duplex(1 << 16);
    let limits = Limits {
        keepalive: keepalive(5000),
        ..Limits::default()
    };
    tokio::spawn(serve(server, limits, service, Never));
    let start = tokio::time::Instant::now();
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    let (_, at) = next_ping(&mut io).await;
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(15)).contains(&(at - start)),
        "{:?}",
        at - start
    );

    // Without the setting: an hour of silence, no PING from the server.
    let mut io = raw_client().await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    io.write_all(&frame(PING, 0, 0, b"12345678")).await.unwrap();
    loop {
        let (kind, flags, p) = next_frame(&mut io).await.expect("the connection lives");
        if kind == PING {
            assert_eq!(
                (flags, &p[..]),
                (ACK, &b"12345678"[..]),
                "the server's own PING"
            );
            break;
        }
    }
}

/// The server's answers to frames on streams that are not open: resets of streams, then a
/// connection error with its code (GOAWAY) or the connection going on (the answer to a
/// PING sent after the frames).
#[derive(Debug, PartialEq)]
enum Answer {
    Rst(u32, u32),
    Goaway(u32),
    GoesOn,
}

/// Sends `frames` on a fresh connection after the request on stream 1 (GET, ended) has been
/// answered whole, then a PING: the resets, and a GOAWAY or the PING's answer.
async fn answer_to(frames: &[Vec<u8>]) -> Vec<Answer> {
    let mut io = raw_client().await;
    io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(GET)))
        .await
        .unwrap();
    loop {
        let (flags, sid, _) = until(&mut io, DATA).await;
        if sid == 1 && flags & END_STREAM != 0 {
            break;
        }
    }
    io.write_all(&frames.concat()).await.unwrap();
    io.write_all(&frame(PING, 0, 0, b"after\0\0\0"))
        .await
        .unwrap();
    let mut answers = Vec::new();
    loop {
        let (kind, _, sid, p) = read_frame(&mut io).await;
        match kind {
            RST_STREAM => answers.push(Answer::Rst(sid, code(&p, 0))),
            GOAWAY => answers.push(Answer::Goaway(code(&p, 4))),
            PING => answers.push(Answer::GoesOn),
            _ => continue,
        }
        if matches!(answers.last(), Some(Answer::Goaway(_) | Answer::GoesOn)) {
            return answers;
        }
    }
}

/// RFC 9113 5.1 and 5.1.1: DATA or HEADERS on a stream the client closed is a connection
/// error STREAM_CLOSED; a request below the last stream is PROTOCOL_ERROR; what may still
/// come on a closed stream (WINDOW_UPDATE, RST_STREAM, PRIORITY), and anything on a
/// stream we reset, is ignored; a stream that depends on itself is reset (5.3.1).
#[tokio::test]
async fn frames_on_streams_not_open() {
    let get = block(GET);
    let post = block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "svc.test"),
        (":path", "/echo"),
    ]);
    let mut self_dependent = 3u32.to_be_bytes().to_vec();
    self_dependent.push(16);
    self_dependent.extend_from_slice(&get);
    use Answer::*;
    let cases = vec![
        (
            "DATA after both ends",
            vec![frame(DATA, END_STREAM, 1, b"late")],
            vec![Goaway(reason::STREAM_CLOSED)],
        ),
        (
            "HEADERS after both ends",
            vec![frame(HEADERS, END_HEADERS | END_STREAM, 1, &get)],
            vec![Goaway(reason::STREAM_CLOSED)],
        ),
        (
            "DATA after the client's reset",
            vec![
                frame(HEADERS, END_HEADERS, 3, &post),
                frame(RST_STREAM, 0, 3, &reason::CANCEL.to_be_bytes()),
                frame(DATA, END_STREAM, 3, b"late"),
            ],
            vec![Goaway(reason::STREAM_CLOSED)],
        ),
        (
            "a request below the last stream",
            vec![
                frame(HEADERS, END_HEADERS | END_STREAM, 5, &get),
                frame(HEADERS, END_HEADERS | END_STREAM, 3, &get),
            ],
            vec![Goaway(reason::PROTOCOL_ERROR)],
        ),
        (
            "WINDOW_UPDATE, PRIORITY and RST_STREAM after both ends",
            vec![
                frame(WINDOW_UPDATE, 0, 1, &1u32.to_be_bytes()),
                frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
                frame(RST_STREAM, 0, 1, &reason::CANCEL.to_be_bytes()),
            ],
            vec![GoesOn],
        ),
        (
            "DATA and trailers the client sent before our reset",
            vec![
                // Malformed (content-length and END_STREAM disagree): reset by us.
                frame(
                    HEADERS,
                    END_HEADERS,
                    3,
                    &block(&[
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":authority", "svc.test"),
                        (":path", "/echo"),
                        ("content-length", "1"),
                    ]),
                ),
                frame(DATA, 0, 3, b"too long"),
                frame(DATA, 0, 3, b"more"),
                frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    3,
                    &block(&[("x-t", "1")]),
                ),
            ],
            vec![Rst(3, reason::PROTOCOL_ERROR), GoesOn],
        ),
        (
            "HEADERS that depend on their own stream",
            vec![frame(
                HEADERS,
                END_HEADERS | END_STREAM | PRIORITY_FLAG,
                3,
                &self_dependent,
            )],
            vec![Rst(3, reason::PROTOCOL_ERROR), GoesOn],
        ),
        (
            "PRIORITY that depends on its own stream",
            vec![frame(PRIORITY, 0, 3, &[0, 0, 0, 3, 16])],
            vec![Rst(3, reason::PROTOCOL_ERROR), GoesOn],
        ),
    ];
    for (what, frames, want) in cases {
        assert_eq!(answer_to(&frames).await, want, "{what}");
    }
}

/// A frame whose head alone is an error (here a SETTINGS frame whose length is not a
/// multiple of 6) ends the connection before its payload is in, which may never come.
#[tokio::test]
async fn a_frame_head_wrong_for_its_type_is_not_waited_on() {
    let mut io = raw_client().await;
    io.write_all(&[0, 0, 9, SETTINGS, 0, 0, 0, 0, 0, 0, 3])
        .await
        .unwrap();
    let (_, _, p) = until(&mut io, GOAWAY).await;
    assert_eq!(code(&p, 4), reason::FRAME_SIZE_ERROR);
}

/// RFC 9113 6.5.3: our SETTINGS unacknowledged for `SETTINGS_ACK_TIMEOUT` ends the
/// connection with SETTINGS_TIMEOUT; acknowledged, the connection lives on.
#[tokio::test(start_paused = true)]
async fn settings_unacknowledged_end_the_connection() {
    let (mut io, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(serve(server, Limits::default(), service, Never));
    let start = tokio::time::Instant::now();
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let goaway = loop {
        match next_frame(&mut io).await.expect("a GOAWAY before the end") {
            (GOAWAY, _, p) => break p,
            _ => continue,
        }
    };
    assert_eq!(code(&goaway, 4), reason::SETTINGS_TIMEOUT);
    assert_eq!(tokio::time::Instant::now() - start, SETTINGS_ACK_TIMEOUT);
    assert!(matches!(
        served.await.unwrap(),
        Ended::Error(e) if e.code == reason::SETTINGS_TIMEOUT
    ));

    let mut io = raw_client().await;
    tokio::time::sleep(SETTINGS_ACK_TIMEOUT * 2).await;
    io.write_all(&frame(PING, 0, 0, b"12345678")).await.unwrap();
    loop {
        let (kind, ..) = next_frame(&mut io).await.expect("the connection lives");
        assert_ne!(kind, GOAWAY);
        if kind == PING {
            break;
        }
    }
}
