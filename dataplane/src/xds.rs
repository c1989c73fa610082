//! The agent's xDS side: the config store (the file's static resources, then whatever ADS
//! sends), the task that keeps the proxy's traffic config in step with the store, the ADS
//! client, and the xDS view of `/config_dump`.
//!
//! The feed and the ADS client run on their own current-thread runtime (thread `myelin-xds`),
//! never on the proxy's data workers: converting a large update and rebuilding the traffic
//! table are control work, and a slow control plane must not stall traffic.
//!
//! Readiness does not wait for ADS. Until the control plane answers, the proxy serves the
//! static resources of the file and passes every other captured connection through to its
//! original destination (Envoy would hold its listeners back for up to
//! `initial_fetch_timeout`; a node agent that captures every pod's traffic must not).

use std::sync::Arc;

use anyhow::Context as _;
use myelin_proxy::traffic::TrafficHandle;
use myelin_xds::{
    ads::{AdsClient, AdsConfig, AdsProtocol, AdsStats, AdsStatsSnapshot},
    bootstrap::AdsApi,
    feed,
    store::{ConfigDump, ConfigStore},
};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::info;

use crate::config::{AdsTarget, Config};

/// The store, the proxy's traffic handle and (with ADS) the client, before they run.
#[derive(Debug)]
pub struct Xds {
    view: XdsView,
    traffic: TrafficHandle,
    client: Option<AdsClient<ConfigStore>>,
}

/// What `/config_dump` reads of the xDS side, at request time.
#[derive(Debug, Clone)]
pub struct XdsView {
    store: Arc<ConfigStore>,
    ads: Option<(AdsTarget, AdsStats)>,
}

/// The `xds` object of `/config_dump`: per resource type every resource with its version and
/// last-updated time and the type's last NACK (static resources carry version `static`), and
/// the ADS connection's state (`null` without `dynamic_resources.ads_config`).
#[derive(Debug, Clone, Serialize)]
pub struct XdsDump {
    #[serde(flatten)]
    pub config: ConfigDump,
    pub ads: Option<AdsDump>,
}

/// The ADS part of [`XdsDump`]: where it connects, and the client's state (connected,
/// reconnects, per type URL the last accepted version and the last NACK sent, with its nonce).
#[derive(Debug, Clone, Serialize)]
pub struct AdsDump {
    pub server: String,
    pub cluster: String,
    pub api: AdsApi,
    pub node_id: String,
    #[serde(flatten)]
    pub state: AdsStatsSnapshot,
}

impl Xds {
    /// Loads the static resources of `config` into a new store and publishes them to a new
    /// traffic handle, so the proxy serves them from its first connection; prepares the ADS
    /// client if the file configures one (it connects once [`Xds::spawn`] runs it).
    pub fn new(config: &Config) -> anyhow::Result<Xds> {
        let store = Arc::new(ConfigStore::new());
        store.load_static(&config.bootstrap).map_err(|errs| {
            // Duplicate names were rejected with the config; this is a bug if it happens.
            anyhow::anyhow!("loading the static resources: {}", errs.join("; "))
        })?;
        let traffic = TrafficHandle::new();
        traffic.update(feed::traffic_input(&store.snapshot()));
        let client = config.ads.as_ref().map(|t| {
            let mut ads = AdsConfig::new(t.server.clone(), t.node.to_proto());
            ads.protocol = match t.api {
                AdsApi::Grpc => AdsProtocol::StateOfTheWorld,
                AdsApi::DeltaGrpc => AdsProtocol::Delta,
            };
            ads.connect_timeout = t.connect_timeout;
            AdsClient::new(ads, store.clone())
        });
        let ads = config
            .ads
            .clone()
            .zip(client.as_ref().map(AdsClient::stats));
        Ok(Xds {
            view: XdsView { store, ads },
            traffic,
            client,
        })
    }

    /// Registers the ADS client's metrics (`xds_*`: `myelin_xds_*` under the agent's prefix).
    pub fn register(&self, registry: &mut Registry) {
        if let Some((_, stats)) = &self.view.ads {
            stats.register(registry);
        }
    }

    /// The handle the proxy reads its traffic config from (already holding the static config).
    pub fn traffic(&self) -> TrafficHandle {
        self.traffic.clone()
    }

    /// The config store (SDS identities follow its Secrets).
    pub fn store(&self) -> Arc<ConfigStore> {
        self.view.store.clone()
    }

    /// For `/config_dump`.
    pub fn view(&self) -> XdsView {
        self.view.clone()
    }

    /// Starts the control thread: the feed, and the ADS client if configured. Dropping the
    /// returned handle stops both (the store and the proxy keep the last config).
    pub fn spawn(self) -> anyhow::Result<ControlThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the xDS runtime")?;
        let snap = self.view.store.snapshot();
        match &self.view.ads {
            Some((t, _)) => info!(
                server = %t.server,
                api = ?t.api,
                cluster = %t.cluster,
                node = %t.node.id,
                static_listeners = snap.listeners.len(),
                static_clusters = snap.clusters.len(),
                "ADS: connecting in the background; until the control plane answers, the proxy \
                 serves the static resources and passes other connections through (readiness \
                 does not wait for it)"
            ),
            None => info!(
                static_listeners = snap.listeners.len(),
                static_clusters = snap.clusters.len(),
                "no dynamic_resources.ads_config: serving the static resources only"
            ),
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let store = self.view.store.clone();
        let traffic = self.traffic;
        let client = self.client;
        let thread = std::thread::Builder::new()
            .name("myelin-xds".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::spawn(feed::feed(store, traffic));
                    if let Some(client) = client {
                        tokio::spawn(client.run());
                    }
                    // Sender dropped or signalled: either way, stop.
                    let _ = stopped.await;
                });
                // Dropping the runtime cancels the feed and the client.
            })
            .context("starting the xDS thread")?;
        Ok(ControlThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl XdsView {
    /// The dump of the store's current snapshot and the ADS client's current state.
    pub fn dump(&self) -> XdsDump {
        XdsDump {
            config: self.store.config_dump(),
            ads: self.ads.as_ref().map(|(t, stats)| AdsDump {
                server: t.server.clone(),
                cluster: t.cluster.clone(),
                api: t.api,
                node_id: t.node.id.clone(),
                state: stats.snapshot(),
            }),
        }
    }
}

/// The running control thread; dropping it stops the feed and the ADS client and joins.
#[derive(Debug)]
pub struct ControlThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(envoy: &str) -> Config {
        let text = format!(
            "myelin:\n  node: {{ name: node-a, address: 10.77.0.1 }}\n  cgroup_root: myelin-node-a\n{envoy}"
        );
        Config::parse(&text, Path::new("mesh.yaml"), Path::new("/sys/fs/cgroup")).unwrap()
    }

    const STATIC: &str = "static_resources:
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 10.77.1.3, port_value: 8080 } } } } ] } ]
";

    /// The proxy's handle holds the static config before anything runs (the capture is
    /// switched on only after the proxy has started with it).
    #[test]
    fn static_resources_are_published_before_the_proxy_starts() {
        let xds = Xds::new(&config(STATIC)).unwrap();
        let traffic = xds.traffic().load();
        assert!(traffic.cluster("backend").is_some());
        assert!(traffic.generation() > 0);
        let dump = serde_json::to_value(xds.view().dump()).unwrap();
        let c = &dump["clusters"]["resources"][0];
        assert_eq!(c["name"], "backend");
        assert_eq!(c["version"], "static");
        assert_eq!(c["static"], true);
        assert!(dump["ads"].is_null());
    }

    #[test]
    fn ads_target_becomes_the_client_and_its_dump() {
        let envoy = format!(
            "node: {{ id: n1, cluster: c1 }}
dynamic_resources:
  ads_config: {{ api_type: DELTA_GRPC, grpc_services: [ {{ envoy_grpc: {{ cluster_name: cp }} }} ] }}
{STATIC}  - name: cp
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: cp
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 15010 }} }} }} }} ] }} ]
"
        );
        let xds = Xds::new(&config(&envoy)).unwrap();
        let mut registry = Registry::default();
        xds.register(registry.sub_registry_with_prefix("myelin"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("myelin_xds_connected 0"), "{text}");
        let dump = serde_json::to_value(xds.view().dump()).unwrap();
        assert_eq!(dump["ads"]["server"], "http://127.0.0.1:15010");
        assert_eq!(dump["ads"]["api"], "delta_grpc");
        assert_eq!(dump["ads"]["node_id"], "n1");
        assert_eq!(dump["ads"]["connected"], false);
        assert_eq!(dump["clusters"]["resources"].as_array().unwrap().len(), 2);
    }
}
