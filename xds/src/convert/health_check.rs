//! A cluster's `health_checks` -> [`mh::HealthCheck`], and an endpoint's
//! `health_check_config` -> [`mh::EndpointHealthCheck`].

use std::time::Duration;

use myelin_proxy::model::health_check as mh;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::endpoint::v3 as ep;
use xds_api::pb::envoy::r#type::v3::{CodecClientType, Int64Range};

use super::common::{header_value_options, string_matcher};
use super::{idx, join, Cx, Reason};

/// Envoy's default `no_traffic_interval`.
const NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);
/// Envoy's default `response_buffer_size` of an HTTP check's `receive`.
const RESPONSE_BUFFER_SIZE: usize = 1024;

/// The cluster's `health_checks`.
pub(super) fn health_checks(
    cx: &mut Cx,
    p: &str,
    hcs: &[core::HealthCheck],
) -> Vec<mh::HealthCheck> {
    hcs.iter()
        .enumerate()
        .filter_map(|(i, h)| health_check(cx, &idx(p, "health_checks", i), h))
        .collect()
}

#[allow(deprecated)]
fn health_check(cx: &mut Cx, p: &str, h: &core::HealthCheck) -> Option<mh::HealthCheck> {
    use core::health_check::HealthChecker as K;
    let core::HealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        reuse_connection,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        // Where Envoy writes its health-check events: Myelin logs them (target
        // `myelin::health`) and counts them; nothing about traffic changes.
        event_log_path: _,
        event_logger: _,
        event_service,
        always_log_health_check_failures,
        always_log_health_check_success: _,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = h;
    cx.unsupported(p, "alt_port", alt_port);
    cx.unsupported(p, "event_service", event_service);
    cx.unsupported(p, "tls_options", tls_options);
    cx.unsupported(
        p,
        "transport_socket_match_criteria",
        transport_socket_match_criteria,
    );
    let positive =
        |cx: &mut Cx, field: &str, d: &Option<xds_api::pb::google::protobuf::Duration>| {
            let path = join(p, field);
            let d = cx.duration(&path, d.as_ref()?)?;
            if d.is_zero() {
                cx.reject(path, Reason::Invalid("must be greater than zero".into()));
                return None;
            }
            Some(d)
        };
    let timeout = match timeout {
        None => {
            cx.reject(join(p, "timeout"), Reason::Missing);
            None
        }
        t => positive(cx, "timeout", t),
    };
    let interval = match interval {
        None => {
            cx.reject(join(p, "interval"), Reason::Missing);
            None
        }
        t => positive(cx, "interval", t),
    };
    let no_traffic_interval = positive(cx, "no_traffic_interval", no_traffic_interval);
    let no_traffic_healthy_interval = positive(
        cx,
        "no_traffic_healthy_interval",
        no_traffic_healthy_interval,
    );
    let unhealthy_interval = positive(cx, "unhealthy_interval", unhealthy_interval);
    let unhealthy_edge_interval = positive(cx, "unhealthy_edge_interval", unhealthy_edge_interval);
    let healthy_edge_interval = positive(cx, "healthy_edge_interval", healthy_edge_interval);
    let jitter = |cx: &mut Cx, field: &str, d: &Option<xds_api::pb::google::protobuf::Duration>| {
        d.as_ref()
            .and_then(|d| cx.duration(&join(p, field), d))
            .unwrap_or_default()
    };
    let initial_jitter = jitter(cx, "initial_jitter", initial_jitter);
    let interval_jitter = jitter(cx, "interval_jitter", interval_jitter);
    let mut threshold =
        |field: &str, v: &Option<xds_api::pb::google::protobuf::UInt32Value>| match v {
            None => {
                cx.reject(join(p, field), Reason::Missing);
                None
            }
            // Envoy takes 0 as given, and a threshold of 0 is never reached by counting up: a
            // host would never change state. Myelin reads it as 1.
            Some(v) => Some(v.value.max(1)),
        };
    let unhealthy_threshold = threshold("unhealthy_threshold", unhealthy_threshold);
    let healthy_threshold = threshold("healthy_threshold", healthy_threshold);
    let checker = match health_checker {
        Some(K::HttpHealthCheck(h)) => http_health_check(cx, &join(p, "http_health_check"), h)
            .map(|h| mh::HealthChecker::Http(Box::new(h))),
        Some(K::TcpHealthCheck(t)) => {
            tcp_health_check(cx, &join(p, "tcp_health_check"), t).map(mh::HealthChecker::Tcp)
        }
        Some(K::GrpcHealthCheck(g)) => {
            grpc_health_check(cx, &join(p, "grpc_health_check"), g).map(mh::HealthChecker::Grpc)
        }
        Some(K::CustomHealthCheck(c)) => {
            cx.reject(
                join(p, "custom_health_check"),
                Reason::UnsupportedValue(format!("custom health checker {:?}", c.name)),
            );
            None
        }
        None => {
            cx.reject(join(p, "health_checker"), Reason::Missing);
            None
        }
    };
    let (timeout, interval) = (timeout?, interval?);
    let unhealthy_interval = unhealthy_interval.unwrap_or(interval);
    Some(mh::HealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent: *interval_jitter_percent,
        unhealthy_threshold: unhealthy_threshold?,
        healthy_threshold: healthy_threshold?,
        reuse_connection: reuse_connection.as_ref().is_none_or(|b| b.value),
        no_traffic_interval: no_traffic_interval.unwrap_or(NO_TRAFFIC_INTERVAL),
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval: unhealthy_edge_interval.unwrap_or(unhealthy_interval),
        healthy_edge_interval: healthy_edge_interval.unwrap_or(interval),
        always_log_health_check_failures: *always_log_health_check_failures,
        checker: checker?,
    })
}

fn http_health_check(
    cx: &mut Cx,
    p: &str,
    h: &core::health_check::HttpHealthCheck,
) -> Option<mh::HttpHealthCheck> {
    use core::RequestMethod as M;
    let core::health_check::HttpHealthCheck {
        host,
        path,
        send,
        receive,
        response_buffer_size,
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
        method,
    } = h;
    // Not implemented in Envoy either (a request body).
    cx.unsupported(p, "send", send);
    let mut ok = true;
    if path.is_empty() {
        cx.reject(join(p, "path"), Reason::Missing);
        ok = false;
    } else if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        cx.reject(
            join(p, "path"),
            Reason::Invalid(format!("{path:?} is not a request path")),
        );
        ok = false;
    }
    if !host.is_empty() && http::HeaderValue::from_str(host).is_err() {
        cx.reject(
            join(p, "host"),
            Reason::Invalid(format!("{host:?} is not a header value")),
        );
        ok = false;
    }
    let method = match M::try_from(*method) {
        Ok(M::MethodUnspecified | M::Get) => "GET",
        Ok(M::Head) => "HEAD",
        Ok(M::Post) => "POST",
        Ok(M::Put) => "PUT",
        Ok(M::Delete) => "DELETE",
        Ok(M::Options) => "OPTIONS",
        Ok(M::Trace) => "TRACE",
        Ok(M::Patch) => "PATCH",
        Ok(M::Connect) | Err(_) => {
            cx.reject(
                join(p, "method"),
                Reason::UnsupportedValue(format!(
                    "method {method} (CONNECT is not a health check)"
                )),
            );
            ok = false;
            "GET"
        }
    };
    let http2 = match CodecClientType::try_from(*codec_client_type) {
        Ok(CodecClientType::Http1) => false,
        Ok(CodecClientType::Http2) => true,
        _ => {
            cx.reject(
                join(p, "codec_client_type"),
                Reason::UnsupportedValue(format!("value {codec_client_type} (HTTP/3)")),
            );
            ok = false;
            false
        }
    };
    let expected_statuses = status_ranges(cx, p, "expected_statuses", expected_statuses);
    let retriable_statuses = status_ranges(cx, p, "retriable_statuses", retriable_statuses);
    let receive = payloads(cx, p, "receive", receive);
    let service_name_matcher = match service_name_matcher {
        None => None,
        Some(m) => {
            let m = string_matcher(cx, &join(p, "service_name_matcher"), m);
            ok &= m.is_some();
            m
        }
    };
    let request_headers_to_add =
        header_value_options(cx, p, "request_headers_to_add", request_headers_to_add);
    let response_buffer_size = response_buffer_size
        .as_ref()
        .map_or(RESPONSE_BUFFER_SIZE, |v| {
            usize::try_from(v.value).unwrap_or(usize::MAX)
        });
    (ok && expected_statuses.is_some() && retriable_statuses.is_some() && receive.is_some()).then(
        || mh::HttpHealthCheck {
            host: (!host.is_empty()).then(|| host.clone()),
            path: path.clone(),
            method: method.into(),
            request_headers_to_add,
            request_headers_to_remove: request_headers_to_remove
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            expected_statuses: expected_statuses.unwrap_or_default(),
            retriable_statuses: retriable_statuses.unwrap_or_default(),
            receive: receive.unwrap_or_default(),
            response_buffer_size,
            http2,
            service_name_matcher,
        },
    )
}

/// Half-open status ranges within [100, 600), as Envoy validates them.
fn status_ranges(
    cx: &mut Cx,
    p: &str,
    field: &str,
    ranges: &[Int64Range],
) -> Option<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, r) in ranges.iter().enumerate() {
        let Int64Range { start, end } = *r;
        if !(100..600).contains(&start) || !(101..=600).contains(&end) || start >= end {
            cx.reject(
                idx(p, field, i),
                Reason::Invalid(format!(
                    "[{start}, {end}) is not a range of statuses within [100, 600)"
                )),
            );
            ok = false;
            continue;
        }
        out.push((start as u16, end as u16));
    }
    ok.then_some(out)
}

/// Payloads: hex text or bytes.
fn payloads(
    cx: &mut Cx,
    p: &str,
    field: &str,
    ps: &[core::health_check::Payload],
) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, pl) in ps.iter().enumerate() {
        match payload(cx, &idx(p, field, i), pl) {
            Some(b) => out.push(b),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn payload(cx: &mut Cx, p: &str, pl: &core::health_check::Payload) -> Option<Vec<u8>> {
    use core::health_check::payload::Payload as P;
    match &pl.payload {
        Some(P::Binary(b)) => Some(b.clone()),
        Some(P::Text(t)) => match hex(t) {
            Some(b) => Some(b),
            None => {
                cx.reject(
                    join(p, "text"),
                    Reason::Invalid(format!("{t:?} is not hex")),
                );
                None
            }
        },
        None => {
            cx.reject(p, Reason::Missing);
            None
        }
    }
}

/// Decodes hex text (Envoy's `Payload.text`). Two lines do not warrant a crate.
fn hex(t: &str) -> Option<Vec<u8>> {
    if !t.len().is_multiple_of(2) || !t.is_ascii() {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).ok())
        .collect()
}

fn tcp_health_check(
    cx: &mut Cx,
    p: &str,
    t: &core::health_check::TcpHealthCheck,
) -> Option<mh::TcpHealthCheck> {
    let core::health_check::TcpHealthCheck {
        send,
        receive,
        proxy_protocol_config,
    } = t;
    cx.unsupported(p, "proxy_protocol_config", proxy_protocol_config);
    let send = match send {
        None => Some(Vec::new()),
        Some(s) => payload(cx, &join(p, "send"), s),
    };
    let receive = payloads(cx, p, "receive", receive);
    Some(mh::TcpHealthCheck {
        send: send?,
        receive: receive?,
    })
}

fn grpc_health_check(
    cx: &mut Cx,
    p: &str,
    g: &core::health_check::GrpcHealthCheck,
) -> Option<mh::GrpcHealthCheck> {
    let core::health_check::GrpcHealthCheck {
        service_name,
        authority,
        initial_metadata,
    } = g;
    if !authority.is_empty() && authority.parse::<http::uri::Authority>().is_err() {
        cx.reject(
            join(p, "authority"),
            Reason::Invalid(format!("{authority:?} is not an authority")),
        );
        return None;
    }
    Some(mh::GrpcHealthCheck {
        service_name: service_name.clone(),
        authority: (!authority.is_empty()).then(|| authority.clone()),
        initial_metadata: header_value_options(cx, p, "initial_metadata", initial_metadata),
    })
}

/// An endpoint's `health_check_config`.
pub(super) fn endpoint_health_check(
    cx: &mut Cx,
    p: &str,
    c: &ep::endpoint::HealthCheckConfig,
) -> Option<mh::EndpointHealthCheck> {
    let ep::endpoint::HealthCheckConfig {
        port_value,
        hostname,
        address,
        disable_active_health_check,
    } = c;
    let port = match *port_value {
        0 => None,
        v => Some(cx.u16(&join(p, "port_value"), v, "port")?),
    };
    let address = match address {
        None => None,
        Some(a) => Some(super::listener::socket_address(cx, &join(p, "address"), a)?),
    };
    Some(mh::EndpointHealthCheck {
        port,
        address,
        hostname: (!hostname.is_empty()).then(|| hostname.clone()),
        disabled: *disable_active_health_check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_text() {
        assert_eq!(hex("70696e67").as_deref(), Some(&b"ping"[..]));
        assert_eq!(hex("000000FF").as_deref(), Some(&[0, 0, 0, 255][..]));
        assert_eq!(hex(""), Some(vec![]));
        assert_eq!(hex("7"), None);
        assert_eq!(hex("zz"), None);
    }
}
