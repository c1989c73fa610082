//! Response compression (`envoy.extensions.filters.http.compressor.v3`): the filter's
//! `Compressor` with its gzip, brotli or zstd library, and the routes'
//! `CompressorPerRoute`, into [`myelin_proxy::model::filter`]'s compressor settings.

use std::sync::Arc;

use myelin_proxy::model::filter as mf;

use super::{ext, join, Cx, Reason};

const GZIP_URL: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI_URL: &str =
    "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD_URL: &str = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd";

/// Envoy's content types compressed when none are given (`compressor_filter.cc`).
const DEFAULT_CONTENT_TYPES: [&str; 20] = [
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
    "application/grpc-web",
    "application/grpc-web+proto",
];

/// The filter's settings.
pub(super) fn compressor(
    cx: &mut Cx,
    p: &str,
    c: &ext::Compressor,
) -> Option<mf::CompressorPolicy> {
    let ext::Compressor {
        content_length,
        content_type,
        disable_on_etag_header,
        remove_accept_encoding_header,
        runtime_enabled,
        compressor_library,
        request_direction_config,
        response_direction_config,
        choose_first,
    } = c;
    let errors = cx.errs.len();
    // Compressing request bodies on their way upstream: not done.
    cx.unsupported(p, "request_direction_config", request_direction_config);
    let lp = join(p, "compressor_library");
    let library = match compressor_library {
        Some(l) => library(cx, &lp, l),
        None => {
            cx.reject(lp, Reason::Missing);
            None
        }
    };
    // The response settings, or (without them) the deprecated fields of the filter itself.
    let (common, disable_on_etag, remove_accept_encoding, uncompressible, weaken_etag) =
        match response_direction_config {
            Some(r) => {
                let rp = join(p, "response_direction_config");
                // `x-envoy-compression-status`: its skip reasons are Envoy's own words.
                cx.unsupported(&rp, "status_header_enabled", &r.status_header_enabled);
                let mut codes = Vec::new();
                for (i, code) in r.uncompressible_response_codes.iter().enumerate() {
                    match u16::try_from(*code).ok().filter(|c| (100..600).contains(c)) {
                        Some(c) => codes.push(c),
                        None => cx.reject(
                            super::idx(&rp, "uncompressible_response_codes", i),
                            Reason::Invalid(format!("{code} is not an HTTP status")),
                        ),
                    }
                }
                (
                    r.common_config.clone().unwrap_or_default(),
                    r.disable_on_etag_header,
                    r.remove_accept_encoding_header,
                    codes,
                    r.weaken_etag_on_compress,
                )
            }
            None => (
                ext::CompressorCommonDirection {
                    enabled: runtime_enabled.clone(),
                    min_content_length: *content_length,
                    content_type: content_type.clone(),
                },
                *disable_on_etag_header,
                *remove_accept_encoding_header,
                Vec::new(),
                false,
            ),
        };
    // The runtime key names a value Myelin's (absent) runtime never has: the default,
    // and an unset flag is on.
    let enabled = common
        .enabled
        .as_ref()
        .is_none_or(|f| f.default_value.as_ref().is_none_or(|v| v.value));
    // Envoy's rule: 0 (or unset) is 30.
    let min_content_length = common
        .min_content_length
        .as_ref()
        .map(|v| v.value)
        .filter(|v| *v > 0)
        .unwrap_or(30);
    let content_types = if common.content_type.is_empty() {
        DEFAULT_CONTENT_TYPES.map(str::to_owned).to_vec()
    } else {
        common
            .content_type
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    if cx.errs.len() != errors {
        return None;
    }
    Some(mf::CompressorPolicy {
        library: library?,
        enabled,
        min_content_length,
        content_types,
        disable_on_etag: disable_on_etag && !weaken_etag,
        remove_accept_encoding,
        choose_first: *choose_first,
        uncompressible_statuses: uncompressible,
        weaken_etag,
    })
}

/// `compressor_library`: by its type (the name is only a label).
fn library(
    cx: &mut Cx,
    p: &str,
    l: &xds_api::pb::envoy::config::core::v3::TypedExtensionConfig,
) -> Option<mf::CompressionLibrary> {
    let tp = join(p, "typed_config");
    let Some(any) = &l.typed_config else {
        cx.reject(tp, Reason::Missing);
        return None;
    };
    let in_range = |cx: &mut Cx, field: &str, v: Option<u32>, lo: u32, hi: u32, default: u32| {
        let v = v.unwrap_or(default);
        if !(lo..=hi).contains(&v) {
            cx.reject(
                join(&tp, field),
                Reason::Invalid(format!("{v} is not in {lo}..={hi}")),
            );
        }
        v
    };
    match any.type_url.as_str() {
        GZIP_URL => {
            let g = cx.decode::<ext::Gzip>(&tp, GZIP_URL, &any.value)?;
            // The window and memory of zlib tune the encoder's memory and ratio, not what
            // it writes (any gzip decoder reads it): checked, and left to miniz_oxide's
            // (a 32 KiB window). The strategy likewise.
            in_range(cx, "memory_level", g.memory_level.map(|v| v.value), 1, 9, 5);
            in_range(cx, "window_bits", g.window_bits.map(|v| v.value), 9, 15, 12);
            in_range(
                cx,
                "chunk_size",
                g.chunk_size.map(|v| v.value),
                4096,
                65536,
                4096,
            );
            if !(0..=4).contains(&g.compression_strategy) {
                cx.reject(
                    join(&tp, "compression_strategy"),
                    Reason::Invalid(format!("unknown value {}", g.compression_strategy)),
                );
            }
            // `DEFAULT_COMPRESSION` (0) is zlib's default level, 6.
            let level = match g.compression_level {
                0 => 6,
                n @ 1..=9 => n as u32,
                n => {
                    cx.reject(
                        join(&tp, "compression_level"),
                        Reason::Invalid(format!("unknown value {n}")),
                    );
                    return None;
                }
            };
            Some(mf::CompressionLibrary::Gzip { level })
        }
        BROTLI_URL => {
            let b = cx.decode::<ext::Brotli>(&tp, BROTLI_URL, &any.value)?;
            let quality = in_range(cx, "quality", b.quality.map(|v| v.value), 0, 11, 3);
            let window_bits = in_range(
                cx,
                "window_bits",
                b.window_bits.map(|v| v.value),
                10,
                24,
                18,
            );
            let input_block_bits = in_range(
                cx,
                "input_block_bits",
                b.input_block_bits.map(|v| v.value),
                16,
                24,
                24,
            );
            let chunk_size = in_range(
                cx,
                "chunk_size",
                b.chunk_size.map(|v| v.value),
                4096,
                65536,
                4096,
            );
            // The proto's modes are brotli's plus one (`DEFAULT` is brotli's generic).
            let mode = match b.encoder_mode {
                0 | 1 => 0,
                2 => 1,
                3 => 2,
                n => {
                    cx.reject(
                        join(&tp, "encoder_mode"),
                        Reason::Invalid(format!("unknown value {n}")),
                    );
                    return None;
                }
            };
            Some(mf::CompressionLibrary::Brotli {
                quality,
                window_bits,
                input_block_bits,
                mode,
                disable_literal_context_modeling: b.disable_literal_context_modeling,
                chunk_size,
            })
        }
        ZSTD_URL => {
            let z = cx.decode::<ext::Zstd>(&tp, ZSTD_URL, &any.value)?;
            cx.unsupported(&tp, "dictionary", &z.dictionary);
            in_range(
                cx,
                "chunk_size",
                z.chunk_size.map(|v| v.value),
                4096,
                65536,
                4096,
            );
            if !(0..=9).contains(&z.strategy) {
                cx.reject(
                    join(&tp, "strategy"),
                    Reason::Invalid(format!("unknown value {}", z.strategy)),
                );
            }
            // 0 (or unset) is zstd's default level, 3; zstd's levels go up to 22.
            let level = z.compression_level.map_or(0, |v| v.value);
            if level > 22 {
                cx.reject(
                    join(&tp, "compression_level"),
                    Reason::Invalid(format!("{level} is above zstd's 22")),
                );
            }
            Some(mf::CompressionLibrary::Zstd {
                level: if level == 0 { 3 } else { level as i32 },
                checksum: z.enable_checksum,
                strategy: z.strategy as u32,
            })
        }
        other => {
            cx.reject(
                tp,
                Reason::UnsupportedValue(format!("compressor library of type `{other}`")),
            );
            None
        }
    }
}

/// A route's `CompressorPerRoute`.
pub(super) fn compressor_route(
    cx: &mut Cx,
    p: &str,
    r: &ext::CompressorPerRoute,
) -> Option<mf::FilterPolicy> {
    let route = match (r.disabled, &r.overrides) {
        (Some(true), None) => mf::CompressorRoute {
            enabled: Some(false),
            remove_accept_encoding: None,
        },
        (Some(false), None) => {
            cx.reject(join(p, "disabled"), Reason::Invalid("must be true".into()));
            return None;
        }
        (None, Some(o)) => {
            let op = join(p, "overrides");
            cx.unsupported(&op, "compressor_library", &o.compressor_library);
            // `response_direction_config` present: compression on here.
            mf::CompressorRoute {
                enabled: o.response_direction_config.as_ref().map(|_| true),
                remove_accept_encoding: o
                    .response_direction_config
                    .as_ref()
                    .and_then(|r| r.remove_accept_encoding_header.as_ref())
                    .map(|v| v.value),
            }
        }
        _ => {
            cx.reject(
                p,
                Reason::Invalid("one of `disabled` and `overrides`".into()),
            );
            return None;
        }
    };
    Some(mf::FilterPolicy::Compressor(Arc::new(route)))
}
