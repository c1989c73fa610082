//! The PROXY protocol: the listener filter `envoy.filters.listener.proxy_protocol` and the
//! transport socket `envoy.transport_sockets.upstream_proxy_protocol`, into
//! [`myelin_proxy::model::proxy_protocol`].

use std::sync::Arc;

use myelin_proxy::model::proxy_protocol as mp;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::listener::v3 as pb;

use super::{ext, idx, join, Cx, Reason};

pub(super) const LISTENER_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
pub(super) const UPSTREAM_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";
/// The filter's names: current, and the deprecated one Istio's older EnvoyFilters use.
pub(super) const LISTENER_NAMES: [&str; 2] = [
    "envoy.filters.listener.proxy_protocol",
    "envoy.listener.proxy_protocol",
];

/// The listener filter at `p` (its `typed_config` may be left out: the defaults).
pub(super) fn listener_filter(
    cx: &mut Cx,
    p: &str,
    f: &pb::ListenerFilter,
) -> Option<mp::ProxyProtocolListener> {
    cx.unsupported(p, "filter_disabled", &f.filter_disabled);
    let config = match &f.config_type {
        None => ext::ListenerProxyProtocol::default(),
        Some(pb::listener_filter::ConfigType::TypedConfig(any)) => {
            let tp = join(p, "typed_config");
            if any.type_url != LISTENER_URL {
                cx.reject(
                    &tp,
                    Reason::UnsupportedValue(format!(
                        "type `{}` for the PROXY protocol filter (expected {LISTENER_URL})",
                        any.type_url
                    )),
                );
                return None;
            }
            cx.decode(&tp, LISTENER_URL, &any.value)?
        }
        Some(pb::listener_filter::ConfigType::ConfigDiscovery(_)) => {
            cx.reject(join(p, "config_discovery"), Reason::NotSupported);
            return None;
        }
    };
    let tp = join(p, "typed_config");
    let ext::ListenerProxyProtocol {
        rules,
        allow_requests_without_proxy_protocol,
        pass_through_tlvs,
        disallowed_versions,
        stat_prefix,
        tlv_location: _,
    } = config;
    if !rules.is_empty() {
        // TLVs as connection metadata: nothing in Myelin reads a connection's metadata.
        cx.reject(
            join(&tp, "rules"),
            Reason::Invalid(
                "TLVs into dynamic metadata are not kept: nothing in Myelin reads a \
                 connection's metadata (pass_through_tlvs passes them upstream)"
                    .into(),
            ),
        );
    }
    let mut disallowed = Vec::new();
    for (i, v) in disallowed_versions.iter().enumerate() {
        match version(cx, &idx(&tp, "disallowed_versions", i), *v) {
            Some(v) if !disallowed.contains(&v) => disallowed.push(v),
            _ => {}
        }
    }
    if disallowed.len() == 2 {
        cx.reject(
            join(&tp, "disallowed_versions"),
            Reason::Invalid("all PROXY protocol versions are disallowed".into()),
        );
    }
    let pass_through = tlv_filter(
        cx,
        &join(&tp, "pass_through_tlvs"),
        pass_through_tlvs.as_ref(),
    );
    Some(mp::ProxyProtocolListener {
        optional: allow_requests_without_proxy_protocol,
        disallowed,
        pass_through,
        stat_prefix: Arc::from(stat_prefix),
    })
}

fn version(cx: &mut Cx, p: &str, v: i32) -> Option<mp::ProxyProtocolVersion> {
    match v {
        0 => Some(mp::ProxyProtocolVersion::V1),
        1 => Some(mp::ProxyProtocolVersion::V2),
        other => {
            cx.reject(p, Reason::Invalid(format!("unknown version {other}")));
            None
        }
    }
}

fn tlv_filter(
    cx: &mut Cx,
    p: &str,
    t: Option<&core::ProxyProtocolPassThroughTlVs>,
) -> mp::TlvFilter {
    let Some(t) = t else {
        return mp::TlvFilter::None;
    };
    let kinds = tlv_types(cx, &join(p, "tlv_type"), &t.tlv_type);
    match t.match_type {
        0 => mp::TlvFilter::All,
        1 => mp::TlvFilter::Only(kinds),
        other => {
            cx.reject(
                join(p, "match_type"),
                Reason::Invalid(format!("unknown match type {other}")),
            );
            mp::TlvFilter::None
        }
    }
}

fn tlv_types(cx: &mut Cx, p: &str, types: &[u32]) -> Vec<u8> {
    types
        .iter()
        .enumerate()
        .filter_map(|(i, t)| tlv_type(cx, &format!("{p}[{i}]"), *t))
        .collect()
}

fn tlv_type(cx: &mut Cx, p: &str, t: u32) -> Option<u8> {
    match u8::try_from(t) {
        Ok(t) => Some(t),
        Err(_) => {
            cx.reject(p, Reason::Invalid(format!("{t} is not a TLV type (0-255)")));
            None
        }
    }
}

/// The transport socket `ProxyProtocolUpstreamTransport` at `p` (its `typed_config`
/// bytes): the header, and the socket it wraps (`transport_socket`, required).
pub(super) fn upstream(
    cx: &mut Cx,
    p: &str,
    bytes: &[u8],
) -> Option<(mp::UpstreamProxyProtocol, core::TransportSocket)> {
    let tp = join(p, "typed_config");
    let t: ext::ProxyProtocolUpstreamTransport = cx.decode(&tp, UPSTREAM_URL, bytes)?;
    let ext::ProxyProtocolUpstreamTransport {
        config,
        transport_socket,
        allow_unspecified_address,
        tlv_as_pool_key,
    } = t;
    // Neither is implemented by Envoy either (`not-implemented-hide`).
    cx.unsupported(&tp, "allow_unspecified_address", &allow_unspecified_address);
    cx.unsupported(&tp, "tlv_as_pool_key", &tlv_as_pool_key);
    let Some(inner) = transport_socket else {
        cx.reject(join(&tp, "transport_socket"), Reason::Missing);
        return None;
    };
    let cp = join(&tp, "config");
    let config = config.unwrap_or_default();
    let ext::ProxyProtocolConfig {
        version,
        pass_through_tlvs,
        added_tlvs,
    } = config;
    let version = self::version(cx, &join(&cp, "version"), version)?;
    let pass_through = tlv_filter(
        cx,
        &join(&cp, "pass_through_tlvs"),
        pass_through_tlvs.as_ref(),
    );
    let mut tlvs = Vec::new();
    for (i, e) in added_tlvs.iter().enumerate() {
        let ep = idx(&cp, "added_tlvs", i);
        let ext::TlvEntry {
            r#type,
            value,
            format_string,
        } = e;
        // Formatted values (from the stream's info): not evaluated here.
        cx.unsupported(&ep, "format_string", format_string);
        if format_string.is_some() {
            continue;
        }
        if value.is_empty() {
            cx.reject(join(&ep, "value"), Reason::Missing);
            continue;
        }
        if let Some(kind) = tlv_type(cx, &join(&ep, "type"), *r#type) {
            tlvs.push(mp::Tlv {
                kind,
                value: value.clone(),
            });
        }
    }
    if version == mp::ProxyProtocolVersion::V1
        && (!tlvs.is_empty() || pass_through != mp::TlvFilter::None)
    {
        // Envoy ignores them (v1 has no TLVs); a config that sets them means v2.
        cx.reject(
            &cp,
            Reason::Invalid("TLVs need version V2 (a v1 header carries none)".into()),
        );
    }
    Some((
        mp::UpstreamProxyProtocol {
            version,
            pass_through,
            added_tlvs: tlvs,
        },
        inner,
    ))
}
