//! External processing (`envoy.extensions.filters.http.ext_proc.v3`): the filter's
//! `ExternalProcessor` and the routes' `ExtProcPerRoute` into
//! [`myelin_proxy::model::ext_proc`]. Myelin sends headers and whole (`BUFFERED`) bodies:
//! a processing mode that streams bodies or sends trailers, and what needs Envoy's
//! attributes, metadata or modes Myelin does not have, is rejected, not ignored.

use std::sync::Arc;
use std::time::Duration;

use myelin_proxy::model::ext_proc as mp;
use myelin_proxy::model::filter as mf;
use xds_api::pb::envoy::config::common::mutation_rules::v3::HeaderMutationRules;
use xds_api::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;

use super::common::regex_matcher;
use super::ext_authz::list;
use super::filter::{grpc_service_of, metadata_of};
use super::{ext, join, Cx, Reason};

/// `message_timeout` when unset (Envoy's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest `message_timeout` Envoy takes.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The filter's settings.
pub(super) fn ext_proc(
    cx: &mut Cx,
    p: &str,
    e: &ext::ExternalProcessor,
) -> Option<mp::ExtProcPolicy> {
    let ext::ExternalProcessor {
        grpc_service,
        failure_mode_allow,
        processing_mode,
        request_attributes,
        response_attributes,
        message_timeout,
        stat_prefix,
        mutation_rules,
        max_message_timeout,
        disable_clear_route_cache,
        forward_rules,
        // Access-log data: no traffic decision depends on it.
        filter_metadata: _,
        allow_mode_override,
        disable_immediate_response,
        metadata_options,
        observability_mode,
        route_cache_action,
        // What is left to a processor to end its stream after the last message: Myelin
        // leaves it a fixed 5 s (Envoy's default).
        deferred_close_timeout: _,
        // A limit on body chunks of the newer streamed exchanges; the modes Myelin takes
        // do not use it.
        max_more_chunks: _,
    } = e;
    let errors = cx.errs.len();
    let service = match grpc_service {
        Some(g) => grpc_service_of(cx, &join(p, "grpc_service"), g),
        None => {
            cx.reject(join(p, "grpc_service"), Reason::Missing);
            None
        }
    };
    let mode = processing_mode
        .as_ref()
        .and_then(|m| mode_of(cx, &join(p, "processing_mode"), m))
        .unwrap_or_default();
    // Attributes are CEL values Myelin does not compute.
    cx.unsupported(p, "request_attributes", request_attributes);
    cx.unsupported(p, "response_attributes", response_attributes);
    // The processor's `mode_override` and `override_message_timeout` answers.
    cx.unsupported(p, "max_message_timeout", max_message_timeout);
    cx.unsupported(p, "metadata_options", metadata_options);
    cx.unsupported(p, "observability_mode", observability_mode);
    let message_timeout = match message_timeout {
        Some(d) => cx.duration(&join(p, "message_timeout"), d).filter(|t| {
            let ok = *t <= MAX_TIMEOUT;
            if !ok {
                cx.reject(
                    join(p, "message_timeout"),
                    Reason::Invalid("at most 3600s".into()),
                );
            }
            ok
        }),
        None => Some(DEFAULT_TIMEOUT),
    };
    let route_cache = match (route_cache_action, disable_clear_route_cache) {
        (0, false) => mp::RouteCache::Default,
        (0, true) | (2, false) => mp::RouteCache::Retain,
        (1, false) => mp::RouteCache::Clear,
        _ => {
            cx.reject(
                p,
                Reason::Invalid(
                    "only one of `disable_clear_route_cache` and `route_cache_action`".into(),
                ),
            );
            mp::RouteCache::Default
        }
    };
    let rules = mutation_rules
        .as_ref()
        .map(|r| rules_of(cx, &join(p, "mutation_rules"), r))
        .unwrap_or_default();
    let forward = forward_rules
        .as_ref()
        .map(|f| {
            let fp = join(p, "forward_rules");
            mp::ForwardRules {
                allowed: f
                    .allowed_headers
                    .as_ref()
                    .map(|l| list(cx, &join(&fp, "allowed_headers"), l)),
                disallowed: f
                    .disallowed_headers
                    .as_ref()
                    .map(|l| list(cx, &join(&fp, "disallowed_headers"), l))
                    .unwrap_or_default(),
            }
        })
        .unwrap_or_default();
    if cx.errs.len() != errors {
        return None;
    }
    Some(mp::ExtProcPolicy {
        service: service?,
        mode,
        message_timeout: message_timeout?,
        failure_mode_allow: *failure_mode_allow,
        rules,
        forward,
        route_cache,
        disable_immediate_response: *disable_immediate_response,
        allow_mode_override: *allow_mode_override,
        stat_prefix: stat_prefix.as_str().into(),
    })
}

/// A `ProcessingMode`: headers `DEFAULT` (sent), `SEND` or `SKIP`; bodies `NONE`,
/// `STREAMED`, `BUFFERED` or `BUFFERED_PARTIAL`; trailers `DEFAULT`/`SKIP` only.
fn mode_of(cx: &mut Cx, p: &str, m: &ProcessingMode) -> Option<mp::ProcessingMode> {
    let ProcessingMode {
        request_header_mode,
        response_header_mode,
        request_body_mode,
        response_body_mode,
        request_trailer_mode,
        response_trailer_mode,
    } = m;
    let errors = cx.errs.len();
    let header = |cx: &mut Cx, name: &str, v: i32| match mp::headers_sent(v) {
        Some(sent) => sent,
        None => {
            cx.reject(join(p, name), Reason::Invalid(format!("unknown mode {v}")));
            false
        }
    };
    let request_headers = header(cx, "request_header_mode", *request_header_mode);
    let response_headers = header(cx, "response_header_mode", *response_header_mode);
    // Bodies go held (`BUFFERED`, `BUFFERED_PARTIAL`), chunk by chunk (`STREAMED`) or
    // not at all; `FULL_DUPLEX_STREAMED` is not Myelin's (yet).
    let body = |cx: &mut Cx, name: &str, v: i32| match mp::BodyMode::from_proto(v) {
        Some(mode) => mode,
        None if v == 4 => {
            cx.reject(join(p, name), Reason::NotSupported);
            mp::BodyMode::None
        }
        None => {
            cx.reject(join(p, name), Reason::Invalid(format!("unknown mode {v}")));
            mp::BodyMode::None
        }
    };
    let request_body = body(cx, "request_body_mode", *request_body_mode);
    let response_body = body(cx, "response_body_mode", *response_body_mode);
    for (name, v) in [
        ("request_trailer_mode", request_trailer_mode),
        ("response_trailer_mode", response_trailer_mode),
    ] {
        // `DEFAULT` is `SKIP` for trailers.
        if !matches!(v, 0 | 2) {
            cx.reject(join(p, name), Reason::NotSupported);
        }
    }
    (cx.errs.len() == errors).then_some(mp::ProcessingMode {
        request_headers,
        response_headers,
        request_body,
        response_body,
    })
}

/// `HeaderMutationRules`.
pub(super) fn rules_of(cx: &mut Cx, p: &str, r: &HeaderMutationRules) -> mp::MutationRules {
    let HeaderMutationRules {
        allow_all_routing,
        allow_envoy,
        disallow_system,
        disallow_all,
        allow_expression,
        disallow_expression,
        disallow_is_error,
    } = r;
    let flag =
        |v: &Option<xds_api::pb::google::protobuf::BoolValue>| v.as_ref().is_some_and(|b| b.value);
    mp::MutationRules {
        allow_all_routing: flag(allow_all_routing),
        allow_envoy: flag(allow_envoy),
        disallow_system: flag(disallow_system),
        disallow_all: flag(disallow_all),
        allow_expression: allow_expression
            .as_ref()
            .and_then(|m| regex_matcher(cx, &join(p, "allow_expression"), m)),
        disallow_expression: disallow_expression
            .as_ref()
            .and_then(|m| regex_matcher(cx, &join(p, "disallow_expression"), m)),
        disallow_is_error: flag(disallow_is_error),
    }
}

/// A route's `ExtProcPerRoute`.
pub(super) fn ext_proc_route(
    cx: &mut Cx,
    p: &str,
    r: &ext::ExtProcPerRoute,
) -> Option<mf::FilterPolicy> {
    let route = match (r.disabled, &r.overrides) {
        (Some(true), None) => mp::ExtProcRoute::Disabled,
        (None, Some(o)) => {
            let op = join(p, "overrides");
            let ext::ExtProcOverrides {
                processing_mode,
                async_mode,
                request_attributes,
                response_attributes,
                grpc_service,
                metadata_options,
                grpc_initial_metadata,
            } = o;
            let errors = cx.errs.len();
            cx.unsupported(&op, "async_mode", async_mode);
            cx.unsupported(&op, "request_attributes", request_attributes);
            cx.unsupported(&op, "response_attributes", response_attributes);
            cx.unsupported(&op, "metadata_options", metadata_options);
            let mode = processing_mode
                .as_ref()
                .and_then(|m| mode_of(cx, &join(&op, "processing_mode"), m));
            let service = grpc_service
                .as_ref()
                .and_then(|g| grpc_service_of(cx, &join(&op, "grpc_service"), g));
            let metadata = metadata_of(cx, &op, "grpc_initial_metadata", grpc_initial_metadata);
            if cx.errs.len() != errors {
                return None;
            }
            mp::ExtProcRoute::Overrides {
                mode,
                service,
                metadata,
            }
        }
        (Some(false), None) => {
            cx.reject(
                join(p, "disabled"),
                Reason::Invalid("only `true` (leave it out to keep the filter on)".into()),
            );
            return None;
        }
        _ => {
            cx.reject(
                p,
                Reason::Invalid("one of `disabled` and `overrides`".into()),
            );
            return None;
        }
    };
    Some(mf::FilterPolicy::ExtProc(Arc::new(route)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FULL_DUPLEX_STREAMED` (4) comes only in protobuf (the YAML of `xds-api`'s enum does
    /// not know it): refused by path; an unknown number is invalid.
    #[test]
    fn full_duplex_streamed_is_refused_and_unknown_modes_invalid() {
        let mut cx = Cx::default();
        let m = ProcessingMode {
            request_body_mode: 4,
            response_body_mode: 9,
            ..ProcessingMode::default()
        };
        assert_eq!(mode_of(&mut cx, "m", &m), None);
        let errs: Vec<String> = cx.errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            [
                "m.request_body_mode: not supported",
                "m.response_body_mode: unknown mode 9"
            ]
        );
        let mut cx = Cx::default();
        let m = ProcessingMode {
            request_body_mode: 1,
            response_body_mode: 1,
            ..ProcessingMode::default()
        };
        let mode = mode_of(&mut cx, "m", &m).expect("STREAMED converts");
        assert_eq!(mode.request_body, mp::BodyMode::Streamed);
        assert_eq!(mode.response_body, mp::BodyMode::Streamed);
    }
}
