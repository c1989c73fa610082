use std::io::Read;

use http::StatusCode;
use http_body_util::{Full, StreamBody};

use super::*;

/// Envoy's default content types (what the converter fills in when none are given).
fn defaults() -> Vec<String> {
    ["text/html", "text/plain", "application/json"]
        .map(str::to_owned)
        .to_vec()
}

fn policy(library: CompressionLibrary) -> Arc<CompressorPolicy> {
    Arc::new(CompressorPolicy {
        library,
        enabled: true,
        min_content_length: 30,
        content_types: defaults(),
        disable_on_etag: false,
        remove_accept_encoding: false,
        choose_first: false,
        uncompressible_statuses: vec![206],
        weaken_etag: false,
    })
}

const GZIP: CompressionLibrary = CompressionLibrary::Gzip { level: 6 };
const BROTLI: CompressionLibrary = CompressionLibrary::Brotli {
    quality: 3,
    window_bits: 18,
    input_block_bits: 24,
    mode: 0,
    disable_literal_context_modeling: false,
    chunk_size: 4096,
};
const ZSTD: CompressionLibrary = CompressionLibrary::Zstd {
    level: 3,
    checksum: true,
    strategy: 0,
};

fn compressors(libraries: &[CompressionLibrary], accept: Option<&str>) -> Compressors {
    let mut c = Compressors::default();
    let value = accept.map(|a| HeaderValue::from_str(a).unwrap());
    for l in libraries {
        c.note(&policy(*l), None, value.as_ref());
    }
    c
}

/// A response streamed in `chunks`, with trailers when given.
fn response(
    headers: &[(&str, &str)],
    chunks: &[&'static str],
    trailers: Option<HeaderMap>,
) -> Response<ProxyBody> {
    let mut frames: Vec<Result<Frame<Bytes>, BodyError>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let mut resp = Response::new(body);
    for (k, v) in headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    resp
}

/// The body's data frames and its trailers.
async fn frames(resp: Response<ProxyBody>) -> (Vec<Bytes>, Option<HeaderMap>) {
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.unwrap().into_data() {
            Ok(d) => data.push(d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (data, trailers)
}

fn gunzip(data: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(data)
        .read_to_string(&mut out)
        .unwrap();
    out
}

const TEXT: [&str; 3] = [
    "<html><body>hello, this is the first part of a page; ",
    "and this is its second part, ",
    "and the end.</body></html>",
];

#[tokio::test]
async fn a_streamed_response_is_compressed_frame_by_frame() {
    let metrics = ProxyMetrics::unregistered();
    let c = compressors(&[GZIP], Some("gzip, deflate"));
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let resp = c.apply(
        response(
            &[
                ("content-type", "text/html; charset=utf-8"),
                ("content-length", "106"),
                ("etag", "\"strong\""),
            ],
            &TEXT,
            Some(trailers),
        ),
        &metrics,
    );
    let h = resp.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["vary"], "Accept-Encoding");
    assert!(!h.contains_key("content-length"));
    assert!(!h.contains_key("etag"), "a strong entity tag is dropped");
    let (data, trailers) = frames(resp).await;
    assert_eq!(
        data.len(),
        TEXT.len() + 1,
        "one frame per frame (flushed), and the end of the encoding"
    );
    // What was sent after the first frame already decodes to its text.
    let mut first = flate2::read::GzDecoder::new(&data[0][..]);
    let mut prefix = vec![0; TEXT[0].len()];
    first.read_exact(&mut prefix).unwrap();
    assert_eq!(prefix, TEXT[0].as_bytes());
    assert_eq!(gunzip(&data.concat()), TEXT.concat());
    assert_eq!(
        trailers.unwrap()["x-checksum"],
        "abc",
        "trailers after the body"
    );
}

#[tokio::test]
async fn brotli_and_zstd_round_trip() {
    let metrics = ProxyMetrics::unregistered();
    let c = compressors(&[BROTLI, ZSTD], Some("zstd;q=0.5, br"));
    let resp = c.apply(
        response(&[("content-type", "text/plain")], &TEXT, None),
        &metrics,
    );
    assert_eq!(resp.headers()["content-encoding"], "br");
    let (data, _) = frames(resp).await;
    let mut out = Vec::new();
    brotli::Decompressor::new(&data.concat()[..], 4096)
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, TEXT.concat().as_bytes());

    let c = compressors(&[BROTLI, ZSTD], Some("zstd, br;q=0.9"));
    let resp = c.apply(
        response(&[("content-type", "text/plain")], &TEXT, None),
        &metrics,
    );
    assert_eq!(resp.headers()["content-encoding"], "zstd");
    let (data, _) = frames(resp).await;
    assert_eq!(
        zstd::stream::decode_all(&data.concat()[..]).unwrap(),
        TEXT.concat().as_bytes()
    );
}

#[tokio::test]
async fn responses_left_alone() {
    let metrics = ProxyMetrics::unregistered();
    let c = compressors(&[GZIP], Some("gzip"));
    for (headers, why) in [
        (vec![("content-length", "29")], "shorter than 30 bytes"),
        (vec![("content-type", "image/png")], "not a listed type"),
        (
            vec![("cache-control", "public, No-Transform")],
            "no-transform",
        ),
        (vec![("content-encoding", "br")], "already encoded"),
        (
            vec![("transfer-encoding", "gzip, chunked")],
            "transfer-encoded",
        ),
    ] {
        let resp = c.apply(response(&headers, &TEXT, None), &metrics);
        assert!(
            !resp.headers().contains_key("content-encoding")
                || headers.iter().any(|(k, _)| *k == "content-encoding"),
            "{why}"
        );
        assert!(
            !resp.headers().contains_key("vary"),
            "{why}: not compressible"
        );
        let (data, _) = frames(resp).await;
        assert_eq!(data.concat(), TEXT.concat().as_bytes(), "{why}");
    }
    // Compressible but not accepted: the body as it is, `Vary` added to what is there.
    for accept in [
        None,
        Some("identity"),
        Some("gzip;q=0, br"),
        Some("deflate"),
    ] {
        let c = compressors(&[GZIP], accept);
        let resp = c.apply(response(&[("vary", "Origin")], &TEXT, None), &metrics);
        assert!(
            !resp.headers().contains_key("content-encoding"),
            "{accept:?}"
        );
        assert_eq!(resp.headers()["vary"], "Origin, Accept-Encoding");
    }
    // A short body whose length only the body knows (no `Content-Length` header).
    let short = Response::new(
        Full::new(Bytes::from_static(b"tiny"))
            .map_err(|never| match never {})
            .boxed(),
    );
    assert!(!c
        .apply(short, &metrics)
        .headers()
        .contains_key("content-encoding"));
    // No body to compress (a HEAD's answer, say).
    let empty = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    let resp = c.apply(empty, &metrics);
    assert!(!resp.headers().contains_key("content-encoding"));
    // Off for the route; an ETag with disable_on_etag_header.
    let mut c = Compressors::default();
    c.note(
        &policy(GZIP),
        Some(&CompressorRoute {
            enabled: Some(false),
            remove_accept_encoding: None,
        }),
        Some(&HeaderValue::from_static("gzip")),
    );
    let resp = c.apply(response(&[], &TEXT, None), &metrics);
    assert!(!resp.headers().contains_key("content-encoding"));
    let mut p = (*policy(GZIP)).clone();
    p.disable_on_etag = true;
    let mut c = Compressors::default();
    c.note(&Arc::new(p), None, Some(&HeaderValue::from_static("gzip")));
    let resp = c.apply(response(&[("etag", "W/\"1\"")], &TEXT, None), &metrics);
    assert!(!resp.headers().contains_key("content-encoding"));
    // A status listed as uncompressible.
    let c = compressors(&[GZIP], Some("gzip"));
    let mut partial = response(&[], &TEXT, None);
    *partial.status_mut() = StatusCode::PARTIAL_CONTENT;
    assert!(!c
        .apply(partial, &metrics)
        .headers()
        .contains_key("content-encoding"));
    // weaken_etag_on_compress: a strong tag made weak.
    let mut p = (*policy(GZIP)).clone();
    p.weaken_etag = true;
    let mut c = Compressors::default();
    c.note(&Arc::new(p), None, Some(&HeaderValue::from_static("gzip")));
    let resp = c.apply(response(&[("etag", "\"v1\"")], &TEXT, None), &metrics);
    assert_eq!(resp.headers()["etag"], "W/\"v1\"");
}

#[test]
fn the_encoding_is_chosen_as_envoy_chooses_it() {
    let filters = |libs: &[(CompressionLibrary, bool)]| -> Vec<Active> {
        libs.iter()
            .map(|(l, first)| {
                let mut p = (*policy(*l)).clone();
                p.choose_first = *first;
                Active {
                    policy: Arc::new(p),
                    enabled: true,
                }
            })
            .collect()
    };
    let all = filters(&[(GZIP, false), (BROTLI, false), (ZSTD, true)]);
    let pick = |ae: &str| choose(&all, ae, Some("text/plain"));
    assert_eq!(pick("gzip"), Some("gzip".into()));
    assert_eq!(pick("br;q=0.8, gzip;q=0.9"), Some("gzip".into()));
    assert_eq!(
        pick("gzip, br"),
        Some("gzip".into()),
        "a tie: the first listed"
    );
    assert_eq!(
        pick("gzip, zstd"),
        Some("zstd".into()),
        "a tie: choose_first"
    );
    assert_eq!(pick("*"), Some("gzip".into()), "any: the first registered");
    assert_eq!(pick("identity, gzip;q=0.5"), None, "identity preferred");
    assert_eq!(pick("gzip;q=0"), None);
    assert_eq!(pick("deflate"), None);
    assert_eq!(
        pick("gzip;q=x, br"),
        Some("br".into()),
        "a bad q-value: skipped"
    );
    // A filter that does not take the content type is left out.
    let mut json_only = (*policy(BROTLI)).clone();
    json_only.content_types = vec!["application/json".into()];
    let mixed = vec![
        all[0].clone(),
        Active {
            policy: Arc::new(json_only),
            enabled: true,
        },
    ];
    assert_eq!(
        choose(&mixed, "br, gzip;q=0.1", Some("text/plain")),
        Some("gzip".into())
    );
    assert_eq!(
        choose(&mixed, "br, gzip;q=0.1", Some("application/json")),
        Some("br".into())
    );
}
