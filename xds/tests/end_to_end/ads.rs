//! The ADS client against the in-process control plane, over real gRPC on loopback, SotW and
//! delta. The sink here stands in for the conversion: it rejects names starting with `bad` and
//! reports references from real Envoy protos (EDS service names of EDS clusters, RDS names of
//! HTTP connection managers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use myelin_xds::ads::{
    type_url, AdsClient, AdsConfig, AdsProtocol, AdsStats, ApplyResult, ResourceSink, Update,
};
use myelin_xds::testing::{to_any, ControlPlane, Event, SeenRequest, WAIT};
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use xds_api::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager, Rds,
};
use xds_api::pb::google::protobuf::{value::Kind, Any, Struct, Value};

const HCM: &str = "envoy.filters.network.http_connection_manager";

// ---- resources -------------------------------------------------------------------------------

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: format!("{name}-eds"),
            eds_config: None,
        }),
        ..Default::default()
    }
}

fn assignment(service: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: service.into(),
        ..Default::default()
    }
}

fn rds_listener(name: &str, route: &str) -> Listener {
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route.into(),
            config_source: None,
        })),
        ..Default::default()
    };
    Listener {
        name: name.into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM.into(),
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

/// One cluster `web` (EDS `web-eds`), its assignment, listener `http` -> route `r1`.
fn initial_config(cp: &ControlPlane) {
    cp.update(|b| {
        b.set("web", &eds_cluster("web"))
            .set("web-eds", &assignment("web-eds"))
            .set("http", &rds_listener("http", "r1"))
            .set("r1", &route("r1"));
    });
}

// ---- the sink --------------------------------------------------------------------------------

/// What `apply` was called with.
#[derive(Debug, Clone)]
struct Applied {
    type_url: String,
    names: Vec<String>,
    removed: Vec<String>,
}

/// type URL -> name -> (version, resource)
type Loaded = BTreeMap<String, BTreeMap<String, (String, Any)>>;

#[derive(Debug)]
struct TestSink {
    state: Mutex<Loaded>,
    log: Mutex<Vec<Applied>>,
    applies: watch::Sender<u64>,
}

impl TestSink {
    fn new() -> Arc<Self> {
        Arc::new(TestSink {
            state: Mutex::default(),
            log: Mutex::default(),
            applies: watch::Sender::new(0),
        })
    }

    fn names(&self, type_url: &str) -> BTreeSet<String> {
        self.state
            .lock()
            .unwrap()
            .get(type_url)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn version(&self, type_url: &str, name: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .get(type_url)?
            .get(name)
            .map(|(v, _)| v.clone())
    }

    fn removals(&self) -> Vec<Applied> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|a| !a.removed.is_empty())
            .cloned()
            .collect()
    }

    /// Waits (bounded) until `pred` holds on the sink.
    async fn wait_until(&self, what: &str, pred: impl Fn(&TestSink) -> bool) {
        let mut applies = self.applies.subscribe();
        let ok = tokio::time::timeout(WAIT, async {
            loop {
                applies.borrow_and_update();
                if pred(self) {
                    return;
                }
                applies.changed().await.unwrap();
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "sink never got to: {what}; state: {:#?}",
            self.state.lock().unwrap()
        );
    }

    fn has(&self, type_url: &str, name: &str) -> bool {
        self.names(type_url).contains(name)
    }
}

impl ResourceSink for TestSink {
    fn apply(&self, type_url: &str, update: Update) -> Vec<(String, ApplyResult)> {
        let mut state = self.state.lock().unwrap();
        let of_type = state.entry(type_url.to_owned()).or_default();
        let mut results = Vec::new();
        self.log.lock().unwrap().push(Applied {
            type_url: type_url.to_owned(),
            names: update.resources.iter().map(|r| r.name.clone()).collect(),
            removed: update.removed.clone(),
        });
        for r in update.resources {
            if r.name.starts_with("bad") {
                results.push((
                    r.name,
                    Err("field `name`: names starting with \"bad\" are rejected".into()),
                ));
            } else {
                of_type.insert(r.name.clone(), (r.version, r.resource));
                results.push((r.name, Ok(())));
            }
        }
        for name in update.removed {
            of_type.remove(&name);
        }
        drop(state);
        self.applies.send_modify(|n| *n += 1);
        results
    }

    fn references(&self, type_url: &str) -> BTreeSet<String> {
        let state = self.state.lock().unwrap();
        let of = |t: &str| state.get(t).into_iter().flat_map(|m| m.values());
        match type_url {
            type_url::ENDPOINT => of(type_url::CLUSTER)
                .filter_map(|(_, any)| Cluster::decode(any.value.as_slice()).ok())
                .filter_map(|c| c.eds_cluster_config.map(|e| e.service_name))
                .collect(),
            type_url::ROUTE => of(type_url::LISTENER)
                .filter_map(|(_, any)| Listener::decode(any.value.as_slice()).ok())
                .flat_map(|l| l.filter_chains)
                .flat_map(|fc| fc.filters)
                .filter_map(|f| match f.config_type {
                    Some(filter::ConfigType::TypedConfig(any)) => {
                        HttpConnectionManager::decode(any.value.as_slice()).ok()
                    }
                    _ => None,
                })
                .filter_map(|hcm| match hcm.route_specifier {
                    Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
                    _ => None,
                })
                .collect(),
            _ => BTreeSet::new(),
        }
    }
}

// ---- fixture ---------------------------------------------------------------------------------

struct Fixture {
    cp: ControlPlane,
    sink: Arc<TestSink>,
    stats: AdsStats,
    client: JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.client.abort();
    }
}

fn node() -> Node {
    Node {
        id: "sidecar~10.0.0.1~node-1.default~default.svc.cluster.local".into(),
        cluster: "myelin".into(),
        metadata: Some(Struct {
            fields: [(
                "NODE_NAME".to_owned(),
                Value {
                    kind: Some(Kind::StringValue("node-1".into())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

/// A control plane with `initial_config`, and a client synced with it.
async fn synced(protocol: AdsProtocol) -> Fixture {
    let cp = ControlPlane::start().await;
    initial_config(&cp);
    let sink = TestSink::new();
    let mut config = AdsConfig::new(cp.uri(), node());
    config.protocol = protocol;
    let client = AdsClient::new(config, sink.clone());
    let stats = client.stats();
    let client = tokio::spawn(client.run());
    sink.wait_until("r1 loaded", |s| s.has(type_url::ROUTE, "r1"))
        .await;
    cp.wait_for_answer(type_url::ROUTE).await;
    Fixture {
        cp,
        sink,
        stats,
        client,
    }
}

fn first_requests(cp: &ControlPlane, stream: u64) -> Vec<SeenRequest> {
    let mut seen = BTreeSet::new();
    cp.requests()
        .into_iter()
        .filter(|r| r.stream == stream && seen.insert(r.type_url.clone()))
        .collect()
}

// ---- tests -----------------------------------------------------------------------------------

async fn initial_sync_in_envoys_order(protocol: AdsProtocol) {
    let f = synced(protocol).await;
    let firsts = first_requests(&f.cp, 1);
    let order: Vec<&str> = firsts
        .iter()
        .map(|r| type_url::short_name(&r.type_url))
        .collect();
    assert_eq!(order, ["cds", "eds", "lds", "rds"]);

    // Node id, cluster and metadata on the stream's first request.
    let first = &firsts[0];
    let n = first.node.as_ref().expect("node in the first request");
    assert_eq!(n, &node());
    // Wildcard CDS/LDS, named EDS/RDS.
    assert!(firsts[0].resource_names.is_empty() && firsts[2].resource_names.is_empty());
    assert_eq!(firsts[1].resource_names, ["web-eds"]);
    assert_eq!(firsts[3].resource_names, ["r1"]);

    // LDS only after the cluster's assignment arrived (warming), RDS only after LDS.
    let events = f.cp.events();
    let pos = |pred: &dyn Fn(&Event) -> bool| events.iter().position(pred).unwrap();
    let eds_response =
        pos(&|e| matches!(e, Event::Response(r) if r.type_url == type_url::ENDPOINT));
    let lds_request = pos(&|e| matches!(e, Event::Request(r) if r.type_url == type_url::LISTENER));
    assert!(
        eds_response < lds_request,
        "LDS requested before EDS arrived: {events:#?}"
    );

    // Everything ACKed, nothing NACKed.
    let requests = f.cp.requests();
    assert!(requests.iter().all(|r| !r.is_nack()), "{requests:#?}");
    for t in [
        type_url::CLUSTER,
        type_url::ENDPOINT,
        type_url::LISTENER,
        type_url::ROUTE,
    ] {
        let ack = requests
            .iter()
            .find(|r| r.type_url == t && r.is_ack())
            .expect("an ACK");
        if protocol == AdsProtocol::StateOfTheWorld {
            assert_eq!(ack.version_info, f.cp.version(t), "{t}");
        }
        let s = f.stats.type_status(t);
        assert_eq!((s.accepted, s.rejected), (1, 0), "{t}");
        assert_eq!(
            s.last_accepted_version.as_deref(),
            Some(f.cp.version(t).as_str())
        );
    }
    assert!(f.stats.is_connected());
    assert!(f.sink.has(type_url::CLUSTER, "web") && f.sink.has(type_url::ENDPOINT, "web-eds"));
    assert!(f.sink.has(type_url::LISTENER, "http"));
}

#[tokio::test]
async fn sotw_initial_sync_in_envoys_order() {
    initial_sync_in_envoys_order(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_initial_sync_in_envoys_order() {
    initial_sync_in_envoys_order(AdsProtocol::Delta).await;
}

async fn good_and_bad_in_one_response(protocol: AdsProtocol) {
    let f = synced(protocol).await;
    let before = f.cp.version(type_url::CLUSTER);
    f.cp.update(|b| {
        b.set("good-2", &eds_cluster("good-2"))
            .set("bad-1", &eds_cluster("bad-1"));
    });
    let nack = f.cp.wait_for_answer(type_url::CLUSTER).await;
    assert!(nack.is_nack(), "{nack:#?}");
    assert_eq!(
        nack.error_message(),
        "bad-1: field `name`: names starting with \"bad\" are rejected"
    );
    if protocol == AdsProtocol::StateOfTheWorld {
        assert_eq!(
            nack.version_info, before,
            "a NACK keeps the last accepted version"
        );
    }
    // The good one applied, the bad one did not; the old cluster stays.
    assert!(f.sink.has(type_url::CLUSTER, "good-2"));
    assert!(!f.sink.has(type_url::CLUSTER, "bad-1"));
    assert!(f.sink.has(type_url::CLUSTER, "web"));
    // ... and its EDS name is subscribed (the rejected one's is not).
    let eds = f.cp.wait_for_request(|r| {
        r.type_url == type_url::ENDPOINT && r.resource_names.iter().any(|n| n == "good-2-eds")
    });
    let eds = eds.await;
    assert!(!eds.resource_names.iter().any(|n| n == "bad-1-eds"));

    let s = f.stats.type_status(type_url::CLUSTER);
    assert_eq!((s.accepted, s.rejected), (1, 1));
    let last = s.last_nack.expect("last NACK recorded");
    assert!(last.message.contains("bad-1"));
    assert_eq!(last.rejected_version, f.cp.version(type_url::CLUSTER));
    assert_eq!(s.last_accepted_version.as_deref(), Some(before.as_str()));

    // Fixing it is accepted.
    f.cp.remove(type_url::CLUSTER, "bad-1");
    let ack = f.cp.wait_for_answer(type_url::CLUSTER).await;
    assert!(ack.is_ack(), "{ack:#?}");
}

#[tokio::test]
async fn sotw_good_and_bad_in_one_response() {
    good_and_bad_in_one_response(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_good_and_bad_in_one_response() {
    good_and_bad_in_one_response(AdsProtocol::Delta).await;
}

async fn subscriptions_follow_references(protocol: AdsProtocol) {
    let f = synced(protocol).await;
    // The listener now points at r2: the sink reports r2, the client subscribes to it and
    // drops r1.
    f.cp.update(|b| {
        b.set("http", &rds_listener("http", "r2"))
            .set("r2", &route("r2"));
    });
    let req =
        f.cp.wait_for_request(|r| {
            r.type_url == type_url::ROUTE && r.resource_names.iter().any(|n| n == "r2")
        })
        .await;
    match protocol {
        AdsProtocol::StateOfTheWorld => assert_eq!(req.resource_names, ["r2"]),
        AdsProtocol::Delta => {
            assert_eq!(req.resource_names, ["r2"]);
            assert_eq!(req.unsubscribe, ["r1"]);
        }
    }
    f.sink
        .wait_until("r2 loaded", |s| s.has(type_url::ROUTE, "r2"))
        .await;
    assert!(
        !f.sink.has(type_url::ROUTE, "r1"),
        "unreferenced route dropped"
    );
    let ack = f.cp.wait_for_answer(type_url::ROUTE).await;
    assert!(ack.is_ack());
}

#[tokio::test]
async fn sotw_subscriptions_follow_references() {
    subscriptions_follow_references(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_subscriptions_follow_references() {
    subscriptions_follow_references(AdsProtocol::Delta).await;
}

async fn removal_reaches_the_sink(protocol: AdsProtocol) {
    let f = synced(protocol).await;
    f.cp.set("extra", &eds_cluster("extra"));
    f.sink
        .wait_until("extra loaded", |s| s.has(type_url::CLUSTER, "extra"))
        .await;
    f.cp.remove(type_url::CLUSTER, "extra");
    f.sink
        .wait_until("extra removed", |s| !s.has(type_url::CLUSTER, "extra"))
        .await;
    let removals = f.sink.removals();
    let cds: Vec<_> = removals
        .iter()
        .filter(|a| a.type_url == type_url::CLUSTER)
        .collect();
    assert_eq!(cds.len(), 1, "{removals:#?}");
    assert_eq!(cds[0].removed, ["extra"]);
    if protocol == AdsProtocol::Delta {
        // Delta carries only the removal, no resources.
        assert!(cds[0].names.is_empty());
        let resp = f.cp.responses().into_iter().last().unwrap();
        assert_eq!(resp.removed, ["extra"]);
    }
    assert!(f.sink.has(type_url::CLUSTER, "web"));
    let ack = f.cp.wait_for_answer(type_url::CLUSTER).await;
    assert!(ack.is_ack());
}

#[tokio::test]
async fn sotw_removal_reaches_the_sink() {
    removal_reaches_the_sink(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_removal_reaches_the_sink() {
    removal_reaches_the_sink(AdsProtocol::Delta).await;
}

async fn reconnects_and_resyncs(protocol: AdsProtocol) {
    let f = synced(protocol).await;
    let cds_version = f.cp.version(type_url::CLUSTER);
    let web_version = f.sink.version(type_url::CLUSTER, "web").unwrap();
    let removals_before = f.sink.removals().len();

    f.cp.kill().await;
    // The client notices and keeps retrying with backoff (virtual time: no real waiting).
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while f.stats.is_connected() || f.stats.snapshot().reconnects < 3 {
        assert!(
            tokio::time::Instant::now() < until,
            "client never noticed the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing was dropped while away.
    assert_eq!(f.sink.removals().len(), removals_before);
    assert!(f.sink.has(type_url::ROUTE, "r1") && f.sink.has(type_url::CLUSTER, "web"));

    // A change while the control plane is down arrives after the restart.
    f.cp.set("late", &eds_cluster("late"));
    f.cp.restart().await;
    f.sink
        .wait_until("late loaded", |s| s.has(type_url::CLUSTER, "late"))
        .await;

    let firsts = first_requests(&f.cp, 2);
    let order: Vec<&str> = firsts
        .iter()
        .map(|r| type_url::short_name(&r.type_url))
        .collect();
    // A resync asks for everything at once, in Envoy's order.
    assert_eq!(order, ["cds", "eds", "lds", "rds"]);
    assert_eq!(
        firsts[0].node.as_ref().map(|n| n.id.as_str()),
        Some(node().id.as_str())
    );
    assert!(
        firsts[1..].iter().all(|r| r.node.is_none()),
        "node only on the first request"
    );
    assert_eq!(firsts[1].resource_names, ["web-eds"]);
    assert_eq!(firsts[3].resource_names, ["r1"]);
    match protocol {
        AdsProtocol::StateOfTheWorld => {
            assert_eq!(
                firsts[0].version_info, cds_version,
                "resync from the last accepted version"
            );
        }
        AdsProtocol::Delta => {
            assert_eq!(
                firsts[0].initial_resource_versions,
                BTreeMap::from([("web".to_owned(), web_version)])
            );
            assert_eq!(
                firsts[3]
                    .initial_resource_versions
                    .keys()
                    .collect::<Vec<_>>(),
                ["r1"]
            );
        }
    }
    // Resynced: the new cluster's EDS name is subscribed; still no removal.
    f.cp.wait_for_request(|r| {
        r.stream == 2
            && r.type_url == type_url::ENDPOINT
            && r.resource_names.iter().any(|n| n == "late-eds")
    })
    .await;
    assert_eq!(f.sink.removals().len(), removals_before);
    assert!(f.stats.is_connected());
    assert!(f.stats.snapshot().reconnects >= 3);
    assert_eq!(f.cp.streams(), 2);
}

#[tokio::test(start_paused = true)]
async fn sotw_reconnects_and_resyncs() {
    reconnects_and_resyncs(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test(start_paused = true)]
async fn delta_reconnects_and_resyncs() {
    reconnects_and_resyncs(AdsProtocol::Delta).await;
}

/// A SotW response larger than tonic's 4 MiB default (a 10,000-cluster EDS response is about
/// 11 MiB): accepted with the client's default limit; with a limit below it the stream fails
/// and nothing is applied, so the limit really is the one configured.
async fn responses_above_four_mib(protocol: AdsProtocol) {
    let big = Cluster {
        alt_stat_name: "x".repeat(5 << 20),
        ..eds_cluster("big")
    };
    let f = synced(protocol).await;
    f.cp.set("big", &big);
    f.sink
        .wait_until("the 5 MiB cluster", |s| s.has(type_url::CLUSTER, "big"))
        .await;
    assert!(f.cp.wait_for_answer(type_url::CLUSTER).await.is_ack());

    let cp = ControlPlane::start().await;
    cp.set("big", &big);
    let sink = TestSink::new();
    let mut config = AdsConfig::new(cp.uri(), node());
    config.protocol = protocol;
    config.max_message_bytes = 4 << 20;
    let client = AdsClient::new(config, sink.clone());
    let stats = client.stats();
    let client = tokio::spawn(client.run());
    cp.wait_for_response(|r| r.type_url == type_url::CLUSTER)
        .await;
    tokio::time::timeout(WAIT, async {
        while stats.snapshot().reconnects == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the client drops a stream whose response is above its limit");
    assert!(!sink.has(type_url::CLUSTER, "big"));
    client.abort();
}

#[tokio::test]
async fn sotw_responses_above_four_mib() {
    responses_above_four_mib(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_responses_above_four_mib() {
    responses_above_four_mib(AdsProtocol::Delta).await;
}
