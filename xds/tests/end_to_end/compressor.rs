//! Envoy's compressor filter (`envoy.filters.http.compressor`) end to end: a listener from
//! xDS with gzip, brotli and zstd filters as Envoy Gateway writes them (zstd with
//! `choose_first` and `remove_accept_encoding_header`), a real upstream, and what a client
//! gets decoded by the real libraries: the encoding the client's `Accept-Encoding` picks,
//! the responses left alone, a route with compression off, and a streamed response whose
//! first part arrives compressed before the upstream has sent the rest.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const PORT: u16 = 18611;
const FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";

fn page() -> String {
    (0..200)
        .map(|i| format!("<p>line {i} of a page that compresses well</p>\n"))
        .collect()
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The upstream: `/page` (HTML), `/small`, `/image`, `/stream` (a first part, then the
/// rest once `go` is notified); every answer says which `Accept-Encoding` it was sent.
async fn upstream(go: Arc<Notify>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let go = go.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let go = go.clone();
                    async move {
                        let seen = req
                            .headers()
                            .get("accept-encoding")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_else(|| "-".into());
                        let full = |ct: &str, body: String| -> Response<Body> {
                            Response::builder()
                                .header("content-type", ct)
                                .header("content-length", body.len())
                                .header("x-seen-accept-encoding", seen.as_str())
                                .body(Full::new(Bytes::from(body)).boxed())
                                .unwrap()
                        };
                        let resp = match req.uri().path() {
                            "/small" => full("text/plain", "tiny".into()),
                            "/image" => full("image/png", page()),
                            "/stream" => {
                                let (tx, rx) = tokio::sync::mpsc::channel(2);
                                tokio::spawn(async move {
                                    let first = Bytes::from(page());
                                    let _ = tx.send(Ok(Frame::data(first))).await;
                                    go.notified().await;
                                    let _ = tx.send(Ok(Frame::data(Bytes::from("the end")))).await;
                                });
                                let body = StreamBody::new(
                                    tokio_stream::wrappers::ReceiverStream::new(rx),
                                );
                                Response::builder()
                                    .header("content-type", "text/plain")
                                    .body(BodyExt::boxed(body))
                                    .unwrap()
                            }
                            _ => full("text/html; charset=utf-8", page()),
                        };
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

fn listener() -> xds_api::pb::envoy::config::listener::v3::Listener {
    filtered_listener(
        "edge",
        PORT,
        &format!(
            r#"
- name: envoy.filters.http.compressor.brotli
  typed_config:
    "@type": {FILTER}
    compressor_library:
      name: envoy.compression.brotli.compressor
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli}}
- name: envoy.filters.http.compressor.gzip
  typed_config:
    "@type": {FILTER}
    compressor_library:
      name: envoy.compression.gzip.compressor
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip, compression_level: BEST_SPEED}}
- name: envoy.filters.http.compressor.zstd
  typed_config:
    "@type": {FILTER}
    choose_first: true
    compressor_library:
      name: envoy.compression.zstd.compressor
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd}}
    response_direction_config:
      remove_accept_encoding_header: true
"#
        ),
    )
}

fn routes() -> xds_api::pb::envoy::config::route::v3::RouteConfiguration {
    let off = format!(r#"{{"@type": {PER_ROUTE}, disabled: true}}"#);
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: web
  domains: ["*"]
  routes:
  - match: {{prefix: /off}}
    route: {{cluster: web, prefix_rewrite: /page}}
    typed_per_filter_config:
      envoy.filters.http.compressor.brotli: {off}
      envoy.filters.http.compressor.gzip: {off}
      envoy.filters.http.compressor.zstd: {off}
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

/// The response of `path` asked for with `Accept-Encoding: accept`, its body decoded.
async fn fetch(node: &Node, path: &str, accept: Option<&str>) -> (Answer, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept-encoding", a)).into_iter().collect();
    let a = request(node, PORT, "GET", path, &headers).await;
    let raw = a.body_bytes.clone();
    let text = match a.header("content-encoding") {
        Some("gzip") => {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_string(&mut s)
                .unwrap();
            s
        }
        Some("br") => {
            let mut s = String::new();
            brotli::Decompressor::new(&raw[..], 4096)
                .read_to_string(&mut s)
                .unwrap();
            s
        }
        Some("zstd") => String::from_utf8(zstd::stream::decode_all(&raw[..]).unwrap()).unwrap(),
        None => String::from_utf8(raw.to_vec()).unwrap(),
        Some(other) => panic!("encoding {other}"),
    };
    (a, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_as_the_client_accepts() {
    let go = Arc::new(Notify::new());
    let web = upstream(go.clone()).await;
    let (_cp, node) = serving(vec![listener()], routes(), web).await;

    // The client's preference (q-values), decoded by the libraries; `Vary` set, the length
    // gone (the answer is chunked), the filters' Accept-Encoding (zstd's removal applies
    // only when zstd is enabled, as it is everywhere here).
    for (accept, want) in [
        ("gzip", "gzip"),
        ("br;q=1.0, gzip;q=0.5", "br"),
        ("gzip, zstd", "zstd"),
        ("*", "br"),
    ] {
        let (a, text) = fetch(&node, "/page", Some(accept)).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-encoding"), Some(want), "{accept}");
        assert_eq!(text, page(), "{accept}");
        assert_eq!(a.header("vary"), Some("Accept-Encoding"));
        assert_eq!(a.header("content-length"), None);
        assert!(
            a.body_bytes.len() < page().len() / 4,
            "{accept}: compressed"
        );
        assert_eq!(
            a.header("x-seen-accept-encoding"),
            Some("-"),
            "remove_accept_encoding_header"
        );
    }

    // Left alone: nothing accepted (yet `Vary`), too short, not a listed type, the route
    // says off.
    let (a, text) = fetch(&node, "/page", None).await;
    assert_eq!(
        (a.header("content-encoding"), a.header("vary")),
        (None, Some("Accept-Encoding"))
    );
    assert_eq!(text, page());
    let (a, text) = fetch(&node, "/page", Some("deflate, identity")).await;
    assert_eq!(a.header("content-encoding"), None);
    assert_eq!(
        a.header("content-length"),
        Some(page().len().to_string().as_str())
    );
    assert_eq!(text, page());
    let (a, text) = fetch(&node, "/small", Some("gzip")).await;
    assert_eq!(
        (a.header("content-encoding"), text.as_str()),
        (None, "tiny")
    );
    let (a, _) = fetch(&node, "/image", Some("gzip")).await;
    assert_eq!(a.header("content-encoding"), None);
    assert_eq!(a.header("vary"), None, "not compressible");
    let (a, text) = fetch(&node, "/off", Some("gzip")).await;
    assert_eq!(a.header("content-encoding"), None);
    assert_eq!(text, page());
    assert_eq!(
        a.header("x-seen-accept-encoding"),
        Some("gzip"),
        "off here: nothing removed"
    );

    // A streamed response: its first part arrives compressed (flushed) while the upstream
    // holds the rest back.
    let mut sender = h1_sender(&node, "127.0.0.1".parse().unwrap(), vip(PORT)).await;
    let req = Request::get("/stream")
        .header("host", "web")
        .header("accept-encoding", "gzip")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut decoded = String::new();
    while decoded.len() < page().len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first part, compressed, before the rest is sent")
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            got.extend_from_slice(&d);
        }
        decoded.clear();
        let mut partial = flate2::read::GzDecoder::new(&got[..]);
        let mut buf = vec![0; page().len()];
        if partial.read_exact(&mut buf).is_ok() {
            decoded = String::from_utf8(buf).unwrap();
        }
    }
    assert_eq!(decoded, page());
    go.notify_one();
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            got.extend_from_slice(&d);
        }
    }
    let mut all = String::new();
    flate2::read::GzDecoder::new(&got[..])
        .read_to_string(&mut all)
        .unwrap();
    assert_eq!(all, page() + "the end");

    let count = |encoding: &str, outcome: &str| {
        node.metric(&format!(
            "myelin_proxy_compressor_total{{encoding=\"{encoding}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(count("gzip", "compressed"), 2.0);
    assert_eq!(count("br", "compressed"), 2.0);
    assert_eq!(count("zstd", "compressed"), 1.0);
}
