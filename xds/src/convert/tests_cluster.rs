//! Cluster, ClusterLoadAssignment and Secret conversion: supported fields and rejections.

use super::test_util::{any, dur, messages, u32v};
use super::{cluster, cluster_load_assignment, ext, model, secret};
use model::cluster as mc;
use model::endpoint as me;
use std::time::Duration;
use xds_api::pb::envoy::config::cluster::v3 as pb;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::endpoint::v3 as epb;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use xds_api::pb::google::protobuf;

fn ty(t: pb::cluster::DiscoveryType) -> Option<pb::cluster::ClusterDiscoveryType> {
    Some(pb::cluster::ClusterDiscoveryType::Type(t as i32))
}

fn sock(host: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn lb(host: &str, port: u32) -> epb::LbEndpoint {
    epb::LbEndpoint {
        host_identifier: Some(epb::lb_endpoint::HostIdentifier::Endpoint(epb::Endpoint {
            address: sock(host, port),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cla(eps: Vec<epb::LbEndpoint>) -> epb::ClusterLoadAssignment {
    epb::ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![epb::LocalityLbEndpoints {
            lb_endpoints: eps,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn eds() -> pb::Cluster {
    pb::Cluster {
        name: "c".into(),
        cluster_discovery_type: ty(pb::cluster::DiscoveryType::Eds),
        ..Default::default()
    }
}

fn tls_socket(u: &ext::UpstreamTlsContext) -> Option<core::TransportSocket> {
    Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(u))),
    })
}

fn http_opts(
    o: &ext::UpstreamHttpProtocolOptions,
) -> std::collections::HashMap<String, protobuf::Any> {
    [(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        any(o),
    )]
    .into_iter()
    .collect()
}

#[test]
fn cluster_supported_fields() {
    use pb::cluster::{DiscoveryType as DT, LbPolicy as LB};
    // Defaults.
    let c = cluster(&eds()).unwrap();
    assert_eq!(c.discovery, mc::Discovery::Eds { service_name: None });
    assert_eq!(c.discovery.eds_service_name("c"), Some("c"));
    assert_eq!(c.lb_policy, mc::LbPolicy::RoundRobin);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(
        c.circuit_breakers,
        [mc::Thresholds::envoy_default(mc::RoutingPriority::Default)]
    );
    assert_eq!(
        (c.outlier_detection, c.tls, c.protocol),
        (None, None, mc::UpstreamProtocol::Http1)
    );

    let discovery: Vec<(pb::Cluster, mc::Discovery)> = vec![
        (
            pb::Cluster {
                name: "c".into(),
                load_assignment: Some(cla(vec![lb("10.0.0.1", 80)])),
                ..Default::default()
            },
            mc::Discovery::Static,
        ),
        (
            pb::Cluster {
                eds_cluster_config: Some(pb::cluster::EdsClusterConfig {
                    service_name: "svc".into(),
                    ..Default::default()
                }),
                ..eds()
            },
            mc::Discovery::Eds {
                service_name: Some("svc".into()),
            },
        ),
        (
            pb::Cluster {
                name: "c".into(),
                cluster_discovery_type: ty(DT::StrictDns),
                load_assignment: Some(cla(vec![lb("a.example", 80), lb("b.example", 80)])),
                ..Default::default()
            },
            mc::Discovery::StrictDns,
        ),
        (
            pb::Cluster {
                name: "c".into(),
                cluster_discovery_type: ty(DT::LogicalDns),
                load_assignment: Some(cla(vec![lb("a.example", 80)])),
                ..Default::default()
            },
            mc::Discovery::LogicalDns,
        ),
        (
            pb::Cluster {
                name: "c".into(),
                cluster_discovery_type: ty(DT::OriginalDst),
                lb_policy: LB::ClusterProvided as i32,
                ..Default::default()
            },
            mc::Discovery::OriginalDst,
        ),
    ];
    for (input, want) in discovery {
        let got = cluster(&input);
        // ORIGINAL_DST with CLUSTER_PROVIDED: Envoy's required pairing is not modelled.
        if want == mc::Discovery::OriginalDst {
            assert_eq!(
                messages(got),
                ["lb_policy: CLUSTER_PROVIDED is not supported"]
            );
            let ok = cluster(&pb::Cluster {
                lb_policy: 0,
                ..input
            })
            .unwrap();
            assert_eq!(ok.discovery, want);
            continue;
        }
        assert_eq!(got.unwrap().discovery, want);
    }
    for (p, want) in [
        (LB::RoundRobin, mc::LbPolicy::RoundRobin),
        (LB::LeastRequest, mc::LbPolicy::LeastRequest),
        (LB::Random, mc::LbPolicy::Random),
        (LB::RingHash, mc::LbPolicy::RingHash),
        (LB::Maglev, mc::LbPolicy::Maglev),
    ] {
        assert_eq!(
            cluster(&pb::Cluster {
                lb_policy: p as i32,
                ..eds()
            })
            .unwrap()
            .lb_policy,
            want
        );
    }

    let full = pb::Cluster {
        connect_timeout: dur(1, 500_000_000),
        circuit_breakers: Some(pb::CircuitBreakers {
            thresholds: vec![
                pb::circuit_breakers::Thresholds {
                    max_connections: u32v(10),
                    max_retries: u32v(1),
                    ..Default::default()
                },
                pb::circuit_breakers::Thresholds {
                    priority: core::RoutingPriority::High as i32,
                    max_requests: u32v(7),
                    retry_budget: Some(pb::circuit_breakers::thresholds::RetryBudget {
                        budget_percent: Some(xds_api::pb::envoy::r#type::v3::Percent {
                            value: 25.0,
                        }),
                        min_retry_concurrency: None,
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx: u32v(3),
            interval: dur(1, 0),
            base_ejection_time: dur(2, 0),
            max_ejection_percent: u32v(50),
            enforcing_success_rate: u32v(0),
            ..Default::default()
        }),
        transport_socket: tls_socket(&ext::UpstreamTlsContext {
            sni: "up.example".into(),
            common_tls_context: Some(ext::CommonTlsContext {
                alpn_protocols: vec!["h2".into()],
                tls_certificate_sds_secret_configs: vec![tls::SdsSecretConfig {
                    name: "default".into(),
                    ..Default::default()
                }],
                validation_context_sds_secret_config: Some(tls::SdsSecretConfig {
                    name: "ROOTCA".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        typed_extension_protocol_options: http_opts(&ext::UpstreamHttpProtocolOptions {
            explicit_http_config: Some(ext::ProtocolConfig {
                http2_protocol_options: Some(core::Http2ProtocolOptions {
                    max_concurrent_streams: u32v(100),
                    allow_connect: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        dns_refresh_rate: dur(30, 0),
        ..eds()
    };
    let c = cluster(&full).unwrap();
    assert_eq!(c.connect_timeout, Duration::from_millis(1500));
    assert_eq!(
        c.circuit_breakers,
        [
            mc::Thresholds {
                max_connections: 10,
                max_retries: 1,
                ..mc::Thresholds::envoy_default(mc::RoutingPriority::Default)
            },
            mc::Thresholds {
                max_requests: 7,
                retry_budget: Some(mc::RetryBudget {
                    budget_percent: 25.0,
                    min_retry_concurrency: 3,
                }),
                ..mc::Thresholds::envoy_default(mc::RoutingPriority::High)
            },
        ]
    );
    assert_eq!(
        c.outlier_detection,
        Some(mc::OutlierDetection {
            consecutive_5xx: 3,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(2),
            max_ejection_percent: 50,
            enforcing_success_rate: 0,
            ..Default::default()
        })
    );
    // `outlier_detection: {}` (Envoy Gateway's): Envoy's defaults, success-rate ejection
    // on, failure percentage off.
    let empty = cluster(&pb::Cluster {
        outlier_detection: Some(Default::default()),
        ..eds()
    })
    .unwrap();
    assert_eq!(
        empty.outlier_detection,
        Some(mc::OutlierDetection::default())
    );
    let d = mc::OutlierDetection::default();
    assert_eq!(
        (
            d.enforcing_success_rate,
            d.success_rate_minimum_hosts,
            d.success_rate_request_volume
        ),
        (100, 5, 100)
    );
    assert_eq!(
        (d.success_rate_stdev_factor, d.enforcing_failure_percentage),
        (1900, 0)
    );
    // Envoy Gateway's passive health check: local-origin errors split, with a threshold.
    let split = cluster(&pb::Cluster {
        outlier_detection: Some(pb::OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: u32v(3),
            ..Default::default()
        }),
        ..eds()
    })
    .unwrap()
    .outlier_detection
    .unwrap();
    assert!(split.split_external_local_origin_errors);
    assert_eq!(
        (
            split.consecutive_local_origin_failure,
            split.enforcing_consecutive_local_origin_failure,
            split.enforcing_local_origin_success_rate
        ),
        (3, 100, 100)
    );
    assert_eq!(
        c.tls,
        Some(mc::UpstreamTls {
            sni: Some("up.example".into()),
            alpn_protocols: vec!["h2".into()],
            certificates: vec![mc::CertificateSource::Sds("default".into())],
            validation: Some(mc::ValidationSource::Sds("ROOTCA".into())),
            auto_sni_san_validation: false,
            min_version: None,
            max_version: None,
            algorithms: Default::default(),
        })
    );
    assert_eq!(
        c.protocol,
        mc::UpstreamProtocol::Http2(mc::Http2Options {
            max_concurrent_streams: Some(100),
            allow_connect: true,
            ..Default::default()
        })
    );
    assert_eq!(c.dns_refresh_rate, Some(Duration::from_secs(30)));
    // Serializes for /config_dump.
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["connect_timeout"], "1.5s");
    assert_eq!(
        v["discovery"],
        serde_json::json!({"eds": {"service_name": null}})
    );
}

/// A DestinationRule's `connectionPool` as istiod writes it: the life of upstream
/// connections.
#[test]
fn connection_life() {
    let with = |common: core::HttpProtocolOptions| {
        let c = cluster(&pb::Cluster {
            typed_extension_protocol_options: http_opts(&ext::UpstreamHttpProtocolOptions {
                common_http_protocol_options: Some(common),
                // HTTP/1.1 chosen explicitly, as istiod writes it.
                explicit_http_config: Some(ext::ProtocolConfig {
                    http_protocol_options: Some(Default::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..eds()
        })
        .unwrap();
        c.connection_life
    };
    assert_eq!(cluster(&eds()).unwrap().connection_life, Default::default());
    let l = with(core::HttpProtocolOptions {
        idle_timeout: dur(90, 0),
        max_requests_per_connection: u32v(100),
        max_connection_duration: dur(600, 0),
        ..Default::default()
    });
    assert_eq!(l.idle_timeout, Some(Duration::from_secs(90)));
    assert_eq!(l.max_requests_per_connection, Some(100));
    assert_eq!(l.max_connection_duration, Some(Duration::from_secs(600)));
    // `0s`: an idle timeout that never fires (kept as zero); no bound on the age.
    let l = with(core::HttpProtocolOptions {
        idle_timeout: dur(0, 0),
        max_connection_duration: dur(0, 0),
        ..Default::default()
    });
    assert_eq!(l.idle_timeout, Some(Duration::ZERO));
    assert_eq!(l.max_connection_duration, None);
}

#[test]
fn cluster_rejections() {
    let tls_path = "transport_socket.typed_config";
    let cases: Vec<(pb::Cluster, Vec<&str>)> = vec![
        #[allow(deprecated)]
        (pb::Cluster { http2_protocol_options: Some(Default::default()), ..eds() }, vec!["http2_protocol_options: deprecated form `http2_protocol_options` is not accepted; use `typed_extension_protocol_options` with `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`"]),
        (pb::Cluster { health_checks: vec![Default::default()], lb_subset_config: Some(Default::default()), ..eds() }, vec!["health_checks[0].timeout: required but not set", "health_checks[0].interval: required but not set", "health_checks[0].unhealthy_threshold: required but not set", "health_checks[0].healthy_threshold: required but not set", "health_checks[0].health_checker: required but not set", "lb_subset_config: not supported"]),
        (pb::Cluster { lb_config: Some(pb::cluster::LbConfig::RingHashLbConfig(Default::default())), ..eds() }, vec!["ring_hash_lb_config: not supported"]),
        (pb::Cluster { connect_timeout: dur(0, 0), ..eds() }, vec!["connect_timeout: must be greater than zero"]),
        (pb::Cluster { connect_timeout: dur(-1, 0), ..eds() }, vec!["connect_timeout: duration -1s 0ns is negative or malformed"]),
        (pb::Cluster { name: "c".into(), cluster_discovery_type: ty(pb::cluster::DiscoveryType::StrictDns), ..Default::default() }, vec!["load_assignment: required for STATIC and DNS clusters"]),
        (
            pb::Cluster { name: "c".into(), load_assignment: Some(cla(vec![lb("db.example", 5432)])), ..Default::default() },
            vec!["load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: a STATIC cluster needs IP addresses (use STRICT_DNS or LOGICAL_DNS for host names)"],
        ),
        (
            pb::Cluster { name: "c".into(), cluster_discovery_type: ty(pb::cluster::DiscoveryType::LogicalDns), load_assignment: Some(cla(vec![lb("a", 1), lb("b", 1)])), ..Default::default() },
            vec!["load_assignment: a LOGICAL_DNS cluster needs exactly one endpoint, not 2"],
        ),
        (pb::Cluster { outlier_detection: Some(pb::OutlierDetection { enforcing_success_rate: u32v(101), enforcing_local_origin_success_rate: u32v(200), max_ejection_time_jitter: dur(1, 0), ..Default::default() }), ..eds() }, vec!["outlier_detection.max_ejection_time_jitter: not supported", "outlier_detection.enforcing_success_rate: 101 is not a percentage", "outlier_detection.enforcing_local_origin_success_rate: 200 is not a percentage"]),
        (
            pb::Cluster {
                transport_socket: tls_socket(&ext::UpstreamTlsContext {
                    allow_renegotiation: true,
                    common_tls_context: Some(ext::CommonTlsContext {
                        tls_params: Some(ext::TlsParameters { cipher_suites: vec!["ECDHE-RSA-AES128-GCM-SHA256".into()], tls_minimum_protocol_version: 2, ..Default::default() }),
                        validation_context: Some(tls::CertificateValidationContext { verify_certificate_spki: vec!["x".into()], ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..eds()
            },
            vec![
                "transport_socket.typed_config.allow_renegotiation: not supported",
                "transport_socket.typed_config.common_tls_context.tls_params.tls_minimum_protocol_version: TLSv1_1 (Myelin speaks TLS 1.2 and 1.3) is not supported",
                "transport_socket.typed_config.common_tls_context.validation_context.verify_certificate_spki: not supported",
            ],
        ),
        (
            pb::Cluster {
                transport_socket: Some(core::TransportSocket {
                    name: "alts".into(),
                    config_type: Some(core::transport_socket::ConfigType::TypedConfig(protobuf::Any { type_url: "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts".into(), value: vec![] })),
                }),
                ..eds()
            },
            vec!["transport_socket.typed_config: transport socket `alts` (type `type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts`) is not supported"],
        ),
        (
            pb::Cluster { typed_extension_protocol_options: http_opts(&ext::UpstreamHttpProtocolOptions { auto_config: Some(ext::AutoHttpConfig { http3_protocol_options: Some(vec![]), alternate_protocols_cache_options: Some(vec![]), ..Default::default() }), ..Default::default() }), ..eds() },
            vec![
                "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].auto_config.alternate_protocols_cache_options: not supported",
                "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].auto_config.http3_protocol_options: not supported",
            ],
        ),
        (
            pb::Cluster {
                typed_extension_protocol_options: http_opts(&ext::UpstreamHttpProtocolOptions {
                    common_http_protocol_options: Some(core::HttpProtocolOptions {
                        max_requests_per_connection: u32v(0),
                        max_headers_count: u32v(10),
                        idle_timeout: dur(-1, 0),
                        ..Default::default()
                    }),
                    explicit_http_config: Some(ext::ProtocolConfig {
                        http_protocol_options: Some(core::Http1ProtocolOptions {
                            accept_http_10: true,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..eds()
            },
            vec![
                "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].common_http_protocol_options.max_headers_count: not supported",
                "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].common_http_protocol_options.idle_timeout: duration -1s 0ns is negative or malformed",
                "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].common_http_protocol_options.max_requests_per_connection: must be at least 1",
                "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].explicit_http_config.http_protocol_options: not supported",
            ],
        ),
    ];
    let _ = tls_path;
    for (i, (input, want)) in cases.into_iter().enumerate() {
        assert_eq!(messages(cluster(&input)), want, "case {i}");
    }
}

#[test]
fn endpoints() {
    let mut md = protobuf::Struct::default();
    md.fields.insert(
        "canary".into(),
        protobuf::Value {
            kind: Some(protobuf::value::Kind::BoolValue(true)),
        },
    );
    let input = epb::ClusterLoadAssignment {
        cluster_name: "svc".into(),
        endpoints: vec![epb::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "r".into(),
                zone: "z".into(),
                sub_zone: "s".into(),
            }),
            lb_endpoints: vec![
                epb::LbEndpoint {
                    health_status: core::HealthStatus::Draining as i32,
                    load_balancing_weight: u32v(5),
                    metadata: Some(core::Metadata {
                        filter_metadata: [("envoy.lb".to_owned(), md)].into_iter().collect(),
                        ..Default::default()
                    }),
                    ..lb("10.0.0.1", 8080)
                },
                lb("fd00::2", 80),
            ],
            load_balancing_weight: u32v(3),
            priority: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    let m = cluster_load_assignment(&input).unwrap();
    assert_eq!(m.cluster_name, "svc");
    let l = &m.localities[0];
    assert_eq!((l.priority, l.load_balancing_weight), (1, Some(3)));
    assert_eq!(
        l.locality,
        Some(me::Locality {
            region: "r".into(),
            zone: "z".into(),
            sub_zone: "s".into()
        })
    );
    let e = &l.endpoints[0];
    assert_eq!(
        e.address,
        me::EndpointAddress::Socket("10.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(e.health_status, me::HealthStatus::Draining);
    assert_eq!(e.load_balancing_weight, 5);
    assert_eq!(
        e.metadata["envoy.lb"]["canary"],
        model::MetadataValue::Bool(true)
    );
    assert_eq!(
        serde_json::to_value(&e.metadata).unwrap(),
        serde_json::json!({"envoy.lb": {"canary": true}})
    );
    assert_eq!(l.endpoints[1].load_balancing_weight, 1);
    assert_eq!(l.endpoints[1].health_status, me::HealthStatus::Unknown);

    let bad = epb::ClusterLoadAssignment {
        endpoints: vec![epb::LocalityLbEndpoints {
            lb_endpoints: vec![
                epb::LbEndpoint {
                    load_balancing_weight: u32v(0),
                    ..lb("10.0.0.1", 80)
                },
                epb::LbEndpoint {
                    host_identifier: Some(epb::lb_endpoint::HostIdentifier::EndpointName(
                        "n".into(),
                    )),
                    ..Default::default()
                },
                lb("10.0.0.1", 65536),
            ],
            ..Default::default()
        }],
        policy: Some(epb::cluster_load_assignment::Policy {
            overprovisioning_factor: u32v(200),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        messages(cluster_load_assignment(&bad)),
        [
            "policy.overprovisioning_factor: not supported",
            "endpoints[0].lb_endpoints[0].load_balancing_weight: must be at least 1",
            "endpoints[0].lb_endpoints[1].endpoint_name: not supported",
            "endpoints[0].lb_endpoints[2].endpoint.address.socket_address.port_value: port 65536 is out of range",
        ]
    );
}

#[test]
fn secrets() {
    let inline = |s: &str| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(s.into())),
            ..Default::default()
        })
    };
    let file = |s: &str| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(s.into())),
            ..Default::default()
        })
    };
    let cert = tls::Secret {
        name: "default".into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: file("/c.pem"),
            private_key: inline("KEY"),
            ..Default::default()
        })),
    };
    let m = secret(&cert).unwrap();
    assert_eq!(
        m.kind,
        model::secret::SecretKind::TlsCertificate(model::secret::TlsCertificate {
            certificate_chain: model::DataSource::Filename("/c.pem".into()),
            private_key: model::DataSource::Inline(b"KEY".to_vec()),
        })
    );
    assert!(!serde_json::to_string(&m).unwrap().contains("KEY"));
    let vc = tls::Secret {
        name: "ROOTCA".into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: inline("CA"),
                match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                    san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                    matcher: Some(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                            "spiffe://td/ns/a/".into(),
                        )),
                        ignore_case: false,
                    }),
                }],
                ..Default::default()
            },
        )),
    };
    assert_eq!(
        secret(&vc).unwrap().kind,
        model::secret::SecretKind::ValidationContext(model::secret::ValidationContext {
            trusted_ca: Some(model::DataSource::Inline(b"CA".to_vec())),
            match_subject_alt_names: vec![model::secret::SanMatcher {
                san_type: model::secret::SanType::Uri,
                matcher: model::StringMatcher {
                    pattern: model::StringPattern::Prefix("spiffe://td/ns/a/".into()),
                    ignore_case: false
                },
            }],
        })
    );
    #[allow(deprecated)]
    let bad = tls::Secret {
        name: String::new(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                match_subject_alt_names: vec![Default::default()],
                crl: inline("x"),
                ..Default::default()
            },
        )),
    };
    assert_eq!(
        messages(secret(&bad)),
        [
            "name: required but not set",
            "validation_context.crl: not supported",
            "validation_context.match_subject_alt_names: deprecated form `match_subject_alt_names` is not accepted; use `match_typed_subject_alt_names`",
        ]
    );
    let bad = tls::Secret {
        name: "k".into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline("C"),
            ..Default::default()
        })),
    };
    assert_eq!(
        messages(secret(&bad)),
        ["tls_certificate.private_key: required but not set"]
    );
    let bad = tls::Secret {
        name: "g".into(),
        r#type: Some(tls::secret::Type::GenericSecret(Default::default())),
    };
    assert_eq!(messages(secret(&bad)), ["generic_secret: not supported"]);
}

/// Keepalive settings (what `../shared/data/envoy/ads.yaml` sets for its control-plane
/// cluster), from Envoy-style YAML: converted, and their bad forms rejected by path.
#[test]
fn keepalives() {
    let yaml = |extra: &str| -> pb::Cluster {
        let text = format!(
            r#"
name: ads
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: ads
  endpoints:
  - lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 777 }} }} }}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options:
        connection_keepalive: {{ interval: 30s, timeout: 5s {extra} }}
upstream_connection_options:
  tcp_keepalive: {{ keepalive_probes: 3, keepalive_time: 30, keepalive_interval: 5 }}
"#
        );
        let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        super::json::from_value(v).unwrap()
    };
    let c = cluster(&yaml("")).unwrap();
    assert_eq!(
        c.tcp_keepalive,
        Some(mc::TcpKeepalive {
            probes: Some(3),
            time: Some(Duration::from_secs(30)),
            interval: Some(Duration::from_secs(5)),
        })
    );
    let mc::UpstreamProtocol::Http2(h2) = &c.protocol else {
        panic!("{:?}", c.protocol)
    };
    assert_eq!(
        h2.connection_keepalive,
        Some(mc::Http2Keepalive {
            interval: Some(Duration::from_secs(30)),
            timeout: Duration::from_secs(5),
            interval_jitter_bp: mc::Http2Keepalive::DEFAULT_JITTER_BP,
        })
    );
    let c = cluster(&yaml(", interval_jitter: { value: 2.5 }")).unwrap();
    let mc::UpstreamProtocol::Http2(h2) = &c.protocol else {
        panic!("{:?}", c.protocol)
    };
    assert_eq!(h2.connection_keepalive.unwrap().interval_jitter_bp, 250);
    // `tcp_keepalive: {}` turns keepalive on with the kernel's settings.
    let mut bare = yaml("");
    bare.upstream_connection_options = Some(pb::UpstreamConnectionOptions {
        tcp_keepalive: Some(core::TcpKeepalive::default()),
        ..Default::default()
    });
    assert_eq!(
        cluster(&bare).unwrap().tcp_keepalive,
        Some(mc::TcpKeepalive::default())
    );

    let mut bad = yaml("");
    bad.upstream_connection_options
        .as_mut()
        .unwrap()
        .happy_eyeballs_config = Some(Default::default());
    assert_eq!(
        messages(cluster(&bad)),
        ["upstream_connection_options.happy_eyeballs_config: not supported"]
    );
    let kp = "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].explicit_http_config.http2_protocol_options.connection_keepalive";
    assert_eq!(
        messages(cluster(&yaml(", connection_idle_interval: 60s"))),
        [format!("{kp}.connection_idle_interval: not supported")]
    );
    assert_eq!(
        messages(cluster(&yaml(", interval_jitter: { value: 150 }"))),
        [format!(
            "{kp}.interval_jitter: 150 is not a percentage (0 to 100)"
        )]
    );
}

/// `google.protobuf.Struct` from JSON (objects, strings, numbers, booleans).
fn pb_struct(v: serde_json::Value) -> protobuf::Struct {
    fn value(v: serde_json::Value) -> protobuf::Value {
        use protobuf::value::Kind;
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(protobuf::ListValue {
                values: a.into_iter().map(value).collect(),
            }),
            o @ serde_json::Value::Object(_) => Kind::StructValue(pb_struct(o)),
        };
        protobuf::Value { kind: Some(kind) }
    }
    let serde_json::Value::Object(m) = v else {
        panic!("not an object")
    };
    protobuf::Struct {
        fields: m.into_iter().map(|(k, v)| (k, value(v))).collect(),
    }
}

/// HBONE endpoint metadata (`myelin.io/hbone`): node and identity read into the model;
/// every malformed form rejected with its field path.
#[test]
fn hbone_endpoint_metadata() {
    let with = |md: serde_json::Value| epb::LbEndpoint {
        metadata: Some(core::Metadata {
            filter_metadata: [("myelin.io/hbone".to_owned(), pb_struct(md))]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        ..lb("10.78.1.2", 9000)
    };
    let db: myelin_proxy::tls::SpiffeId = "spiffe://cluster.local/ns/test/sa/db".parse().unwrap();
    let good = [
        (
            serde_json::json!({"node": "10.78.0.1", "identity": db.to_string()}),
            "10.78.0.1:15008",
            Some(db.clone()),
        ),
        (
            serde_json::json!({"node": "10.78.0.1:15009"}),
            "10.78.0.1:15009",
            None,
        ),
        (
            serde_json::json!({"node": "[fd00::1]:15008", "identity": db.to_string()}),
            "[fd00::1]:15008",
            Some(db.clone()),
        ),
        (
            serde_json::json!({"node": "fd00::1"}),
            "[fd00::1]:15008",
            None,
        ),
    ];
    for (md, node, identity) in good {
        let m = cluster_load_assignment(&cla(vec![with(md.clone())])).unwrap();
        let e = &m.localities[0].endpoints[0];
        assert_eq!(
            e.hbone,
            Some(me::HboneEndpoint {
                node: node.parse().unwrap(),
                identity: identity.clone(),
            }),
            "{md}"
        );
        // Still in the metadata as given.
        assert!(e.metadata.contains_key("myelin.io/hbone"));
    }
    // Without the namespace: no tunnel.
    let m = cluster_load_assignment(&cla(vec![lb("10.78.1.2", 9000)])).unwrap();
    assert_eq!(m.localities[0].endpoints[0].hbone, None);

    let p = "endpoints[0].lb_endpoints[0].metadata.filter_metadata[myelin.io/hbone]";
    let bad = [
        (serde_json::json!({}), vec![format!("{p}.node: required but not set")]),
        (
            serde_json::json!({"identity": db.to_string()}),
            vec![format!("{p}.node: required but not set")],
        ),
        (
            serde_json::json!({"node": "node-b"}),
            vec![format!(
                "{p}.node: \"node-b\" is not a node address (`ip` or `ip:port`, port 15008 by default)"
            )],
        ),
        (
            serde_json::json!({"node": "10.78.0.1:0"}),
            vec![format!(
                "{p}.node: \"10.78.0.1:0\" is not a node address (`ip` or `ip:port`, port 15008 by default)"
            )],
        ),
        (
            serde_json::json!({"node": 7}),
            vec![format!("{p}.node: must be a string")],
        ),
        (
            serde_json::json!({"node": "10.78.0.1", "identity": "spiffe://cluster.local/db"}),
            vec![format!(
                "{p}.identity: not a workload identity (path must be /ns/<namespace>/sa/<service-account>): \"spiffe://cluster.local/db\""
            )],
        ),
        (
            serde_json::json!({"node": "10.78.0.1", "port": "15008"}),
            vec![format!("{p}.port: not supported")],
        ),
    ];
    for (md, want) in bad {
        assert_eq!(
            messages(cluster_load_assignment(&cla(vec![with(md.clone())]))),
            want,
            "{md}"
        );
    }
    // A tunnel needs an IP target.
    let dns = epb::LbEndpoint {
        ..with(serde_json::json!({"node": "10.78.0.1"}))
    };
    let dns = epb::LbEndpoint {
        host_identifier: lb("db.test", 9000).host_identifier,
        ..dns
    };
    assert_eq!(
        messages(cluster_load_assignment(&cla(vec![dns]))),
        ["endpoints[0].lb_endpoints[0].endpoint.address: an endpoint with myelin.io/hbone metadata needs an IP address (the tunnel's target)"]
    );
}

fn policy(name: &str, type_url: &str, value: Vec<u8>) -> pb::load_balancing_policy::Policy {
    pb::load_balancing_policy::Policy {
        typed_extension_config: Some(core::TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(protobuf::Any {
                type_url: type_url.into(),
                value,
            }),
        }),
    }
}

fn policies(p: Vec<pb::load_balancing_policy::Policy>) -> Option<pb::LoadBalancingPolicy> {
    Some(pb::LoadBalancingPolicy { policies: p })
}

/// What Envoy Gateway writes on every cluster: an empty `common_lb_config`,
/// `ignore_health_on_host_removal`, and its policy twice (the enum, and the typed policy
/// with locality weighting, which wins); and the other typed policies.
#[test]
fn load_balancing_policies() {
    use super::lb_policy as lbp;
    use prost::Message;
    let weighted = Some(lbp::LocalityLbConfig {
        zone_aware_lb_config: None,
        locality_weighted_lb_config: Some(lbp::LocalityWeightedLbConfig {}),
    });
    let least = lbp::LeastRequest {
        locality_lb_config: weighted.clone(),
        ..Default::default()
    };
    let eg = pb::Cluster {
        common_lb_config: Some(Default::default()),
        ignore_health_on_host_removal: true,
        respect_dns_ttl: true,
        preconnect_policy: Some(pb::cluster::PreconnectPolicy {
            per_upstream_preconnect_ratio: Some(protobuf::DoubleValue { value: 1.5 }),
            predictive_preconnect_ratio: None,
        }),
        lb_policy: pb::cluster::LbPolicy::RoundRobin as i32,
        load_balancing_policy: policies(vec![policy(
            "envoy.load_balancing_policies.least_request",
            lbp::LEAST_REQUEST,
            least.encode_to_vec(),
        )]),
        ..eds()
    };
    let c = cluster(&eg).unwrap();
    assert_eq!(
        (c.lb_policy, c.locality_weighted),
        (mc::LbPolicy::LeastRequest, true)
    );
    // The first policy Myelin has wins; unknown ones before it are skipped.
    let c = cluster(&pb::Cluster {
        load_balancing_policy: policies(vec![
            policy("custom", "type.googleapis.com/x.Custom", vec![]),
            policy(
                "rr",
                lbp::ROUND_ROBIN,
                lbp::RoundRobin::default().encode_to_vec(),
            ),
            policy("random", lbp::RANDOM, vec![]),
        ]),
        ..eds()
    })
    .unwrap();
    assert_eq!(
        (c.lb_policy, c.locality_weighted),
        (mc::LbPolicy::RoundRobin, false)
    );
    for (url, value, want) in [
        (
            lbp::RANDOM,
            lbp::Random {
                locality_lb_config: weighted.clone(),
            }
            .encode_to_vec(),
            (mc::LbPolicy::Random, true),
        ),
        (lbp::MAGLEV, vec![], (mc::LbPolicy::Maglev, false)),
        (lbp::RING_HASH, vec![], (mc::LbPolicy::RingHash, false)),
    ] {
        let c = cluster(&pb::Cluster {
            load_balancing_policy: policies(vec![policy("p", url, value)]),
            ..eds()
        })
        .unwrap();
        assert_eq!((c.lb_policy, c.locality_weighted), want, "{url}");
    }
    // `common_lb_config.locality_weighted_lb_config` with the enum's policy.
    let c = cluster(&pb::Cluster {
        common_lb_config: Some(pb::cluster::CommonLbConfig {
            locality_config_specifier: Some(
                pb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    Default::default(),
                ),
            ),
            ..Default::default()
        }),
        ..eds()
    })
    .unwrap();
    assert_eq!(
        (c.lb_policy, c.locality_weighted),
        (mc::LbPolicy::RoundRobin, true)
    );

    let rejected = |c: pb::Cluster| messages(cluster(&c));
    assert_eq!(
        rejected(pb::Cluster { load_balancing_policy: policies(vec![policy("custom", "type.googleapis.com/x.Custom", vec![])]), ..eds() }),
        ["load_balancing_policy.policies: no policy Myelin has: `custom` (type.googleapis.com/x.Custom) (it has envoy.extensions.load_balancing_policies.round_robin, least_request, random, maglev and ring_hash)"]
    );
    let odd = lbp::LeastRequest {
        choice_count: u32v(3),
        selection_method: 1,
        locality_lb_config: Some(lbp::LocalityLbConfig {
            zone_aware_lb_config: Some(vec![]),
            locality_weighted_lb_config: None,
        }),
        ..Default::default()
    };
    let tp = "load_balancing_policy.policies[0].typed_extension_config.typed_config";
    assert_eq!(
        rejected(pb::Cluster {
            load_balancing_policy: policies(vec![policy(
                "lr",
                lbp::LEAST_REQUEST,
                odd.encode_to_vec()
            )]),
            ..eds()
        }),
        [
            format!(
                "{tp}.choice_count: other than 2 (Myelin picks the better of two) is not supported"
            ),
            format!("{tp}.selection_method: FULL_SCAN is not supported"),
            format!("{tp}.locality_lb_config.zone_aware_lb_config: not supported"),
        ]
    );
    assert_eq!(
        rejected(pb::Cluster {
            lb_policy: pb::cluster::LbPolicy::RingHash as i32,
            common_lb_config: Some(pb::cluster::CommonLbConfig {
                healthy_panic_threshold: Some(Default::default()),
                locality_config_specifier: Some(
                    pb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            }),
            ..eds()
        }),
        [
            "common_lb_config.healthy_panic_threshold: not supported",
        ]
    );
}

/// Istio's shape: a TLS socket for endpoints labelled `tlsMode: istio`, plain TCP for the
/// rest (an empty match), and Envoy Gateway's (a match by name, no default socket).
#[test]
fn transport_socket_matches() {
    let text = r#"
name: reviews
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
transport_socket_matches:
- name: tlsMode-istio
  match: {tlsMode: istio}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: outbound_.9080_._.reviews.default.svc.cluster.local
      common_tls_context:
        tls_certificate_sds_secret_configs: [{name: default, sds_config: {ads: {}}}]
        validation_context_sds_secret_config: {name: ROOTCA, sds_config: {ads: {}}}
- name: tlsMode-disabled
  match: {}
  transport_socket:
    name: envoy.transport_sockets.raw_buffer
    typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}
"#;
    let v: serde_json::Value = serde_yaml::from_str(text).unwrap();
    let c = cluster(&super::json::from_value(v).unwrap()).unwrap();
    assert_eq!(c.tls, None);
    let [istio, disabled] = c.transport_socket_matches.as_slice() else {
        panic!("{:?}", c.transport_socket_matches)
    };
    assert_eq!(istio.name, "tlsMode-istio");
    assert_eq!(
        istio.criteria,
        [(
            "tlsMode".to_owned(),
            model::MetadataValue::String("istio".into())
        )]
        .into()
    );
    let tls = istio.tls.as_ref().unwrap();
    assert_eq!(
        tls.sni.as_deref(),
        Some("outbound_.9080_._.reviews.default.svc.cluster.local")
    );
    assert_eq!(
        tls.certificates,
        vec![mc::CertificateSource::Sds("default".into())]
    );
    assert_eq!(disabled.criteria, Default::default());
    assert_eq!(disabled.tls, None);
    // An endpoint labelled for mTLS gets the first match, any other the second.
    let md = |v: serde_json::Value| {
        let mut m = std::collections::BTreeMap::new();
        if let serde_json::Value::Object(o) = v {
            m.insert(
                mc::TRANSPORT_SOCKET_MATCH_METADATA.to_owned(),
                o.into_iter()
                    .map(|(k, v)| (k, model::MetadataValue::String(v.as_str().unwrap().into())))
                    .collect(),
            );
        }
        m
    };
    assert_eq!(
        c.socket_for(&md(serde_json::json!({"tlsMode": "istio", "x": "y"}))),
        1
    );
    assert_eq!(
        c.socket_for(&md(serde_json::json!({"tlsMode": "disabled"}))),
        2
    );
    assert_eq!(c.socket_for(&Default::default()), 2);
    assert!(c.tls_of(1).is_some() && c.tls_of(2).is_none() && c.tls_of(0).is_none());

    // A bad socket inside a match is rejected with its path.
    let text = r#"
name: c
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
transport_socket_matches:
- name: m
  match: {name: m}
  transport_socket:
    name: alts
    typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts}
"#;
    let v: serde_json::Value = serde_yaml::from_str(text).unwrap();
    let msgs = messages(cluster(&super::json::from_value(v).unwrap()));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].starts_with("transport_socket_matches[0].transport_socket.typed_config:"),
        "{msgs:?}"
    );
}

#[test]
fn auto_sni_options() {
    let with = |opts: &str| {
        let text = format!(
            r#"
name: c
type: EDS
eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {{http_protocol_options: {{}}}}
    upstream_http_protocol_options: {opts}
"#
        );
        let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        cluster(&super::json::from_value(v).unwrap())
    };
    let c = with("{auto_sni: true, auto_san_validation: true, override_auto_sni_header: X-Host}")
        .unwrap();
    assert_eq!(
        c.auto_sni,
        mc::AutoSni {
            sni: true,
            san_validation: true,
            header: Some("x-host".into())
        }
    );
    assert_eq!(
        messages(with("{auto_san_validation: true}")),
        vec!["typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].upstream_http_protocol_options.auto_san_validation: without auto_sni (Myelin checks the certificate against the SNI it sends) is not supported"]
    );
    assert_eq!(
        messages(with("{auto_sni: true, override_auto_sni_header: \"bad header\"}")),
        vec!["typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].upstream_http_protocol_options.override_auto_sni_header: \"bad header\" is not a header name"]
    );
}

fn yaml_cluster(text: &str) -> pb::Cluster {
    super::json::from_value(serde_yaml::from_str(text).unwrap()).unwrap()
}

/// `health_checks` as Envoy Gateway writes them (its translator's goldens), with Envoy's
/// defaults filled in.
#[test]
fn health_checks() {
    use model::health_check as mh;
    let c = cluster(&yaml_cluster(
        r#"
name: c
type: EDS
edsClusterConfig: {edsConfig: {ads: {}}}
ignoreHealthOnHostRemoval: true
healthChecks:
- healthyThreshold: 1
  httpHealthCheck:
    expectedStatuses: [{start: "200", end: "201"}, {start: "300", end: "301"}]
    host: '*'
    path: /healthz
    receive: [{text: 6f6b}]
    retriableStatuses: [{start: "500", end: "600"}]
  interval: 3s
  timeout: 0.500s
  unhealthyThreshold: 3
- healthyThreshold: 3
  interval: 5s
  tcpHealthCheck:
    receive: [{binary: cG9uZw==}]
    send: {text: "70696e67"}
  timeout: 1s
  unhealthyThreshold: 3
  unhealthyInterval: 7s
  noTrafficHealthyInterval: 2s
- grpcHealthCheck: {serviceName: my-service, authority: grpc.example}
  healthyThreshold: 3
  interval: 5s
  timeout: 1s
  unhealthyThreshold: 3
  reuseConnection: false
  intervalJitterPercent: 10
  eventLogPath: /dev/stdout
"#,
    ))
    .unwrap();
    assert!(c.ignore_health_on_host_removal);
    let [http, tcp, grpc] = &c.health_checks[..] else {
        panic!("{:?}", c.health_checks)
    };
    assert_eq!(http.timeout, Duration::from_millis(500));
    assert_eq!((http.unhealthy_threshold, http.healthy_threshold), (3, 1));
    assert_eq!(http.no_traffic_interval, Duration::from_secs(60));
    assert_eq!(http.unhealthy_interval, Duration::from_secs(3));
    assert_eq!(http.unhealthy_edge_interval, Duration::from_secs(3));
    assert_eq!(http.healthy_edge_interval, Duration::from_secs(3));
    assert!(http.reuse_connection);
    let mh::HealthChecker::Http(h) = &http.checker else {
        panic!("{http:?}")
    };
    assert_eq!(h.host.as_deref(), Some("*"));
    assert_eq!((h.path.as_str(), h.method.as_str()), ("/healthz", "GET"));
    assert_eq!(h.expected_statuses, [(200, 201), (300, 301)]);
    assert_eq!(h.retriable_statuses, [(500, 600)]);
    assert_eq!(h.receive, [b"ok".to_vec()]);
    assert_eq!(h.response_buffer_size, 1024);
    assert!(!h.http2);
    assert_eq!(
        tcp.checker,
        mh::HealthChecker::Tcp(mh::TcpHealthCheck {
            send: b"ping".to_vec(),
            receive: vec![b"pong".to_vec()],
        })
    );
    assert_eq!(tcp.unhealthy_interval, Duration::from_secs(7));
    assert_eq!(tcp.unhealthy_edge_interval, Duration::from_secs(7));
    assert_eq!(
        tcp.no_traffic_healthy_interval,
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        grpc.checker,
        mh::HealthChecker::Grpc(mh::GrpcHealthCheck {
            service_name: "my-service".into(),
            authority: Some("grpc.example".into()),
            initial_metadata: vec![],
        })
    );
    assert!(!grpc.reuse_connection);
    assert_eq!(grpc.interval_jitter_percent, 10);

    // An endpoint's own health-check settings.
    let cla: epb::ClusterLoadAssignment = super::json::from_value(
        serde_yaml::from_str(
            r#"
clusterName: c
endpoints:
- lbEndpoints:
  - endpoint:
      address: {socketAddress: {address: 10.0.0.1, portValue: 80}}
      healthCheckConfig: {portValue: 8080, hostname: hc.example, address: {socketAddress: {address: 10.0.0.9, portValue: 81}}}
  - endpoint:
      address: {socketAddress: {address: 10.0.0.2, portValue: 80}}
      healthCheckConfig: {disableActiveHealthCheck: true}
"#,
        )
        .unwrap(),
    )
    .unwrap();
    let m = cluster_load_assignment(&cla).unwrap();
    let eps = &m.localities[0].endpoints;
    assert_eq!(
        eps[0].health_check,
        Some(mh::EndpointHealthCheck {
            port: Some(8080),
            address: Some("10.0.0.9:81".parse().unwrap()),
            hostname: Some("hc.example".into()),
            disabled: false,
        })
    );
    assert!(eps[1].health_check.as_ref().unwrap().disabled);
}

#[test]
fn health_check_rejections() {
    let base = r#"
name: c
type: EDS
edsClusterConfig: {edsConfig: {ads: {}}}
healthChecks:
- timeout: 1s
  interval: 5s
  healthyThreshold: 1
  unhealthyThreshold: 1
"#;
    let cases = [
        ("  httpHealthCheck: {path: healthz}", "health_checks[0].http_health_check.path: \"healthz\" is not a request path"),
        ("  httpHealthCheck: {path: /h, expectedStatuses: [{start: \"200\", end: \"700\"}]}", "health_checks[0].http_health_check.expected_statuses[0]: [200, 700) is not a range of statuses within [100, 600)"),
        ("  httpHealthCheck: {path: /h, method: CONNECT}", "health_checks[0].http_health_check.method: method 6 (CONNECT is not a health check) is not supported"),
        ("  httpHealthCheck: {path: /h, codecClientType: HTTP3}", "health_checks[0].http_health_check.codec_client_type: value 2 (HTTP/3) is not supported"),
        ("  httpHealthCheck: {path: /h, receive: [{text: xyz}]}", "health_checks[0].http_health_check.receive[0].text: \"xyz\" is not hex"),
        ("  tcpHealthCheck: {proxyProtocolConfig: {}}\n  tlsOptions: {alpnProtocols: [h2]}", "health_checks[0].tcp_health_check.proxy_protocol_config: not supported"),
        ("  customHealthCheck: {name: envoy.health_checkers.redis}", "health_checks[0].custom_health_check: custom health checker \"envoy.health_checkers.redis\" is not supported"),
        ("  tcpHealthCheck: {}\n  noTrafficInterval: 0s", "health_checks[0].no_traffic_interval: must be greater than zero"),
    ];
    for (extra, want) in cases {
        let c = yaml_cluster(&format!("{base}{extra}\n"));
        let got = messages(cluster(&c));
        assert!(got.iter().any(|m| m == want), "{extra}: {got:?}");
    }
    let tls = yaml_cluster(&format!(
        "{base}  tcpHealthCheck: {{}}\n  tlsOptions: {{alpnProtocols: [h2]}}\n"
    ));
    assert_eq!(
        messages(cluster(&tls)),
        ["health_checks[0].tls_options: not supported"]
    );
    let odst = yaml_cluster(&format!(
        "{}  tcpHealthCheck: {{}}\n",
        base.replace(
            "type: EDS\nedsClusterConfig: {edsConfig: {ads: {}}}",
            "type: ORIGINAL_DST"
        )
    ));
    assert_eq!(
        messages(cluster(&odst)),
        ["health_checks: an ORIGINAL_DST cluster has no endpoints to check"]
    );
}

/// The PROXY protocol transport socket as Envoy Gateway writes it (around `raw_buffer`),
/// around TLS, in a transport socket match, with TLVs, and what is rejected.
#[test]
fn upstream_proxy_protocol() {
    use myelin_proxy::model::proxy_protocol::{
        ProxyProtocolVersion, Tlv, TlvFilter, UpstreamProxyProtocol,
    };
    const URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";
    let yaml = |socket: &str| -> pb::Cluster {
        let text = format!(
            r#"
name: backend
type: STATIC
loadAssignment:
  clusterName: backend
  endpoints: [{{lbEndpoints: [{{endpoint: {{address: {{socketAddress: {{address: 10.0.0.1, portValue: 80}}}}}}}}]}}]
transportSocket:
  name: envoy.transport_sockets.upstream_proxy_protocol
  typedConfig:
    "@type": {URL}
{socket}
"#
        );
        let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        super::json::from_value(v).unwrap()
    };
    let raw = "    transportSocket: {name: envoy.transport_sockets.raw_buffer, typedConfig: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}";
    let eg = cluster(&yaml(&format!("    config: {{version: V2}}\n{raw}"))).unwrap();
    assert_eq!(
        eg.proxy_protocol.as_deref(),
        Some(&UpstreamProxyProtocol {
            version: ProxyProtocolVersion::V2,
            pass_through: TlvFilter::None,
            added_tlvs: vec![],
        })
    );
    assert!(eg.tls.is_none());
    // Unset config: v1. TLVs of our own (base64 values) and those passed through.
    let v1 = cluster(&yaml(raw)).unwrap();
    assert_eq!(v1.proxy_protocol.unwrap().version, ProxyProtocolVersion::V1);
    let tlvs = cluster(&yaml(&format!(
        "    config: {{version: V2, passThroughTlvs: {{matchType: INCLUDE, tlvType: [5]}}, addedTlvs: [{{type: 234, value: bXllbGlu}}]}}\n{raw}"
    )))
    .unwrap();
    let pp = tlvs.proxy_protocol.unwrap();
    assert_eq!(pp.pass_through, TlvFilter::Only(vec![5]));
    assert_eq!(
        pp.added_tlvs,
        vec![Tlv {
            kind: 234,
            value: b"myelin".to_vec()
        }]
    );
    // Around TLS: both.
    let tls = cluster(&yaml(
        "    config: {version: V1}\n    transportSocket: {name: envoy.transport_sockets.tls, typedConfig: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: backend.example}}",
    ))
    .unwrap();
    assert_eq!(tls.tls.unwrap().sni.as_deref(), Some("backend.example"));
    assert!(tls.proxy_protocol.is_some());

    let tp = "transport_socket.typed_config";
    assert_eq!(
        messages(cluster(&yaml("    config: {version: V2}"))),
        [format!("{tp}.transport_socket: required but not set")]
    );
    assert_eq!(
        messages(cluster(&yaml(&format!(
            "    config: {{version: V1, addedTlvs: [{{type: 1, value: eA==}}]}}\n{raw}"
        )))),
        [format!(
            "{tp}.config: TLVs need version V2 (a v1 header carries none)"
        )]
    );
    assert_eq!(
        messages(cluster(&yaml(&format!(
            "    config: {{version: V2, addedTlvs: [{{type: 300, value: eA==}}, {{type: 1}}, {{type: 2, formatString: {{textFormat: x}}}}]}}\n    allowUnspecifiedAddress: true\n{raw}"
        )))),
        [
            format!("{tp}.allow_unspecified_address: not supported"),
            format!("{tp}.config.added_tlvs[0].type: 300 is not a TLV type (0-255)"),
            format!("{tp}.config.added_tlvs[1].value: required but not set"),
            format!("{tp}.config.added_tlvs[2].format_string: not supported"),
        ]
    );
    // Nested: the inner socket must be TLS or plain bytes.
    let nested = format!(
        "    config: {{version: V2}}\n    transportSocket: {{name: pp, typedConfig: {{\"@type\": {URL}, transportSocket: {{name: raw, typedConfig: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}}}}}"
    );
    assert_eq!(
        messages(cluster(&yaml(&nested))),
        [format!("{tp}.transport_socket.typed_config: transport socket `pp` (type `{URL}`) is not supported")]
    );

    // A transport socket match with the PROXY protocol.
    let mut c = yaml(&format!("    config: {{version: V2}}\n{raw}"));
    c.transport_socket_matches = vec![pb::cluster::TransportSocketMatch {
        name: "pp".into(),
        r#match: None,
        transport_socket: c.transport_socket.take(),
    }];
    let m = cluster(&c).unwrap();
    assert!(m.proxy_protocol.is_none());
    assert_eq!(
        m.proxy_protocol_of(1).unwrap().version,
        ProxyProtocolVersion::V2
    );
    assert!(m.proxy_protocol_of(0).is_none());
}
