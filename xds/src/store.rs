//! The config store: the last good model of every xDS resource, published as one immutable
//! [`Snapshot`] at a time.
//!
//! [`ConfigStore`] is the [`ResourceSink`] the ADS client feeds. Each resource of an update is
//! converted on its own (`crate::convert`): a bad one is rejected with its field paths and the
//! previous good version of that name stays in force, the good ones apply. Then the whole
//! update (changes, removals, the type's last NACK) is published as ONE new snapshot through an
//! [`ArcSwap`], so a reader sees the old config or the new one, never a mix; a reader that holds
//! an `Arc<Snapshot>` keeps it unchanged for as long as it holds it (a request or connection
//! finishes on the snapshot it started with). A [`watch`] channel carries the generation of
//! every published snapshot so the agent can react to changes.
//!
//! Every snapshot keeps each type's map behind its own `Arc` and each resource behind its own
//! `Arc`: an update of one type copies only that type's map, and only the part of it that
//! changed ([`ResourceMap`] shares unchanged chunks of entries, so one EDS change out of
//! 10,000 copies about a hundred pointers and one chunk, not 10,000 names), and a resource
//! that did not change keeps its `Arc`, so consumers can tell "unchanged" with `Arc::ptr_eq`
//! (an EDS update must not disturb listeners or open connections). A resource whose encoded
//! bytes are those of the entry in force (every SotW update resends the whole type) is not
//! converted again: a keyed 64-bit hash of the bytes says so, as Envoy's cluster hash does.
//!
//! Static resources from the bootstrap ([`ConfigStore::load_static`]) carry version `static`;
//! xDS cannot replace or remove them (an update of one is rejected by name, a removal is
//! ignored), as in Envoy, where static resources are not "added via API".
//!
//! [`ConfigStore::config_dump`] is the source of truth for `/config_dump`: per type, each
//! resource's name, version, last-updated time (RFC 3339, UTC) and model, plus the last NACK.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use myelin_proxy::model::{
    cluster::CertificateSource, cluster::ValidationSource, listener::NetworkFilter,
    listener::RouteSource, Cluster, ClusterLoadAssignment, Listener, RouteConfiguration, Secret,
};
use serde::{Serialize, Serializer};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::ads::{type_url, ApplyResult, ResourceSink, Update};

mod resources;
use crate::bootstrap::Bootstrap;
use crate::convert;
pub use resources::ResourceMap;

/// The version static (bootstrap) resources carry.
pub const STATIC_VERSION: &str = "static";

/// One resource as accepted.
#[derive(Debug)]
pub struct Entry<T> {
    /// The version it came with (SotW `version_info`, delta resource version, or `static`).
    pub version: String,
    /// When this version (or content) was accepted.
    pub updated: SystemTime,
    /// From the bootstrap: xDS cannot replace or remove it.
    pub is_static: bool,
    /// The converted model; the same `Arc` for as long as the content does not change.
    pub resource: Arc<T>,
    /// A keyed 64-bit hash of the encoded resource it was converted from (`None` for static
    /// resources): the same bytes again (a SotW update resends every resource of the type)
    /// skip the conversion, as Envoy skips clusters whose hash did not change.
    digest: Option<u64>,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            version: self.version.clone(),
            updated: self.updated,
            is_static: self.is_static,
            resource: Arc::clone(&self.resource),
            digest: self.digest,
        }
    }
}

/// The resources of one type by name (in name order; copies share unchanged chunks).
pub type Resources<T> = ResourceMap<Entry<T>>;

/// The last rejection of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreNack {
    /// When the update was judged.
    pub at: SystemTime,
    /// The version of the rejected resources (SotW: the response's `version_info`; delta: the
    /// first rejected resource's version).
    pub version: String,
    /// Each rejected resource and why, in the order of the update.
    pub rejected: Vec<Rejected>,
}

impl StoreNack {
    /// One line per rejected resource, `name: reason`, as in the NACK's `error_detail`.
    pub fn message(&self) -> String {
        let mut m = String::new();
        for (i, r) in self.rejected.iter().enumerate() {
            if i > 0 {
                m.push('\n');
            }
            let _ = write!(m, "{}: {}", r.name, r.reason);
        }
        m
    }
}

/// One rejected resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Why (field paths and reasons, `; `-separated).
    pub reason: String,
}

/// An immutable view of the whole xDS config. Cheap to clone (every map is behind an `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every published snapshot (0: the empty store).
    pub generation: u64,
    /// LDS, by name.
    pub listeners: Arc<Resources<Listener>>,
    /// RDS, by name.
    pub route_configurations: Arc<Resources<RouteConfiguration>>,
    /// CDS, by name.
    pub clusters: Arc<Resources<Cluster>>,
    /// EDS, by `cluster_name` (the EDS service name).
    pub cluster_load_assignments: Arc<Resources<ClusterLoadAssignment>>,
    /// SDS, by name.
    pub secrets: Arc<Resources<Secret>>,
    /// The last NACK per type URL (a later good update of the type does not clear it; the
    /// rejected resources' previous versions stay in force).
    pub last_nacks: BTreeMap<&'static str, Arc<StoreNack>>,
}

impl Snapshot {
    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.get(name).map(|e| &e.resource)
    }

    /// The route configuration named `name`.
    pub fn route_configuration(&self, name: &str) -> Option<&Arc<RouteConfiguration>> {
        self.route_configurations.get(name).map(|e| &e.resource)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name).map(|e| &e.resource)
    }

    /// The endpoints of EDS service `name`.
    pub fn cluster_load_assignment(&self, name: &str) -> Option<&Arc<ClusterLoadAssignment>> {
        self.cluster_load_assignments.get(name).map(|e| &e.resource)
    }

    /// The secret named `name`.
    pub fn secret(&self, name: &str) -> Option<&Arc<Secret>> {
        self.secrets.get(name).map(|e| &e.resource)
    }

    /// The version of resource `name` of `type_url`, if loaded.
    pub fn version(&self, type_url: &str, name: &str) -> Option<&str> {
        let v = match type_url {
            type_url::LISTENER => self.listeners.get(name).map(|e| &e.version),
            type_url::ROUTE => self.route_configurations.get(name).map(|e| &e.version),
            type_url::CLUSTER => self.clusters.get(name).map(|e| &e.version),
            type_url::ENDPOINT => self.cluster_load_assignments.get(name).map(|e| &e.version),
            type_url::SECRET => self.secrets.get(name).map(|e| &e.version),
            _ => None,
        };
        v.map(String::as_str)
    }

    /// The last NACK of `type_url`.
    pub fn last_nack(&self, type_url: &str) -> Option<&StoreNack> {
        self.last_nacks.get(type_url).map(|n| &**n)
    }

    /// RDS names of HTTP connection managers that use RDS (every filter chain, and the default
    /// chain, of every listener).
    pub fn route_references(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|e| {
                let l = &*e.resource;
                l.filter_chains.iter().chain(&l.default_filter_chain)
            })
            .filter_map(|fc| match &fc.filter {
                NetworkFilter::HttpConnectionManager(h) => match &h.route {
                    RouteSource::Rds(name) => Some(name.clone()),
                    RouteSource::Inline(_) => None,
                },
                NetworkFilter::TcpProxy(_) => None,
            })
            .collect()
    }

    /// EDS service names of EDS clusters (`service_name`, or the cluster name).
    pub fn endpoint_references(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|e| {
                e.resource
                    .discovery
                    .eds_service_name(&e.resource.name)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// SDS names the clusters' upstream TLS and the listeners' downstream TLS (every filter
    /// chain, and the default chain) reference (certificates and validation contexts),
    /// except those a static secret of the bootstrap provides.
    pub fn secret_references(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut add = |certificates: &[CertificateSource],
                       validation: &Option<ValidationSource>| {
            for c in certificates {
                if let CertificateSource::Sds(n) = c {
                    names.insert(n.clone());
                }
            }
            match validation {
                Some(ValidationSource::Sds(n) | ValidationSource::Combined { sds: n, .. }) => {
                    names.insert(n.clone());
                }
                Some(ValidationSource::Inline(_)) | None => {}
            }
        };
        for e in self.clusters.values() {
            if let Some(tls) = &e.resource.tls {
                add(&tls.certificates, &tls.validation);
            }
        }
        for e in self.listeners.values() {
            let l = &*e.resource;
            for fc in l.filter_chains.iter().chain(&l.default_filter_chain) {
                if let Some(tls) = &fc.tls {
                    add(&tls.certificates, &tls.validation);
                }
            }
        }
        names.retain(|n| self.secrets.get(n).is_none_or(|s| !s.is_static));
        names
    }

    /// [`ResourceSink::references`] over this snapshot.
    pub fn references(&self, type_url: &str) -> BTreeSet<String> {
        match type_url {
            type_url::ROUTE => self.route_references(),
            type_url::ENDPOINT => self.endpoint_references(),
            type_url::SECRET => self.secret_references(),
            _ => BTreeSet::new(),
        }
    }
}

/// A resource type the store keeps: how to get it out of a conversion and where it lives.
trait Kind: Sized + PartialEq + Send + Sync + 'static {
    const TYPE_URL: &'static str;
    fn from_converted(r: convert::Resource) -> Option<Self>;
    fn name(&self) -> &str;
    fn map(s: &mut Snapshot) -> &mut Arc<Resources<Self>>;
    fn map_ref(s: &Snapshot) -> &Arc<Resources<Self>>;
}

macro_rules! kind {
    ($t:ty, $url:expr, $variant:ident, $field:ident, |$r:ident| $name:expr) => {
        impl Kind for $t {
            const TYPE_URL: &'static str = $url;
            fn from_converted(r: convert::Resource) -> Option<Self> {
                match r {
                    convert::Resource::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn name(&self) -> &str {
                let $r = self;
                $name
            }
            fn map(s: &mut Snapshot) -> &mut Arc<Resources<Self>> {
                &mut s.$field
            }
            fn map_ref(s: &Snapshot) -> &Arc<Resources<Self>> {
                &s.$field
            }
        }
    };
}

kind!(Listener, type_url::LISTENER, Listener, listeners, |r| &r
    .name);
kind!(
    RouteConfiguration,
    type_url::ROUTE,
    RouteConfiguration,
    route_configurations,
    |r| &r.name
);
kind!(Cluster, type_url::CLUSTER, Cluster, clusters, |r| &r.name);
kind!(
    ClusterLoadAssignment,
    type_url::ENDPOINT,
    ClusterLoadAssignment,
    cluster_load_assignments,
    |r| &r.cluster_name
);
kind!(Secret, type_url::SECRET, Secret, secrets, |r| &r.name);

/// The xDS config of the node: the [`ResourceSink`] of the ADS client and the source of the
/// proxy's [`Snapshot`]s and of `/config_dump`.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// Serializes writers (apply, static loads): each builds on the snapshot it replaces.
    writer: Mutex<()>,
    changes: watch::Sender<u64>,
    /// Keys the digests of encoded resources (random per store, so a control plane cannot
    /// aim for collisions).
    hasher: RandomState,
    /// Secret names wanted by something other than a cluster (the node's workload
    /// identities and their trust bundle, with `identity_source: sds`).
    wanted_secrets: Mutex<BTreeSet<String>>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore {
    /// An empty store (generation 0).
    pub fn new() -> Self {
        ConfigStore {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            changes: watch::Sender::new(0),
            hasher: RandomState::new(),
            wanted_secrets: Mutex::new(BTreeSet::new()),
        }
    }

    /// Asks for these Secrets beside those clusters reference (SDS subscribes to them; a
    /// static secret of the same name is used instead). Takes effect at the ADS client's
    /// next subscription update (nudge a running client with
    /// [`crate::ads::AdsHandle::refresh_subscriptions`]).
    pub fn want_secrets(&self, names: BTreeSet<String>) {
        *self
            .wanted_secrets
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = names;
    }

    /// The current snapshot. Hold it for the life of a request or connection: later updates
    /// never change it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The generation of every published snapshot; `changed()` wakes after each publish, then
    /// [`ConfigStore::snapshot`] is at least that new.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Loads the bootstrap's static listeners, clusters and secrets (version `static`), which
    /// xDS can then neither replace nor remove. Call it before the ADS client starts. Fails,
    /// loading nothing, when two static resources of a type share a name.
    pub fn load_static(&self, bootstrap: &Bootstrap) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        duplicates(&bootstrap.listeners, "listeners", &mut errs);
        duplicates(&bootstrap.clusters, "clusters", &mut errs);
        duplicates(&bootstrap.secrets, "secrets", &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        let now = SystemTime::now();
        self.publish(|next| {
            insert_static(next, &bootstrap.listeners, now);
            insert_static(next, &bootstrap.clusters, now);
            insert_static(next, &bootstrap.secrets, now);
            true
        });
        info!(
            listeners = bootstrap.listeners.len(),
            clusters = bootstrap.clusters.len(),
            secrets = bootstrap.secrets.len(),
            "static resources loaded"
        );
        Ok(())
    }

    /// A serializable view for `/config_dump`, from the current snapshot.
    pub fn config_dump(&self) -> ConfigDump {
        ConfigDump::of(&self.snapshot())
    }

    /// Builds the next snapshot from the current one under the writer lock, then publishes it
    /// if `f` says it changed anything.
    fn publish(&self, f: impl FnOnce(&mut Snapshot) -> bool) {
        let _w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Snapshot::clone(&self.current.load());
        if !f(&mut next) {
            return;
        }
        next.generation += 1;
        let generation = next.generation;
        self.current.store(Arc::new(next));
        self.changes.send_replace(generation);
    }

    fn apply_kind<T: Kind>(&self, update: Update) -> Vec<(String, ApplyResult)> {
        let now = SystemTime::now();
        let mut results = Vec::with_capacity(update.resources.len());
        let mut rejected = Vec::new();
        let mut accepted: Vec<(String, String, u64, Judged<T>)> = Vec::new();
        let mut seen = BTreeSet::new();
        let loaded = self.current.load();
        let existing = T::map_ref(&loaded);
        for r in update.resources {
            let digest = self.hasher.hash_one(r.resource.value.as_slice());
            let judged = match precheck::<T>(&r.name, &r.resource, &mut seen) {
                Err(reason) => Err(reason),
                // The bytes the entry in force was converted from: no need to convert again
                // (checked once more under the writer lock).
                Ok(())
                    if existing
                        .get(&r.name)
                        .is_some_and(|e| e.digest == Some(digest)) =>
                {
                    Ok(Judged::SameBytes(r.resource))
                }
                Ok(()) => convert_one::<T>(&r.name, &r.resource).map(Judged::Model),
            };
            match judged {
                Ok(j) => accepted.push((r.name, r.version, digest, j)),
                Err(reason) => {
                    results.push((r.name.clone(), Err(reason.clone())));
                    rejected.push(Rejected {
                        name: r.name,
                        version: r.version,
                        reason,
                    });
                }
            }
        }
        drop(loaded);
        let removed = update.removed;
        self.publish(|next| {
            if accepted.is_empty() && removed.is_empty() && rejected.is_empty() {
                return false;
            }
            let current = Arc::clone(T::map(next));
            // A cheap copy: chunks are shared until changed (`ResourceMap`).
            let map = Arc::make_mut(T::map(next));
            let mut changed = false;
            for (name, version, digest, judged) in accepted {
                let model = match judged {
                    Judged::Model(m) => m,
                    Judged::SameBytes(any) => match map.get(&name) {
                        Some(old) if !old.is_static && old.digest == Some(digest) => {
                            if old.version != version {
                                let e = map.get_mut(&name).expect("present");
                                e.version = version;
                                e.updated = now;
                                changed = true;
                            }
                            results.push((name, Ok(())));
                            continue;
                        }
                        // Changed since the check (another writer): convert after all.
                        _ => match convert_one::<T>(&name, &any) {
                            Ok(m) => m,
                            Err(reason) => {
                                results.push((name.clone(), Err(reason.clone())));
                                rejected.push(Rejected {
                                    name,
                                    version,
                                    reason,
                                });
                                continue;
                            }
                        },
                    },
                };
                let result = match map.get(&name) {
                    Some(old) if old.is_static => Err(format!(
                        "{} {name:?} is static (from the bootstrap) and cannot be replaced over xDS",
                        short(T::TYPE_URL)
                    )),
                    Some(old) if *old.resource == model => {
                        // Same content: keep the Arc (consumers see it unchanged); a new
                        // version is still the version in force. (New bytes with the same
                        // model, e.g. an ignored field changed: remember them only along with
                        // a version change, which publishes anyway.)
                        if old.version != version {
                            let e = map.get_mut(&name).expect("present");
                            e.version = version.clone();
                            e.updated = now;
                            e.digest = Some(digest);
                            changed = true;
                        }
                        Ok(())
                    }
                    _ => {
                        map.insert(
                            name.clone(),
                            Entry {
                                version: version.clone(),
                                updated: now,
                                is_static: false,
                                resource: Arc::new(model),
                                digest: Some(digest),
                            },
                        );
                        changed = true;
                        Ok(())
                    }
                };
                if let Err(reason) = &result {
                    rejected.push(Rejected {
                        name: name.clone(),
                        version,
                        reason: reason.clone(),
                    });
                }
                results.push((name, result));
            }
            for name in &removed {
                match map.get(name) {
                    Some(e) if e.is_static => {
                        debug!(type_url = T::TYPE_URL, %name, "not removing a static resource");
                    }
                    Some(_) => {
                        map.remove(name);
                        changed = true;
                    }
                    None => {}
                }
            }
            if !changed {
                // Keep the type's map itself (`Arc::ptr_eq` on it says "nothing changed").
                *T::map(next) = current;
            }
            if let Some(first) = rejected.first() {
                next.last_nacks.insert(
                    T::TYPE_URL,
                    Arc::new(StoreNack {
                        at: now,
                        version: first.version.clone(),
                        rejected,
                    }),
                );
                return true;
            }
            changed
        });
        results
    }
}

/// What the store makes of one accepted resource before publishing.
enum Judged<T> {
    /// Converted.
    Model(T),
    /// The same bytes as the entry in force (kept to convert after all if that changed).
    SameBytes(xds_api::pb::google::protobuf::Any),
}

/// The checks before conversion: a name once per update, the update's type.
fn precheck<T: Kind>(
    name: &str,
    any: &xds_api::pb::google::protobuf::Any,
    seen: &mut BTreeSet<String>,
) -> Result<(), String> {
    if !seen.insert(name.to_owned()) {
        return Err("duplicate resource name in one update".into());
    }
    if any.type_url != T::TYPE_URL {
        return Err(format!(
            "resource type {} in a {} update",
            any.type_url,
            T::TYPE_URL
        ));
    }
    Ok(())
}

/// Converts one resource of type `T`; `Err` is the NACK reason.
fn convert_one<T: Kind>(name: &str, any: &xds_api::pb::google::protobuf::Any) -> Result<T, String> {
    let converted = convert::any(any).map_err(|rs| {
        rs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let model = T::from_converted(converted)
        .ok_or_else(|| format!("converted to a resource other than {}", T::TYPE_URL))?;
    if model.name() != name {
        return Err(format!(
            "resource name {name:?} does not match the name {:?} inside the resource",
            model.name()
        ));
    }
    Ok(model)
}

fn duplicates<T: Kind>(items: &[T], what: &str, errs: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(item.name()) {
            errs.push(format!(
                "static_resources.{what}[{i}].name: {:?} is used by an earlier entry",
                item.name()
            ));
        }
    }
}

fn insert_static<T: Kind + Clone>(next: &mut Snapshot, items: &[T], now: SystemTime) {
    if items.is_empty() {
        return;
    }
    let map = Arc::make_mut(T::map(next));
    for item in items {
        map.insert(
            item.name().to_owned(),
            Entry {
                version: STATIC_VERSION.to_owned(),
                updated: now,
                is_static: true,
                resource: Arc::new(item.clone()),
                digest: None,
            },
        );
    }
}

fn short(type_url: &str) -> &'static str {
    match type_url {
        type_url::LISTENER => "listener",
        type_url::ROUTE => "route configuration",
        type_url::CLUSTER => "cluster",
        type_url::ENDPOINT => "cluster load assignment",
        type_url::SECRET => "secret",
        _ => "resource",
    }
}

impl ResourceSink for ConfigStore {
    fn apply(&self, type_url: &str, update: Update) -> Vec<(String, ApplyResult)> {
        match type_url {
            type_url::LISTENER => self.apply_kind::<Listener>(update),
            type_url::ROUTE => self.apply_kind::<RouteConfiguration>(update),
            type_url::CLUSTER => self.apply_kind::<Cluster>(update),
            type_url::ENDPOINT => self.apply_kind::<ClusterLoadAssignment>(update),
            type_url::SECRET => self.apply_kind::<Secret>(update),
            other => update
                .resources
                .into_iter()
                .map(|r| {
                    (
                        r.name,
                        Err(format!("resource type {other} is not supported")),
                    )
                })
                .collect(),
        }
    }

    fn references(&self, type_url: &str) -> BTreeSet<String> {
        let snap = self.current.load();
        let mut names = snap.references(type_url);
        if type_url == type_url::SECRET {
            let wanted = self
                .wanted_secrets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            names.extend(
                wanted
                    .iter()
                    .filter(|n| snap.secrets.get(n.as_str()).is_none_or(|s| !s.is_static))
                    .cloned(),
            );
        }
        names
    }
}

// ---- /config_dump ------------------------------------------------------------------------

/// What `/config_dump` shows of the xDS config: per type, every resource and the last NACK.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigDump {
    /// The snapshot's generation.
    pub generation: u64,
    /// LDS.
    pub listeners: TypeDump<Listener>,
    /// RDS.
    pub route_configurations: TypeDump<RouteConfiguration>,
    /// CDS.
    pub clusters: TypeDump<Cluster>,
    /// EDS.
    pub cluster_load_assignments: TypeDump<ClusterLoadAssignment>,
    /// SDS (inline private keys are redacted by the model).
    pub secrets: TypeDump<Secret>,
}

/// One type in [`ConfigDump`].
#[derive(Debug, Clone, Serialize)]
pub struct TypeDump<T> {
    /// Its type URL.
    pub type_url: &'static str,
    /// Every resource, by name.
    pub resources: Vec<ResourceDump<T>>,
    /// The last NACK of this type, if any.
    pub last_nack: Option<NackDump>,
}

/// One resource in [`ConfigDump`].
#[derive(Debug, Clone, Serialize)]
#[serde(bound = "T: Serialize")]
pub struct ResourceDump<T> {
    /// Its name.
    pub name: String,
    /// Its version (`static` for bootstrap resources).
    pub version: String,
    /// When it was accepted, RFC 3339 UTC with milliseconds.
    pub last_updated: String,
    /// From the bootstrap.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// The model.
    #[serde(serialize_with = "arc_inner")]
    pub resource: Arc<T>,
}

/// The last NACK of a type in [`ConfigDump`].
#[derive(Debug, Clone, Serialize)]
pub struct NackDump {
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The rejected version.
    pub version: String,
    /// `name: reason` per rejected resource, one per line (the NACK's message).
    pub message: String,
    /// The rejected resources.
    pub rejected: Vec<Rejected>,
}

fn arc_inner<T: Serialize, S: Serializer>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
    T::serialize(v, s)
}

impl ConfigDump {
    /// The dump of `snap`.
    pub fn of(snap: &Snapshot) -> Self {
        ConfigDump {
            generation: snap.generation,
            listeners: type_dump(snap, &snap.listeners),
            route_configurations: type_dump(snap, &snap.route_configurations),
            clusters: type_dump(snap, &snap.clusters),
            cluster_load_assignments: type_dump(snap, &snap.cluster_load_assignments),
            secrets: type_dump(snap, &snap.secrets),
        }
    }
}

fn type_dump<T: Kind>(snap: &Snapshot, map: &Resources<T>) -> TypeDump<T> {
    TypeDump {
        type_url: T::TYPE_URL,
        resources: map
            .iter()
            .map(|(name, e)| ResourceDump {
                name: name.clone(),
                version: e.version.clone(),
                last_updated: rfc3339(e.updated),
                is_static: e.is_static,
                resource: Arc::clone(&e.resource),
            })
            .collect(),
        last_nack: snap.last_nack(T::TYPE_URL).map(|n| NackDump {
            at: rfc3339(n.at),
            version: n.version.clone(),
            message: n.message(),
            rejected: n.rejected.clone(),
        }),
    }
}

/// `2026-11-22T04:20:58.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::Resource;
    use crate::convert::ext;
    use model::secret::{SecretKind, ValidationContext};
    use myelin_proxy::model;
    use xds_api::pb::envoy::config::cluster::v3 as cpb;
    use xds_api::pb::envoy::config::core::v3 as core;
    use xds_api::pb::envoy::config::endpoint::v3 as epb;
    use xds_api::pb::envoy::config::listener::v3 as lpb;
    use xds_api::pb::envoy::config::route::v3 as rpb;
    use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use xds_api::pb::google::protobuf::{self, Any};

    fn any<M: prost::Name>(m: &M) -> Any {
        Any::from_msg(m).unwrap()
    }

    fn res<M: prost::Name>(name: &str, version: &str, m: &M) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            resource: any(m),
        }
    }

    fn update(resources: Vec<Resource>, removed: &[&str]) -> Update {
        Update {
            resources,
            removed: removed.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn eds_cluster(name: &str, service: &str) -> cpb::Cluster {
        cpb::Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cpb::cluster::ClusterDiscoveryType::Type(
                cpb::cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cpb::cluster::EdsClusterConfig {
                service_name: service.into(),
                eds_config: None,
            }),
            ..Default::default()
        }
    }

    fn with_timeout(mut c: cpb::Cluster, secs: i64) -> cpb::Cluster {
        c.connect_timeout = Some(protobuf::Duration {
            seconds: secs,
            nanos: 0,
        });
        c
    }

    /// Rejected: `lb_policy: CLUSTER_PROVIDED is not supported`.
    fn bad_cluster(name: &str) -> cpb::Cluster {
        cpb::Cluster {
            lb_policy: cpb::cluster::LbPolicy::ClusterProvided as i32,
            ..eds_cluster(name, "")
        }
    }

    fn tls_cluster(name: &str, cert: &str, ca: &str) -> cpb::Cluster {
        let u = ext::UpstreamTlsContext {
            common_tls_context: Some(ext::CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![tls::SdsSecretConfig {
                    name: cert.into(),
                    ..Default::default()
                }],
                validation_context_sds_secret_config: Some(tls::SdsSecretConfig {
                    name: ca.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        cpb::Cluster {
            transport_socket: Some(core::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&u))),
            }),
            ..eds_cluster(name, "")
        }
    }

    fn listener(name: &str, port: u32, route: &str) -> lpb::Listener {
        let h = hcm::HttpConnectionManager {
            stat_prefix: "s".into(),
            http_filters: vec![hcm::HttpFilter {
                name: "envoy.filters.http.router".into(),
                ..Default::default()
            }],
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    route_config_name: route.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        lpb::Listener {
            name: name.into(),
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            filter_chains: vec![lpb::FilterChain {
                filters: vec![lpb::Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(lpb::filter::ConfigType::TypedConfig(any(&h))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// `listener` with its filter chain's TLS serving the SDS certificates `certs`,
    /// verifying clients with the SDS validation context `ca`.
    fn tls_listener(name: &str, port: u32, certs: &[&str], ca: &str) -> lpb::Listener {
        let d = ext::DownstreamTlsContext {
            common_tls_context: Some(ext::CommonTlsContext {
                tls_certificate_sds_secret_configs: certs
                    .iter()
                    .map(|c| tls::SdsSecretConfig {
                        name: (*c).into(),
                        ..Default::default()
                    })
                    .collect(),
                validation_context_sds_secret_config: Some(tls::SdsSecretConfig {
                    name: ca.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut l = listener(name, port, "r");
        l.filter_chains[0].transport_socket = Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&d))),
        });
        l
    }

    fn route(name: &str) -> rpb::RouteConfiguration {
        rpb::RouteConfiguration {
            name: name.into(),
            ..Default::default()
        }
    }

    fn cla(name: &str) -> epb::ClusterLoadAssignment {
        epb::ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        }
    }

    fn names<T>(m: &Resources<T>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn good_and_bad_in_one_update() {
        let store = ConfigStore::new();
        let results = store.apply(
            type_url::CLUSTER,
            update(
                vec![
                    res("a", "1", &eds_cluster("a", "")),
                    res("b", "1", &eds_cluster("b", "")),
                ],
                &[],
            ),
        );
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        let v1 = store.snapshot();

        let results = store.apply(
            type_url::CLUSTER,
            update(
                vec![
                    res("a", "2", &with_timeout(eds_cluster("a", ""), 7)),
                    res("b", "2", &bad_cluster("b")),
                    res("c", "2", &eds_cluster("c", "")),
                ],
                &[],
            ),
        );
        assert_eq!(
            results,
            [
                (
                    "b".to_owned(),
                    Err("lb_policy: CLUSTER_PROVIDED is not supported".into())
                ),
                ("a".to_owned(), Ok(())),
                ("c".to_owned(), Ok(())),
            ]
        );
        let s = store.snapshot();
        assert_eq!(s.generation, v1.generation + 1);
        assert_eq!(names(&s.clusters), ["a", "b", "c"]);
        // The good ones applied, the bad one keeps its previous good version.
        assert_eq!(s.version(type_url::CLUSTER, "a"), Some("2"));
        assert_eq!(
            s.cluster("a").unwrap().connect_timeout,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(s.version(type_url::CLUSTER, "b"), Some("1"));
        assert!(Arc::ptr_eq(
            s.cluster("b").unwrap(),
            v1.cluster("b").unwrap()
        ));
        assert_eq!(s.version(type_url::CLUSTER, "c"), Some("2"));

        let nack = s.last_nack(type_url::CLUSTER).expect("a NACK");
        assert_eq!(nack.version, "2");
        assert_eq!(
            nack.message(),
            "b: lb_policy: CLUSTER_PROVIDED is not supported"
        );
        assert!(s.last_nack(type_url::LISTENER).is_none());

        // A later good update of the type keeps the last NACK (it is history, not state).
        store.apply(
            type_url::CLUSTER,
            update(vec![res("b", "3", &eds_cluster("b", ""))], &[]),
        );
        let s = store.snapshot();
        assert_eq!(s.version(type_url::CLUSTER, "b"), Some("3"));
        assert_eq!(s.last_nack(type_url::CLUSTER).unwrap().version, "2");
    }

    #[test]
    fn every_rejection_of_a_resource_is_in_its_reason() {
        let store = ConfigStore::new();
        let mut c = bad_cluster("x");
        c.health_checks = vec![Default::default()];
        let results = store.apply(type_url::CLUSTER, update(vec![res("x", "1", &c)], &[]));
        let reason = results[0].1.clone().unwrap_err();
        assert!(reason.contains("lb_policy: CLUSTER_PROVIDED"), "{reason}");
        assert!(
            reason.contains("health_checks[0].timeout: required but not set"),
            "{reason}"
        );
        assert!(store.snapshot().clusters.is_empty());
    }

    #[test]
    fn names_types_and_duplicates_are_checked() {
        let store = ConfigStore::new();
        let results = store.apply(
            type_url::CLUSTER,
            update(
                vec![
                    // Wrapper name differs from the name inside.
                    res("outer", "1", &eds_cluster("inner", "")),
                    // A listener in a CDS update.
                    res("l", "1", &listener("l", 80, "r")),
                    res("d", "1", &eds_cluster("d", "")),
                    res("d", "1", &with_timeout(eds_cluster("d", ""), 9)),
                ],
                &[],
            ),
        );
        let errs: BTreeMap<_, _> = results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.as_str(), e.as_str())))
            .collect();
        assert_eq!(
            errs["outer"],
            "resource name \"outer\" does not match the name \"inner\" inside the resource"
        );
        assert!(
            errs["l"].starts_with("resource type type.googleapis.com/envoy.config.listener"),
            "{errs:?}"
        );
        assert_eq!(errs["d"], "duplicate resource name in one update");
        let s = store.snapshot();
        assert_eq!(names(&s.clusters), ["d"]);
        assert_eq!(
            s.cluster("d").unwrap().connect_timeout,
            model::cluster::DEFAULT_CONNECT_TIMEOUT
        );
        assert_eq!(s.last_nack(type_url::CLUSTER).unwrap().rejected.len(), 3);

        let results = store.apply(
            "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            update(vec![res("e", "1", &eds_cluster("e", ""))], &[]),
        );
        assert!(results[0].1.is_err());
    }

    #[test]
    fn removals() {
        let store = ConfigStore::new();
        store.apply(
            type_url::ENDPOINT,
            update(
                vec![res("x", "1", &cla("x")), res("y", "1", &cla("y"))],
                &[],
            ),
        );
        let before = store.snapshot();
        store.apply(type_url::ENDPOINT, update(vec![], &["x", "unknown"]));
        let s = store.snapshot();
        assert_eq!(names(&s.cluster_load_assignments), ["y"]);
        assert_eq!(s.generation, before.generation + 1);

        // Removing only names the store does not have publishes nothing.
        let mut changes = store.subscribe();
        changes.mark_unchanged();
        store.apply(type_url::ENDPOINT, update(vec![], &["x", "unknown"]));
        assert_eq!(store.snapshot().generation, s.generation);
        assert!(!changes.has_changed().unwrap());

        // Removal and addition in one update (delta).
        store.apply(
            type_url::ENDPOINT,
            update(vec![res("z", "2", &cla("z"))], &["y"]),
        );
        assert_eq!(names(&store.snapshot().cluster_load_assignments), ["z"]);
        assert!(changes.has_changed().unwrap());
    }

    #[test]
    fn references_follow_listener_and_cluster_changes() {
        let store = ConfigStore::new();
        assert!(store.references(type_url::ROUTE).is_empty());
        store.apply(
            type_url::LISTENER,
            update(
                vec![
                    res("l1", "1", &listener("l1", 80, "r1")),
                    res("l2", "1", &listener("l2", 81, "r2")),
                ],
                &[],
            ),
        );
        assert_eq!(store.references(type_url::ROUTE), set(&["r1", "r2"]));
        store.apply(
            type_url::LISTENER,
            update(vec![res("l1", "2", &listener("l1", 80, "r3"))], &["l2"]),
        );
        assert_eq!(store.references(type_url::ROUTE), set(&["r3"]));
        // A rejected listener update keeps the old listener's reference.
        let mut bad = listener("l1", 80, "r4");
        bad.address = None;
        store.apply(type_url::LISTENER, update(vec![res("l1", "3", &bad)], &[]));
        assert_eq!(store.references(type_url::ROUTE), set(&["r3"]));

        store.apply(
            type_url::CLUSTER,
            update(
                vec![
                    res("a", "1", &eds_cluster("a", "a-eds")),
                    res("b", "1", &eds_cluster("b", "")),
                    res("t", "1", &tls_cluster("t", "cert", "ca")),
                ],
                &[],
            ),
        );
        assert_eq!(
            store.references(type_url::ENDPOINT),
            set(&["a-eds", "b", "t"])
        );
        assert_eq!(store.references(type_url::SECRET), set(&["ca", "cert"]));
        store.apply(type_url::CLUSTER, update(vec![], &["a", "t"]));
        assert_eq!(store.references(type_url::ENDPOINT), set(&["b"]));
        assert!(store.references(type_url::SECRET).is_empty());
        assert!(store.references(type_url::CLUSTER).is_empty());
    }

    #[test]
    fn listeners_tls_secrets_are_referenced() {
        let store = ConfigStore::new();
        store.apply(
            type_url::LISTENER,
            update(
                vec![
                    res("l1", "1", &tls_listener("l1", 443, &["rsa", "ecdsa"], "ca")),
                    res("l2", "1", &listener("l2", 80, "r")),
                ],
                &[],
            ),
        );
        assert_eq!(
            store.references(type_url::SECRET),
            set(&["ca", "ecdsa", "rsa"])
        );
        // With the clusters' (a name both use counted once).
        store.apply(
            type_url::CLUSTER,
            update(vec![res("t", "1", &tls_cluster("t", "client", "ca"))], &[]),
        );
        assert_eq!(
            store.references(type_url::SECRET),
            set(&["ca", "client", "ecdsa", "rsa"])
        );
        // A listener's default filter chain counts too.
        let mut l = listener("l1", 443, "r");
        l.default_filter_chain = tls_listener("x", 443, &["fallback"], "ca2")
            .filter_chains
            .pop();
        store.apply(type_url::LISTENER, update(vec![res("l1", "2", &l)], &[]));
        assert_eq!(
            store.references(type_url::SECRET),
            set(&["ca", "ca2", "client", "fallback"])
        );
        store.apply(type_url::LISTENER, update(vec![], &["l1"]));
        store.apply(type_url::CLUSTER, update(vec![], &["t"]));
        assert!(store.references(type_url::SECRET).is_empty());
    }

    #[test]
    fn a_held_snapshot_never_changes() {
        let store = ConfigStore::new();
        store.apply(
            type_url::LISTENER,
            update(vec![res("l", "1", &listener("l", 80, "r1"))], &[]),
        );
        store.apply(
            type_url::ROUTE,
            update(vec![res("r1", "1", &route("r1"))], &[]),
        );
        let old = store.snapshot();
        let old_listener = Arc::clone(old.listener("l").unwrap());

        store.apply(
            type_url::LISTENER,
            update(vec![res("l", "2", &listener("l", 80, "r2"))], &[]),
        );
        store.apply(type_url::ROUTE, update(vec![], &["r1"]));

        // The reader's snapshot is exactly what it was.
        assert_eq!(old.version(type_url::LISTENER, "l"), Some("1"));
        assert!(Arc::ptr_eq(old.listener("l").unwrap(), &old_listener));
        assert_eq!(old.route_references(), set(&["r1"]));
        assert!(old.route_configuration("r1").is_some());

        let new = store.snapshot();
        assert_eq!(new.generation, old.generation + 2);
        assert_eq!(new.version(type_url::LISTENER, "l"), Some("2"));
        assert_eq!(new.route_references(), set(&["r2"]));
        assert!(new.route_configuration("r1").is_none());
        // Types the updates did not touch share their maps.
        assert!(Arc::ptr_eq(&old.clusters, &new.clusters));
    }

    #[test]
    fn unchanged_content_keeps_its_arc() {
        let store = ConfigStore::new();
        let c = eds_cluster("a", "");
        store.apply(type_url::CLUSTER, update(vec![res("a", "1", &c)], &[]));
        let s1 = store.snapshot();
        // SotW resends everything with a new version: same model, same Arc, new version.
        store.apply(type_url::CLUSTER, update(vec![res("a", "2", &c)], &[]));
        let s2 = store.snapshot();
        assert!(Arc::ptr_eq(
            s1.cluster("a").unwrap(),
            s2.cluster("a").unwrap()
        ));
        assert_eq!(s2.version(type_url::CLUSTER, "a"), Some("2"));
        // Same version and content: nothing published.
        store.apply(type_url::CLUSTER, update(vec![res("a", "2", &c)], &[]));
        let s3 = store.snapshot();
        assert_eq!(s3.generation, s2.generation);
        assert!(Arc::ptr_eq(&s2.clusters, &s3.clusters));
    }

    #[test]
    fn resent_bytes_skip_the_conversion_but_not_the_checks() {
        let store = ConfigStore::new();
        let a = eds_cluster("a", "");
        store.apply(type_url::CLUSTER, update(vec![res("a", "1", &a)], &[]));
        let s1 = store.snapshot();
        // The same bytes again (SotW): accepted as they are, new version, same Arc.
        let results = store.apply(type_url::CLUSTER, update(vec![res("a", "2", &a)], &[]));
        assert_eq!(results, [("a".to_owned(), Ok(()))]);
        let s2 = store.snapshot();
        assert_eq!(s2.version(type_url::CLUSTER, "a"), Some("2"));
        assert!(Arc::ptr_eq(
            s1.cluster("a").unwrap(),
            s2.cluster("a").unwrap()
        ));
        // Checks that do not depend on the bytes still apply.
        let results = store.apply(
            type_url::CLUSTER,
            update(vec![res("a", "3", &a), res("a", "3", &a)], &[]),
        );
        assert!(
            results.contains(&(
                "a".to_owned(),
                Err("duplicate resource name in one update".into())
            )),
            "{results:?}"
        );
        // Rejected bytes are not remembered: sent again, they are judged (and rejected) again.
        let bad = bad_cluster("a");
        for v in ["4", "5"] {
            let results = store.apply(type_url::CLUSTER, update(vec![res("a", v, &bad)], &[]));
            assert!(results[0].1.is_err(), "{results:?}");
        }
        assert_eq!(
            store
                .snapshot()
                .last_nack(type_url::CLUSTER)
                .unwrap()
                .version,
            "5"
        );
        // Static resources are never replaced, whatever the bytes.
        let fresh = ConfigStore::new();
        fresh
            .load_static(&Bootstrap {
                clusters: vec![convert::cluster(&a).unwrap()],
                ..Default::default()
            })
            .unwrap();
        let results = fresh.apply(type_url::CLUSTER, update(vec![res("a", "1", &a)], &[]));
        assert!(results[0].1.is_err(), "{results:?}");
    }

    #[tokio::test]
    async fn watchers_see_every_publish() {
        let store = Arc::new(ConfigStore::new());
        let mut rx = store.subscribe();
        let s = Arc::clone(&store);
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            let g = *rx.borrow_and_update();
            (g, s.snapshot().listeners.len())
        });
        store.apply(
            type_url::LISTENER,
            update(vec![res("l", "1", &listener("l", 80, "r"))], &[]),
        );
        assert_eq!(waiter.await.unwrap(), (1, 1));
    }

    fn static_secret(name: &str) -> model::Secret {
        model::Secret {
            name: name.into(),
            kind: SecretKind::ValidationContext(ValidationContext {
                trusted_ca: None,
                match_subject_alt_names: Vec::new(),
            }),
        }
    }

    #[test]
    fn static_resources_from_the_bootstrap() {
        let store = ConfigStore::new();
        let bootstrap = Bootstrap {
            listeners: vec![convert::listener(&listener("in", 80, "static-routes")).unwrap()],
            clusters: vec![
                convert::cluster(&eds_cluster("xds", "")).unwrap(),
                convert::cluster(&tls_cluster("up", "cert", "ca")).unwrap(),
            ],
            secrets: vec![static_secret("ca")],
            ..Default::default()
        };
        store.load_static(&bootstrap).unwrap();
        let s = store.snapshot();
        assert_eq!(s.version(type_url::CLUSTER, "xds"), Some(STATIC_VERSION));
        assert!(s.clusters["xds"].is_static);
        // References of static resources are subscribed like any others; a secret the
        // bootstrap provides is not.
        assert_eq!(store.references(type_url::ROUTE), set(&["static-routes"]));
        assert_eq!(store.references(type_url::ENDPOINT), set(&["up", "xds"]));
        assert_eq!(store.references(type_url::SECRET), set(&["cert"]));

        // xDS can neither replace nor remove them.
        let results = store.apply(
            type_url::CLUSTER,
            update(
                vec![
                    res("xds", "1", &with_timeout(eds_cluster("xds", ""), 1)),
                    res("dyn", "1", &eds_cluster("dyn", "")),
                ],
                &["up"],
            ),
        );
        assert_eq!(
            results[0],
            (
                "xds".to_owned(),
                Err(
                    "cluster \"xds\" is static (from the bootstrap) and cannot be replaced over xDS"
                        .into()
                )
            )
        );
        assert_eq!(results[1], ("dyn".to_owned(), Ok(())));
        let s = store.snapshot();
        assert_eq!(names(&s.clusters), ["dyn", "up", "xds"]);
        assert_eq!(s.version(type_url::CLUSTER, "xds"), Some(STATIC_VERSION));
        assert_eq!(
            s.last_nack(type_url::CLUSTER).unwrap().rejected[0].name,
            "xds"
        );

        let dup = Bootstrap {
            clusters: vec![bootstrap.clusters[0].clone(), bootstrap.clusters[0].clone()],
            ..Default::default()
        };
        let fresh = ConfigStore::new();
        assert_eq!(
            fresh.load_static(&dup).unwrap_err(),
            ["static_resources.clusters[1].name: \"xds\" is used by an earlier entry"]
        );
        assert_eq!(fresh.snapshot().generation, 0);
    }

    #[test]
    fn config_dump_shape() {
        let store = ConfigStore::new();
        store.apply(
            type_url::CLUSTER,
            update(
                vec![
                    res("a", "v1", &eds_cluster("a", "")),
                    res("b", "v1", &bad_cluster("b")),
                ],
                &[],
            ),
        );
        store.apply(
            type_url::ENDPOINT,
            update(vec![res("a", "v7", &cla("a"))], &[]),
        );
        let dump = serde_json::to_value(store.config_dump()).unwrap();
        assert_eq!(dump["generation"], 2);
        let clusters = &dump["clusters"];
        assert_eq!(clusters["type_url"], type_url::CLUSTER);
        let a = &clusters["resources"][0];
        assert_eq!(a["name"], "a");
        assert_eq!(a["version"], "v1");
        assert_eq!(a["static"], false);
        assert_eq!(a["resource"]["name"], "a");
        assert_eq!(a["resource"]["connect_timeout"], "5s");
        let updated = a["last_updated"].as_str().unwrap();
        assert!(updated.len() == 24 && updated.ends_with('Z'), "{updated}");
        assert_eq!(clusters["resources"].as_array().unwrap().len(), 1);
        let nack = &clusters["last_nack"];
        assert_eq!(nack["version"], "v1");
        assert_eq!(
            nack["message"],
            "b: lb_policy: CLUSTER_PROVIDED is not supported"
        );
        assert_eq!(nack["rejected"][0]["name"], "b");
        assert_eq!(
            dump["cluster_load_assignments"]["resources"][0]["version"],
            "v7"
        );
        assert!(dump["listeners"]["last_nack"].is_null());
        assert_eq!(dump["listeners"]["resources"], serde_json::json!([]));
    }

    #[test]
    fn rfc3339_format() {
        let at =
            |s: u64, ms: u64| rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_314_058, 123), "2026-11-22T02:20:58.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }
}
