//! Response compression (`envoy.filters.http.compressor`, run by [`crate::filters`]): which
//! response is compressed, with which encoding, as Envoy's `compressor_filter.cc` decides,
//! and the body that compresses it ([`Compressed`]).
//!
//! A request's compressor filters are noted as its filters run ([`Compressors`]); once its
//! response head is known, the encoding is chosen among them by the request's
//! `Accept-Encoding` (q-values, `identity`, `*`, `choose_first` on ties, each filter taking
//! only its content types), and the response is compressed when that filter finds it
//! compressible: enabled (its own setting or the route's), not an upgrade, a body expected
//! (not a HEAD's, a 204's or a 304's), at least `min_content_length` when its length is
//! known, a content type of its list, no `Cache-Control: no-transform`, no `ETag` with
//! `disable_on_etag_header` (a strong one is dropped otherwise), not already encoded. Then
//! `Content-Length` goes, `Content-Encoding` names the encoding and each data frame is
//! compressed and flushed as it passes (so streamed responses stream), the encoding
//! finished at the end of the body (before its trailers). A compressible response gets
//! `Vary: Accept-Encoding` whether or not it was compressed.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::error::{BodyError, ProxyBody};
use crate::metrics::ProxyMetrics;
use crate::model::filter::{CompressionLibrary, CompressorPolicy, CompressorRoute};

/// One compressor filter a request passed, with its route's word on it.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    pub(crate) policy: Arc<CompressorPolicy>,
    /// Response compression on for this route (the route's settings, else the filter's).
    pub(crate) enabled: bool,
}

/// The compressor filters of a request and what it accepts.
#[derive(Debug, Default)]
pub(crate) struct Compressors {
    /// In the chain's order.
    pub(crate) filters: Vec<Active>,
    /// The request's `Accept-Encoding`.
    pub(crate) accept_encoding: Option<String>,
    /// A filter that is enabled removes `Accept-Encoding` from the request going upstream.
    pub(crate) strip_accept_encoding: bool,
}

impl Compressors {
    /// Notes a compressor filter the request passed; `route`: its most specific settings.
    pub(crate) fn note(
        &mut self,
        policy: &Arc<CompressorPolicy>,
        route: Option<&CompressorRoute>,
        accept_encoding: Option<&HeaderValue>,
    ) {
        let enabled = route.and_then(|r| r.enabled).unwrap_or(policy.enabled);
        let remove = route
            .and_then(|r| r.remove_accept_encoding)
            .unwrap_or(policy.remove_accept_encoding);
        if self.filters.is_empty() {
            self.accept_encoding = accept_encoding
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        self.strip_accept_encoding |= enabled && remove;
        self.filters.push(Active {
            policy: policy.clone(),
            enabled,
        });
    }

    /// The response, compressed when one of the filters takes it.
    pub(crate) fn apply(
        &self,
        resp: Response<ProxyBody>,
        metrics: &ProxyMetrics,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let end_stream = body.is_end_stream();
        // The length `Content-Length` gives, or (where the codec keeps it out of the
        // headers) the body's own.
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()))
            .unwrap_or(body.size_hint().exact());
        let headers = &parts.headers;
        // Encoder filters run from the last to the first: the last compressible one whose
        // encoding is chosen compresses; the ones before it then find the body encoded.
        let compressible: Vec<&Active> = self
            .filters
            .iter()
            .filter(|a| compressible(a, headers, parts.status, length))
            .collect();
        if compressible.is_empty() {
            return Response::from_parts(parts, body);
        }
        insert_vary(&mut parts.headers);
        let chosen = self
            .accept_encoding
            .as_deref()
            .and_then(|ae| choose(&self.filters, ae, content_type(&parts.headers)));
        let Some(encoding) = chosen.filter(|_| !end_stream) else {
            metrics.compressor(compressible[0].policy.library.encoding(), "not_compressed");
            return Response::from_parts(parts, body);
        };
        let Some(active) = compressible
            .iter()
            .rev()
            .find(|a| a.policy.library.encoding().eq_ignore_ascii_case(&encoding))
        else {
            metrics.compressor(compressible[0].policy.library.encoding(), "not_compressed");
            return Response::from_parts(parts, body);
        };
        let library = &active.policy.library;
        let encoder = match Encoder::new(library) {
            Ok(e) => e,
            Err(error) => {
                tracing::debug!(target: "myelin::compressor", %error, "no encoder: not compressed");
                metrics.compressor(library.encoding(), "not_compressed");
                return Response::from_parts(parts, body);
            }
        };
        let h = &mut parts.headers;
        // A strong entity tag is dropped (the representation changes), or made weak with
        // `weaken_etag_on_compress`; a weak one is kept.
        if let Some(etag) = h.get(header::ETAG) {
            let v = etag.as_bytes();
            if v.len() > 2 && !(matches!(v[0], b'w' | b'W') && v[1] == b'/') {
                let weak = active
                    .policy
                    .weaken_etag
                    .then(|| HeaderValue::from_bytes(&[b"W/", v].concat()).ok())
                    .flatten();
                match weak {
                    Some(w) => h.insert(header::ETAG, w),
                    None => h.remove(header::ETAG),
                };
            }
        }
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(library.encoding()),
        );
        metrics.compressor(library.encoding(), "compressed");
        let body = Compressed {
            inner: body,
            encoder: Some(encoder),
            trailers: None,
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// The response's content type without its parameters.
fn content_type(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim())
}

/// Whether `a` would compress this response (Envoy's `isCompressible` and the checks
/// around it), whatever the client accepts.
fn compressible(a: &Active, h: &HeaderMap, status: http::StatusCode, length: Option<u64>) -> bool {
    let p = &a.policy;
    if !a.enabled
        || status == http::StatusCode::SWITCHING_PROTOCOLS
        || p.uncompressible_statuses.contains(&status.as_u16())
    {
        return false;
    }
    // An unreadable `Content-Length` is too short, as in Envoy.
    let long_enough = match (h.contains_key(header::CONTENT_LENGTH), length) {
        (_, Some(n)) => n >= u64::from(p.min_content_length),
        (true, None) => false,
        (false, None) => true,
    };
    let type_allowed = content_type(h).is_none_or(|t| {
        p.content_types
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(t))
    });
    let no_transform = h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    let etag_blocks = p.disable_on_etag && h.contains_key(header::ETAG);
    let encoded = h.contains_key(header::CONTENT_ENCODING);
    let transfer_encoded = h.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                ["gzip", "br", "deflate", "compress", "zstd"]
                    .iter()
                    .any(|e| e.eq_ignore_ascii_case(t))
            })
        })
    });
    long_enough && type_allowed && !no_transform && !etag_blocks && !encoded && !transfer_encoded
}

/// The encoding chosen for a response among the request's compressor filters by its
/// `Accept-Encoding` (Envoy's `chooseEncoding`); `None`: identity.
fn choose(filters: &[Active], accept_encoding: &str, content_type: Option<&str>) -> Option<String> {
    // The filters that take this content type, one per encoding (the first registered),
    // in registration order.
    let mut allowed: Vec<(&'static str, bool)> = Vec::new();
    for a in filters {
        let p = &a.policy;
        if let Some(t) = content_type.filter(|t| !t.is_empty()) {
            if !p.content_types.iter().any(|c| c.eq_ignore_ascii_case(t)) {
                continue;
            }
        }
        let encoding = p.library.encoding();
        if !allowed.iter().any(|(e, _)| *e == encoding) {
            allowed.push((encoding, p.choose_first));
        }
    }
    let mut pairs: Vec<(&str, f32)> = Vec::new();
    for token in accept_encoding.split(',').filter(|t| !t.trim().is_empty()) {
        let (name, params) = token.split_once(';').unwrap_or((token, ""));
        let name = name.trim();
        let mut q = 1.0f32;
        if let Some((k, v)) = params.split_once('=') {
            if k.trim().eq_ignore_ascii_case("q") {
                match v.trim().parse::<f32>() {
                    Ok(v) => q = v,
                    Err(_) => continue,
                }
            }
        }
        pairs.push((name, q));
        if q == 0.0 {
            allowed.retain(|(e, _)| *e != name);
        }
    }
    if pairs.is_empty() || allowed.is_empty() {
        return None;
    }
    let mut choice: (&str, f32) = ("identity", 0.0);
    for &(name, q) in &pairs {
        let known = allowed.iter().find(|(e, _)| *e == name);
        if known.is_some() || name == "identity" || name == "*" {
            let first = known.is_some_and(|(_, f)| *f);
            if q > choice.1 || (q == choice.1 && first) {
                choice = (name, q);
            }
        }
    }
    match choice {
        (_, 0.0) => None,
        ("identity", _) => None,
        ("*", _) => Some(allowed[0].0.to_owned()),
        (name, _) => Some(name.to_owned()),
    }
}

/// Adds `Accept-Encoding` to the response's `Vary` unless it names it.
fn insert_vary(h: &mut HeaderMap) {
    match h.get(header::VARY) {
        Some(v) => {
            let listed = v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
            });
            if !listed {
                let joined = format!("{}, Accept-Encoding", String::from_utf8_lossy(v.as_bytes()));
                if let Ok(v) = HeaderValue::from_str(&joined) {
                    h.insert(header::VARY, v);
                }
            }
        }
        None => {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

impl CompressionLibrary {
    /// The `Content-Encoding` it writes.
    pub(crate) fn encoding(&self) -> &'static str {
        match self {
            CompressionLibrary::Gzip { .. } => "gzip",
            CompressionLibrary::Brotli { .. } => "br",
            CompressionLibrary::Zstd { .. } => "zstd",
        }
    }
}

/// A compressing encoder writing into a buffer that is emptied after each frame.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(library: &CompressionLibrary) -> std::io::Result<Encoder> {
        Ok(match *library {
            CompressionLibrary::Gzip { level } => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            CompressionLibrary::Brotli {
                quality,
                window_bits,
                input_block_bits,
                mode,
                disable_literal_context_modeling,
                chunk_size,
            } => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: quality as i32,
                    lgwin: window_bits as i32,
                    lgblock: input_block_bits as i32,
                    mode: match mode {
                        1 => brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_TEXT,
                        2 => brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_FONT,
                        _ => {
                            brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_GENERIC
                        }
                    },
                    disable_literal_context_modeling: i32::from(disable_literal_context_modeling),
                    ..Default::default()
                };
                Encoder::Brotli(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    chunk_size as usize,
                    &params,
                )))
            }
            CompressionLibrary::Zstd {
                level,
                checksum,
                strategy,
            } => {
                use zstd::zstd_safe::{CParameter, Strategy};
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                e.include_checksum(checksum)?;
                let strategy = match strategy {
                    1 => Some(Strategy::ZSTD_fast),
                    2 => Some(Strategy::ZSTD_dfast),
                    3 => Some(Strategy::ZSTD_greedy),
                    4 => Some(Strategy::ZSTD_lazy),
                    5 => Some(Strategy::ZSTD_lazy2),
                    6 => Some(Strategy::ZSTD_btlazy2),
                    7 => Some(Strategy::ZSTD_btopt),
                    8 => Some(Strategy::ZSTD_btultra),
                    9 => Some(Strategy::ZSTD_btultra2),
                    _ => None,
                };
                if let Some(s) = strategy {
                    e.set_parameter(CParameter::Strategy(s))?;
                }
                Encoder::Zstd(e)
            }
        })
    }

    /// Compresses `data` and flushes: what is ready to send.
    fn push(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
        }
    }

    /// Ends the encoding: its last bytes.
    fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        }))
    }
}

/// A response body compressed frame by frame.
pub(crate) struct Compressed {
    inner: ProxyBody,
    /// `None` once finished.
    encoder: Option<Encoder>,
    /// The body's trailers, sent after the encoding's last bytes.
    trailers: Option<HeaderMap>,
}

impl Body for Compressed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = encoder.push(&data)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {
                    let last = this.encoder.take().map(Encoder::finish).transpose()?;
                    if let Some(last) = last.filter(|b| !b.is_empty()) {
                        return Poll::Ready(Some(Ok(Frame::data(last))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
