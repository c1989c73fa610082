//! External authorization (`envoy.extensions.filters.http.ext_authz.v3`): the filter's
//! `ExtAuthz` and the routes' `ExtAuthzPerRoute` into [`myelin_proxy::model::ext_authz`].
//! What Envoy would do with a field Myelin does not implement (per-route services, header
//! mutation rules, the peer's certificate) is rejected, not ignored.

use std::sync::Arc;
use std::time::Duration;

use myelin_proxy::model::ext_authz as ma;
use myelin_proxy::model::filter as mf;
use myelin_proxy::model::route::{AppendAction, HeaderValueOption};
use myelin_proxy::model::StringMatcher;
use xds_api::pb::envoy::r#type::matcher::v3 as matcher;

use super::common::string_matcher;
use super::filter::{api_v3, grpc_service_of, runtime_fraction};
use super::{ext, idx, join, Cx, Reason};

/// The gRPC service's timeout when its `GrpcService` has none (Envoy's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// The filter's settings.
pub(super) fn ext_authz(cx: &mut Cx, p: &str, e: &ext::ExtAuthz) -> Option<ma::ExtAuthzPolicy> {
    let ext::ExtAuthz {
        grpc_service,
        http_service,
        transport_api_version,
        failure_mode_allow,
        failure_mode_allow_header_add,
        with_request_body,
        clear_route_cache,
        status_on_error,
        validate_mutations,
        metadata_context_namespaces,
        typed_metadata_context_namespaces,
        route_metadata_context_namespaces,
        route_typed_metadata_context_namespaces,
        filter_enabled,
        filter_enabled_metadata,
        deny_at_disable,
        include_peer_certificate,
        stat_prefix,
        bootstrap_metadata_labels_key,
        allowed_headers,
        disallowed_headers,
        include_tls_session,
        // Counters of the service's cluster: Myelin counts per filter
        // (`myelin_proxy_ext_authz_total`).
        charge_cluster_response_stats: _,
        encode_raw_headers,
        decoder_header_mutation_rules,
        // What the service's answer writes to dynamic metadata: nothing in Myelin reads
        // the service's metadata, so taking it in or not changes nothing.
        enable_dynamic_metadata_ingestion: _,
        // Access-log and filter-state data: no traffic decision depends on them.
        filter_metadata: _,
        emit_filter_state_stats: _,
        max_denied_response_body_bytes,
        // Myelin's header maps have no count limit for the service's headers to overflow.
        enforce_response_header_limits: _,
        shadow_mode,
    } = e;
    let errors = cx.errs.len();
    api_v3(cx, p, *transport_api_version);
    let with_body = with_request_body
        .as_ref()
        .and_then(|b| body_settings(cx, &join(p, "with_request_body"), b));
    let header_rules = decoder_header_mutation_rules
        .as_ref()
        .map(|r| super::ext_proc::rules_of(cx, &join(p, "decoder_header_mutation_rules"), r));
    // The client's certificate is not kept past the handshake (its identity is sent).
    cx.unsupported(p, "include_peer_certificate", include_peer_certificate);
    cx.unsupported(p, "shadow_mode", shadow_mode);
    // Typed metadata and route metadata: Myelin keeps neither.
    cx.unsupported(
        p,
        "typed_metadata_context_namespaces",
        typed_metadata_context_namespaces,
    );
    cx.unsupported(
        p,
        "route_typed_metadata_context_namespaces",
        route_typed_metadata_context_namespaces,
    );
    // Route metadata is not kept: the namespaces are asked for and found empty, as in
    // an Envoy whose routes have no metadata there (Envoy Gateway names its own).
    let _ = route_metadata_context_namespaces;
    // Labels from the node's metadata: Myelin's node has none, as an Envoy whose
    // bootstrap lacks the key.
    let _ = bootstrap_metadata_labels_key;
    let (service, timeout) = match (grpc_service, http_service) {
        (Some(g), None) => {
            let gp = join(p, "grpc_service");
            let timeout = match &g.timeout {
                Some(d) => cx.duration(&join(&gp, "timeout"), d),
                None => Some(DEFAULT_TIMEOUT),
            };
            (
                grpc_service_of(cx, &gp, g).map(ma::AuthzService::Grpc),
                timeout,
            )
        }
        (None, Some(h)) => {
            let hp = join(p, "http_service");
            match http_service_of(cx, &hp, h, allowed_headers.is_some()) {
                Some((s, t)) => (Some(ma::AuthzService::Http(s)), Some(t)),
                None => (None, None),
            }
        }
        (Some(_), Some(_)) => {
            cx.reject(
                p,
                Reason::Invalid("only one of `grpc_service` and `http_service`".into()),
            );
            (None, None)
        }
        (None, None) => {
            cx.reject(join(p, "grpc_service"), Reason::Missing);
            (None, None)
        }
    };
    // An HTTP service's deprecated `authorization_request.allowed_headers` counts when the
    // filter's own is not set (both: rejected above, as by Envoy).
    let deprecated_allowed = match http_service {
        Some(h) => h
            .authorization_request
            .as_ref()
            .and_then(|r| r.allowed_headers.as_ref())
            .map(|l| {
                (
                    join(
                        &join(p, "http_service"),
                        "authorization_request.allowed_headers",
                    ),
                    l,
                )
            }),
        None => None,
    };
    let allowed = match (allowed_headers, deprecated_allowed) {
        (Some(l), _) => Some(list(cx, &join(p, "allowed_headers"), l)),
        (None, Some((path, l))) => Some(list(cx, &path, l)),
        // An HTTP service gets the headers it always gets, and no others.
        (None, None) if http_service.is_some() => Some(Vec::new()),
        (None, None) => None,
    };
    let disallowed = disallowed_headers
        .as_ref()
        .map(|l| list(cx, &join(p, "disallowed_headers"), l))
        .unwrap_or_default();
    let filter_enabled_metadata = filter_enabled_metadata
        .as_ref()
        .and_then(|m| metadata_matcher(cx, &join(p, "filter_enabled_metadata"), m));
    let filter_enabled = runtime_fraction(cx, &join(p, "filter_enabled"), filter_enabled.as_ref())
        .unwrap_or(mf::Fraction::ALL);
    // The runtime key names a value Myelin's (absent) runtime never has: the default.
    let deny_at_disable = deny_at_disable
        .as_ref()
        .is_some_and(|f| f.default_value.as_ref().is_some_and(|v| v.value));
    // Envoy's `toErrorCode`: a code outside 100..=511 is 403.
    let status_on_error = status_on_error
        .as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| (100..=511).contains(c))
        .unwrap_or(403);
    if cx.errs.len() != errors {
        return None;
    }
    Some(ma::ExtAuthzPolicy {
        service: service?,
        timeout: timeout?,
        failure_mode_allow: *failure_mode_allow,
        failure_mode_allow_header_add: *failure_mode_allow_header_add,
        clear_route_cache: *clear_route_cache,
        status_on_error,
        filter_enabled,
        filter_enabled_metadata,
        deny_at_disable,
        allowed_headers: allowed,
        disallowed_headers: disallowed,
        include_peer_certificate: false,
        include_tls_session: *include_tls_session,
        encode_raw_headers: *encode_raw_headers,
        validate_mutations: *validate_mutations,
        header_rules,
        max_denied_body: *max_denied_response_body_bytes,
        metadata_namespaces: metadata_context_namespaces.clone(),
        stat_prefix: stat_prefix.as_str().into(),
        with_body,
    })
}

/// `BufferSettings`.
fn body_settings(
    cx: &mut Cx,
    p: &str,
    b: &ext::ExtAuthzBufferSettings,
) -> Option<ma::BodySettings> {
    if b.max_request_bytes == 0 {
        cx.reject(
            join(p, "max_request_bytes"),
            Reason::Invalid("must be greater than 0".into()),
        );
        return None;
    }
    Some(ma::BodySettings {
        max_bytes: b.max_request_bytes,
        allow_partial: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

/// An `HttpService` and its timeout.
fn http_service_of(
    cx: &mut Cx,
    p: &str,
    h: &ext::ExtAuthzHttpService,
    filter_allowed_headers: bool,
) -> Option<(ma::HttpAuthzService, Duration)> {
    let ext::ExtAuthzHttpService {
        server_uri,
        path_prefix,
        path_override,
        authorization_request,
        authorization_response,
        retry_policy,
    } = h;
    let errors = cx.errs.len();
    cx.unsupported(p, "retry_policy", retry_policy);
    cx.unsupported(p, "path_override", path_override);
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        cx.reject(
            join(p, "path_prefix"),
            Reason::Invalid("must start with `/`".into()),
        );
    }
    let up = join(p, "server_uri");
    let (cluster, timeout) = match server_uri {
        Some(u) => {
            if u.uri.is_empty() {
                cx.reject(join(&up, "uri"), Reason::Missing);
            }
            let cluster = match &u.http_upstream_type {
                Some(
                    xds_api::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(c),
                ) if !c.is_empty() => Some(c.clone()),
                _ => {
                    cx.reject(join(&up, "cluster"), Reason::Missing);
                    None
                }
            };
            let timeout = match &u.timeout {
                Some(d) => cx.duration(&join(&up, "timeout"), d),
                None => {
                    cx.reject(join(&up, "timeout"), Reason::Missing);
                    None
                }
            };
            (cluster, timeout)
        }
        None => {
            cx.reject(up, Reason::Missing);
            (None, None)
        }
    };
    let mut headers_to_add = Vec::new();
    if let Some(r) = authorization_request {
        let rp = join(p, "authorization_request");
        if r.allowed_headers.is_some() && filter_allowed_headers {
            // Envoy: "Invalid duplicate configuration for allowed_headers."
            cx.reject(
                join(&rp, "allowed_headers"),
                Reason::Invalid("set together with the filter's `allowed_headers`".into()),
            );
        }
        for (i, hv) in r.headers_to_add.iter().enumerate() {
            let hp = idx(&rp, "headers_to_add", i);
            let name_ok = http::HeaderName::from_bytes(hv.key.as_bytes()).is_ok();
            let value = if hv.raw_value.is_empty() {
                Some(hv.value.clone())
            } else {
                String::from_utf8(hv.raw_value.clone()).ok()
            };
            match value {
                _ if !name_ok => cx.reject(
                    join(&hp, "key"),
                    Reason::Invalid(format!("{:?} is not a header name", hv.key)),
                ),
                // Envoy substitutes `%...%` formats here; Myelin's header values are
                // literal.
                Some(v) if v.contains('%') => cx.reject(
                    join(&hp, "value"),
                    Reason::UnsupportedValue("a value with a `%` format".into()),
                ),
                Some(v) if http::HeaderValue::from_str(&v).is_ok() => {
                    headers_to_add.push(HeaderValueOption {
                        name: hv.key.to_ascii_lowercase(),
                        value: v,
                        append_action: AppendAction::OverwriteIfExistsOrAdd,
                        keep_empty_value: false,
                    })
                }
                _ => cx.reject(
                    join(&hp, "value"),
                    Reason::Invalid("not a header value".into()),
                ),
            }
        }
    }
    let rp = join(p, "authorization_response");
    let lists = authorization_response.as_ref();
    let mut each = |field: &str, l: Option<&matcher::ListStringMatcher>| {
        l.map(|l| list(cx, &join(&rp, field), l))
    };
    let upstream = each(
        "allowed_upstream_headers",
        lists.and_then(|r| r.allowed_upstream_headers.as_ref()),
    );
    let upstream_append = each(
        "allowed_upstream_headers_to_append",
        lists.and_then(|r| r.allowed_upstream_headers_to_append.as_ref()),
    );
    let client = each(
        "allowed_client_headers",
        lists.and_then(|r| r.allowed_client_headers.as_ref()),
    );
    let client_on_success = each(
        "allowed_client_headers_on_success",
        lists.and_then(|r| r.allowed_client_headers_on_success.as_ref()),
    );
    // Headers the answer writes to dynamic metadata: nothing in Myelin reads it.
    let _ = lists.map(|r| &r.dynamic_metadata_from_headers);
    if cx.errs.len() != errors {
        return None;
    }
    Some((
        ma::HttpAuthzService {
            cluster: cluster?,
            path_prefix: path_prefix.clone(),
            headers_to_add,
            upstream: upstream.unwrap_or_default(),
            upstream_append: upstream_append.unwrap_or_default(),
            // An empty list is no list (Envoy: all headers but `host`).
            client: client.filter(|c| !c.is_empty()),
            client_on_success: client_on_success.unwrap_or_default(),
        },
        timeout?,
    ))
}

/// A `ListStringMatcher`'s patterns.
/// A `ListStringMatcher`'s patterns.
pub(super) fn list(cx: &mut Cx, p: &str, l: &matcher::ListStringMatcher) -> Vec<StringMatcher> {
    l.patterns
        .iter()
        .enumerate()
        .filter_map(|(i, m)| string_matcher(cx, &idx(p, "patterns", i), m))
        .collect()
}

/// A `MetadataMatcher` over dynamic metadata (string values in Myelin).
fn metadata_matcher(
    cx: &mut Cx,
    p: &str,
    m: &matcher::MetadataMatcher,
) -> Option<ma::MetadataMatcher> {
    use matcher::metadata_matcher::path_segment::Segment;
    use matcher::value_matcher::MatchPattern as V;
    let matcher::MetadataMatcher {
        filter,
        path,
        value,
        invert,
    } = m;
    if filter.is_empty() {
        cx.reject(join(p, "filter"), Reason::Missing);
    }
    if path.is_empty() {
        cx.reject(join(p, "path"), Reason::Missing);
    }
    let keys: Vec<String> = path
        .iter()
        .filter_map(|s| s.segment.as_ref().map(|Segment::Key(k)| k.clone()))
        .collect();
    let vp = join(p, "value");
    let value = match value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(V::StringMatch(s)) => {
            string_matcher(cx, &join(&vp, "string_match"), s).map(ma::MetadataValueMatch::String)
        }
        Some(V::PresentMatch(b)) => Some(ma::MetadataValueMatch::Present(*b)),
        Some(V::NullMatch(_) | V::DoubleMatch(_) | V::BoolMatch(_) | V::ListMatch(_)) => {
            Some(ma::MetadataValueMatch::OtherType)
        }
        Some(V::OrMatch(_)) => {
            cx.reject(join(&vp, "or_match"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(vp, Reason::Missing);
            None
        }
    };
    Some(ma::MetadataMatcher {
        filter: filter.clone(),
        path: keys,
        value: value?,
        invert: *invert,
    })
}

/// A route's `ExtAuthzPerRoute`.
pub(super) fn ext_authz_route(
    cx: &mut Cx,
    p: &str,
    r: &ext::ExtAuthzPerRoute,
) -> Option<mf::FilterPolicy> {
    let route = match (r.disabled, &r.check_settings) {
        (Some(disabled), None) => ma::ExtAuthzRoute {
            disabled,
            context_extensions: Vec::new(),
            with_body: None,
            no_body: false,
        },
        (None, Some(c)) => {
            let cp = join(p, "check_settings");
            let ext::ExtAuthzCheckSettings {
                context_extensions,
                disable_request_body_buffering,
                with_request_body,
                grpc_service,
                http_service,
            } = c;
            let errors = cx.errs.len();
            let with_body = with_request_body
                .as_ref()
                .and_then(|b| body_settings(cx, &join(&cp, "with_request_body"), b));
            cx.unsupported(&cp, "grpc_service", grpc_service);
            cx.unsupported(&cp, "http_service", http_service);
            let mut context_extensions: Vec<_> = context_extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            context_extensions.sort();
            if cx.errs.len() > errors {
                return None;
            }
            ma::ExtAuthzRoute {
                disabled: false,
                context_extensions,
                with_body,
                no_body: *disable_request_body_buffering,
            }
        }
        _ => {
            cx.reject(
                p,
                Reason::Invalid("one of `disabled` and `check_settings`".into()),
            );
            return None;
        }
    };
    Some(mf::FilterPolicy::ExtAuthz(Arc::new(route)))
}
