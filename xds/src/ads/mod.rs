//! The ADS client: one gRPC `AggregatedDiscoveryService` stream, state-of-the-world
//! (`StreamAggregatedResources`) or incremental (`DeltaAggregatedResources`), that keeps a
//! [`ResourceSink`] filled with CDS, EDS, LDS, RDS and SDS resources.
//!
//! The client knows resources only by type URL, name, version and the opaque `Any`; the
//! conversion into the proxy model lives behind the sink, which judges each resource, so a bad
//! one is NACKed by name and reason while the good ones in the same response apply. The sink
//! also says which RDS, EDS and SDS names its resources reference; the client subscribes to
//! exactly those.
//!
//! When the stream breaks, the client reconnects with jittered exponential backoff and resyncs
//! (SotW: the last accepted version per type; delta: `initial_resource_versions`). Nothing is
//! removed from the sink meanwhile: the proxy keeps serving the last good config.
//!
//! Decisions live in `engine` (no I/O), the wire in this module.

mod backoff;
mod engine;
mod stats;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient as Client;
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_api::pb::google::protobuf::Any;

pub use backoff::Backoff;
use engine::{Engine, Incoming, Outgoing, Received};
pub use stats::{AdsStats, AdsStatsSnapshot, Nack, TypeLabels, TypeStatus};

/// Type URLs of the resources the client subscribes to.
pub mod type_url {
    /// `envoy.config.listener.v3.Listener` (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// `envoy.service.discovery.v3.Resource`, a wrapper some servers use in SotW responses.
    pub const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

    /// `cds`, `eds`, `lds`, `rds`, `sds`, or `other`: the metric label of a type.
    pub fn short_name(type_url: &str) -> &'static str {
        match type_url {
            LISTENER => "lds",
            ROUTE => "rds",
            CLUSTER => "cds",
            ENDPOINT => "eds",
            SECRET => "sds",
            _ => "other",
        }
    }
}

/// One resource as received: its name, version and the still-encoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Listener/Cluster/RouteConfiguration/Secret `name`, ClusterLoadAssignment `cluster_name`.
    pub name: String,
    /// SotW: the response's `version_info`; delta: the resource's own version.
    pub version: String,
    /// The resource; its `type_url` is the update's type.
    pub resource: Any,
}

/// What one response changes for one type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Update {
    /// Added or changed resources. SotW: every resource of the response (for LDS and CDS the
    /// complete set); delta: the changed ones.
    pub resources: Vec<Resource>,
    /// Names that are gone: deleted by the server (delta `removed_resources`), missing from a
    /// SotW LDS/CDS response, or no longer referenced and so unsubscribed (RDS, EDS, SDS).
    /// Names the sink does not know may appear; it ignores them.
    pub removed: Vec<String>,
}

/// The result of applying one resource: `Err` carries the rejection reason (ideally with the
/// field path) that goes into the NACK.
pub type ApplyResult = Result<(), String>;

/// Where resources go: the agent implements it over the conversion and the config store.
///
/// Calls come from the client's task, one at a time; they should not block for long (they run
/// on the control-plane runtime, never the data path).
pub trait ResourceSink: Send + Sync + 'static {
    /// Applies one response's resources of `type_url`. Good resources apply even when others in
    /// the same update are rejected; a rejected resource leaves the previous version of that
    /// name in force. Returns a result per resource name; names left out count as accepted.
    fn apply(&self, type_url: &str, update: Update) -> Vec<(String, ApplyResult)>;

    /// The names of `type_url` (RDS, EDS or SDS) that currently loaded resources reference and
    /// that must be subscribed: route config names of listeners, EDS service names of EDS
    /// clusters, secret names of listeners and clusters. The client reads them when a stream
    /// starts, after each CDS or LDS response (only clusters and listeners reference other
    /// resources), and on [`AdsHandle::refresh_subscriptions`].
    fn references(&self, type_url: &str) -> BTreeSet<String>;
}

/// State-of-the-world or incremental xDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdsProtocol {
    /// `StreamAggregatedResources`: every response carries the full set of its type.
    #[default]
    StateOfTheWorld,
    /// `DeltaAggregatedResources`: responses carry changes and removals.
    Delta,
}

/// How to reach the control plane and who we are.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// gRPC endpoint, e.g. `http://istiod.istio-system.svc:15010`.
    pub server: String,
    /// Sent in the first request of every stream (id, cluster, metadata...).
    pub node: Node,
    /// SotW or delta.
    pub protocol: AdsProtocol,
    /// Delay between reconnect attempts.
    pub backoff: Backoff,
    /// TCP connect timeout for each attempt.
    pub connect_timeout: Duration,
    /// How long LDS waits for clusters to warm on the first sync (Envoy's
    /// `initial_fetch_timeout`, 15 s by default).
    pub initial_fetch_timeout: Duration,
    /// Largest response accepted (tonic's 4 MiB default is too small for big meshes).
    pub max_message_bytes: usize,
}

impl AdsConfig {
    /// Defaults for everything but the server and the node.
    pub fn new(server: impl Into<String>, node: Node) -> Self {
        AdsConfig {
            server: server.into(),
            node,
            protocol: AdsProtocol::default(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            initial_fetch_timeout: Duration::from_secs(15),
            max_message_bytes: 64 << 20,
        }
    }
}

/// Why a stream ended (logged, then the client reconnects).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server address is not a valid URI.
    #[error("invalid xDS server address {0:?}: {1}")]
    Address(String, String),
    /// TCP or HTTP/2 connection failed.
    #[error("cannot connect to xDS server {0}: {1} (is the control plane running and reachable?)")]
    Connect(String, String),
    /// The gRPC call failed or the stream broke.
    #[error("ADS stream to {0} failed: {1}")]
    Stream(String, tonic::Status),
    /// The server ended the stream.
    #[error("ADS stream to {0} closed by the server")]
    Closed(String),
}

/// Asks a running client to re-read the sink's references (when something other than an xDS
/// response changed them, e.g. static listeners that use RDS).
#[derive(Debug, Clone, Default)]
pub struct AdsHandle {
    refresh: Arc<Notify>,
}

impl AdsHandle {
    /// Re-read [`ResourceSink::references`] and update the subscriptions.
    pub fn refresh_subscriptions(&self) {
        self.refresh.notify_one();
    }
}

/// The ADS client. [`AdsClient::run`] runs until dropped.
#[derive(Debug)]
pub struct AdsClient<S: ResourceSink + ?Sized> {
    config: AdsConfig,
    sink: Arc<S>,
    stats: AdsStats,
    handle: AdsHandle,
}

impl<S: ResourceSink + ?Sized> AdsClient<S> {
    /// A client that will feed `sink`.
    pub fn new(config: AdsConfig, sink: Arc<S>) -> Self {
        AdsClient {
            config,
            sink,
            stats: AdsStats::new(),
            handle: AdsHandle::default(),
        }
    }

    /// Its statistics (share with the admin server; register with [`AdsStats::register`]).
    pub fn stats(&self) -> AdsStats {
        self.stats.clone()
    }

    /// A handle to nudge the running client.
    pub fn handle(&self) -> AdsHandle {
        self.handle.clone()
    }

    /// Connects, streams, and reconnects forever. Cancel by dropping the future (or aborting
    /// its task); the sink keeps what it has.
    pub async fn run(self) {
        let protocol = self.config.protocol;
        let mut engine = Engine::new(
            protocol == AdsProtocol::Delta,
            self.sink.clone(),
            self.stats.clone(),
        );
        let mut attempt: u32 = 0;
        loop {
            let mut progressed = false;
            let err = match protocol {
                AdsProtocol::StateOfTheWorld => {
                    self.stream::<Sotw>(&mut engine, &mut progressed).await
                }
                AdsProtocol::Delta => self.stream::<Delta>(&mut engine, &mut progressed).await,
            };
            self.stats.set_connected(false);
            if progressed {
                // The server answered: this was a working connection, start the backoff over.
                attempt = 0;
            }
            let delay = self.config.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            warn!(error = %err, retry_in = ?delay, "xDS stream ended; keeping the last good config");
            tokio::time::sleep(delay).await;
            self.stats.reconnecting();
        }
    }

    /// One stream, until it fails. `progressed` turns true at the first response.
    async fn stream<W: Wire>(&self, engine: &mut Engine<S>, progressed: &mut bool) -> StreamError {
        let server = &self.config.server;
        let endpoint = match Endpoint::from_shared(server.clone()) {
            // HTTP/2 keepalive notices a control plane that vanished without a reset (node
            // lost, network partition) instead of waiting on a dead stream forever.
            Ok(e) => e
                .connect_timeout(self.config.connect_timeout)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true),
            Err(e) => return StreamError::Address(server.clone(), e.to_string()),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return StreamError::Connect(server.clone(), source_chain(&e)),
        };
        let mut client = Client::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes);

        let (tx, rx) = mpsc::unbounded_channel();
        let mut node = Some(self.config.node.clone());
        let mut send = |reqs: Vec<Outgoing>| {
            for r in reqs {
                // The receiver lives as long as the call; a failed send shows up as a stream
                // error on the next read.
                let _ = tx.send(W::encode(r, node.take()));
            }
        };
        // Queue the opening requests before the call: some servers send response headers only
        // once they have a request.
        send(engine.start_stream());
        let mut inbound = match W::open(&mut client, UnboundedReceiverStream::new(rx)).await {
            Ok(s) => s,
            Err(status) => return StreamError::Stream(server.clone(), status),
        };
        self.stats.set_connected(true);
        info!(%server, protocol = ?self.config.protocol, "ADS stream established");

        let lds_deadline = tokio::time::Instant::now() + self.config.initial_fetch_timeout;
        loop {
            let lds_timer = async {
                if engine.lds_pending() {
                    tokio::time::sleep_until(lds_deadline).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        *progressed = true;
                        send(engine.on_response(W::decode(resp)));
                    }
                    Ok(None) => return StreamError::Closed(server.clone()),
                    Err(status) => return StreamError::Stream(server.clone(), status),
                },
                () = self.handle.refresh.notified() => send(engine.resubscribe()),
                () = lds_timer => send(engine.initial_fetch_timeout()),
            }
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The difference between SotW and delta on the wire.
trait Wire {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn encode(r: Outgoing, node: Option<Node>) -> Self::Req;
    fn decode(r: Self::Resp) -> Incoming;
    fn open(
        client: &mut Client<Channel>,
        requests: UnboundedReceiverStream<Self::Req>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Resp>, tonic::Status>> + Send;
}

struct Sotw;

impl Wire for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;

    fn encode(r: Outgoing, node: Option<Node>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: r.version_info,
            node,
            resource_names: r.resource_names,
            type_url: r.type_url.to_owned(),
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
            ..Default::default()
        }
    }

    fn decode(r: DiscoveryResponse) -> Incoming {
        let version = r.version_info;
        let resources = r
            .resources
            .into_iter()
            .enumerate()
            .map(|(i, any)| engine::sotw_resource(i, any, &version))
            .collect();
        Incoming {
            type_url: r.type_url,
            version,
            nonce: r.nonce,
            resources,
            removed: Vec::new(),
        }
    }

    async fn open(
        client: &mut Client<Channel>,
        requests: UnboundedReceiverStream<DiscoveryRequest>,
    ) -> Result<tonic::Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

struct Delta;

impl Wire for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;

    fn encode(r: Outgoing, node: Option<Node>) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node,
            type_url: r.type_url.to_owned(),
            resource_names_subscribe: r.subscribe,
            resource_names_unsubscribe: r.unsubscribe,
            initial_resource_versions: r.initial_resource_versions.into_iter().collect(),
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
            ..Default::default()
        }
    }

    fn decode(r: DeltaDiscoveryResponse) -> Incoming {
        let resources = r
            .resources
            .into_iter()
            .map(|res| match res.resource {
                Some(any) => Received::Ok(Resource {
                    name: res.name,
                    version: res.version,
                    resource: any,
                }),
                None => Received::Broken {
                    name: res.name,
                    reason: "delta resource without a body".into(),
                },
            })
            .collect();
        Incoming {
            type_url: r.type_url,
            version: r.system_version_info,
            nonce: r.nonce,
            resources,
            removed: r.removed_resources,
        }
    }

    async fn open(
        client: &mut Client<Channel>,
        requests: UnboundedReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<tonic::Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}
