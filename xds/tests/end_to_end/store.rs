//! The config store behind the real ADS client, over real gRPC against the in-process control
//! plane, SotW and delta: real Envoy protos go through the conversion into the store, the
//! store's references drive the RDS/EDS subscriptions, a bad cluster is NACKed by name and
//! reason while the good one applies, and `config_dump()` shows versions and the last NACK.

use std::sync::Arc;
use std::time::Duration;

use myelin_xds::ads::{type_url, AdsClient, AdsConfig, AdsProtocol};
use myelin_xds::store::{ConfigStore, Snapshot};
use myelin_xds::testing::{to_any, ControlPlane, WAIT};
use xds_api::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, Node, SocketAddress,
};
use xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_api::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager, HttpFilter, Rds,
};
use xds_api::pb::google::protobuf;

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn eds_cluster(name: &str, service: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: service.into(),
            eds_config: None,
        }),
        ..Default::default()
    }
}

fn assignment(service: &str, ip: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: service.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: socket(ip, 8080),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn rds_listener(name: &str, route: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "http".into(),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            ..Default::default()
        }],
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route.into(),
            config_source: None,
        })),
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: socket("0.0.0.0", 8080),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(to_any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        ..Default::default()
    }
}

/// Waits (bounded) until the store's snapshot satisfies `pred`.
async fn wait_until(store: &ConfigStore, what: &str, pred: impl Fn(&Snapshot) -> bool) {
    let mut changes = store.subscribe();
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            changes.borrow_and_update();
            if pred(&store.snapshot()) {
                return;
            }
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "store never got to: {what}; dump: {}",
        serde_json::to_string_pretty(&store.config_dump()).unwrap()
    );
}

async fn store_behind_the_ads_client(protocol: AdsProtocol) {
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set("web", &eds_cluster("web", "web-eds"))
            .set("web-eds", &assignment("web-eds", "10.1.0.1"))
            .set("http", &rds_listener("http", "r1"))
            .set("r1", &route("r1"));
    });
    let store = Arc::new(ConfigStore::new());
    let mut config = AdsConfig::new(
        cp.uri(),
        Node {
            id: "node-1".into(),
            ..Default::default()
        },
    );
    config.protocol = protocol;
    let client = tokio::spawn(AdsClient::new(config, store.clone()).run());

    wait_until(&store, "r1 loaded", |s| {
        s.route_configuration("r1").is_some()
    })
    .await;
    cp.wait_for_answer(type_url::ROUTE).await;

    // Everything went through the conversion into the store, with its version.
    let s = store.snapshot();
    for (t, name) in [
        (type_url::CLUSTER, "web"),
        (type_url::ENDPOINT, "web-eds"),
        (type_url::LISTENER, "http"),
        (type_url::ROUTE, "r1"),
    ] {
        assert_eq!(
            s.version(t, name),
            Some(cp.version(t).as_str()),
            "{t} {name}"
        );
    }
    assert_eq!(
        s.cluster_load_assignment("web-eds").unwrap().localities[0].endpoints[0].address,
        myelin_proxy::model::endpoint::EndpointAddress::Socket("10.1.0.1:8080".parse().unwrap())
    );
    // The subscriptions came from the store's references.
    let eds = cp
        .wait_for_request(|r| r.type_url == type_url::ENDPOINT && !r.resource_names.is_empty())
        .await;
    assert_eq!(eds.resource_names, ["web-eds"]);
    let rds = cp
        .wait_for_request(|r| r.type_url == type_url::ROUTE && !r.resource_names.is_empty())
        .await;
    assert_eq!(rds.resource_names, ["r1"]);
    assert!(cp.requests().iter().all(|r| !r.is_nack()));

    let dump = serde_json::to_value(store.config_dump()).unwrap();
    let first = |t: &str| dump[t]["resources"][0].clone();
    assert_eq!(first("listeners")["name"], "http");
    assert_eq!(first("listeners")["version"], "1");
    assert_eq!(
        first("listeners")["resource"]["filter_chains"][0]["filter"]["http_connection_manager"]
            ["route"]["rds"],
        "r1"
    );
    assert_eq!(first("clusters")["name"], "web");
    assert_eq!(
        first("clusters")["resource"]["discovery"]["eds"]["service_name"],
        "web-eds"
    );
    assert_eq!(first("cluster_load_assignments")["name"], "web-eds");
    assert_eq!(first("route_configurations")["name"], "r1");
    assert!(first("clusters")["last_updated"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(dump["clusters"]["last_nack"].is_null());

    // One good (changed) and one bad cluster in one response.
    cp.update(|b| {
        let mut web = eds_cluster("web", "web-eds");
        web.connect_timeout = Some(protobuf::Duration {
            seconds: 2,
            nanos: 0,
        });
        let bad = Cluster {
            lb_policy: LbPolicy::ClusterProvided as i32,
            ..eds_cluster("bad-1", "bad-1-eds")
        };
        b.set("web", &web).set("bad-1", &bad);
    });
    let nack = cp.wait_for_answer(type_url::CLUSTER).await;
    assert!(nack.is_nack(), "{nack:#?}");
    assert_eq!(
        nack.error_message(),
        "bad-1: lb_policy: CLUSTER_PROVIDED is not supported"
    );
    let s = store.snapshot();
    assert_eq!(s.version(type_url::CLUSTER, "web"), Some("2"));
    assert_eq!(
        s.cluster("web").unwrap().connect_timeout,
        Duration::from_secs(2)
    );
    assert!(s.cluster("bad-1").is_none());
    assert_eq!(s.references(type_url::ENDPOINT).len(), 1);
    let dump = serde_json::to_value(store.config_dump()).unwrap();
    let last_nack = &dump["clusters"]["last_nack"];
    assert_eq!(last_nack["version"], "2");
    assert_eq!(
        last_nack["message"],
        "bad-1: lb_policy: CLUSTER_PROVIDED is not supported"
    );
    assert_eq!(dump["clusters"]["resources"].as_array().unwrap().len(), 1);

    // An EDS change reaches the store and leaves the listener's Arc alone.
    let listener = s.listener("http").unwrap().clone();
    cp.set("web-eds", &assignment("web-eds", "10.1.0.2"));
    wait_until(&store, "new endpoint", |s| {
        s.version(type_url::ENDPOINT, "web-eds") == Some("2")
    })
    .await;
    let s2 = store.snapshot();
    assert!(Arc::ptr_eq(s2.listener("http").unwrap(), &listener));
    // The old snapshot still has the old endpoint.
    assert_eq!(s.version(type_url::ENDPOINT, "web-eds"), Some("1"));

    client.abort();
}

#[tokio::test]
async fn sotw_store_behind_the_ads_client() {
    store_behind_the_ads_client(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_store_behind_the_ads_client() {
    store_behind_the_ads_client(AdsProtocol::Delta).await;
}
