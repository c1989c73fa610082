//! The xDS scale benchmark (`myelin-xds-scale`, issue 3): how long the node takes to take in
//! a mesh-sized config and one change to it, and how much memory the config holds.
//!
//! The config ([`mesh::Mesh`], Istio-shaped) goes through two paths:
//!
//! - **in process**: prebuilt [`Update`]s straight into [`ConfigStore::apply`] (conversion and
//!   store, nothing else), then [`Traffic::build`] over the snapshot;
//! - **gRPC**: the in-process control plane (`myelin_xds::testing`) serves the config over
//!   real gRPC on loopback to the real [`AdsClient`] feeding a [`ConfigStore`], SotW and delta.
//!   The wall-clock times include the control plane's own work (it runs in the same process,
//!   on the same cores), the transport, the client's decoding and its ACKs.
//!
//! Every step is also timed for plain `prost` decoding of the same resources, in the same
//! process and round: the least any xDS client must do with them. Results are ratios against
//! that baseline and absolute times, median over the rounds.
//!
//! Each run checks what it measured: every resource accepted, the incremental updates
//! reached the store, and the rebuilt [`Traffic`] reused every untouched cluster's target
//! (`Arc::ptr_eq`) and rebuilt the changed one. A run that fails a check is an error, not a
//! number.

pub mod mesh;
pub mod report;

mod grpc;
mod inproc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use myelin_proxy::traffic::Traffic;
use myelin_xds::ads::{type_url, AdsProtocol, Resource, Update};
use myelin_xds::feed::traffic_input;
use myelin_xds::store::ConfigStore;
use prost::Message;
use serde::Serialize;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

use crate::memory::Usage;
pub use mesh::{Mesh, Scale};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config's size.
    pub scale: Scale,
    /// Rounds (each on a fresh store, control plane and client); tables show medians.
    pub rounds: u32,
    /// The paths to run.
    pub paths: Vec<PathKind>,
    /// How long to wait for the store to reach a state over gRPC before giving up.
    pub timeout: Duration,
}

/// One way into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Prebuilt updates into `ConfigStore::apply`.
    InProcess,
    /// The ADS client over gRPC, state of the world.
    Sotw,
    /// The ADS client over gRPC, delta.
    Delta,
}

impl PathKind {
    /// All three, in the order they run.
    pub const ALL: [PathKind; 3] = [PathKind::InProcess, PathKind::Sotw, PathKind::Delta];
}

/// Per resource type, in Envoy's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerType<T> {
    /// Clusters.
    pub cds: T,
    /// Cluster load assignments.
    pub eds: T,
    /// Listeners.
    pub lds: T,
    /// Route configurations.
    pub rds: T,
}

impl<T: Copy> PerType<T> {
    /// `(label, type URL, value)` in Envoy's order.
    pub fn each(&self) -> [(&'static str, &'static str, T); 4] {
        [
            ("CDS", type_url::CLUSTER, self.cds),
            ("EDS", type_url::ENDPOINT, self.eds),
            ("LDS", type_url::LISTENER, self.lds),
            ("RDS", type_url::ROUTE, self.rds),
        ]
    }

    fn get_mut(&mut self, type_url: &str) -> Option<&mut T> {
        match type_url {
            type_url::CLUSTER => Some(&mut self.cds),
            type_url::ENDPOINT => Some(&mut self.eds),
            type_url::LISTENER => Some(&mut self.lds),
            type_url::ROUTE => Some(&mut self.rds),
            _ => None,
        }
    }
}

impl PerType<f64> {
    /// The sum over the types.
    pub fn total(&self) -> f64 {
        self.cds + self.eds + self.lds + self.rds
    }
}

/// The size of what is sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Wire {
    /// Resources per type.
    pub resources: PerType<usize>,
    /// Encoded resources per type (sum of the `Any` values).
    pub resource_bytes: PerType<usize>,
    /// A SotW `DiscoveryResponse` with every resource of the type.
    pub sotw_response_bytes: PerType<usize>,
}

/// The baseline: `prost` decoding of the same encoded resources into Envoy's messages
/// (milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Decode {
    /// Every resource of each type.
    pub initial: PerType<f64>,
    /// One assignment.
    pub eds_one: f64,
    /// Every assignment (what a SotW EDS update carries).
    pub eds_all: f64,
    /// The route configuration.
    pub route: f64,
}

/// One incremental change and what it cost (milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// What changed and how it was sent.
    pub what: String,
    /// Resources in the update the store applied.
    pub sent: usize,
    /// gRPC: from the control plane's update to the end of the store's apply.
    pub wall_ms: Option<f64>,
    /// In `ConfigStore::apply` (conversion and store).
    pub apply_ms: f64,
    /// `traffic_input` + `Traffic::build` on the previous `Traffic`.
    pub rebuild_ms: f64,
    /// Clusters in the rebuilt `Traffic`.
    pub clusters: usize,
    /// Of those, the ones whose target is the previous `Arc` (untouched, reused).
    pub reused: usize,
}

/// Memory at three points of the initial load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Memory {
    /// Before the first update.
    pub before: Usage,
    /// With every resource in the store.
    pub loaded: Usage,
    /// And the `Traffic` built from it.
    pub traffic: Usage,
    /// In process: the heap growth of each type's apply (bytes).
    pub heap_by_type: Option<PerType<i64>>,
}

/// One path (in-process, SotW or delta) in one round. Times in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathRun {
    /// In `ConfigStore::apply` per type during the initial push.
    pub initial_apply: PerType<f64>,
    /// gRPC: per type, from the end of the previous type's apply (the client's start for
    /// CDS) to the end of this type's apply.
    pub initial_wall: Option<PerType<f64>>,
    /// In process: the sum of the applies; gRPC: from the client's start to the end of the
    /// last apply.
    pub initial_total_ms: f64,
    /// gRPC: time the client spent in `ResourceSink::references` (the store) over the
    /// initial push, and how many calls.
    pub references: Option<(f64, usize)>,
    /// `traffic_input` + `Traffic::build` with no previous `Traffic`.
    pub traffic_build_ms: f64,
    /// The incremental changes, in order.
    pub changes: Vec<Change>,
    /// Memory during the initial load.
    pub memory: Memory,
}

/// One round: the baseline and every path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Round {
    /// The baseline.
    pub decode: Decode,
    /// ConfigStore::apply on prebuilt updates.
    pub in_process: Option<PathRun>,
    /// Over gRPC, state of the world.
    pub sotw: Option<PathRun>,
    /// Over gRPC, delta.
    pub delta: Option<PathRun>,
}

/// Everything measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The config's size.
    pub scale: Scale,
    /// Its size on the wire.
    pub wire: Wire,
    /// Every round.
    pub rounds: Vec<Round>,
}

/// Runs the benchmark.
pub fn run(opts: &Options) -> Result<Report> {
    ensure!(opts.rounds > 0, "at least one round");
    let mesh = Mesh::generate(opts.scale);
    let wire = wire(&mesh);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rounds = Vec::new();
    for _ in 0..opts.rounds {
        let has = |k| opts.paths.contains(&k);
        // In-process first: its memory figures come from the least disturbed process.
        let in_process = has(PathKind::InProcess)
            .then(|| inproc::run(&mesh))
            .transpose()?;
        let decode = decode(&mesh);
        let over_grpc = |k, protocol| {
            has(k)
                .then(|| runtime.block_on(grpc::run(&mesh, protocol, opts.timeout)))
                .transpose()
        };
        let sotw = over_grpc(PathKind::Sotw, AdsProtocol::StateOfTheWorld)?;
        let delta = over_grpc(PathKind::Delta, AdsProtocol::Delta)?;
        rounds.push(Round {
            decode,
            in_process,
            sotw,
            delta,
        });
    }
    Ok(Report {
        scale: opts.scale,
        wire,
        rounds,
    })
}

fn wire(mesh: &Mesh) -> Wire {
    let mut w = Wire {
        resources: PerType::default(),
        resource_bytes: PerType::default(),
        sotw_response_bytes: PerType::default(),
    };
    for (type_url, items) in by_type(mesh) {
        // `DiscoveryResponse.resources` is field 2; the version, type URL and nonce are a
        // few dozen bytes more.
        let body: usize = items
            .iter()
            .map(|p| prost::encoding::message::encoded_len(2, &p.any))
            .sum();
        *w.resources.get_mut(type_url).expect("known type") = items.len();
        *w.resource_bytes.get_mut(type_url).expect("known type") =
            items.iter().map(|p| p.any.value.len()).sum();
        *w.sotw_response_bytes.get_mut(type_url).expect("known type") = body + type_url.len() + 16;
    }
    w
}

/// The mesh's resources by type, in Envoy's order.
fn by_type(mesh: &Mesh) -> [(&'static str, &[mesh::Packed]); 4] {
    [
        (type_url::CLUSTER, &mesh.clusters),
        (type_url::ENDPOINT, &mesh.assignments),
        (type_url::LISTENER, &mesh.listeners),
        (type_url::ROUTE, &mesh.routes),
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn decode_all<M: Message + Default>(items: &[mesh::Packed]) -> f64 {
    let start = Instant::now();
    for p in items {
        let m = M::decode(p.any.value.as_slice()).expect("the benchmark's own encoding");
        black_box(&m);
    }
    ms(start.elapsed())
}

fn decode(mesh: &Mesh) -> Decode {
    let k = mesh.scale.clusters / 2;
    let one = [mesh.assignment(k, 1)];
    let route = [mesh.route_configuration(1)];
    Decode {
        initial: PerType {
            cds: decode_all::<Cluster>(&mesh.clusters),
            eds: decode_all::<ClusterLoadAssignment>(&mesh.assignments),
            lds: decode_all::<Listener>(&mesh.listeners),
            rds: decode_all::<RouteConfiguration>(&mesh.routes),
        },
        eds_one: decode_all::<ClusterLoadAssignment>(&one),
        eds_all: decode_all::<ClusterLoadAssignment>(&mesh.assignments),
        route: decode_all::<RouteConfiguration>(&route),
    }
}

/// An update of `items`, each with `version`.
fn update(items: &[mesh::Packed], version: &str) -> Update {
    Update {
        resources: items
            .iter()
            .map(|p| Resource {
                name: p.name.clone(),
                version: version.to_owned(),
                resource: p.any.clone(),
            })
            .collect(),
        removed: Vec::new(),
    }
}

/// `traffic_input` + `Traffic::build` on `prev`, timed.
fn build_traffic(store: &ConfigStore, prev: Option<&Traffic>) -> (Traffic, f64) {
    let start = Instant::now();
    let traffic = Traffic::build(traffic_input(&store.snapshot()), prev);
    (traffic, ms(start.elapsed()))
}

/// Checks that `traffic` has every cluster of the mesh with all its endpoints, the listener
/// and the route configuration.
fn check_traffic(mesh: &Mesh, names: &[String], traffic: &Traffic) -> Result<()> {
    for name in names {
        let Some(c) = traffic.cluster(name) else {
            anyhow::bail!("cluster {name} missing from the Traffic");
        };
        ensure!(
            c.routable() == mesh.scale.endpoints,
            "cluster {name}: {} routable endpoints, expected {}",
            c.routable(),
            mesh.scale.endpoints
        );
    }
    ensure!(
        traffic.listener(mesh::LISTENER_NAME).is_some(),
        "listener missing from the Traffic"
    );
    ensure!(
        traffic.route_table(mesh::ROUTE_NAME).is_some(),
        "route configuration missing from the Traffic"
    );
    Ok(())
}

/// How many clusters of `next` kept `prev`'s target; checks that exactly the clusters in
/// `changed` were rebuilt.
fn reused(names: &[String], prev: &Traffic, next: &Traffic, changed: &[&str]) -> Result<usize> {
    let mut reused = 0;
    for name in names {
        let (Some(a), Some(b)) = (prev.cluster(name), next.cluster(name)) else {
            anyhow::bail!("cluster {name} missing after the change");
        };
        let same = std::sync::Arc::ptr_eq(a, b);
        let expected = !changed.contains(&name.as_str());
        ensure!(
            same == expected,
            "cluster {name}: target {} although it {}",
            if same { "reused" } else { "rebuilt" },
            if expected {
                "did not change"
            } else {
                "changed"
            }
        );
        reused += usize::from(same);
    }
    Ok(reused)
}
