//! A connection manager's `local_reply_config` -> [`myelin_proxy::model::local_reply`].

use myelin_proxy::model::local_reply as lr;
use xds_api::pb::envoy::config::accesslog::v3 as al;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds_api::pb::google::protobuf;

use super::{idx, join, route, Cx, Reason};

/// Envoy's response flags (`ResponseFlagFilter.flags` takes only these).
const RESPONSE_FLAGS: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// `local_reply_config`; `None` (and rejections) when any part of it is bad.
pub(super) fn local_reply_config(
    cx: &mut Cx,
    p: &str,
    c: &hcm::LocalReplyConfig,
) -> Option<lr::LocalReplyConfig> {
    let hcm::LocalReplyConfig {
        mappers,
        body_format,
    } = c;
    let errors = cx.errs.len();
    let mappers: Vec<_> = mappers
        .iter()
        .enumerate()
        .filter_map(|(i, m)| mapper(cx, &idx(p, "mappers", i), m))
        .collect();
    let body_format = body_format
        .as_ref()
        .and_then(|f| format(cx, &join(p, "body_format"), f));
    (cx.errs.len() == errors).then_some(lr::LocalReplyConfig {
        mappers,
        body_format,
    })
}

fn mapper(cx: &mut Cx, p: &str, m: &hcm::ResponseMapper) -> Option<lr::ResponseMapper> {
    let hcm::ResponseMapper {
        filter,
        status_code,
        body,
        body_format_override,
        headers_to_add,
    } = m;
    let filter = match filter {
        Some(f) => reply_filter(cx, &join(p, "filter"), f),
        None => {
            cx.reject(join(p, "filter"), Reason::Missing);
            None
        }
    };
    let status_code = match status_code.as_ref().map(|v| v.value) {
        None => None,
        Some(c @ 200..=599) => Some(c as u16),
        Some(c) => {
            cx.reject(
                join(p, "status_code"),
                Reason::Invalid(format!("{c} is not in 200..=599")),
            );
            None
        }
    };
    let body = body
        .as_ref()
        .and_then(|b| inline_text(cx, &join(p, "body"), b));
    let body_format_override = body_format_override
        .as_ref()
        .and_then(|f| format(cx, &join(p, "body_format_override"), f));
    let headers_to_add =
        super::common::header_value_options(cx, p, "headers_to_add", headers_to_add);
    Some(lr::ResponseMapper {
        filter: filter?,
        status_code,
        body,
        body_format_override,
        headers_to_add,
    })
}

/// A body's text: inline only (Envoy reads a file once, with the config; Myelin's config
/// has no files here); an unset source is an empty body.
fn inline_text(cx: &mut Cx, p: &str, d: &core::DataSource) -> Option<String> {
    super::common::inline_text(cx, p, d)
        .ok()
        .map(Option::unwrap_or_default)
}

fn comparison(cx: &mut Cx, p: &str, c: Option<&al::ComparisonFilter>) -> Option<lr::Comparison> {
    use al::comparison_filter::Op;
    let Some(c) = c else {
        cx.reject(join(p, "comparison"), Reason::Missing);
        return None;
    };
    let op = match Op::try_from(c.op) {
        Ok(Op::Eq) => lr::CmpOp::Eq,
        Ok(Op::Ge) => lr::CmpOp::Ge,
        Ok(Op::Le) => lr::CmpOp::Le,
        // `NE` (3) is newer than xds-api 0.2's enum.
        Err(_) if c.op == 3 => lr::CmpOp::Ne,
        Err(_) => {
            cx.reject(
                join(p, "comparison.op"),
                Reason::Invalid(format!("unknown value {}", c.op)),
            );
            return None;
        }
    };
    // The runtime key names a value Myelin's (absent) runtime never has: the default.
    let Some(value) = c.value.as_ref().map(|v| v.default_value) else {
        cx.reject(join(p, "comparison.value"), Reason::Missing);
        return None;
    };
    Some(lr::Comparison { op, value })
}

fn reply_filter(cx: &mut Cx, p: &str, f: &al::AccessLogFilter) -> Option<lr::ReplyFilter> {
    use al::access_log_filter::FilterSpecifier as F;
    let list = |cx: &mut Cx, field: &str, fs: &[al::AccessLogFilter]| {
        let out: Vec<_> = fs
            .iter()
            .enumerate()
            .filter_map(|(i, f)| reply_filter(cx, &idx(p, field, i), f))
            .collect();
        (out.len() == fs.len()).then_some(out)
    };
    match &f.filter_specifier {
        Some(F::StatusCodeFilter(s)) => Some(lr::ReplyFilter::Status(comparison(
            cx,
            &join(p, "status_code_filter"),
            s.comparison.as_ref(),
        )?)),
        Some(F::DurationFilter(d)) => Some(lr::ReplyFilter::Duration(comparison(
            cx,
            &join(p, "duration_filter"),
            d.comparison.as_ref(),
        )?)),
        Some(F::NotHealthCheckFilter(_)) => Some(lr::ReplyFilter::NotHealthCheck),
        Some(F::AndFilter(a)) => Some(lr::ReplyFilter::And(list(
            cx,
            "and_filter.filters",
            &a.filters,
        )?)),
        Some(F::OrFilter(o)) => Some(lr::ReplyFilter::Or(list(
            cx,
            "or_filter.filters",
            &o.filters,
        )?)),
        Some(F::HeaderFilter(h)) => {
            let hp = join(p, "header_filter.header");
            match &h.header {
                Some(m) => route::header_matcher(cx, &hp, m).map(lr::ReplyFilter::Header),
                None => {
                    cx.reject(hp, Reason::Missing);
                    None
                }
            }
        }
        Some(F::ResponseFlagFilter(r)) => {
            let fp = join(p, "response_flag_filter.flags");
            for (i, f) in r.flags.iter().enumerate() {
                if !RESPONSE_FLAGS.contains(&f.as_str()) {
                    cx.reject(
                        format!("{fp}[{i}]"),
                        Reason::Invalid(format!("{f:?} is not a response flag")),
                    );
                }
            }
            Some(lr::ReplyFilter::ResponseFlags(r.flags.clone()))
        }
        Some(F::GrpcStatusFilter(g)) => Some(lr::ReplyFilter::GrpcStatus {
            statuses: g
                .statuses
                .iter()
                .filter_map(|s| u32::try_from(*s).ok())
                .collect(),
            exclude: g.exclude,
        }),
        Some(other) => {
            let name = match other {
                F::TraceableFilter(_) => "traceable_filter",
                F::RuntimeFilter(_) => "runtime_filter",
                F::ExtensionFilter(_) => "extension_filter",
                F::MetadataFilter(_) => "metadata_filter",
                F::LogTypeFilter(_) => "log_type_filter",
                _ => "filter",
            };
            cx.reject(join(p, name), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(p, Reason::Missing);
            None
        }
    }
}

/// A `SubstitutionFormatString`.
fn format(cx: &mut Cx, p: &str, f: &core::SubstitutionFormatString) -> Option<lr::BodyFormat> {
    use core::substitution_format_string::Format as F;
    let core::SubstitutionFormatString {
        omit_empty_values,
        content_type,
        formatters,
        json_format_options: _,
        format,
    } = f;
    if !formatters.is_empty() {
        cx.reject(join(p, "formatters"), Reason::NotSupported);
    }
    let template = |cx: &mut Cx, p: String, s: &str| match lr::Template::parse(s) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.reject(p, Reason::Invalid(e));
            None
        }
    };
    let format = match format {
        Some(F::TextFormat(s)) => lr::Format::Text(template(cx, join(p, "text_format"), s)?),
        Some(F::TextFormatSource(d)) => {
            let sp = join(p, "text_format_source");
            let s = inline_text(cx, &sp, d)?;
            lr::Format::Text(template(cx, sp, &s)?)
        }
        // `json_format_options.sort_properties` holds either way: fields go out sorted.
        Some(F::JsonFormat(s)) => lr::Format::Json(json_object(cx, &join(p, "json_format"), s)?),
        None => {
            cx.reject(
                p,
                Reason::Invalid("a text or JSON format is required".into()),
            );
            return None;
        }
    };
    Some(lr::BodyFormat {
        format,
        content_type: (!content_type.is_empty()).then(|| content_type.clone()),
        omit_empty_values: *omit_empty_values,
    })
}

fn json_object(cx: &mut Cx, p: &str, s: &protobuf::Struct) -> Option<Vec<(String, lr::JsonValue)>> {
    use protobuf::value::Kind;
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    let mut ok = true;
    for k in keys {
        let vp = format!("{p}.{k}");
        let v = match &s.fields[k].kind {
            Some(Kind::StringValue(t)) => match lr::Template::parse(t) {
                Ok(t) => lr::JsonValue::Template(t),
                Err(e) => {
                    cx.reject(vp, Reason::Invalid(e));
                    ok = false;
                    continue;
                }
            },
            Some(Kind::StructValue(inner)) => match json_object(cx, &vp, inner) {
                Some(o) => lr::JsonValue::Object(o),
                None => {
                    ok = false;
                    continue;
                }
            },
            _ => lr::JsonValue::Literal(json_literal(&s.fields[k])),
        };
        out.push((k.clone(), v));
    }
    ok.then_some(out)
}

/// A protobuf `Value` that holds no template, as JSON (metadata's reading of it).
fn json_literal(v: &protobuf::Value) -> serde_json::Value {
    serde_json::to_value(super::common::metadata_value(v)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
