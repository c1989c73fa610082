//! Listener -> [`model::Listener`], with the HTTP connection manager and TCP proxy filters.

use std::net::{IpAddr, SocketAddr};

use myelin_proxy::model::{self, listener as ml};
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::listener::v3 as pb;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds_api::pb::google::protobuf;

use super::{ext, filter, idx, join, route, secret, Cx, Reason, Rejection};

const NETWORK_RBAC_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const HCM_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const TLS_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// Listener filters whose work Myelin does itself (TLS and HTTP sniffing, original
/// destination from the eBPF map): accepted as no-ops.
const BUILTIN_LISTENER_FILTERS: &[&str] = &[
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
    "envoy.filters.listener.original_dst",
];

/// Converts a listener (LDS resource).
#[allow(deprecated)]
pub fn listener(l: &pb::Listener) -> Result<model::Listener, Vec<Rejection>> {
    let mut cx = Cx::default();
    let p = "";
    let pb::Listener {
        name,
        address,
        additional_addresses,
        stat_prefix: _,
        filter_chains,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes,
        metadata: _,
        deprecated_v1,
        drain_type: _,
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config: _,
        reuse_port: _,
        enable_reuse_port: _,
        access_log: _,
        tcp_backlog_size: _,
        max_connections_to_accept_per_socket_event: _,
        bind_to_port,
        enable_mptcp,
        ignore_global_conn_limit: _,
        bypass_overload_manager: _,
        listener_specifier,
    } = l;
    if name.is_empty() {
        cx.reject("name", Reason::Missing);
    }
    if use_original_dst.is_some() {
        cx.reject(
            "use_original_dst",
            Reason::Deprecated {
                field: "use_original_dst",
                instead: "Myelin hands captured connections to the listener on their original destination already; remove it",
            },
        );
    }
    if deprecated_v1.is_some() {
        cx.reject(
            "deprecated_v1",
            Reason::Deprecated {
                field: "deprecated_v1",
                instead: "remove it (v1 listener options have no v3 meaning)",
            },
        );
    }
    cx.unsupported(p, "additional_addresses", additional_addresses);
    cx.unsupported(p, "filter_chain_matcher", filter_chain_matcher);
    cx.unsupported(p, "transparent", transparent);
    cx.unsupported(p, "freebind", freebind);
    cx.unsupported(p, "socket_options", socket_options);
    cx.unsupported(p, "tcp_fast_open_queue_length", tcp_fast_open_queue_length);
    cx.unsupported(p, "udp_listener_config", udp_listener_config);
    cx.unsupported(p, "api_listener", api_listener);
    cx.unsupported(p, "enable_mptcp", enable_mptcp);
    cx.unsupported(p, "internal_listener", listener_specifier);
    let mut filters = model::listener::ListenerFilters::default();
    for (i, f) in listener_filters.iter().enumerate() {
        let fp = idx(p, "listener_filters", i);
        if super::proxy_protocol::LISTENER_NAMES.contains(&f.name.as_str()) {
            if filters.proxy_protocol.is_some() {
                cx.reject(
                    &fp,
                    Reason::Invalid("a second PROXY protocol filter".into()),
                );
            }
            filters.proxy_protocol = super::proxy_protocol::listener_filter(&mut cx, &fp, f);
        } else if !BUILTIN_LISTENER_FILTERS.contains(&f.name.as_str()) {
            cx.reject(
                fp,
                Reason::UnsupportedValue(format!("listener filter `{}`", f.name)),
            );
        }
    }
    if let Some(t) = listener_filters_timeout {
        // `0s`: no bound, as in Envoy.
        filters.timeout = cx
            .duration("listener_filters_timeout", t)
            .filter(|d| !d.is_zero());
    }
    filters.continue_on_timeout = *continue_on_listener_filters_timeout;
    // `ipv4_compat` (a listener's: elsewhere it is rejected).
    let ipv4_compat = matches!(
        address.as_ref().and_then(|a| a.address.as_ref()),
        Some(core::address::Address::SocketAddress(s)) if s.ipv4_compat
    );
    let address = match address {
        Some(a) => listener_address(&mut cx, "address", a),
        None => {
            cx.reject("address", Reason::Missing);
            None
        }
    };
    let mut chains: Vec<_> = filter_chains
        .iter()
        .enumerate()
        .filter_map(|(i, c)| filter_chain(&mut cx, &idx(p, "filter_chains", i), c))
        .collect();
    let mut default_filter_chain = default_filter_chain
        .as_ref()
        .and_then(|c| filter_chain(&mut cx, "default_filter_chain", c));
    // The listener's buffer limit is its connection managers' (Envoy's connection manager
    // takes its connection's).
    let buffer_limit = per_connection_buffer_limit_bytes
        .as_ref()
        .map_or(ml::DEFAULT_BUFFER_LIMIT, |v| v.value);
    for chain in chains.iter_mut().chain(default_filter_chain.as_mut()) {
        if let ml::NetworkFilter::HttpConnectionManager(h) = &mut chain.filter {
            h.buffer_limit = buffer_limit;
        }
    }
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        cx.reject(
            "filter_chains",
            Reason::Invalid("a listener needs at least one filter chain".into()),
        );
    }
    let Some(address) = address else {
        return Err(cx.errs);
    };
    cx.finish(model::Listener {
        name: name.clone(),
        address,
        bind_to_port: bind_to_port.as_ref().is_none_or(|b| b.value),
        ipv4_compat,
        filter_chains: chains,
        default_filter_chain,
        listener_filters: filters,
    })
}

/// A TCP socket address with an IP literal and a port.
pub(crate) fn socket_address(cx: &mut Cx, path: &str, a: &core::Address) -> Option<SocketAddr> {
    address(cx, path, a, false)
}

/// A listener's address: [`socket_address`], `ipv4_compat` allowed.
fn listener_address(cx: &mut Cx, path: &str, a: &core::Address) -> Option<SocketAddr> {
    address(cx, path, a, true)
}

fn address(cx: &mut Cx, path: &str, a: &core::Address, listener: bool) -> Option<SocketAddr> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier as P;
    match &a.address {
        Some(A::SocketAddress(s)) => {
            let p = join(path, "socket_address");
            let core::SocketAddress {
                protocol,
                address,
                resolver_name,
                ipv4_compat,
                port_specifier,
            } = s;
            if *protocol != core::socket_address::Protocol::Tcp as i32 {
                cx.reject(join(&p, "protocol"), Reason::UnsupportedValue("UDP".into()));
            }
            cx.unsupported(&p, "resolver_name", resolver_name);
            if !listener {
                cx.unsupported(&p, "ipv4_compat", ipv4_compat);
            }
            let ip = match address.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    cx.reject(
                        join(&p, "address"),
                        Reason::Invalid(format!("`{address}` is not an IP address")),
                    );
                    None
                }
            };
            let port = match port_specifier {
                Some(P::PortValue(v)) => cx.u16(&join(&p, "port_value"), *v, "port"),
                Some(P::NamedPort(_)) => {
                    cx.reject(join(&p, "named_port"), Reason::NotSupported);
                    None
                }
                None => {
                    cx.reject(join(&p, "port_value"), Reason::Missing);
                    None
                }
            };
            Some(SocketAddr::new(ip?, port?))
        }
        Some(A::Pipe(_)) => {
            cx.reject(join(path, "pipe"), Reason::NotSupported);
            None
        }
        Some(A::EnvoyInternalAddress(_)) => {
            cx.reject(join(path, "envoy_internal_address"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(path, Reason::Missing);
            None
        }
    }
}

#[allow(deprecated)]
fn filter_chain(cx: &mut Cx, p: &str, c: &pb::FilterChain) -> Option<ml::FilterChain> {
    let pb::FilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        metadata: _,
        transport_socket,
        transport_socket_connect_timeout,
        name,
        on_demand_configuration,
    } = c;
    if use_proxy_proto.is_some() {
        cx.reject(
            join(p, "use_proxy_proto"),
            Reason::Deprecated {
                field: "use_proxy_proto",
                instead: "PROXY protocol is not supported either way",
            },
        );
    }
    cx.unsupported(p, "on_demand_configuration", on_demand_configuration);
    let tls = transport_socket
        .as_ref()
        .and_then(|t| downstream_tls(cx, &join(p, "transport_socket"), t));
    let handshake_timeout = cx.timeout(
        &join(p, "transport_socket_connect_timeout"),
        transport_socket_connect_timeout,
        None,
    );
    let m = filter_chain_match
        .as_ref()
        .map(|m| chain_match(cx, &join(p, "filter_chain_match"), m))
        .unwrap_or_default();
    let mut terminal = None;
    let mut rbac = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let fp = idx(p, "filters", i);
        let is_rbac = matches!(&f.config_type,
            Some(pb::filter::ConfigType::TypedConfig(a)) if a.type_url == NETWORK_RBAC_URL);
        if is_rbac && i + 1 < filters.len() {
            let tp = join(&fp, "typed_config");
            if let Some(any) = typed_config(cx, &fp, &f.config_type) {
                if let Some(r) = cx.decode::<ext::NetworkRbac>(&tp, NETWORK_RBAC_URL, &any.value) {
                    if let Some(r) = super::rbac::network_rbac(cx, &tp, &r) {
                        rbac.push(r);
                    }
                }
            }
            continue;
        }
        let converted = network_filter(cx, &fp, f);
        if i + 1 < filters.len() {
            // Only terminal filters are supported, so anything before the last is extra.
            if converted.is_some() {
                cx.reject(
                    fp,
                    Reason::Invalid(format!(
                        "`{}` is terminal and must be the last filter",
                        f.name
                    )),
                );
            }
        } else {
            terminal = converted;
        }
    }
    if filters.is_empty() {
        cx.reject(join(p, "filters"), Reason::Missing);
    }
    Some(ml::FilterChain {
        name: name.clone(),
        filter_chain_match: m,
        rbac: rbac.into(),
        filter: terminal?,
        tls,
        handshake_timeout,
    })
}

/// A filter chain's `transport_socket`: `DownstreamTlsContext` or `raw_buffer` (`None`).
fn downstream_tls(cx: &mut Cx, p: &str, t: &core::TransportSocket) -> Option<ml::DownstreamTls> {
    let tp = join(p, "typed_config");
    let bytes = secret::tls_transport_socket(cx, p, t, TLS_URL)?;
    let d: ext::DownstreamTlsContext = cx.decode(&tp, TLS_URL, bytes)?;
    let ext::DownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        require_sni,
        session_ticket_keys,
        session_ticket_keys_sds_secret_config,
        disable_stateless_session_resumption,
        disable_stateful_session_resumption,
        session_timeout,
        ocsp_staple_policy,
        // Myelin always looks through every certificate for the one the SNI names.
        full_scan_certs_on_sni_mismatch: _,
        prefer_client_ciphers,
    } = &d;
    cx.unsupported(&tp, "session_ticket_keys", session_ticket_keys);
    cx.unsupported(
        &tp,
        "session_ticket_keys_sds_secret_config",
        session_ticket_keys_sds_secret_config,
    );
    cx.unsupported(&tp, "session_timeout", session_timeout);
    match *ocsp_staple_policy {
        // LENIENT_STAPLING (the default): a certificate without an OCSP response is served
        // unstapled, which is what Myelin does with every certificate.
        0 => {}
        v @ (1 | 2) => cx.reject(
            join(&tp, "ocsp_staple_policy"),
            Reason::UnsupportedValue(ext::OCSP_STAPLE_POLICIES[v as usize].into()),
        ),
        v => cx.reject(
            join(&tp, "ocsp_staple_policy"),
            Reason::Invalid(format!("unknown value {v}")),
        ),
    }
    let require_client_certificate = require_client_certificate.as_ref().is_some_and(|b| b.value);
    let Some(c) = common_tls_context else {
        cx.reject(join(&tp, "common_tls_context"), Reason::Missing);
        return None;
    };
    let cp = join(&tp, "common_tls_context");
    let (min_version, max_version, algorithms) = match &c.tls_params {
        Some(t) => tls_params(cx, &join(&cp, "tls_params"), t),
        None => (None, None, Default::default()),
    };
    let common = secret::common_tls_context(cx, &cp, c);
    match (
        c.tls_certificates.is_empty(),
        c.tls_certificate_sds_secret_configs.is_empty(),
    ) {
        (true, true) => cx.reject(join(&cp, "tls_certificates"), Reason::Missing),
        (false, false) => cx.reject(
            join(&cp, "tls_certificate_sds_secret_configs"),
            Reason::Invalid(
                "set together with `tls_certificates` (Envoy does not mix SDS and inline \
                 certificates in a server context)"
                    .into(),
            ),
        ),
        _ => {}
    }
    if require_client_certificate
        && c.validation_context.is_none()
        && c.validation_context_sds_secret_config.is_none()
        && c.combined_validation_context.is_none()
    {
        cx.reject(
            join(&tp, "require_client_certificate"),
            Reason::Invalid(
                "client certificates are required but there is no validation context to \
                 verify them with"
                    .into(),
            ),
        );
    }
    Some(ml::DownstreamTls {
        certificates: common.certificates,
        validation: common.validation,
        require_client_certificate,
        require_sni: require_sni.as_ref().is_some_and(|b| b.value),
        alpn_protocols: common.alpn_protocols,
        min_version,
        max_version,
        algorithms,
        disable_stateless_resumption: *disable_stateless_session_resumption,
        disable_stateful_resumption: *disable_stateful_session_resumption,
        prefer_client_ciphers: *prefer_client_ciphers,
    })
}

/// A TLS context's `tls_params` (either side): the protocol versions, the TLS 1.2 cipher
/// suites, the key exchange groups and the signature algorithms.
pub(crate) fn tls_params(
    cx: &mut Cx,
    p: &str,
    t: &ext::TlsParameters,
) -> (
    Option<ml::TlsVersion>,
    Option<ml::TlsVersion>,
    ml::TlsAlgorithms,
) {
    let ext::TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = t;
    cx.unsupported(p, "compliance_policies", compliance_policies);
    let mut version = |field: &str, v: i32| match v {
        0 => None, // TLS_AUTO: Envoy's default (TLS 1.2 up to TLS 1.3 for a server).
        3 => Some(ml::TlsVersion::Tls12),
        4 => Some(ml::TlsVersion::Tls13),
        1 | 2 => {
            cx.reject(
                join(p, field),
                Reason::UnsupportedValue(format!(
                    "{} (Myelin speaks TLS 1.2 and 1.3)",
                    ext::TLS_PROTOCOLS[v as usize]
                )),
            );
            None
        }
        v => {
            cx.reject(
                join(p, field),
                Reason::Invalid(format!("unknown value {v}")),
            );
            None
        }
    };
    let min = version(
        "tls_minimum_protocol_version",
        *tls_minimum_protocol_version,
    );
    let max = version(
        "tls_maximum_protocol_version",
        *tls_maximum_protocol_version,
    );
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            cx.reject(
                join(p, "tls_minimum_protocol_version"),
                Reason::Invalid(format!(
                    "{} is above `tls_maximum_protocol_version` {}",
                    ext::TLS_PROTOCOLS[*tls_minimum_protocol_version as usize],
                    ext::TLS_PROTOCOLS[*tls_maximum_protocol_version as usize],
                )),
            );
        }
    }
    use myelin_proxy::tls::params;
    let tls12_only = max == Some(ml::TlsVersion::Tls12);
    let algorithms = ml::TlsAlgorithms {
        cipher_suites: algorithm_list(
            cx,
            p,
            "cipher_suites",
            cipher_suites,
            params::cipher_suite,
            // TLS 1.3 suites are not configurable: with none of these, TLS 1.3 alone.
            tls12_only,
        ),
        ecdh_curves: algorithm_list(cx, p, "ecdh_curves", ecdh_curves, params::curve, true),
        signature_algorithms: algorithm_list(
            cx,
            p,
            "signature_algorithms",
            signature_algorithms,
            params::signature_algorithm,
            true,
        ),
    };
    (min, max, algorithms)
}

/// One of `tls_params`' lists, by BoringSSL's names (`[a|b]` groups of equal preference
/// taken in order): names Myelin does not speak are left out, names nobody knows rejected;
/// `None` when the list is empty (the defaults). When nothing spoken is left and
/// `need_one`, the list is rejected.
fn algorithm_list(
    cx: &mut Cx,
    p: &str,
    field: &str,
    names: &[String],
    classify: fn(&str) -> myelin_proxy::tls::params::Known,
    need_one: bool,
) -> Option<Vec<String>> {
    use myelin_proxy::tls::params::Known;
    if names.is_empty() {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    let mut left_out = Vec::new();
    for (i, entry) in names.iter().enumerate() {
        let group = entry
            .strip_prefix('[')
            .and_then(|e| e.strip_suffix(']'))
            .unwrap_or(entry);
        for name in group.split('|').map(str::trim) {
            match classify(name) {
                Known::Supported(n) => {
                    if !out.iter().any(|o| o == n) {
                        out.push(n.to_owned());
                    }
                }
                Known::NotImplemented => left_out.push(name.to_owned()),
                Known::Unknown => cx.reject(
                    idx(p, field, i),
                    Reason::Invalid(format!("{name:?} is not a name BoringSSL (so Envoy) knows")),
                ),
            }
        }
    }
    // (A list of only unknown names is rejected name by name above.)
    if out.is_empty() && need_one && !left_out.is_empty() {
        cx.reject(
            join(p, field),
            Reason::UnsupportedValue(format!(
                "a list of only {} (none of them spoken by Myelin)",
                left_out.join(", ")
            )),
        );
    }
    Some(out)
}

fn chain_match(cx: &mut Cx, p: &str, m: &pb::FilterChainMatch) -> ml::FilterChainMatch {
    let pb::FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    cx.unsupported(p, "address_suffix", address_suffix);
    cx.unsupported(p, "suffix_len", suffix_len);
    cx.unsupported(
        p,
        "direct_source_prefix_ranges",
        direct_source_prefix_ranges,
    );
    cx.unsupported(p, "source_type", source_type);
    cx.unsupported(p, "source_prefix_ranges", source_prefix_ranges);
    cx.unsupported(p, "source_ports", source_ports);
    let destination_port = destination_port
        .as_ref()
        .and_then(|v| cx.u16(&join(p, "destination_port"), v.value, "port"));
    let prefix_ranges = prefix_ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| cidr(cx, &idx(p, "prefix_ranges", i), r))
        .collect();
    if !matches!(transport_protocol.as_str(), "" | "raw_buffer" | "tls") {
        cx.reject(
            join(p, "transport_protocol"),
            Reason::UnsupportedValue(format!("`{transport_protocol}`")),
        );
    }
    ml::FilterChainMatch {
        destination_port,
        prefix_ranges,
        server_names: server_names
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        transport_protocol: (!transport_protocol.is_empty()).then(|| transport_protocol.clone()),
        application_protocols: application_protocols.clone(),
    }
}

pub(crate) fn cidr(cx: &mut Cx, p: &str, r: &core::CidrRange) -> Option<ml::CidrRange> {
    let address = match r.address_prefix.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) => {
            cx.reject(
                join(p, "address_prefix"),
                Reason::Invalid(format!("`{}` is not an IP address", r.address_prefix)),
            );
            return None;
        }
    };
    let len = r.prefix_len.as_ref().map_or(0, |v| v.value);
    let max = if address.is_ipv4() { 32 } else { 128 };
    if len > max {
        cx.reject(
            join(p, "prefix_len"),
            Reason::Invalid(format!("{len} is longer than the address ({max} bits)")),
        );
        return None;
    }
    Some(ml::CidrRange {
        address,
        prefix_len: len as u8,
    })
}

fn typed_config<'a>(
    cx: &mut Cx,
    p: &str,
    ct: &'a Option<pb::filter::ConfigType>,
) -> Option<&'a protobuf::Any> {
    match ct {
        Some(pb::filter::ConfigType::TypedConfig(any)) => Some(any),
        Some(pb::filter::ConfigType::ConfigDiscovery(_)) => {
            cx.reject(join(p, "config_discovery"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(join(p, "typed_config"), Reason::Missing);
            None
        }
    }
}

fn network_filter(cx: &mut Cx, p: &str, f: &pb::Filter) -> Option<ml::NetworkFilter> {
    let any = typed_config(cx, p, &f.config_type)?;
    let tp = join(p, "typed_config");
    match any.type_url.as_str() {
        HCM_URL => {
            let m: hcm::HttpConnectionManager = cx.decode(&tp, HCM_URL, &any.value)?;
            http_connection_manager(cx, &tp, &m)
                .map(|h| ml::NetworkFilter::HttpConnectionManager(Box::new(h)))
        }
        TCP_PROXY_URL => {
            let m: ext::TcpProxy = cx.decode(&tp, TCP_PROXY_URL, &any.value)?;
            tcp_proxy(cx, &tp, &m).map(ml::NetworkFilter::TcpProxy)
        }
        NETWORK_RBAC_URL => {
            cx.reject(
                tp,
                Reason::Invalid(
                    "an RBAC filter is not terminal: a TCP proxy or an HTTP connection manager \
                     must follow it"
                        .into(),
                ),
            );
            None
        }
        other => {
            cx.reject(
                tp,
                Reason::UnsupportedValue(format!("network filter `{}` (type `{other}`)", f.name)),
            );
            None
        }
    }
}

/// Envoy's bounds for `max_concurrent_streams` (HTTP/2 allows 0, which Envoy does not).
pub(crate) const H2_STREAMS: std::ops::RangeInclusive<u32> = 1..=(1 << 31) - 1;
/// Envoy's bounds for the initial windows: from HTTP/2's default up to its maximum.
pub(crate) const H2_WINDOW: std::ops::RangeInclusive<u32> = 65_535..=(1 << 31) - 1;

/// The downstream side of `Http2ProtocolOptions`: what the connection manager announces.
/// The flood limits are counts of frames where Myelin bounds bytes waiting to go out and
/// resets per stream (`h2server::Limits`), so they are accepted and not applied, as for
/// clusters.
#[allow(deprecated)]
fn http2_settings(cx: &mut Cx, p: &str, o: &core::Http2ProtocolOptions) -> ml::Http2Settings {
    let core::Http2ProtocolOptions {
        hpack_table_size,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        max_outbound_frames: _,
        max_outbound_control_frames: _,
        max_consecutive_inbound_frames_with_empty_payload: _,
        max_inbound_priority_frames_per_stream: _,
        max_inbound_window_update_frames_per_data_frame_sent: _,
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec: _,
    } = o;
    cx.unsupported(p, "allow_metadata", allow_metadata);
    cx.unsupported(
        p,
        "stream_error_on_invalid_http_messaging",
        stream_error_on_invalid_http_messaging,
    );
    cx.unsupported(
        p,
        "override_stream_error_on_invalid_http_message",
        override_stream_error_on_invalid_http_message,
    );
    cx.unsupported(p, "custom_settings_parameters", custom_settings_parameters);
    // `connection_idle_interval` (a PING before reusing an idle connection) is for clients;
    // Envoy's server side ignores it, and so does Myelin's.
    let connection_keepalive = connection_keepalive
        .as_ref()
        .and_then(|k| super::cluster::http2_keepalive(cx, &join(p, "connection_keepalive"), k));
    let d = ml::Http2Settings::default();
    ml::Http2Settings {
        max_concurrent_streams: cx
            .u32_in(
                &join(p, "max_concurrent_streams"),
                max_concurrent_streams,
                H2_STREAMS,
            )
            .unwrap_or(d.max_concurrent_streams),
        initial_stream_window_size: cx
            .u32_in(
                &join(p, "initial_stream_window_size"),
                initial_stream_window_size,
                H2_WINDOW,
            )
            .unwrap_or(d.initial_stream_window_size),
        initial_connection_window_size: cx
            .u32_in(
                &join(p, "initial_connection_window_size"),
                initial_connection_window_size,
                H2_WINDOW,
            )
            .unwrap_or(d.initial_connection_window_size),
        hpack_table_size: hpack_table_size
            .as_ref()
            .map_or(d.hpack_table_size, |v| v.value),
        connection_keepalive,
        allow_connect: *allow_connect,
    }
}

#[allow(deprecated)]
fn http_connection_manager(
    cx: &mut Cx,
    p: &str,
    m: &hcm::HttpConnectionManager,
) -> Option<ml::HttpConnectionManager> {
    use hcm::http_connection_manager::RouteSpecifier as R;
    let hcm::HttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        tracing: _,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout: _,
        delayed_close_timeout: _,
        access_log: _,
        access_log_flush_interval: _,
        flush_access_log_on_new_request: _,
        access_log_options: _,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        route_specifier,
        strip_port_mode,
    } = m;
    if *codec_type != hcm::http_connection_manager::CodecType::Auto as i32 {
        cx.reject(
            join(p, "codec_type"),
            Reason::UnsupportedValue(format!(
                "{} (Myelin detects the protocol; use AUTO)",
                hcm::http_connection_manager::CodecType::try_from(*codec_type)
                    .map(|c| c.as_str_name())
                    .unwrap_or("an unknown codec")
            )),
        );
    }
    for (field, set) in [
        ("add_user_agent", add_user_agent.is_some()),
        ("http3_protocol_options", http3_protocol_options.is_some()),
        (
            "early_header_mutation_extensions",
            !early_header_mutation_extensions.is_empty(),
        ),
        ("proxy_100_continue", *proxy_100_continue),
        (
            "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
            *represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        ),
        (
            "stream_error_on_invalid_http_message",
            stream_error_on_invalid_http_message.is_some(),
        ),
        (
            "path_normalization_options",
            path_normalization_options.is_some(),
        ),
        ("proxy_status_config", proxy_status_config.is_some()),
        (
            "typed_header_validation_config",
            typed_header_validation_config.is_some(),
        ),
        ("append_x_forwarded_port", *append_x_forwarded_port),
        ("append_local_overload", *append_local_overload),
        (
            "add_proxy_protocol_connection_state",
            add_proxy_protocol_connection_state.is_some(),
        ),
    ] {
        if set {
            cx.reject(join(p, field), Reason::NotSupported);
        }
    }
    // HTTP filters: the router last; before it the filters Myelin has (fault, CORS);
    // optional filters Myelin lacks may be skipped (that is what `is_optional` means); any
    // other filter is rejected by name.
    let fp = |i| idx(p, "http_filters", i);
    let mut filters = Vec::new();
    match http_filters.split_last() {
        None => cx.reject(
            join(p, "http_filters"),
            Reason::Invalid("the router filter is required".into()),
        ),
        Some((last, rest)) => {
            filters.extend(
                rest.iter()
                    .enumerate()
                    .filter_map(|(i, f)| filter::http_filter(cx, &fp(i), f)),
            );
            router_filter(cx, &fp(rest.len()), last);
        }
    }
    let mut max_stream_duration_of_hcm = None;
    let mut header_limits = ml::HeaderLimits::default();
    let idle_timeout = match common_http_protocol_options {
        None => Some(ml::DEFAULT_IDLE_TIMEOUT),
        Some(o) => {
            let cp = join(p, "common_http_protocol_options");
            let core::HttpProtocolOptions {
                idle_timeout,
                max_connection_duration,
                max_headers_count,
                max_stream_duration,
                headers_with_underscores_action,
                max_requests_per_connection,
            } = o;
            cx.unsupported(&cp, "max_connection_duration", max_connection_duration);
            match max_headers_count.as_ref().map(|v| v.value) {
                None => {}
                // Envoy's bound: at least 1.
                Some(0) => cx.reject(
                    join(&cp, "max_headers_count"),
                    Reason::Invalid("must be at least 1".into()),
                ),
                Some(n) => header_limits.max_count = n,
            }
            max_stream_duration_of_hcm =
                cx.timeout(&join(&cp, "max_stream_duration"), max_stream_duration, None);
            {
                use core::http_protocol_options::HeadersWithUnderscoresAction as U;
                header_limits.underscores = match U::try_from(*headers_with_underscores_action) {
                    Ok(U::Allow) => ml::UnderscoreAction::Allow,
                    Ok(U::RejectRequest) => ml::UnderscoreAction::RejectRequest,
                    Ok(U::DropHeader) => ml::UnderscoreAction::DropHeader,
                    Err(_) => {
                        cx.reject(
                            join(&cp, "headers_with_underscores_action"),
                            Reason::Invalid(format!(
                                "unknown value {headers_with_underscores_action}"
                            )),
                        );
                        ml::UnderscoreAction::Allow
                    }
                };
            }
            cx.unsupported(
                &cp,
                "max_requests_per_connection",
                max_requests_per_connection,
            );
            cx.timeout(
                &join(&cp, "idle_timeout"),
                idle_timeout,
                Some(ml::DEFAULT_IDLE_TIMEOUT),
            )
        }
    };
    let route = match route_specifier {
        Some(R::Rds(hcm::Rds {
            config_source: _,
            route_config_name,
        })) => {
            if route_config_name.is_empty() {
                cx.reject(join(p, "rds.route_config_name"), Reason::Missing);
                return None;
            }
            ml::RouteSource::Rds(route_config_name.clone())
        }
        Some(R::RouteConfig(rc)) => {
            let rp = join(p, "route_config");
            match route::route_configuration(rc) {
                Ok(rc) => ml::RouteSource::Inline(rc),
                Err(errs) => {
                    cx.errs.extend(errs.into_iter().map(|e| e.prefixed(&rp)));
                    return None;
                }
            }
        }
        Some(R::ScopedRoutes(_)) => {
            cx.reject(join(p, "scoped_routes"), Reason::NotSupported);
            return None;
        }
        None => {
            cx.reject(
                join(p, "rds"),
                Reason::Invalid("one of `rds` or `route_config` is required".into()),
            );
            return None;
        }
    };
    let headers = header_handling(
        cx,
        p,
        HeaderFields {
            use_remote_address,
            xff_num_trusted_hops,
            skip_xff_append,
            internal_address_config,
            via,
            generate_request_id,
            preserve_external_request_id,
            always_set_request_id_in_response,
            request_id_extension,
            server_name,
            server_header_transformation,
            normalize_path,
            merge_slashes,
            path_with_escaped_slashes_action,
            forward_client_cert_details,
            set_current_client_cert_details,
            strip_matching_host_port,
            strip_port_mode,
            strip_trailing_host_dot,
            scheme_header_transformation,
            original_ip_detection_extensions,
            http_protocol_options,
        },
    );

    let max_request_headers_kb = match max_request_headers_kb.as_ref().map(|v| v.value) {
        None => ml::DEFAULT_MAX_REQUEST_HEADERS_KB,
        // Envoy's bounds.
        Some(kb @ 1..=8192) => kb,
        Some(kb) => {
            cx.reject(
                join(p, "max_request_headers_kb"),
                Reason::Invalid(format!("{kb} is not in 1..=8192")),
            );
            ml::DEFAULT_MAX_REQUEST_HEADERS_KB
        }
    };
    Some(ml::HttpConnectionManager {
        headers: std::sync::Arc::new(headers),
        http_filters: std::sync::Arc::new(model::filter::HttpFilters(filters)),
        header_limits,
        local_reply: local_reply_config.as_ref().and_then(|c| {
            super::local_reply::local_reply_config(cx, &join(p, "local_reply_config"), c)
                .map(std::sync::Arc::new)
        }),
        max_request_headers_kb,
        // The listener's, set by `listener`.
        buffer_limit: ml::DEFAULT_BUFFER_LIMIT,
        stat_prefix: stat_prefix.clone(),
        route,
        request_timeout: cx.timeout(&join(p, "request_timeout"), request_timeout, None),
        request_headers_timeout: cx.timeout(
            &join(p, "request_headers_timeout"),
            request_headers_timeout,
            None,
        ),
        stream_idle_timeout: cx.timeout(
            &join(p, "stream_idle_timeout"),
            stream_idle_timeout,
            Some(ml::DEFAULT_STREAM_IDLE_TIMEOUT),
        ),
        idle_timeout,
        max_stream_duration: max_stream_duration_of_hcm,
        http2: http2_protocol_options
            .as_ref()
            .map(|o| http2_settings(cx, &join(p, "http2_protocol_options"), o))
            .unwrap_or_default(),
        upgrade_types: upgrade_configs
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                let up = idx(p, "upgrade_configs", i);
                if !u.filters.is_empty() {
                    cx.reject(join(&up, "filters"), Reason::NotSupported);
                }
                if u.upgrade_type.is_empty() {
                    cx.reject(join(&up, "upgrade_type"), Reason::Missing);
                    return None;
                }
                // `enabled` defaults to true; a disabled type is the same as an absent one.
                u.enabled
                    .as_ref()
                    .is_none_or(|e| e.value)
                    .then(|| u.upgrade_type.to_ascii_lowercase())
            })
            .collect(),
    })
}

/// The connection manager fields [`header_handling`] reads.
struct HeaderFields<'a> {
    use_remote_address: &'a Option<protobuf::BoolValue>,
    xff_num_trusted_hops: &'a u32,
    skip_xff_append: &'a bool,
    internal_address_config: &'a Option<hcm::http_connection_manager::InternalAddressConfig>,
    via: &'a String,
    generate_request_id: &'a Option<protobuf::BoolValue>,
    preserve_external_request_id: &'a bool,
    always_set_request_id_in_response: &'a bool,
    request_id_extension: &'a Option<hcm::RequestIdExtension>,
    server_name: &'a String,
    server_header_transformation: &'a i32,
    normalize_path: &'a Option<protobuf::BoolValue>,
    merge_slashes: &'a bool,
    path_with_escaped_slashes_action: &'a i32,
    forward_client_cert_details: &'a i32,
    set_current_client_cert_details:
        &'a Option<hcm::http_connection_manager::SetCurrentClientCertDetails>,
    strip_matching_host_port: &'a bool,
    strip_port_mode: &'a Option<hcm::http_connection_manager::StripPortMode>,
    strip_trailing_host_dot: &'a bool,
    scheme_header_transformation: &'a Option<core::SchemeHeaderTransformation>,
    original_ip_detection_extensions: &'a [core::TypedExtensionConfig],
    http_protocol_options: &'a Option<core::Http1ProtocolOptions>,
}

/// The connection manager's `http_protocol_options` (HTTP/1): what Myelin does with
/// HTTP/1.0 requests; the settings that match what its codec does anyway are accepted
/// (`allow_absolute_url`, `enable_trailers`: trailers are passed either way,
/// `use_balsa_parser`), the others rejected.
fn http1_options(cx: &mut Cx, p: &str, o: &core::Http1ProtocolOptions) -> ml::Http10 {
    let core::Http1ProtocolOptions {
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers: _,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser: _,
        allow_custom_methods,
    } = o;
    if allow_absolute_url.as_ref().is_some_and(|b| !b.value) {
        cx.reject(
            join(p, "allow_absolute_url"),
            Reason::UnsupportedValue("false".into()),
        );
    }
    cx.unsupported(p, "header_key_format", header_key_format);
    cx.unsupported(p, "allow_chunked_length", allow_chunked_length);
    cx.unsupported(
        p,
        "override_stream_error_on_invalid_http_message",
        override_stream_error_on_invalid_http_message,
    );
    cx.unsupported(p, "send_fully_qualified_url", send_fully_qualified_url);
    cx.unsupported(p, "allow_custom_methods", allow_custom_methods);
    if !*accept_http_10 {
        return ml::Http10::Refuse;
    }
    let default_host =
        (!default_host_for_http_10.is_empty()).then(|| default_host_for_http_10.clone());
    if let Some(h) = &default_host {
        if http::HeaderValue::from_str(h).is_err() {
            cx.reject(
                join(p, "default_host_for_http_10"),
                Reason::Invalid(format!("{h:?} is not a header value")),
            );
        }
    }
    ml::Http10::Accept { default_host }
}

const CUSTOM_HEADER_URL: &str = "type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig";

/// `original_ip_detection_extensions`: one, the custom header extension (Envoy Gateway's
/// `clientIPDetection.customHeader`); not with `use_remote_address` or
/// `xff_num_trusted_hops`, as Envoy requires. The XFF extension and others are rejected by
/// type.
fn client_address_header(
    cx: &mut Cx,
    p: &str,
    f: &HeaderFields<'_>,
) -> Option<ml::ClientAddressHeader> {
    let exts = f.original_ip_detection_extensions;
    let ep = join(p, "original_ip_detection_extensions");
    let first = exts.first()?;
    if exts.len() > 1 {
        cx.reject(
            &ep,
            Reason::UnsupportedValue("more than one extension".into()),
        );
        return None;
    }
    if f.use_remote_address.as_ref().is_some_and(|b| b.value) || *f.xff_num_trusted_hops > 0 {
        cx.reject(
            &ep,
            Reason::Invalid(
                "set with `use_remote_address` or `xff_num_trusted_hops` (Envoy refuses both)"
                    .into(),
            ),
        );
        return None;
    }
    let tp = format!("{ep}[0].typed_config");
    let any = match &first.typed_config {
        Some(a) if a.type_url == CUSTOM_HEADER_URL => a,
        Some(a) => {
            cx.reject(
                tp,
                Reason::UnsupportedValue(format!("original IP detection `{}`", a.type_url)),
            );
            return None;
        }
        None => {
            cx.reject(tp, Reason::Missing);
            return None;
        }
    };
    let ext::CustomHeaderConfig {
        header_name,
        allow_extension_to_set_address_as_trusted,
        reject_with_status,
    } = cx.decode(&tp, CUSTOM_HEADER_URL, &any.value)?;
    let name = header_name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        cx.reject(
            join(&tp, "header_name"),
            Reason::Invalid(format!("{header_name:?} is not a header name")),
        );
        return None;
    }
    Some(ml::ClientAddressHeader {
        name,
        trusted: allow_extension_to_set_address_as_trusted,
        // Envoy: outside 400..=511, 403.
        reject_status: reject_with_status.map(|s| {
            u16::try_from(s.code)
                .ok()
                .filter(|c| (400..=511).contains(c))
                .unwrap_or(403)
        }),
    })
}

/// `scheme_header_transformation.scheme_to_overwrite` (`http` or `https`, as Envoy
/// validates it).
fn scheme_to_overwrite(
    cx: &mut Cx,
    p: &str,
    t: &core::SchemeHeaderTransformation,
) -> Option<ml::RequestScheme> {
    use core::scheme_header_transformation::Transformation;
    let core::SchemeHeaderTransformation {
        match_upstream: _, // read by `header_handling`
        transformation,
    } = t;
    match transformation {
        Some(Transformation::SchemeToOverwrite(s)) => match s.as_str() {
            "http" => Some(ml::RequestScheme::Http),
            "https" => Some(ml::RequestScheme::Https),
            other => {
                cx.reject(
                    join(p, "scheme_to_overwrite"),
                    Reason::Invalid(format!("{other:?} is not `http` or `https`")),
                );
                None
            }
        },
        None => None,
    }
}

/// `strip_matching_host_port`, `strip_any_host_port` (at most one of them, as Envoy
/// requires) and `strip_trailing_host_dot`.
fn host_normalization(cx: &mut Cx, p: &str, f: &HeaderFields<'_>) -> ml::HostNormalization {
    use hcm::http_connection_manager::StripPortMode;
    let any = matches!(
        f.strip_port_mode,
        Some(StripPortMode::StripAnyHostPort(true))
    );
    let strip_port = match (*f.strip_matching_host_port, any) {
        (true, true) => {
            cx.reject(
                join(p, "strip_any_host_port"),
                Reason::Invalid("set together with `strip_matching_host_port`".into()),
            );
            ml::StripPort::Keep
        }
        (true, false) => ml::StripPort::Matching,
        (false, true) => ml::StripPort::Any,
        (false, false) => ml::StripPort::Keep,
    };
    ml::HostNormalization {
        strip_port,
        strip_trailing_dot: *f.strip_trailing_host_dot,
    }
}

const UUID_REQUEST_ID_URL: &str =
    "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";

/// What the connection manager does to request and response headers (and paths) itself.
fn header_handling(cx: &mut Cx, p: &str, f: HeaderFields<'_>) -> ml::HeaderHandling {
    use hcm::http_connection_manager::ServerHeaderTransformation as T;
    let mut internal_cidrs = Vec::new();
    if let Some(c) = f.internal_address_config {
        let cp = join(p, "internal_address_config");
        // `unix_sockets`: Myelin's clients are never on unix sockets, so it changes nothing.
        for (i, r) in c.cidr_ranges.iter().enumerate() {
            internal_cidrs.extend(cidr(cx, &idx(&cp, "cidr_ranges", i), r));
        }
    }
    if let Some(ext) = f.request_id_extension {
        let ep = join(p, "request_id_extension.typed_config");
        match &ext.typed_config {
            // Unset: the default, which is the UUID extension.
            None => {}
            Some(any) if any.type_url == UUID_REQUEST_ID_URL => {
                // Tracing fields only: decoded to check them.
                let _ = cx.decode::<ext::UuidRequestIdConfig>(&ep, UUID_REQUEST_ID_URL, &any.value);
            }
            Some(any) => cx.reject(
                ep,
                Reason::UnsupportedValue(format!(
                    "request ID extension `{}` (only the UUID one)",
                    any.type_url
                )),
            ),
        }
    }
    let mut text = |field: &str, value: &str| {
        let t = ml::HeaderText::new(value);
        if t.is_none() {
            cx.reject(
                join(p, field),
                Reason::Invalid("not a valid header value".into()),
            );
        }
        t
    };
    let via = match f.via.as_str() {
        "" => None,
        v => text("via", v),
    };
    let name = match f.server_name.as_str() {
        "" => ml::HeaderText::from_static(ml::ServerHeader::DEFAULT_NAME),
        n => text("server_name", n)
            .unwrap_or_else(|| ml::HeaderText::from_static(ml::ServerHeader::DEFAULT_NAME)),
    };
    let server = match T::try_from(*f.server_header_transformation) {
        Ok(T::Overwrite) => ml::ServerHeader::Overwrite(name),
        Ok(T::AppendIfAbsent) => ml::ServerHeader::AppendIfAbsent(name),
        Ok(T::PassThrough) => ml::ServerHeader::PassThrough,
        Err(_) => {
            cx.reject(
                join(p, "server_header_transformation"),
                Reason::Invalid(format!("unknown value {}", f.server_header_transformation)),
            );
            ml::ServerHeader::PassThrough
        }
    };
    ml::HeaderHandling {
        use_remote_address: f.use_remote_address.as_ref().is_some_and(|b| b.value),
        xff_num_trusted_hops: *f.xff_num_trusted_hops,
        skip_xff_append: *f.skip_xff_append,
        internal_cidrs,
        via,
        generate_request_id: f.generate_request_id.as_ref().is_none_or(|b| b.value),
        preserve_external_request_id: *f.preserve_external_request_id,
        always_set_request_id_in_response: *f.always_set_request_id_in_response,
        server,
        path: path_normalization(
            cx,
            p,
            f.normalize_path,
            *f.merge_slashes,
            *f.path_with_escaped_slashes_action,
        ),
        host: host_normalization(cx, p, &f),
        scheme_to_overwrite: f
            .scheme_header_transformation
            .as_ref()
            .and_then(|t| scheme_to_overwrite(cx, &join(p, "scheme_header_transformation"), t)),
        client_address_header: client_address_header(cx, p, &f),
        http10: f
            .http_protocol_options
            .as_ref()
            .map(|o| http1_options(cx, &join(p, "http_protocol_options"), o))
            .unwrap_or_default(),
        // Envoy: with a scheme to overwrite, `match_upstream` is not used.
        scheme_match_upstream: f
            .scheme_header_transformation
            .as_ref()
            .is_some_and(|t| t.match_upstream && t.transformation.is_none()),
        forward_client_cert: forward_client_cert(cx, p, *f.forward_client_cert_details),
        client_cert_details: f
            .set_current_client_cert_details
            .as_ref()
            .map(|d| {
                let hcm::http_connection_manager::SetCurrentClientCertDetails {
                    subject,
                    cert,
                    chain,
                    dns,
                    uri,
                } = d;
                ml::ClientCertDetails {
                    subject: subject.as_ref().is_some_and(|b| b.value),
                    cert: *cert,
                    chain: *chain,
                    dns: *dns,
                    uri: *uri,
                }
            })
            .unwrap_or_default(),
    }
}

fn forward_client_cert(cx: &mut Cx, p: &str, v: i32) -> ml::ForwardClientCert {
    use hcm::http_connection_manager::ForwardClientCertDetails as F;
    match F::try_from(v) {
        Ok(F::Sanitize) => ml::ForwardClientCert::Sanitize,
        Ok(F::ForwardOnly) => ml::ForwardClientCert::ForwardOnly,
        Ok(F::AppendForward) => ml::ForwardClientCert::AppendForward,
        Ok(F::SanitizeSet) => ml::ForwardClientCert::SanitizeSet,
        Ok(F::AlwaysForwardOnly) => ml::ForwardClientCert::AlwaysForwardOnly,
        Err(_) => {
            cx.reject(
                join(p, "forward_client_cert_details"),
                Reason::Invalid(format!("unknown value {v}")),
            );
            ml::ForwardClientCert::Sanitize
        }
    }
}

/// The connection manager's path normalization (`normalize_path`, `merge_slashes`,
/// `path_with_escaped_slashes_action`). Envoy's runtime defaults for the unset ones: no
/// normalization, escaped slashes kept.
fn path_normalization(
    cx: &mut Cx,
    p: &str,
    normalize_path: &Option<protobuf::BoolValue>,
    merge_slashes: bool,
    escaped_slashes_action: i32,
) -> ml::PathNormalization {
    use hcm::http_connection_manager::PathWithEscapedSlashesAction as A;
    let escaped_slashes = match A::try_from(escaped_slashes_action) {
        Ok(A::ImplementationSpecificDefault | A::KeepUnchanged) => {
            ml::EscapedSlashes::KeepUnchanged
        }
        Ok(A::RejectRequest) => ml::EscapedSlashes::RejectRequest,
        Ok(A::UnescapeAndRedirect) => ml::EscapedSlashes::UnescapeAndRedirect,
        Ok(A::UnescapeAndForward) => ml::EscapedSlashes::UnescapeAndForward,
        Err(_) => {
            cx.reject(
                join(p, "path_with_escaped_slashes_action"),
                Reason::Invalid(format!("unknown value {escaped_slashes_action}")),
            );
            ml::EscapedSlashes::KeepUnchanged
        }
    };
    ml::PathNormalization {
        escaped_slashes,
        normalize: normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes,
    }
}

fn router_filter(cx: &mut Cx, p: &str, f: &hcm::HttpFilter) {
    use hcm::http_filter::ConfigType as C;
    let hcm::HttpFilter {
        name,
        is_optional: _,
        disabled,
        config_type,
    } = f;
    cx.unsupported(p, "disabled", disabled);
    match config_type {
        // The name alone selects the router (Envoy still accepts this form).
        None if name == "envoy.filters.http.router" => {}
        None => cx.reject(
            p,
            Reason::UnsupportedValue(format!(
                "HTTP filter `{name}` as the last filter (the router must be last)"
            )),
        ),
        Some(C::TypedConfig(any)) if any.type_url == ROUTER_URL => {
            let tp = join(p, "typed_config");
            if let Some(r) = cx
                .decode::<xds_api::pb::envoy::extensions::filters::http::router::v3::Router>(
                    &tp, ROUTER_URL, &any.value,
                )
            {
                #[allow(deprecated)]
                let xds_api::pb::envoy::extensions::filters::http::router::v3::Router {
                    dynamic_stats: _,
                    start_child_span: _,
                    upstream_log: _,
                    upstream_log_options: _,
                    // Myelin's router adds no `x-envoy-*` header of its own (no
                    // `x-envoy-upstream-service-time`, `x-envoy-expected-rq-timeout-ms`,
                    // `x-envoy-attempt-count`): what suppressing them asks for.
                    suppress_envoy_headers: _,
                    strict_check_headers,
                    respect_expected_rq_timeout,
                    suppress_grpc_request_failure_code_stats: _,
                    upstream_http_filters,
                } = r;
                cx.unsupported(&tp, "strict_check_headers", &strict_check_headers);
                cx.unsupported(
                    &tp,
                    "respect_expected_rq_timeout",
                    &respect_expected_rq_timeout,
                );
                cx.unsupported(&tp, "upstream_http_filters", &upstream_http_filters);
            }
        }
        Some(C::TypedConfig(any)) => cx.reject(
            join(p, "typed_config"),
            Reason::UnsupportedValue(format!(
                "HTTP filter `{name}` (type `{}`) as the last filter (the router must be last)",
                any.type_url
            )),
        ),
        Some(C::ConfigDiscovery(_)) => cx.reject(join(p, "config_discovery"), Reason::NotSupported),
    }
}

fn tcp_proxy(cx: &mut Cx, p: &str, t: &ext::TcpProxy) -> Option<ml::TcpProxy> {
    let ext::TcpProxy {
        stat_prefix,
        cluster,
        weighted_clusters,
        on_demand,
        metadata_match,
        idle_timeout,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log: _,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        access_log_flush_interval: _,
        flush_access_log_on_connected: _,
        access_log_options: _,
        proxy_protocol_tlvs,
        max_downstream_connection_duration_jitter_percentage,
    } = t;
    cx.unsupported(p, "on_demand", on_demand);
    cx.unsupported(p, "metadata_match", metadata_match);
    cx.unsupported(p, "downstream_idle_timeout", downstream_idle_timeout);
    cx.unsupported(p, "upstream_idle_timeout", upstream_idle_timeout);
    cx.unsupported(p, "max_connect_attempts", max_connect_attempts);
    cx.unsupported(p, "backoff_options", backoff_options);
    cx.unsupported(p, "hash_policy", hash_policy);
    cx.unsupported(
        p,
        "max_downstream_connection_duration",
        max_downstream_connection_duration,
    );
    cx.unsupported(p, "proxy_protocol_tlvs", proxy_protocol_tlvs);
    cx.unsupported(
        p,
        "max_downstream_connection_duration_jitter_percentage",
        max_downstream_connection_duration_jitter_percentage,
    );
    let cluster = match (cluster, weighted_clusters) {
        (Some(c), None) if !c.is_empty() => ml::TcpCluster::Cluster(c.clone()),
        (None, Some(w)) => {
            let wp = join(p, "weighted_clusters");
            let mut out = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                let cp = idx(&wp, "clusters", i);
                cx.unsupported(&cp, "metadata_match", &c.metadata_match);
                if c.name.is_empty() {
                    cx.reject(join(&cp, "name"), Reason::Missing);
                }
                if c.weight == 0 {
                    cx.reject(
                        join(&cp, "weight"),
                        Reason::Invalid("must be at least 1".into()),
                    );
                }
                out.push(ml::WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight,
                    routing: None,
                });
            }
            if out.is_empty() {
                cx.reject(join(&wp, "clusters"), Reason::Missing);
            }
            ml::TcpCluster::Weighted(out)
        }
        _ => {
            cx.reject(
                join(p, "cluster"),
                Reason::Invalid(
                    "exactly one of `cluster` or `weighted_clusters` is required".into(),
                ),
            );
            return None;
        }
    };
    let tunneling = tunneling_config
        .as_ref()
        .and_then(|t| tunneling(cx, &join(p, "tunneling_config"), t));
    Some(ml::TcpProxy {
        stat_prefix: stat_prefix.clone(),
        cluster,
        tunneling,
        idle_timeout: cx.timeout(
            &join(p, "idle_timeout"),
            idle_timeout,
            Some(ml::DEFAULT_IDLE_TIMEOUT),
        ),
    })
}

/// The values `tunneling_config.hostname` may use from Envoy's command operators: the
/// connection's original destination.
const TUNNEL_OPERATORS: [&str; 2] = ["%DOWNSTREAM_LOCAL_ADDRESS%", "%DOWNSTREAM_LOCAL_PORT%"];

/// A TCP proxy's `tunneling_config`: `hostname` (required; literal or with the operators
/// above) and literal `headers_to_add`; `use_post` and `post_path` are rejected.
fn tunneling(cx: &mut Cx, p: &str, t: &ext::TcpTunnelingConfig) -> Option<ml::Tunneling> {
    let ext::TcpTunnelingConfig {
        hostname,
        use_post,
        headers_to_add,
        propagate_response_headers: _,
        post_path,
        propagate_response_trailers: _,
    } = t;
    let mut ok = true;
    if *use_post {
        cx.reject(join(p, "use_post"), Reason::NotSupported);
        ok = false;
    }
    if !post_path.is_empty() {
        cx.reject(join(p, "post_path"), Reason::NotSupported);
        ok = false;
    }
    if hostname.is_empty() {
        cx.reject(join(p, "hostname"), Reason::Missing);
        return None;
    }
    let literal = TUNNEL_OPERATORS
        .iter()
        .fold(hostname.clone(), |h, op| h.replace(op, ""));
    if literal.contains('%') {
        cx.reject(
            join(p, "hostname"),
            Reason::Invalid(format!(
                "`{hostname}`: of Envoy's command operators only {} are supported",
                TUNNEL_OPERATORS.join(" and ")
            )),
        );
        ok = false;
    } else if http::uri::Authority::try_from(hostname.replace('%', "")).is_err() {
        cx.reject(
            join(p, "hostname"),
            Reason::Invalid(format!("`{hostname}` is not a valid authority")),
        );
        ok = false;
    }
    let headers = super::common::header_value_options(cx, p, "headers_to_add", headers_to_add);
    for (i, h) in headers.iter().enumerate() {
        if h.name.starts_with(':') || h.name == "host" {
            cx.reject(
                join(&idx(p, "headers_to_add", i), "header.key"),
                Reason::Invalid(format!("`{}` cannot be set on the CONNECT", h.name)),
            );
            ok = false;
        }
    }
    ok.then(|| ml::Tunneling {
        hostname: hostname.clone(),
        headers_to_add: headers,
    })
}
