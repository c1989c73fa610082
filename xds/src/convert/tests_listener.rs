//! Listener conversion: supported fields (the model value) and rejections (the path).

use super::test_util::{any, boolv, dur, messages, u32v};
use super::{ext, listener, model, protobuf, resource, type_url, Resource};
use model::listener as ml;
use std::time::Duration;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::listener::v3 as pb;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;

fn addr(ip: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn router() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        ..Default::default()
    }
}

fn base_hcm() -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        stat_prefix: "s".into(),
        http_filters: vec![router()],
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: "r".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn tcp(cluster: &str) -> ext::TcpProxy {
    ext::TcpProxy {
        stat_prefix: "t".into(),
        cluster: Some(cluster.into()),
        ..Default::default()
    }
}

fn filter<M: prost::Name>(m: &M) -> pb::Filter {
    pb::Filter {
        name: "f".into(),
        config_type: Some(pb::filter::ConfigType::TypedConfig(any(m))),
    }
}

fn base() -> pb::Listener {
    pb::Listener {
        name: "l".into(),
        address: addr("0.0.0.0", 80),
        filter_chains: vec![pb::FilterChain {
            filters: vec![filter(&base_hcm())],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn with_hcm(f: impl FnOnce(&mut hcm::HttpConnectionManager)) -> pb::Listener {
    let mut h = base_hcm();
    f(&mut h);
    let mut l = base();
    l.filter_chains[0].filters[0] = filter(&h);
    l
}

fn hcm_of(m: &model::Listener) -> &ml::HttpConnectionManager {
    match &m.filter_chains[0].filter {
        ml::NetworkFilter::HttpConnectionManager(h) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn supported_fields() {
    type Check = fn(&model::Listener);
    let cases: Vec<(&str, pb::Listener, Check)> = vec![
        ("defaults", base(), |m| {
            assert_eq!(m.name, "l");
            assert_eq!(m.address, "0.0.0.0:80".parse().unwrap());
            assert!(m.bind_to_port);
            let h = hcm_of(m);
            assert_eq!(h.route, ml::RouteSource::Rds("r".into()));
            assert_eq!(h.request_timeout, None);
            assert_eq!(h.request_headers_timeout, None);
            assert_eq!(h.stream_idle_timeout, Some(Duration::from_secs(300)));
            assert_eq!(h.idle_timeout, Some(Duration::from_secs(3600)));
            assert_eq!(h.http2, ml::Http2Settings::default());
            assert_eq!(*h.headers, ml::HeaderHandling::default());
            assert_eq!(h.max_request_headers_kb, 60, "Envoy's default");
            assert_eq!(h.buffer_limit, 1 << 20, "Envoy's default");
            assert!(
                h.headers.generate_request_id,
                "Envoy generates request IDs by default"
            );
            assert_eq!(h.headers.path, ml::PathNormalization::default());
            assert!(!h.headers.path.any());
            assert_eq!(
                m.filter_chains[0].filter_chain_match,
                ml::FilterChainMatch::default()
            );
        }),
        (
            // The listener's buffer limit is its connection managers', the default chain's
            // too.
            "per_connection_buffer_limit_bytes",
            {
                let mut l = base();
                l.per_connection_buffer_limit_bytes = u32v(32768);
                l.default_filter_chain = Some(l.filter_chains[0].clone());
                l
            },
            |m| {
                assert_eq!(hcm_of(m).buffer_limit, 32768);
                match &m.default_filter_chain.as_ref().unwrap().filter {
                    ml::NetworkFilter::HttpConnectionManager(h) => {
                        assert_eq!(h.buffer_limit, 32768)
                    }
                    other => panic!("{other:?}"),
                }
            },
        ),
        (
            // What istiod sets on a sidecar's connection managers, and the rest of the
            // header rules.
            "header handling",
            with_hcm(|h| {
                h.use_remote_address = boolv(true);
                h.xff_num_trusted_hops = 2;
                h.skip_xff_append = true;
                h.internal_address_config =
                    Some(hcm::http_connection_manager::InternalAddressConfig {
                        unix_sockets: false,
                        cidr_ranges: vec![core::CidrRange {
                            address_prefix: "10.0.0.0".into(),
                            prefix_len: u32v(8),
                        }],
                    });
                h.via = "1.1 node-a".into();
                h.generate_request_id = boolv(false);
                h.preserve_external_request_id = true;
                h.always_set_request_id_in_response = true;
                h.request_id_extension = Some(hcm::RequestIdExtension {
                    typed_config: Some(any(&ext::UuidRequestIdConfig {
                        pack_trace_reason: boolv(false),
                        use_request_id_for_trace_sampling: boolv(true),
                    })),
                });
                h.server_name = "istio-envoy".into();
                h.server_header_transformation =
                    hcm::http_connection_manager::ServerHeaderTransformation::AppendIfAbsent as i32;
                h.scheme_header_transformation = Some(core::SchemeHeaderTransformation {
                    match_upstream: false,
                    transformation: Some(
                        core::scheme_header_transformation::Transformation::SchemeToOverwrite(
                            "https".into(),
                        ),
                    ),
                });
                // Envoy Gateway's ClientTrafficPolicy `http1.http10` and trailers.
                h.http_protocol_options = Some(core::Http1ProtocolOptions {
                    accept_http_10: true,
                    default_host_for_http_10: "web.example".into(),
                    enable_trailers: true,
                    ..Default::default()
                });
                // istiod's inbound settings.
                h.forward_client_cert_details =
                    hcm::http_connection_manager::ForwardClientCertDetails::AppendForward as i32;
                h.set_current_client_cert_details =
                    Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
                        subject: boolv(true),
                        dns: true,
                        uri: true,
                        ..Default::default()
                    });
            }),
            |m| {
                assert_eq!(
                    *hcm_of(m).headers,
                    ml::HeaderHandling {
                        use_remote_address: true,
                        xff_num_trusted_hops: 2,
                        skip_xff_append: true,
                        internal_cidrs: vec![ml::CidrRange {
                            address: "10.0.0.0".parse().unwrap(),
                            prefix_len: 8
                        }],
                        via: ml::HeaderText::new("1.1 node-a"),
                        generate_request_id: false,
                        preserve_external_request_id: true,
                        always_set_request_id_in_response: true,
                        server: ml::ServerHeader::AppendIfAbsent(
                            ml::HeaderText::new("istio-envoy").unwrap()
                        ),
                        path: ml::PathNormalization::default(),
                        host: ml::HostNormalization::default(),
                        scheme_to_overwrite: Some(ml::RequestScheme::Https),
                        scheme_match_upstream: false,
                        client_address_header: None,
                        http10: ml::Http10::Accept {
                            default_host: Some("web.example".into())
                        },
                        forward_client_cert: ml::ForwardClientCert::AppendForward,
                        client_cert_details: ml::ClientCertDetails {
                            subject: true,
                            cert: false,
                            chain: false,
                            dns: true,
                            uri: true,
                        },
                    }
                );
            },
        ),
        (
            // Envoy Gateway's listeners: `::` taking IPv4 too.
            "ipv4_compat",
            pb::Listener {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: "::".into(),
                        ipv4_compat: true,
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(10080)),
                        ..Default::default()
                    })),
                }),
                ..base()
            },
            |m| {
                assert!(m.ipv4_compat);
                assert_eq!(m.address, "[::]:10080".parse().unwrap());
            },
        ),
        (
            // Envoy Gateway's.
            "scheme matches the upstream",
            with_hcm(|h| {
                h.scheme_header_transformation = Some(core::SchemeHeaderTransformation {
                    match_upstream: true,
                    transformation: None,
                });
            }),
            |m| {
                let h = &hcm_of(m).headers;
                assert!(h.scheme_match_upstream);
                assert_eq!(h.scheme_to_overwrite, None);
            },
        ),
        (
            "server header passed through",
            with_hcm(|h| {
                h.max_request_headers_kb = u32v(96);
                h.use_remote_address = boolv(false);
                h.server_header_transformation =
                    hcm::http_connection_manager::ServerHeaderTransformation::PassThrough as i32;
            }),
            |m| {
                assert_eq!(hcm_of(m).max_request_headers_kb, 96);
                let h = &hcm_of(m).headers;
                assert!(!h.use_remote_address);
                assert_eq!(h.server, ml::ServerHeader::PassThrough);
            },
        ),
        (
            "http2_protocol_options",
            with_hcm(|h| {
                h.http2_protocol_options = Some(core::Http2ProtocolOptions {
                    max_concurrent_streams: u32v(1000),
                    initial_stream_window_size: u32v(65_535),
                    initial_connection_window_size: u32v(1 << 24),
                    hpack_table_size: u32v(0),
                    allow_connect: true,
                    // Flood limits: accepted, Myelin bounds bytes instead.
                    max_outbound_frames: u32v(5000),
                    ..Default::default()
                })
            }),
            |m| {
                assert_eq!(
                    hcm_of(m).http2,
                    ml::Http2Settings {
                        max_concurrent_streams: 1000,
                        initial_stream_window_size: 65_535,
                        initial_connection_window_size: 1 << 24,
                        hpack_table_size: 0,
                        connection_keepalive: None,
                        allow_connect: true,
                    }
                )
            },
        ),
        (
            "normalize_path, merge_slashes",
            with_hcm(|h| {
                h.normalize_path = boolv(true);
                h.merge_slashes = true;
            }),
            |m| {
                assert_eq!(
                    hcm_of(m).headers.path,
                    ml::PathNormalization {
                        escaped_slashes: ml::EscapedSlashes::KeepUnchanged,
                        normalize: true,
                        merge_slashes: true,
                    }
                )
            },
        ),
        (
            "normalize_path false, as set",
            with_hcm(|h| h.normalize_path = boolv(false)),
            |m| assert!(!hcm_of(m).headers.path.any()),
        ),
        (
            "host rules",
            with_hcm(|h| {
                h.strip_port_mode =
                    Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true));
                h.strip_trailing_host_dot = true;
            }),
            |m| {
                let host = hcm_of(m).headers.host;
                assert_eq!(host.strip_port, ml::StripPort::Any);
                assert!(host.strip_trailing_dot);
            },
        ),
        (
            "header limits",
            with_hcm(|h| {
                h.common_http_protocol_options = Some(core::HttpProtocolOptions {
                    max_headers_count: u32v(150),
                    headers_with_underscores_action:
                        core::http_protocol_options::HeadersWithUnderscoresAction::DropHeader as i32,
                    ..Default::default()
                })
            }),
            |m| {
                assert_eq!(
                    hcm_of(m).header_limits,
                    ml::HeaderLimits {
                        max_count: 150,
                        underscores: ml::UnderscoreAction::DropHeader,
                    }
                )
            },
        ),
        (
            "strip_matching_host_port",
            with_hcm(|h| h.strip_matching_host_port = true),
            |m| assert_eq!(hcm_of(m).headers.host.strip_port, ml::StripPort::Matching),
        ),
        (
            "path_with_escaped_slashes_action IMPLEMENTATION_SPECIFIC_DEFAULT",
            with_hcm(|h| h.path_with_escaped_slashes_action = 0),
            |m| {
                assert_eq!(
                    hcm_of(m).headers.path.escaped_slashes,
                    ml::EscapedSlashes::KeepUnchanged
                )
            },
        ),
        (
            "path_with_escaped_slashes_action KEEP_UNCHANGED",
            with_hcm(|h| h.path_with_escaped_slashes_action = 1),
            |m| {
                assert_eq!(
                    hcm_of(m).headers.path.escaped_slashes,
                    ml::EscapedSlashes::KeepUnchanged
                )
            },
        ),
        (
            "path_with_escaped_slashes_action REJECT_REQUEST",
            with_hcm(|h| h.path_with_escaped_slashes_action = 2),
            |m| {
                assert_eq!(
                    hcm_of(m).headers.path.escaped_slashes,
                    ml::EscapedSlashes::RejectRequest
                )
            },
        ),
        (
            "path_with_escaped_slashes_action UNESCAPE_AND_REDIRECT",
            with_hcm(|h| h.path_with_escaped_slashes_action = 3),
            |m| {
                assert_eq!(
                    hcm_of(m).headers.path.escaped_slashes,
                    ml::EscapedSlashes::UnescapeAndRedirect
                )
            },
        ),
        (
            "path_with_escaped_slashes_action UNESCAPE_AND_FORWARD",
            with_hcm(|h| h.path_with_escaped_slashes_action = 4),
            |m| {
                assert_eq!(
                    hcm_of(m).headers.path.escaped_slashes,
                    ml::EscapedSlashes::UnescapeAndForward
                )
            },
        ),
        (
            "http2_protocol_options connection_keepalive",
            with_hcm(|h| {
                h.http2_protocol_options = Some(core::Http2ProtocolOptions {
                    connection_keepalive: Some(core::KeepaliveSettings {
                        interval: dur(30, 0),
                        timeout: dur(0, 500_000_000),
                        interval_jitter: Some(xds_api::pb::envoy::r#type::v3::Percent {
                            value: 10.0,
                        }),
                        // For clients; a server ignores it, as Envoy's does.
                        connection_idle_interval: dur(60, 0),
                    }),
                    ..Default::default()
                })
            }),
            |m| {
                assert_eq!(
                    hcm_of(m).http2.connection_keepalive,
                    Some(myelin_proxy::model::cluster::Http2Keepalive {
                        interval: Some(Duration::from_secs(30)),
                        timeout: Duration::from_millis(500),
                        interval_jitter_bp: 1000,
                    })
                )
            },
        ),
        (
            "http2_protocol_options unset fields",
            with_hcm(|h| {
                h.http2_protocol_options = Some(core::Http2ProtocolOptions {
                    max_concurrent_streams: u32v(7),
                    ..Default::default()
                })
            }),
            |m| {
                assert_eq!(
                    hcm_of(m).http2,
                    ml::Http2Settings {
                        max_concurrent_streams: 7,
                        ..Default::default()
                    }
                )
            },
        ),
        (
            "bind_to_port false",
            pb::Listener {
                bind_to_port: boolv(false),
                ..base()
            },
            |m| assert!(!m.bind_to_port),
        ),
        (
            "ipv6 address",
            pb::Listener {
                address: addr("fd00::1", 8080),
                ..base()
            },
            |m| assert_eq!(m.address, "[fd00::1]:8080".parse().unwrap()),
        ),
        (
            "filter_chain_match",
            {
                let mut l = base();
                l.filter_chains[0].name = "fc".into();
                l.filter_chains[0].filter_chain_match = Some(pb::FilterChainMatch {
                    destination_port: u32v(443),
                    prefix_ranges: vec![core::CidrRange {
                        address_prefix: "10.0.0.0".into(),
                        prefix_len: u32v(8),
                    }],
                    server_names: vec!["*.Example.com".into()],
                    transport_protocol: "tls".into(),
                    application_protocols: vec!["h2".into()],
                    ..Default::default()
                });
                l
            },
            |m| {
                let fc = &m.filter_chains[0];
                assert_eq!(fc.name, "fc");
                assert_eq!(
                    fc.filter_chain_match,
                    ml::FilterChainMatch {
                        destination_port: Some(443),
                        prefix_ranges: vec![ml::CidrRange {
                            address: "10.0.0.0".parse().unwrap(),
                            prefix_len: 8
                        }],
                        server_names: vec!["*.example.com".into()],
                        transport_protocol: Some("tls".into()),
                        application_protocols: vec!["h2".into()],
                    }
                );
            },
        ),
        (
            "timeouts (0 disables)",
            with_hcm(|h| {
                h.request_timeout = dur(3, 0);
                h.request_headers_timeout = dur(0, 500_000_000);
                h.stream_idle_timeout = dur(0, 0);
                h.common_http_protocol_options = Some(core::HttpProtocolOptions {
                    idle_timeout: dur(60, 0),
                    max_stream_duration: dur(20, 0),
                    ..Default::default()
                });
            }),
            |m| {
                let h = hcm_of(m);
                assert_eq!(h.request_timeout, Some(Duration::from_secs(3)));
                assert_eq!(h.request_headers_timeout, Some(Duration::from_millis(500)));
                assert_eq!(h.stream_idle_timeout, None);
                assert_eq!(h.idle_timeout, Some(Duration::from_secs(60)));
                assert_eq!(h.max_stream_duration, Some(Duration::from_secs(20)));
            },
        ),
        (
            "inline route_config",
            with_hcm(|h| {
                h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                    xds_api::pb::envoy::config::route::v3::RouteConfiguration {
                        name: "inline".into(),
                        ..Default::default()
                    },
                ))
            }),
            |m| {
                let ml::RouteSource::Inline(rc) = &hcm_of(m).route else {
                    panic!()
                };
                assert_eq!(rc.name, "inline");
            },
        ),
        (
            // Envoy Gateway's router: `x-envoy-*` headers suppressed (Myelin's router adds
            // none).
            "optional unknown http filter is skipped, typed router",
            with_hcm(|h| {
                h.http_filters = vec![
                    hcm::HttpFilter {
                        name: "envoy.filters.http.wasm".into(),
                        is_optional: true,
                        ..Default::default()
                    },
                    hcm::HttpFilter {
                        name: "router".into(),
                        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                            &xds_api::pb::envoy::extensions::filters::http::router::v3::Router {
                                suppress_envoy_headers: true,
                                ..Default::default()
                            },
                        ))),
                        ..Default::default()
                    },
                ]
            }),
            |m| assert_eq!(hcm_of(m).stat_prefix, "s"),
        ),
        (
            "tcp_proxy",
            {
                let mut l = base();
                let mut t = tcp("c");
                t.idle_timeout = dur(0, 0);
                t.access_log = vec![vec![1]];
                l.filter_chains[0].filters[0] = filter(&t);
                l
            },
            |m| {
                assert_eq!(
                    m.filter_chains[0].filter,
                    ml::NetworkFilter::TcpProxy(ml::TcpProxy {
                        stat_prefix: "t".into(),
                        cluster: ml::TcpCluster::Cluster("c".into()),
                        idle_timeout: None,
                        tunneling: None,
                    })
                );
            },
        ),
        (
            "tcp_proxy tunneling_config",
            {
                let mut l = base();
                let mut t = tcp("c");
                t.tunneling_config = Some(ext::TcpTunnelingConfig {
                    hostname: "%DOWNSTREAM_LOCAL_ADDRESS%".into(),
                    headers_to_add: vec![xds_api::pb::envoy::config::core::v3::HeaderValueOption {
                        header: Some(xds_api::pb::envoy::config::core::v3::HeaderValue {
                            key: "X-Tunnel".into(),
                            value: "yes".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    propagate_response_headers: true,
                    ..Default::default()
                });
                l.filter_chains[0].filters[0] = filter(&t);
                l
            },
            |m| {
                let ml::NetworkFilter::TcpProxy(tp) = &m.filter_chains[0].filter else {
                    panic!("{m:?}")
                };
                let t = tp.tunneling.as_ref().expect("tunneling");
                assert_eq!(
                    t.authority("10.0.0.7:5432".parse().unwrap()),
                    "10.0.0.7:5432"
                );
                assert_eq!(t.headers_to_add.len(), 1);
                assert_eq!(t.headers_to_add[0].name, "x-tunnel");
                assert_eq!(t.headers_to_add[0].value, "yes");
            },
        ),
        (
            "default_filter_chain and builtin listener filters",
            {
                let mut l = base();
                l.default_filter_chain = Some(pb::FilterChain {
                    filters: vec![filter(&tcp("fallback"))],
                    ..Default::default()
                });
                l.listener_filters = vec![pb::ListenerFilter {
                    name: "envoy.filters.listener.tls_inspector".into(),
                    ..Default::default()
                }];
                l
            },
            |m| {
                let d = m.default_filter_chain.as_ref().unwrap();
                assert!(
                    matches!(&d.filter, ml::NetworkFilter::TcpProxy(t) if t.cluster == ml::TcpCluster::Cluster("fallback".into()))
                );
            },
        ),
    ];
    for (name, input, check) in cases {
        let m = listener(&input).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        check(&m);
        // And through the dispatcher, as the ADS client calls it.
        let r = resource(type_url::LISTENER, &prost::Message::encode_to_vec(&input)).unwrap();
        assert_eq!(r, Resource::Listener(m), "{name}");
    }
}

#[test]
fn rejections() {
    let fc0 = "filter_chains[0].filters[0].typed_config";
    let cases: Vec<(pb::Listener, Vec<String>)> = vec![
        (pb::Listener { use_original_dst: boolv(true), ..base() }, vec!["use_original_dst: deprecated form `use_original_dst` is not accepted; Myelin hands captured connections to the listener on their original destination already; remove it".into()]),
        (pb::Listener { name: String::new(), address: None, ..base() }, vec!["name: required but not set".into(), "address: required but not set".into()]),
        (pb::Listener { address: addr("example.com", 80), ..base() }, vec!["address.socket_address.address: `example.com` is not an IP address".into()]),
        (pb::Listener { address: addr("0.0.0.0", 70000), ..base() }, vec!["address.socket_address.port_value: port 70000 is out of range".into()]),
        (pb::Listener { transparent: boolv(true), socket_options: vec![Default::default()], ..base() }, vec!["transparent: not supported".into(), "socket_options: not supported".into()]),
        (
            pb::Listener { listener_filters: vec![pb::ListenerFilter { name: "envoy.filters.listener.local_ratelimit".into(), ..Default::default() }], ..base() },
            vec!["listener_filters[0]: listener filter `envoy.filters.listener.local_ratelimit` is not supported".into()],
        ),
        (pb::Listener { filter_chains: vec![], ..base() }, vec!["filter_chains: a listener needs at least one filter chain".into()]),
        (
            {
                let mut l = base();
                l.filter_chains[0].filter_chain_match = Some(pb::FilterChainMatch {
                    source_prefix_ranges: vec![Default::default()],
                    transport_protocol: "quic".into(),
                    prefix_ranges: vec![core::CidrRange { address_prefix: "10.0.0.0".into(), prefix_len: u32v(33) }],
                    ..Default::default()
                });
                l.filter_chains[0].on_demand_configuration = Some(Default::default());
                l
            },
            vec![
                "filter_chains[0].on_demand_configuration: not supported".into(),
                "filter_chains[0].filter_chain_match.source_prefix_ranges: not supported".into(),
                "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len: 33 is longer than the address (32 bits)".into(),
                "filter_chains[0].filter_chain_match.transport_protocol: `quic` is not supported".into(),
            ],
        ),
        (
            with_hcm(|h| {
                h.upgrade_configs = vec![Default::default()];
                h.common_http_protocol_options = Some(core::HttpProtocolOptions {
                    max_headers_count: u32v(0),
                    headers_with_underscores_action: 9,
                    ..Default::default()
                });
                h.strip_matching_host_port = true;
                h.strip_port_mode = Some(
                    hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true),
                );
            }),
            vec![
                format!("{fc0}.common_http_protocol_options.max_headers_count: must be at least 1"),
                format!("{fc0}.common_http_protocol_options.headers_with_underscores_action: unknown value 9"),
                format!("{fc0}.strip_any_host_port: set together with `strip_matching_host_port`"),
                format!("{fc0}.upgrade_configs[0].upgrade_type: required but not set"),
            ],
        ),
        (
            with_hcm(|h| {
                h.use_remote_address = boolv(true);
                h.original_ip_detection_extensions = vec![core::TypedExtensionConfig {
                    name: "xff".into(),
                    typed_config: Some(protobuf::Any { type_url: "type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig".into(), value: vec![] }),
                }];
            }),
            vec![format!("{fc0}.original_ip_detection_extensions: set with `use_remote_address` or `xff_num_trusted_hops` (Envoy refuses both)")],
        ),
        (
            with_hcm(|h| {
                h.original_ip_detection_extensions = vec![core::TypedExtensionConfig {
                    name: "xff".into(),
                    typed_config: Some(protobuf::Any { type_url: "type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig".into(), value: vec![] }),
                }];
            }),
            vec![format!("{fc0}.original_ip_detection_extensions[0].typed_config: original IP detection `type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig` is not supported")],
        ),
        (
            with_hcm(|h| {
                h.scheme_header_transformation = Some(core::SchemeHeaderTransformation {
                    match_upstream: false,
                    transformation: Some(core::scheme_header_transformation::Transformation::SchemeToOverwrite("ftp".into())),
                });
            }),
            vec![format!("{fc0}.scheme_header_transformation.scheme_to_overwrite: \"ftp\" is not `http` or `https`")],
        ),
        (
            with_hcm(|h| {
                h.via = "two\nlines".into();
                h.server_header_transformation = 7;
                h.request_id_extension = Some(hcm::RequestIdExtension {
                    typed_config: Some(protobuf::Any { type_url: "type.googleapis.com/x.OtherRequestId".into(), value: vec![] }),
                });
                h.internal_address_config = Some(hcm::http_connection_manager::InternalAddressConfig {
                    unix_sockets: true,
                    cidr_ranges: vec![core::CidrRange { address_prefix: "nope".into(), prefix_len: None }],
                });
                h.forward_client_cert_details = 9;
            }),
            vec![
                format!("{fc0}.internal_address_config.cidr_ranges[0].address_prefix: `nope` is not an IP address"),
                format!("{fc0}.request_id_extension.typed_config: request ID extension `type.googleapis.com/x.OtherRequestId` (only the UUID one) is not supported"),
                format!("{fc0}.via: not a valid header value"),
                format!("{fc0}.server_header_transformation: unknown value 7"),
                format!("{fc0}.forward_client_cert_details: unknown value 9"),
            ],
        ),
        (
            with_hcm(|h| {
                h.path_with_escaped_slashes_action = 5;
                h.path_normalization_options = Some(Default::default());
                h.max_request_headers_kb = u32v(8193);
            }),
            vec![
                format!("{fc0}.path_normalization_options: not supported"),
                format!("{fc0}.path_with_escaped_slashes_action: unknown value 5"),
                format!("{fc0}.max_request_headers_kb: 8193 is not in 1..=8192"),
            ],
        ),
        (with_hcm(|h| h.codec_type = hcm::http_connection_manager::CodecType::Http2 as i32), vec![format!("{fc0}.codec_type: HTTP2 (Myelin detects the protocol; use AUTO) is not supported")]),
        (
            with_hcm(|h| h.http_filters.insert(0, hcm::HttpFilter { name: "envoy.filters.http.jwt_authn".into(), ..Default::default() })),
            vec![format!("{fc0}.http_filters[0]: HTTP filter `envoy.filters.http.jwt_authn` is not supported")],
        ),
        (
            with_hcm(|h| {
                h.http2_protocol_options = Some(core::Http2ProtocolOptions {
                    max_concurrent_streams: u32v(0),
                    initial_stream_window_size: u32v(1000),
                    initial_connection_window_size: u32v(1 << 31),
                    allow_metadata: true,
                    connection_keepalive: Some(core::KeepaliveSettings {
                        interval: dur(30, 0),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            vec![
                format!("{fc0}.http2_protocol_options.allow_metadata: not supported"),
                format!("{fc0}.http2_protocol_options.connection_keepalive.timeout: is required"),
                format!("{fc0}.http2_protocol_options.max_concurrent_streams: 0 is outside 1..=2147483647"),
                format!("{fc0}.http2_protocol_options.initial_stream_window_size: 1000 is outside 65535..=2147483647"),
                format!("{fc0}.http2_protocol_options.initial_connection_window_size: 2147483648 is outside 65535..=2147483647"),
            ],
        ),
        (with_hcm(|h| h.http_filters.clear()), vec![format!("{fc0}.http_filters: the router filter is required")]),
        (
            with_hcm(|h| h.common_http_protocol_options = Some(core::HttpProtocolOptions { max_connection_duration: dur(1, 0), ..Default::default() })),
            vec![format!("{fc0}.common_http_protocol_options.max_connection_duration: not supported")],
        ),
        (with_hcm(|h| h.route_specifier = None), vec![format!("{fc0}.rds: one of `rds` or `route_config` is required")]),
        (
            with_hcm(|h| {
                use xds_api::pb::envoy::config::route::v3 as r;
                h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(r::RouteConfiguration {
                    virtual_hosts: vec![r::VirtualHost { name: "v".into(), domains: vec!["a*b".into()], ..Default::default() }],
                    ..Default::default()
                }))
            }),
            vec![format!("{fc0}.route_config.virtual_hosts[0].domains[0]: `a*b` is not a domain pattern (a `*` may only begin or end it)")],
        ),
        (
            {
                let mut l = base();
                let mut t = tcp("c");
                t.hash_policy = vec![vec![]];
                l.filter_chains[0].filters[0] = filter(&t);
                l
            },
            vec![format!("{fc0}.hash_policy: not supported")],
        ),
        (
            {
                let mut l = base();
                let mut t = tcp("c");
                t.tunneling_config = Some(ext::TcpTunnelingConfig {
                    hostname: "%REQUESTED_SERVER_NAME%:443".into(),
                    use_post: true,
                    post_path: "/up".into(),
                    headers_to_add: vec![xds_api::pb::envoy::config::core::v3::HeaderValueOption {
                        header: Some(xds_api::pb::envoy::config::core::v3::HeaderValue {
                            key: ":authority".into(),
                            value: "x".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                l.filter_chains[0].filters[0] = filter(&t);
                l
            },
            vec![
                format!("{fc0}.tunneling_config.use_post: not supported"),
                format!("{fc0}.tunneling_config.post_path: not supported"),
                format!("{fc0}.tunneling_config.hostname: `%REQUESTED_SERVER_NAME%:443`: of Envoy's command operators only %DOWNSTREAM_LOCAL_ADDRESS% and %DOWNSTREAM_LOCAL_PORT% are supported"),
                format!("{fc0}.tunneling_config.headers_to_add[0].header.key: `:authority` cannot be set on the CONNECT"),
            ],
        ),
        (
            {
                let mut l = base();
                let mut t = tcp("c");
                t.tunneling_config = Some(ext::TcpTunnelingConfig::default());
                l.filter_chains[0].filters[0] = filter(&t);
                l
            },
            vec![format!("{fc0}.tunneling_config.hostname: required but not set")],
        ),
        (
            {
                let mut l = base();
                let t = ext::TcpProxy { stat_prefix: "t".into(), ..Default::default() };
                l.filter_chains[0].filters[0] = filter(&t);
                l
            },
            vec![format!("{fc0}.cluster: exactly one of `cluster` or `weighted_clusters` is required")],
        ),
        (
            {
                let mut l = base();
                l.filter_chains[0].filters[0].config_type = Some(pb::filter::ConfigType::TypedConfig(protobuf::Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy".into(),
                    value: vec![],
                }));
                l
            },
            vec![format!("{fc0}: network filter `f` (type `type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy`) is not supported")],
        ),
        (
            {
                let mut l = base();
                l.filter_chains[0].filters[0].config_type = None;
                l
            },
            vec![format!("{fc0}: required but not set")],
        ),
        (
            {
                let mut l = base();
                l.filter_chains[0].filters.insert(0, filter(&tcp("x")));
                l
            },
            vec!["filter_chains[0].filters[0]: `f` is terminal and must be the last filter".into()],
        ),
    ];
    for (i, (input, want)) in cases.into_iter().enumerate() {
        assert_eq!(messages(listener(&input)), want, "case {i}");
    }
}

// --- Downstream TLS (a filter chain's `transport_socket`) ---

use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

fn tls_socket<M: prost::Name>(m: &M) -> Option<core::TransportSocket> {
    Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(m))),
    })
}

/// `base()` with this transport socket on its filter chain.
fn with_tls(d: &ext::DownstreamTlsContext) -> pb::Listener {
    let mut l = base();
    l.filter_chains[0].transport_socket = tls_socket(d);
    l
}

fn inline(s: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(s.into())),
        ..Default::default()
    })
}

fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        ..Default::default()
    }
}

/// A context serving the SDS certificate `cert`.
fn sds_cert_context() -> ext::DownstreamTlsContext {
    ext::DownstreamTlsContext {
        common_tls_context: Some(ext::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("cert")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn versions(min: i32, max: i32) -> Option<ext::TlsParameters> {
    Some(ext::TlsParameters {
        tls_minimum_protocol_version: min,
        tls_maximum_protocol_version: max,
        ..Default::default()
    })
}

#[test]
fn downstream_tls_inline() {
    let d = ext::DownstreamTlsContext {
        common_tls_context: Some(ext::CommonTlsContext {
            tls_params: versions(3, 4),
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: inline("CHAIN"),
                private_key: inline("KEY"),
                ..Default::default()
            }],
            validation_context: Some(tls::CertificateValidationContext {
                trusted_ca: inline("CA"),
                ..Default::default()
            }),
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        require_client_certificate: boolv(true),
        require_sni: boolv(true),
        disable_stateless_session_resumption: true,
        prefer_client_ciphers: true,
        full_scan_certs_on_sni_mismatch: boolv(true),
        ..Default::default()
    };
    let mut l = with_tls(&d);
    l.filter_chains[0].transport_socket_connect_timeout = dur(10, 0);
    let m = listener(&l).unwrap();
    let fc = &m.filter_chains[0];
    assert_eq!(fc.handshake_timeout, Some(Duration::from_secs(10)));
    assert_eq!(
        fc.tls,
        Some(ml::DownstreamTls {
            certificates: vec![model::cluster::CertificateSource::Inline(
                model::secret::TlsCertificate {
                    certificate_chain: model::DataSource::Inline(b"CHAIN".to_vec()),
                    private_key: model::DataSource::Inline(b"KEY".to_vec()),
                }
            )],
            validation: Some(model::cluster::ValidationSource::Inline(
                model::secret::ValidationContext {
                    trusted_ca: Some(model::DataSource::Inline(b"CA".to_vec())),
                    match_subject_alt_names: vec![],
                }
            )),
            require_client_certificate: true,
            require_sni: true,
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            min_version: Some(ml::TlsVersion::Tls12),
            max_version: Some(ml::TlsVersion::Tls13),
            algorithms: Default::default(),
            disable_stateless_resumption: true,
            disable_stateful_resumption: false,
            prefer_client_ciphers: true,
        })
    );
    // The key stays out of `/config_dump`.
    assert!(!serde_json::to_string(&m).unwrap().contains("KEY"));
    // And through the dispatcher, as the ADS client calls it.
    let r = resource(type_url::LISTENER, &prost::Message::encode_to_vec(&l)).unwrap();
    assert_eq!(r, Resource::Listener(m));
}

#[test]
fn downstream_tls_sds() {
    let d = ext::DownstreamTlsContext {
        common_tls_context: Some(ext::CommonTlsContext {
            tls_params: versions(0, 0),
            tls_certificate_sds_secret_configs: vec![sds("rsa"), sds("ecdsa")],
            validation_context_sds_secret_config: Some(sds("ca")),
            ..Default::default()
        }),
        disable_stateful_session_resumption: true,
        ..Default::default()
    };
    let m = listener(&with_tls(&d)).unwrap();
    let fc = &m.filter_chains[0];
    assert_eq!(fc.handshake_timeout, None);
    assert_eq!(
        fc.tls,
        Some(ml::DownstreamTls {
            certificates: vec![
                model::cluster::CertificateSource::Sds("rsa".into()),
                model::cluster::CertificateSource::Sds("ecdsa".into()),
            ],
            validation: Some(model::cluster::ValidationSource::Sds("ca".into())),
            require_client_certificate: false,
            require_sni: false,
            alpn_protocols: vec![],
            min_version: None,
            max_version: None,
            algorithms: Default::default(),
            disable_stateless_resumption: false,
            disable_stateful_resumption: true,
            prefer_client_ciphers: false,
        })
    );
}

#[test]
fn downstream_raw_buffer_and_timeouts() {
    let mut l = base();
    l.filter_chains[0].transport_socket = Some(core::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(
            protobuf::Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                        .into(),
                value: vec![],
            },
        )),
    });
    let m = listener(&l).unwrap();
    assert_eq!(m.filter_chains[0].tls, None);
    assert_eq!(m.filter_chains[0].handshake_timeout, None);
    // A zero timeout is none (as in Envoy).
    let mut l = with_tls(&sds_cert_context());
    l.filter_chains[0].transport_socket_connect_timeout = dur(0, 0);
    let m = listener(&l).unwrap();
    assert!(m.filter_chains[0].tls.is_some());
    assert_eq!(m.filter_chains[0].handshake_timeout, None);
    l.filter_chains[0].transport_socket_connect_timeout = dur(2, 500_000_000);
    let m = listener(&l).unwrap();
    assert_eq!(
        m.filter_chains[0].handshake_timeout,
        Some(Duration::from_millis(2500))
    );
    // TLS 1.3 only.
    let mut d = sds_cert_context();
    d.common_tls_context.as_mut().unwrap().tls_params = versions(4, 0);
    let m = listener(&with_tls(&d)).unwrap();
    let t = m.filter_chains[0].tls.as_ref().unwrap();
    assert_eq!(
        (t.min_version, t.max_version),
        (Some(ml::TlsVersion::Tls13), None)
    );
}

#[test]
fn downstream_tls_rejections() {
    let ts = "filter_chains[0].transport_socket";
    let tc = "filter_chains[0].transport_socket.typed_config";
    let cc = "filter_chains[0].transport_socket.typed_config.common_tls_context";
    let with_common = |f: fn(&mut ext::CommonTlsContext)| {
        let mut d = sds_cert_context();
        f(d.common_tls_context.as_mut().unwrap());
        with_tls(&d)
    };
    let cases: Vec<(pb::Listener, Vec<String>)> = vec![
        (with_tls(&ext::DownstreamTlsContext { common_tls_context: Some(Default::default()), ..Default::default() }), vec![format!("{cc}.tls_certificates: required but not set")]),
        (with_tls(&ext::DownstreamTlsContext::default()), vec![format!("{tc}.common_tls_context: required but not set")]),
        (
            with_tls(&ext::DownstreamTlsContext { require_client_certificate: boolv(true), ..sds_cert_context() }),
            vec![format!("{tc}.require_client_certificate: client certificates are required but there is no validation context to verify them with")],
        ),
        (
            with_common(|c| c.tls_params = versions(2, 0)),
            vec![format!("{cc}.tls_params.tls_minimum_protocol_version: TLSv1_1 (Myelin speaks TLS 1.2 and 1.3) is not supported")],
        ),
        (
            with_common(|c| c.tls_params = versions(4, 3)),
            vec![format!("{cc}.tls_params.tls_minimum_protocol_version: TLSv1_3 is above `tls_maximum_protocol_version` TLSv1_2")],
        ),
        (with_common(|c| c.tls_params = versions(0, 9)), vec![format!("{cc}.tls_params.tls_maximum_protocol_version: unknown value 9")]),
        (
            with_common(|c| {
                c.tls_params = Some(ext::TlsParameters {
                    cipher_suites: vec!["ECDHE-RSA-AES128-GCM-SHA256".into(), "ECDHE-RSA-AES128-GCM".into()],
                    ecdh_curves: vec!["P-521".into(), "X25519MLKEM768".into()],
                    signature_algorithms: vec!["RSA-PSS-RSAE-SHA256".into()],
                    compliance_policies: vec![0],
                    ..Default::default()
                })
            }),
            vec![
                format!("{cc}.tls_params.compliance_policies: not supported"),
                format!("{cc}.tls_params.cipher_suites[1]: \"ECDHE-RSA-AES128-GCM\" is not a name BoringSSL (so Envoy) knows"),
                format!("{cc}.tls_params.ecdh_curves: a list of only P-521, X25519MLKEM768 (none of them spoken by Myelin) is not supported"),
                format!("{cc}.tls_params.signature_algorithms[0]: \"RSA-PSS-RSAE-SHA256\" is not a name BoringSSL (so Envoy) knows"),
            ],
        ),
        (
            with_tls(&ext::DownstreamTlsContext {
                session_ticket_keys: Some(vec![]),
                session_timeout: Some(vec![]),
                ocsp_staple_policy: 2,
                ..sds_cert_context()
            }),
            vec![
                format!("{tc}.session_ticket_keys: not supported"),
                format!("{tc}.session_timeout: not supported"),
                format!("{tc}.ocsp_staple_policy: MUST_STAPLE is not supported"),
            ],
        ),
        (
            with_tls(&ext::DownstreamTlsContext { session_ticket_keys_sds_secret_config: Some(vec![]), ..sds_cert_context() }),
            vec![format!("{tc}.session_ticket_keys_sds_secret_config: not supported")],
        ),
        (
            with_common(|c| {
                c.custom_handshaker = Some(vec![]);
                c.tls_certificate_provider_instance = Some(vec![]);
                c.validation_context_sds_secret_config = Some(sds("ca"));
                c.combined_validation_context = Some(Default::default());
            }),
            vec![
                format!("{cc}.tls_certificate_provider_instance: not supported"),
                format!("{cc}.custom_handshaker: not supported"),
                format!("{cc}.validation_context: more than one validation context type is set"),
            ],
        ),
        (
            with_common(|c| {
                c.tls_certificates = vec![tls::TlsCertificate { certificate_chain: inline("CHAIN"), ..Default::default() }];
                c.tls_certificate_sds_secret_configs.clear();
            }),
            vec![format!("{cc}.tls_certificates[0].private_key: required but not set")],
        ),
        (
            with_common(|c| {
                c.tls_certificates = vec![tls::TlsCertificate { certificate_chain: inline("CHAIN"), private_key: inline("KEY"), ..Default::default() }];
            }),
            vec![format!("{cc}.tls_certificate_sds_secret_configs: set together with `tls_certificates` (Envoy does not mix SDS and inline certificates in a server context)")],
        ),
        (
            {
                let mut l = base();
                l.filter_chains[0].transport_socket = Some(core::TransportSocket {
                    name: "alts".into(),
                    config_type: Some(core::transport_socket::ConfigType::TypedConfig(protobuf::Any {
                        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts".into(),
                        value: vec![],
                    })),
                });
                l
            },
            vec![format!("{tc}: transport socket `alts` (type `type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts`) is not supported")],
        ),
        (
            {
                // The upstream context where a downstream one belongs.
                let mut l = base();
                l.filter_chains[0].transport_socket = tls_socket(&ext::UpstreamTlsContext::default());
                l
            },
            vec![format!("{tc}: transport socket `envoy.transport_sockets.tls` (type `type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`) is not supported")],
        ),
        (
            {
                let mut l = base();
                l.filter_chains[0].transport_socket = Some(core::TransportSocket { name: "envoy.transport_sockets.tls".into(), config_type: None });
                l
            },
            vec![format!("{ts}.typed_config: required but not set")],
        ),
        (
            {
                let mut l = with_tls(&sds_cert_context());
                l.filter_chains[0].transport_socket_connect_timeout = dur(-1, 0);
                l
            },
            vec!["filter_chains[0].transport_socket_connect_timeout: duration -1s 0ns is negative or malformed".into()],
        ),
    ];
    for (i, (input, want)) in cases.into_iter().enumerate() {
        assert_eq!(messages(listener(&input)), want, "case {i}");
    }
}

/// A filter chain's TLS as Envoy Gateway writes it (camelCase, SDS from ADS).
const EG_TLS_CHAIN: &str = r#"
name: l
address: {socketAddress: {address: 0.0.0.0, portValue: 10443}}
filterChains:
- name: https
  filterChainMatch: {serverNames: [www.example.com]}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typedConfig:
      '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      statPrefix: t
      cluster: c
  transportSocketConnectTimeout: 10s
  transportSocket:
    name: envoy.transport_sockets.tls
    typedConfig:
      '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      commonTlsContext:
        alpnProtocols: [h2, http/1.1]
        tlsParams: {tlsMinimumProtocolVersion: TLSv1_2, tlsMaximumProtocolVersion: TLSv1_3}
        tlsCertificateSdsSecretConfigs:
        - name: secret-1
          sdsConfig: {ads: {}, initialFetchTimeout: 0s, resourceApiVersion: V3}
        - name: secret-2
          sdsConfig: {ads: {}, initialFetchTimeout: 0s, resourceApiVersion: V3}
        validationContextSdsSecretConfig:
          name: ca-cert
          sdsConfig: {ads: {}, initialFetchTimeout: 0s, resourceApiVersion: V3}
      disableStatefulSessionResumption: true
      disableStatelessSessionResumption: true
      requireClientCertificate: true
      fullScanCertsOnSniMismatch: false
"#;

fn yaml_listener(text: &str) -> pb::Listener {
    super::json::from_value(serde_yaml::from_str(text).unwrap()).unwrap()
}

#[test]
fn downstream_tls_as_envoy_gateway_writes_it() {
    let m = listener(&yaml_listener(EG_TLS_CHAIN)).unwrap();
    let fc = &m.filter_chains[0];
    assert_eq!(fc.handshake_timeout, Some(Duration::from_secs(10)));
    assert_eq!(
        fc.tls,
        Some(ml::DownstreamTls {
            certificates: vec![
                model::cluster::CertificateSource::Sds("secret-1".into()),
                model::cluster::CertificateSource::Sds("secret-2".into()),
            ],
            validation: Some(model::cluster::ValidationSource::Sds("ca-cert".into())),
            require_client_certificate: true,
            require_sni: false,
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            min_version: Some(ml::TlsVersion::Tls12),
            max_version: Some(ml::TlsVersion::Tls13),
            algorithms: Default::default(),
            disable_stateless_resumption: true,
            disable_stateful_resumption: true,
            prefer_client_ciphers: false,
        })
    );
    // What the YAML route cannot carry into the conversion is named by path: the field
    // `xds-api` 0.2 does not describe, and the enum values Myelin does not take.
    let bad = EG_TLS_CHAIN
        .replace(
            "tlsMinimumProtocolVersion: TLSv1_2",
            "tlsMinimumProtocolVersion: TLSv1_0, compliancePolicies: [FIPS_202205], cipherSuites: [AES128-SHA]",
        )
        .replace("fullScanCertsOnSniMismatch: false", "ocspStaplePolicy: STRICT_STAPLING");
    let tc = "filter_chains[0].transport_socket.typed_config";
    let cc = format!("{tc}.common_tls_context");
    assert_eq!(
        messages(listener(&yaml_listener(&bad))),
        [
            format!("{tc}.ocsp_staple_policy: STRICT_STAPLING is not supported"),
            format!("{cc}.tls_params.compliance_policies: not supported"),
            format!("{cc}.tls_params.tls_minimum_protocol_version: TLSv1_0 (Myelin speaks TLS 1.2 and 1.3) is not supported"),
        ]
    );
}

/// `tls_params` lists as Envoy Gateway writes them for a listener: names Myelin speaks kept
/// in order, BoringSSL names it does not speak left out, `[a|b]` groups flattened.
#[test]
fn downstream_tls_params_lists() {
    let text = EG_TLS_CHAIN.replace(
        "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2, tlsMaximumProtocolVersion: TLSv1_3}",
        "tlsParams: {cipherSuites: ['[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]', ECDHE-RSA-AES128-GCM-SHA256, AES128-GCM-SHA256, ECDHE-RSA-AES128-SHA], ecdhCurves: [X25519, P-256, P-521], signatureAlgorithms: [ecdsa_secp256r1_sha256, RSA-PSS+SHA256, rsa_pkcs1_sha1]}",
    );
    let m = listener(&yaml_listener(&text)).unwrap();
    let tls = m.filter_chains[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.algorithms,
        ml::TlsAlgorithms {
            cipher_suites: Some(vec![
                "ECDHE-ECDSA-AES128-GCM-SHA256".into(),
                "ECDHE-ECDSA-CHACHA20-POLY1305".into(),
                "ECDHE-RSA-AES128-GCM-SHA256".into(),
            ]),
            ecdh_curves: Some(vec!["X25519".into(), "P-256".into()]),
            signature_algorithms: Some(vec![
                "ecdsa_secp256r1_sha256".into(),
                "rsa_pss_rsae_sha256".into(),
            ]),
        }
    );
    // Only suites Myelin does not speak: TLS 1.3 alone, unless the context stops at 1.2.
    let cbc = EG_TLS_CHAIN.replace(
        "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2, tlsMaximumProtocolVersion: TLSv1_3}",
        "tlsParams: {cipherSuites: [AES128-SHA]}",
    );
    let m = listener(&yaml_listener(&cbc)).unwrap();
    assert_eq!(
        m.filter_chains[0]
            .tls
            .as_ref()
            .unwrap()
            .algorithms
            .cipher_suites,
        Some(vec![])
    );
    let cbc12 = cbc.replace(
        "cipherSuites: [AES128-SHA]",
        "cipherSuites: [AES128-SHA], tlsMaximumProtocolVersion: TLSv1_2",
    );
    assert_eq!(
        messages(listener(&yaml_listener(&cbc12))),
        ["filter_chains[0].transport_socket.typed_config.common_tls_context.tls_params.cipher_suites: a list of only AES128-SHA (none of them spoken by Myelin) is not supported"]
    );
}

/// The PROXY protocol listener filter as Envoy Gateway writes it (first, before the TLS
/// inspector; `optional` as `allowRequestsWithoutProxyProtocol`), with every field, and
/// what is rejected.
#[test]
fn proxy_protocol_listener_filter() {
    use myelin_proxy::model::proxy_protocol::{
        ProxyProtocolListener, ProxyProtocolVersion, TlvFilter,
    };
    let with = |filters: &str, extra: &str| {
        yaml_listener(&format!(
            r#"
name: eg
address: {{socketAddress: {{address: 0.0.0.0, portValue: 10443}}}}
{extra}
listenerFilters:
{filters}
- name: envoy.filters.listener.tls_inspector
  typedConfig: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
filterChains:
- filters:
  - name: tcp
    typedConfig: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, statPrefix: s, cluster: c}}
"#
        ))
    };
    const URL: &str =
        "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
    let eg = listener(&with(
        &format!(
            "- name: envoy.filters.listener.proxy_protocol\n  typedConfig: {{\"@type\": {URL}}}"
        ),
        "",
    ))
    .unwrap();
    assert_eq!(
        eg.listener_filters.proxy_protocol,
        Some(ProxyProtocolListener::default())
    );
    assert_eq!(eg.listener_filters.timeout, Some(Duration::from_secs(15)));
    assert!(!eg.listener_filters.continue_on_timeout);
    // Istio's older EnvoyFilters: the deprecated name, no config.
    let istio = listener(&with("- name: envoy.listener.proxy_protocol", "")).unwrap();
    assert_eq!(
        istio.listener_filters.proxy_protocol,
        Some(ProxyProtocolListener::default())
    );
    let full = listener(&with(
        &format!(
            "- name: envoy.filters.listener.proxy_protocol\n  typedConfig: {{\"@type\": {URL}, allowRequestsWithoutProxyProtocol: true, disallowedVersions: [V1], statPrefix: edge, passThroughTlvs: {{matchType: INCLUDE, tlvType: [2, 234]}}, tlvLocation: FILTER_STATE}}"
        ),
        "listenerFiltersTimeout: 0.5s\ncontinueOnListenerFiltersTimeout: true",
    ))
    .unwrap();
    assert_eq!(
        full.listener_filters.proxy_protocol,
        Some(ProxyProtocolListener {
            optional: true,
            disallowed: vec![ProxyProtocolVersion::V1],
            pass_through: TlvFilter::Only(vec![2, 234]),
            stat_prefix: "edge".into(),
        })
    );
    assert_eq!(
        full.listener_filters.timeout,
        Some(Duration::from_millis(500))
    );
    assert!(full.listener_filters.continue_on_timeout);
    let all = listener(&with(
        &format!("- name: envoy.filters.listener.proxy_protocol\n  typedConfig: {{\"@type\": {URL}, passThroughTlvs: {{}}}}"),
        "listenerFiltersTimeout: 0s",
    ))
    .unwrap();
    assert_eq!(
        all.listener_filters.proxy_protocol.unwrap().pass_through,
        TlvFilter::All
    );
    assert_eq!(all.listener_filters.timeout, None);

    let f0 = "listener_filters[0]";
    let bad = |config: &str| {
        messages(listener(&with(
            &format!("- name: envoy.filters.listener.proxy_protocol\n  typedConfig: {{\"@type\": {URL}, {config}}}"),
            "",
        )))
    };
    assert_eq!(
        bad("rules: [{tlvType: 2, onTlvPresent: {key: authority}}]"),
        [format!("{f0}.typed_config.rules: TLVs into dynamic metadata are not kept: nothing in Myelin reads a connection's metadata (pass_through_tlvs passes them upstream)")]
    );
    assert_eq!(
        bad("disallowedVersions: [V1, V2]"),
        [format!(
            "{f0}.typed_config.disallowed_versions: all PROXY protocol versions are disallowed"
        )]
    );
    assert_eq!(
        bad("passThroughTlvs: {matchType: INCLUDE, tlvType: [256]}"),
        [format!(
            "{f0}.typed_config.pass_through_tlvs.tlv_type[0]: 256 is not a TLV type (0-255)"
        )]
    );
    let twice = with(
        &format!("- name: envoy.filters.listener.proxy_protocol\n- name: envoy.filters.listener.proxy_protocol\n  typedConfig: {{\"@type\": {URL}}}"),
        "",
    );
    assert_eq!(
        messages(listener(&twice)),
        ["listener_filters[1]: a second PROXY protocol filter"]
    );
    let mut disabled = with("- name: envoy.filters.listener.proxy_protocol", "");
    disabled.listener_filters[0].filter_disabled = Some(Default::default());
    assert_eq!(
        messages(listener(&disabled)),
        [format!("{f0}.filter_disabled: not supported")]
    );
    let mut wrong = with("- name: envoy.filters.listener.proxy_protocol", "");
    wrong.listener_filters[0].config_type = Some(pb::listener_filter::ConfigType::TypedConfig(
        any(&ext::TcpProxy::default()),
    ));
    assert_eq!(
        messages(listener(&wrong)),
        [format!("{f0}.typed_config: type `type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy` for the PROXY protocol filter (expected {URL}) is not supported")]
    );
}
