//! The config the scale benchmark pushes, shaped like what Istio sends a node's proxy: one EDS
//! cluster per service (`outbound|8080||svc-N.ns-M.svc.cluster.local`, least-request, circuit
//! breakers, Istio's service metadata), one `ClusterLoadAssignment` per cluster (one locality,
//! endpoints with Istio's workload metadata), one outbound listener on `0.0.0.0:8080` whose
//! HTTP connection manager takes its routes over RDS, and one `RouteConfiguration` `8080` with
//! a virtual host per routed service (its domains, one `/` route with Istio's retry policy).
//!
//! Only fields Myelin converts or ignores on purpose are set (Istio's `common_lb_config`,
//! `transport_socket_matches` and `host_selection_retry_max_attempts` would be rejected), so
//! every resource is accepted and the benchmark measures the accepting path.

use prost::{Message, Name};
use xds_api::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use xds_api::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use xds_api::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster};
use xds_api::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality, Metadata,
    SocketAddress, TrafficDirection,
};
use xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_api::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use xds_api::pb::envoy::config::route::v3::{
    retry_policy::RetryHostPredicate, route, route_action, route_match, Decorator, RetryPolicy,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use xds_api::pb::google::protobuf::{self, value::Kind, Any, ListValue, Struct, Value};

/// How big the config is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Scale {
    /// EDS clusters, each with its own `ClusterLoadAssignment`.
    pub clusters: usize,
    /// Endpoints per assignment.
    pub endpoints: usize,
    /// Routes (one virtual host each) in the one `RouteConfiguration`; route `i` goes to
    /// cluster `i`, so at most `clusters`.
    pub routes: usize,
}

impl Scale {
    /// The scale issue 3 asks for: 10,000 clusters x 10 endpoints, 1,000 routes.
    pub const ISSUE: Scale = Scale {
        clusters: 10_000,
        endpoints: 10,
        routes: 1_000,
    };
}

/// The RDS name the listener references.
pub const ROUTE_NAME: &str = "8080";
/// The listener's name.
pub const LISTENER_NAME: &str = "0.0.0.0_8080";

const PORT: u32 = 8080;

const PREVIOUS_HOSTS: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// One resource ready to send: its name and the packed message.
#[derive(Debug, Clone)]
pub struct Packed {
    /// Resource name (`cluster_name` for assignments).
    pub name: String,
    /// The encoded resource.
    pub any: Any,
}

fn pack<M: Message + Name>(name: String, m: &M) -> Packed {
    Packed {
        name,
        any: Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        },
    }
}

/// The whole config, encoded.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// Its size.
    pub scale: Scale,
    /// CDS.
    pub clusters: Vec<Packed>,
    /// EDS, in the same order as the clusters.
    pub assignments: Vec<Packed>,
    /// LDS: one listener.
    pub listeners: Vec<Packed>,
    /// RDS: one route configuration.
    pub routes: Vec<Packed>,
}

impl Mesh {
    /// Generates the config (deterministic).
    pub fn generate(scale: Scale) -> Mesh {
        assert!(
            scale.routes <= scale.clusters,
            "every route needs a cluster of its own"
        );
        Mesh {
            scale,
            clusters: (0..scale.clusters)
                .map(|i| pack(cluster_name(i), &cluster(i)))
                .collect(),
            assignments: (0..scale.clusters)
                .map(|i| pack(cluster_name(i), &assignment(i, scale.endpoints, 0)))
                .collect(),
            listeners: vec![pack(LISTENER_NAME.to_owned(), &listener())],
            routes: vec![pack(
                ROUTE_NAME.to_owned(),
                &route_configuration(scale.routes, 0),
            )],
        }
    }

    /// Assignment `i` in its `generation`-th form (0 is the initial one; later ones move the
    /// first endpoint to another port).
    pub fn assignment(&self, i: usize, generation: u32) -> Packed {
        pack(
            cluster_name(i),
            &assignment(i, self.scale.endpoints, generation),
        )
    }

    /// The route configuration in its `generation`-th form (0 is the initial one; later ones
    /// change the timeout of the middle route only).
    pub fn route_configuration(&self, generation: u32) -> Packed {
        pack(
            ROUTE_NAME.to_owned(),
            &route_configuration(self.scale.routes, generation),
        )
    }
}

/// The name of cluster `i` (also its EDS service name), Istio style.
pub fn cluster_name(i: usize) -> String {
    format!("outbound|{PORT}||{}", host(i))
}

fn host(i: usize) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local", i % 50)
}

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn object(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

fn metadata(key: &str, s: Struct) -> Option<Metadata> {
    Some(Metadata {
        filter_metadata: [(key.to_owned(), s)].into_iter().collect(),
        ..Default::default()
    })
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    })
}

fn duration(seconds: i64) -> Option<protobuf::Duration> {
    Some(protobuf::Duration { seconds, nanos: 0 })
}

fn cluster(i: usize) -> Cluster {
    let name = cluster_name(i);
    let max = Some(u32::MAX.into());
    let service = object([
        ("host", string(host(i))),
        ("name", string(format!("svc-{i}"))),
        ("namespace", string(format!("ns-{}", i % 50))),
    ]);
    let services = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![Value {
                kind: Some(Kind::StructValue(service)),
            }],
        })),
    };
    Cluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: name.clone(),
            eds_config: ads(),
        }),
        connect_timeout: duration(10),
        lb_policy: LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: max,
                max_pending_requests: max,
                max_requests: max,
                max_retries: max,
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        metadata: metadata("istio", object([("services", services)])),
        name,
        ..Default::default()
    }
}

fn socket(ip: [u8; 4], port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: std::net::Ipv4Addr::from(ip).to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn assignment(i: usize, endpoints: usize, generation: u32) -> ClusterLoadAssignment {
    let lb_endpoints = (0..endpoints)
        .map(|j| {
            // Endpoint addresses 10.0.0.1 onwards, one per (cluster, endpoint).
            let k = (i * endpoints + j + 1) as u32;
            let port = if j == 0 { PORT + generation } else { PORT };
            LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: socket([10, (k >> 16) as u8, (k >> 8) as u8, k as u8], port),
                    ..Default::default()
                })),
                health_status: HealthStatus::Healthy as i32,
                metadata: metadata(
                    "istio",
                    object([(
                        "workload",
                        string(format!("svc-{i}-v1;ns-{};svc-{i};v1;Kubernetes", i % 50)),
                    )]),
                ),
                load_balancing_weight: Some(1.into()),
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name(i),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality {
                region: "us-east1".into(),
                zone: "us-east1-b".into(),
                sub_zone: String::new(),
            }),
            lb_endpoints,
            load_balancing_weight: Some((endpoints.max(1) as u32).into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener() -> Listener {
    let router = Router::default();
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_{LISTENER_NAME}"),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: ROUTE_NAME.into(),
            config_source: ads(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: Router::type_url(),
                value: router.encode_to_vec(),
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: LISTENER_NAME.into(),
        address: socket([0, 0, 0, 0], PORT),
        bind_to_port: Some(false.into()),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url: HttpConnectionManager::type_url(),
                    value: hcm.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route_configuration(routes: usize, generation: u32) -> RouteConfiguration {
    let changed = routes / 2;
    let virtual_hosts = (0..routes)
        .map(|i| {
            let host = host(i);
            let ns = format!("ns-{}", i % 50);
            let timeout = if i == changed && generation > 0 {
                i64::from(generation)
            } else {
                0
            };
            VirtualHost {
                name: format!("{host}:{PORT}"),
                domains: vec![
                    host.clone(),
                    format!("{host}:{PORT}"),
                    format!("svc-{i}"),
                    format!("svc-{i}:{PORT}"),
                    format!("svc-{i}.{ns}"),
                    format!("svc-{i}.{ns}:{PORT}"),
                ],
                routes: vec![Route {
                    name: "default".into(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            cluster_name(i),
                        )),
                        timeout: duration(timeout),
                        retry_policy: Some(RetryPolicy {
                            retry_on: "connect-failure,refused-stream,unavailable,cancelled,\
                                       retriable-status-codes"
                                .into(),
                            num_retries: Some(2.into()),
                            retry_host_predicate: vec![RetryHostPredicate {
                                name: "envoy.retry_host_predicates.previous_hosts".into(),
                                config_type: Some(
                                    xds_api::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                                        // An empty PreviousHostsPredicate (the schema
                                        // does not carry the type; Myelin goes by name).
                                        Any {
                                            type_url: PREVIOUS_HOSTS.into(),
                                            value: Vec::new(),
                                        },
                                    ),
                                ),
                            }],
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                    decorator: Some(Decorator {
                        operation: format!("{host}:{PORT}/*"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    RouteConfiguration {
        name: ROUTE_NAME.into(),
        virtual_hosts,
        validate_clusters: Some(false.into()),
        ..Default::default()
    }
}
