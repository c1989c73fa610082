//! The traffic config the data path reads: listeners indexed for the original-destination
//! hand-off, route configurations by name, and clusters with their endpoints ready for
//! picking.
//!
//! [`Traffic`] is immutable and shared as an `Arc`. Whoever owns the config (the agent,
//! fed by the xDS store) builds a new one with [`Traffic::build`] and publishes it through
//! a [`TrafficHandle`]; a connection loads the current one when it is accepted and keeps it
//! for its listener and filter chain, and an HTTP request loads the current one when it
//! starts (routes and clusters change under a keep-alive connection, as in Envoy, while a
//! request in flight finishes on the config it started with).
//!
//! A build reuses the previous [`ClusterTarget`] of every cluster whose config and
//! endpoints are the same `Arc`s as before, so an update of one cluster or one
//! `ClusterLoadAssignment` costs one cluster's work, not the whole table's, and the
//! round-robin position of untouched clusters carries on.
//!
//! An empty `Traffic` (the standalone mode without Envoy sections) has no listeners: every
//! captured connection is passed through to its original destination.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::model::cluster::{sds_names, CertificateSource, Discovery, ValidationSource};
use crate::model::endpoint::{EndpointAddress, HboneEndpoint};
use crate::model::listener::DEFAULT_TLS_HANDSHAKE_TIMEOUT;
use crate::model::listener::{NetworkFilter, RouteSource};
use crate::model::{Cluster, ClusterLoadAssignment, Listener, RouteConfiguration, Secret};
use crate::tls::origin::TlsOrigin;
use crate::tls::terminate::TlsTermination;

pub mod balance;
pub mod chain;
pub mod mesh;
pub mod router;

use balance::{Active, Balancer, Host, LocalityShare, Report};
use mesh::HboneLookup;

use router::RouteTable;

/// The resources a [`Traffic`] is built from (everything behind `Arc`s, so building the
/// input from a store snapshot copies pointers only).
#[derive(Debug, Default, Clone)]
pub struct TrafficInput {
    /// Increases with every new config (shown in logs; `0` for the empty config).
    pub generation: u64,
    /// All listeners (captured and bound).
    pub listeners: Vec<Arc<Listener>>,
    /// RDS route configurations, by name.
    pub route_configurations: Vec<Arc<RouteConfiguration>>,
    /// All clusters.
    pub clusters: Vec<Arc<Cluster>>,
    /// EDS assignments by their `cluster_name` (the EDS service name).
    pub load_assignments: HashMap<String, Arc<ClusterLoadAssignment>>,
    /// SDS Secrets by name (the certificates and trust anchors of clusters' upstream TLS).
    pub secrets: HashMap<String, Arc<Secret>>,
}

/// One immutable traffic config.
#[derive(Debug, Default)]
pub struct Traffic {
    generation: u64,
    listeners: FastMap<String, Arc<Listener>>,
    /// Captured-connection listeners (not `bind_to_port`) by exact address.
    by_addr: FastMap<SocketAddr, Arc<Listener>>,
    /// Captured-connection listeners on the unspecified address, by (is IPv4, port).
    by_port: FastMap<(bool, u16), Arc<Listener>>,
    /// RDS route configurations, indexed.
    routes: FastMap<String, Arc<RouteTable>>,
    /// Inline route configurations, by (listener, filter chain; `None`: the default chain).
    inline_routes: FastMap<(String, Option<usize>), Arc<RouteTable>>,
    /// The downstream TLS of filter chains that terminate it, by (listener, filter chain).
    chain_tls: FastMap<(String, Option<usize>), Arc<BuiltTls<TlsTermination>>>,
    clusters: FastMap<String, Arc<ClusterTarget>>,
    /// Meshed endpoints on other nodes (EDS `myelin.io/hbone` metadata), by address.
    hbone: FastMap<SocketAddr, HboneLookup>,
}

/// The maps a request looks into (its route table, its cluster two or three times): foldhash
/// instead of std's SipHash, which was a visible part of a request's CPU. The keys come from
/// the control plane, not from requests, so a hash without DoS resistance is fine.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl Traffic {
    /// Builds the config from `input`, reusing `prev`'s cluster targets that did not change.
    pub fn build(input: TrafficInput, prev: Option<&Traffic>) -> Traffic {
        let mut listeners =
            FastMap::with_capacity_and_hasher(input.listeners.len(), Default::default());
        let mut by_addr = FastMap::default();
        let mut by_port = FastMap::default();
        let mut inline_routes = FastMap::default();
        let mut chain_tls = FastMap::default();
        // `::` listeners with `ipv4_compat`: they take IPv4 destinations of their port that
        // no `0.0.0.0` listener takes.
        let mut v4_compat = Vec::new();
        for l in input.listeners {
            let unchanged = prev
                .and_then(|p| p.listeners.get(&l.name))
                .is_some_and(|old| Arc::ptr_eq(old, &l));
            let chains = l
                .filter_chains
                .iter()
                .enumerate()
                .map(|(i, c)| (Some(i), c));
            for (i, chain) in chains.chain(l.default_filter_chain.iter().map(|c| (None, c))) {
                if let Some(tls) = &chain.tls {
                    let key = (l.name.clone(), i);
                    let kept = prev
                        .filter(|_| unchanged)
                        .and_then(|p| p.chain_tls.get(&key))
                        .filter(|t| t.current(&input.secrets))
                        .cloned();
                    let built = kept.unwrap_or_else(|| {
                        let timeout = chain
                            .handshake_timeout
                            .unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT);
                        Arc::new(BuiltTls::build(
                            &tls.certificates,
                            tls.validation.as_ref(),
                            &input.secrets,
                            || {
                                format!(
                                    "listener {:?} filter chain {:?}: downstream TLS",
                                    l.name, chain.name
                                )
                            },
                            |secret| TlsTermination::build(tls, timeout, secret),
                        ))
                    });
                    chain_tls.insert(key, built);
                }
                let NetworkFilter::HttpConnectionManager(hcm) = &chain.filter else {
                    continue;
                };
                let RouteSource::Inline(rc) = &hcm.route else {
                    continue;
                };
                let key = (l.name.clone(), i);
                let table = prev
                    .filter(|_| unchanged)
                    .and_then(|p| p.inline_routes.get(&key).cloned())
                    .unwrap_or_else(|| Arc::new(RouteTable::new(Arc::new(rc.clone()))));
                inline_routes.insert(key, table);
            }
            if !l.bind_to_port {
                let ip = l.address.ip().to_canonical();
                if ip.is_unspecified() {
                    by_port.insert((ip.is_ipv4(), l.address.port()), l.clone());
                    if ip.is_ipv6() && l.ipv4_compat {
                        v4_compat.push(l.clone());
                    }
                } else {
                    by_addr.insert(SocketAddr::new(ip, l.address.port()), l.clone());
                }
            }
            listeners.insert(l.name.clone(), l);
        }
        for l in v4_compat {
            by_port.entry((true, l.address.port())).or_insert(l);
        }
        let routes = input
            .route_configurations
            .into_iter()
            .map(|rc| {
                let table = prev
                    .and_then(|p| p.routes.get(&rc.name))
                    .filter(|t| Arc::ptr_eq(&t.config, &rc))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(RouteTable::new(rc.clone())));
                (rc.name.clone(), table)
            })
            .collect();
        let mut clusters =
            FastMap::with_capacity_and_hasher(input.clusters.len(), Default::default());
        let mut hbone = FastMap::default();
        for c in input.clusters {
            let assignment = match &c.discovery {
                Discovery::Eds { .. } => {
                    let service = c.discovery.eds_service_name(&c.name).unwrap_or(&c.name);
                    input.load_assignments.get(service).cloned()
                }
                _ => None,
            };
            let old = prev.and_then(|p| p.clusters.get(&c.name));
            let reused = old
                .filter(|t| {
                    Arc::ptr_eq(&t.cluster, &c)
                        && same(&t.assignment, &assignment)
                        && t.origins
                            .iter()
                            .flatten()
                            .all(|o| o.current(&input.secrets))
                })
                .cloned();
            let target = reused.unwrap_or_else(|| {
                Arc::new(ClusterTarget::new(
                    c,
                    assignment,
                    &input.secrets,
                    old.map(|t| &**t),
                ))
            });
            for (addr, lookup) in &target.hbone {
                mesh::merge(&mut hbone, *addr, lookup);
            }
            clusters.insert(target.cluster.name.clone(), target);
        }
        Traffic {
            generation: input.generation,
            listeners,
            by_addr,
            by_port,
            routes,
            inline_routes,
            chain_tls,
            clusters,
            hbone,
        }
    }

    /// The downstream TLS filter chain `index` of listener `listener` terminates: `None`
    /// when it has none, an error when it cannot be set up (a Secret not delivered, a bad
    /// certificate).
    pub(crate) fn chain_tls(
        &self,
        listener: &str,
        index: Option<usize>,
    ) -> Option<Result<&Arc<TlsTermination>, &str>> {
        if self.chain_tls.is_empty() {
            return None;
        }
        self.chain_tls
            .get(&(listener.to_owned(), index))
            .map(|t| t.get())
    }

    /// Whether `addr` is an endpoint that is a meshed workload on another node (EDS
    /// metadata), and how it is reached.
    pub fn hbone_endpoint(&self, addr: SocketAddr) -> Option<&HboneLookup> {
        if self.hbone.is_empty() {
            return None;
        }
        self.hbone
            .get(&SocketAddr::new(addr.ip().to_canonical(), addr.port()))
    }

    /// The config's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The listener that serves a captured connection to `dst`: the one on exactly that
    /// address and port, else the one on the unspecified address of the same family with
    /// that port (Envoy's original-destination hand-off). Bound listeners never match.
    pub fn listener_for_original_dst(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        let ip = dst.ip().to_canonical();
        self.by_addr
            .get(&SocketAddr::new(ip, dst.port()))
            .or_else(|| self.by_port.get(&(ip.is_ipv4(), dst.port())))
    }

    /// A listener by name.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.get(name)
    }

    /// The listeners that bind their own socket (`bind_to_port`).
    pub fn bound_listeners(&self) -> impl Iterator<Item = &Arc<Listener>> {
        self.listeners.values().filter(|l| l.bind_to_port)
    }

    /// An RDS route configuration by name.
    pub fn route_table(&self, name: &str) -> Option<&Arc<RouteTable>> {
        self.routes.get(name)
    }

    /// The inline route configuration of a listener's filter chain (`None`: the default
    /// chain).
    pub fn inline_route_table(
        &self,
        listener: &str,
        chain: Option<usize>,
    ) -> Option<&Arc<RouteTable>> {
        self.inline_routes.get(&(listener.to_owned(), chain))
    }

    /// A cluster and its endpoints by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterTarget>> {
        self.clusters.get(name)
    }

    /// Every cluster.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterTarget>> {
        self.clusters.values()
    }
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A cluster ready for picking endpoints.
#[derive(Debug)]
pub struct ClusterTarget {
    /// The cluster's config.
    pub cluster: Arc<Cluster>,
    /// The EDS assignment it was built from (for `Arc::ptr_eq` reuse).
    assignment: Option<Arc<ClusterLoadAssignment>>,
    /// The priority levels with at least one endpoint, lowest (most preferred) first.
    levels: Vec<Level>,
    /// Circuit-breaker counts; shared with the cluster's next builds.
    counters: Arc<ClusterCounters>,
    /// Its endpoints reached through HBONE.
    hbone: Vec<(SocketAddr, HboneLookup)>,
    /// Its upstream TLS for endpoints outside the mesh, per transport socket (the cluster's
    /// own, then its matches'; `None`: plain TCP).
    origins: Vec<Option<BuiltTls<TlsOrigin>>>,
}

/// A TLS context built from its config and the SDS Secrets it names (a cluster's upstream
/// TLS, a filter chain's downstream TLS), with the Secrets it was built from: a later
/// config with other versions of them builds it again.
#[derive(Debug)]
struct BuiltTls<T> {
    /// Ready, or why not (saying where it is configured).
    tls: Result<Arc<T>, Arc<str>>,
    /// The SDS names the context uses and what each was.
    secrets: Vec<(String, Option<Arc<Secret>>)>,
}

/// Looks an SDS Secret up by name.
type SecretLookup<'s> = &'s dyn Fn(&str) -> Option<Arc<Secret>>;

impl<T> BuiltTls<T> {
    /// Builds with `build` from the Secrets of `secrets` the context's certificates and
    /// validation name; a failure is described as being of `what`.
    fn build(
        certificates: &[CertificateSource],
        validation: Option<&ValidationSource>,
        secrets: &HashMap<String, Arc<Secret>>,
        what: impl FnOnce() -> String,
        build: impl FnOnce(SecretLookup<'_>) -> Result<T, String>,
    ) -> Self {
        let used = sds_names(certificates, validation)
            .map(|n| (n.to_owned(), secrets.get(n).cloned()))
            .collect();
        let tls = build(&|n| secrets.get(n).cloned())
            .map(Arc::new)
            .map_err(|why| Arc::from(format!("{}: {why}", what())));
        BuiltTls { tls, secrets: used }
    }

    /// Whether the Secrets it was built from are still those of `secrets`.
    fn current(&self, secrets: &HashMap<String, Arc<Secret>>) -> bool {
        self.secrets
            .iter()
            .all(|(name, s)| same(s, &secrets.get(name).cloned()))
    }

    /// The context, or why there is none.
    fn get(&self) -> Result<&Arc<T>, &str> {
        self.tls.as_ref().map_err(|e| &**e)
    }
}

/// In-flight counts of a cluster, for its circuit breakers.
#[derive(Debug, Default)]
struct ClusterCounters {
    requests: AtomicUsize,
    retries: AtomicUsize,
    /// Open upstream connections opened for the cluster.
    connections: AtomicUsize,
    /// Whether a request was ever routed to the cluster (health checks run at their
    /// `no_traffic_interval` until then).
    used: std::sync::atomic::AtomicBool,
    /// Requests waiting for a connection.
    pending: AtomicUsize,
    /// Signalled when a connection closes or an idle one is given back to the pool.
    freed: tokio::sync::Notify,
}

/// The connection circuit breakers of a cluster (`max_connections`,
/// `max_pending_requests`), as the upstream pools apply them.
/// Borrowed from the request's cluster: a request takes no reference count for them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits<'a> {
    cluster: &'a Cluster,
    counters: &'a Arc<ClusterCounters>,
    max_connections: usize,
    max_pending: usize,
}

impl ConnLimits<'_> {
    /// A new connection, if `max_connections` allows one more; counted until the slot
    /// is dropped (with the connection).
    pub(crate) fn try_connection(&self) -> Option<ConnSlot> {
        ClusterTarget::admit(&self.counters.connections, self.max_connections)
            .then(|| ConnSlot(self.counters.clone()))
    }

    /// A request that waits for a connection, if `max_pending_requests` allows one
    /// more.
    pub(crate) fn try_pending(&self) -> Option<Pending> {
        self.counters
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok()
            .then(|| Pending(self.counters.clone()))
    }

    /// Notified when a connection of the cluster closes or goes back to the pool idle.
    pub(crate) fn freed(&self) -> &tokio::sync::Notify {
        &self.counters.freed
    }

    /// Open connections now.
    pub(crate) fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// The cluster's name.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster.name
    }

    /// What a connection given back to the pool later tells the cluster's waiting
    /// requests with.
    pub(crate) fn notice(&self) -> FreedNotice {
        FreedNotice(self.counters.clone())
    }
}

/// Held by a pooled connection's response body: once the connection is back in the pool,
/// wakes the requests of its cluster waiting for one.
#[derive(Debug)]
pub(crate) struct FreedNotice(Arc<ClusterCounters>);

impl FreedNotice {
    /// Call after the connection is in the pool: a request that counted itself pending
    /// before looking at the pool either saw it or is woken here (the `SeqCst` load pairs
    /// with the increment in [`ConnLimits::try_pending`]).
    pub(crate) fn notify(&self) {
        if self.0.pending.load(Ordering::SeqCst) > 0 {
            self.0.freed.notify_waiters();
        }
    }
}

/// One open upstream connection of a cluster.
#[derive(Debug)]
pub(crate) struct ConnSlot(Arc<ClusterCounters>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

/// One request waiting for a connection of a cluster.
#[derive(Debug)]
pub(crate) struct Pending(Arc<ClusterCounters>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request or retry in flight: counted against a circuit breaker until dropped.
#[derive(Debug)]
pub struct InFlight {
    counters: Arc<ClusterCounters>,
    retry: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = if self.retry {
            &self.counters.retries
        } else {
            &self.counters.requests
        };
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoint chosen for one attempt.
#[derive(Debug)]
pub enum Picked {
    /// A host of the cluster, counted as active until this is dropped.
    Host(Active),
    /// The connection's original destination (`ORIGINAL_DST`).
    OriginalDst(SocketAddr),
}

impl Picked {
    /// Where to connect.
    pub fn address(&self) -> EndpointAddress {
        match self {
            Picked::Host(a) => a.host().address.clone(),
            Picked::OriginalDst(s) => EndpointAddress::Socket(*s),
        }
    }

    /// Its cluster's transport socket for it (`Cluster::socket_for`; `0` for an original
    /// destination).
    pub fn socket(&self) -> usize {
        match self {
            Picked::Host(a) => a.host().socket,
            Picked::OriginalDst(_) => 0,
        }
    }

    /// The HBONE tunnel the endpoint is reached through, if it is a meshed workload on
    /// another node (EDS metadata).
    pub fn hbone(&self) -> Option<&HboneEndpoint> {
        match self {
            Picked::Host(a) => a.host().hbone.as_ref(),
            Picked::OriginalDst(_) => None,
        }
    }
}

impl ClusterTarget {
    fn new(
        cluster: Arc<Cluster>,
        assignment: Option<Arc<ClusterLoadAssignment>>,
        secrets: &HashMap<String, Arc<Secret>>,
        prev: Option<&ClusterTarget>,
    ) -> Self {
        let cla = assignment.as_deref().or(cluster.load_assignment.as_ref());
        let checkers = cluster.health_checks.len();
        // Endpoints EDS removed that still pass their health checks stay (Envoy's default:
        // health checks are taken to be right, discovery may be wrong), at their priority.
        let retained: Vec<(u32, Arc<Host>)> = match prev {
            Some(prev) if checkers > 0 && !cluster.ignore_health_on_host_removal => prev
                .levels
                .iter()
                .flat_map(|l| l.balancer.hosts().iter().map(move |h| (l.priority, h)))
                .filter(|(_, h)| {
                    h.passes_health_checks()
                        && h.hbone.is_none()
                        && h.hc_checkers == checkers
                        && !cla.is_some_and(|cla| {
                            cla.localities
                                .iter()
                                .flat_map(|l| &l.endpoints)
                                .any(|e| e.address == h.address)
                        })
                })
                .map(|(p, h)| (p, h.clone()))
                .collect(),
            _ => Vec::new(),
        };
        let mut levels = Vec::new();
        let mut priorities: Vec<u32> = cla
            .iter()
            .flat_map(|cla| cla.localities.iter().map(|l| l.priority))
            .chain(retained.iter().map(|(p, _)| *p))
            .collect();
        priorities.sort_unstable();
        priorities.dedup();
        for p in priorities {
            let mut total = 0;
            let mut hosts: Vec<Arc<Host>> = Vec::new();
            let mut shares = Vec::new();
            for loc in cla
                .iter()
                .flat_map(|cla| &cla.localities)
                .filter(|l| l.priority == p)
            {
                total += loc.endpoints.len();
                let start = hosts.len();
                for e in loc
                    .endpoints
                    .iter()
                    .filter(|e| e.health_status.is_routable())
                {
                    let weight = e.load_balancing_weight.max(1);
                    let socket = cluster.socket_for(&e.metadata);
                    // Meshed endpoints on other nodes are not checked (the tunnel needs a
                    // source identity): their health is EDS's and outlier detection's.
                    let checkers = if e.hbone.is_some() { 0 } else { checkers };
                    // Same endpoint, same weight, same tunnel, socket and health checking:
                    // keep its state (active requests, outlier counters and ejections,
                    // health-check results).
                    let kept = prev.and_then(|p| {
                        p.hosts()
                            .find(|h| {
                                h.address == e.address
                                    && h.weight == weight
                                    && h.hbone == e.hbone
                                    && h.socket == socket
                                    && h.hc_checkers == checkers
                                    && h.health_check == e.health_check
                            })
                            .cloned()
                    });
                    if let Some(h) = &kept {
                        h.mark_removed(false);
                    }
                    hosts.push(kept.unwrap_or_else(|| {
                        Arc::new(
                            Host::new(e.address.clone(), weight)
                                .with_hbone(e.hbone.clone())
                                .with_socket(socket)
                                .with_health_checks(checkers, e.health_check.clone()),
                        )
                    }));
                }
                if cluster.locality_weighted {
                    shares.push(LocalityShare {
                        weight: loc.load_balancing_weight.unwrap_or(0),
                        start,
                        end: hosts.len(),
                        total: loc.endpoints.len(),
                    });
                }
            }
            for (_, h) in retained.iter().filter(|(rp, _)| *rp == p) {
                h.mark_removed(true);
                total += 1;
                hosts.push(h.clone());
            }
            if total > 0 {
                let mut balancer =
                    Balancer::new(cluster.lb_policy, hosts, cluster.outlier_detection.clone());
                if cluster.locality_weighted {
                    balancer = balancer.with_localities(shares);
                }
                levels.push(Level {
                    priority: p,
                    total,
                    balancer,
                });
            }
        }
        // Every endpoint, routable or not: a passed-through connection to a meshed pod
        // goes through its tunnel too.
        let hbone = cla
            .iter()
            .flat_map(|cla| &cla.localities)
            .flat_map(|l| &l.endpoints)
            .filter_map(|e| match (&e.address, &e.hbone) {
                (EndpointAddress::Socket(a), Some(ep)) => {
                    let socket = cluster.socket_for(&e.metadata);
                    Some((*a, mesh::resolve(&cluster, socket, *a, ep)))
                }
                _ => None,
            })
            .collect();
        // The cluster's own transport socket, then its matches'.
        let sockets = std::iter::once(cluster.tls.as_ref()).chain(
            cluster
                .transport_socket_matches
                .iter()
                .map(|m| m.tls.as_ref()),
        );
        let origins = sockets
            .enumerate()
            .map(|(i, tls)| {
                let tls = tls?;
                let what = || {
                    let which = match i {
                        0 => String::new(),
                        i => format!(
                            " (transport socket match {:?})",
                            cluster.transport_socket_matches[i - 1].name
                        ),
                    };
                    format!("cluster {:?}{which}: upstream TLS", cluster.name)
                };
                Some(BuiltTls::build(
                    &tls.certificates,
                    tls.validation.as_ref(),
                    secrets,
                    what,
                    |secret| TlsOrigin::build(tls, &cluster.auto_sni, secret),
                ))
            })
            .collect();
        ClusterTarget {
            counters: prev.map(|p| p.counters.clone()).unwrap_or_default(),
            cluster,
            assignment,
            levels,
            hbone,
            origins,
        }
    }

    /// The TLS to open over connections to endpoints outside the mesh of transport socket
    /// `socket` (the host's): `None` for plain TCP, an error when the cluster asks for TLS
    /// that cannot be set up (a Secret not delivered, a bad certificate).
    pub(crate) fn tls_origin(&self, socket: usize) -> Option<Result<&Arc<TlsOrigin>, &str>> {
        self.origins.get(socket)?.as_ref().map(BuiltTls::get)
    }

    /// The priority level a request goes to: Envoy's priority load. Each level's health
    /// is the share of its endpoints that are routable and not ejected, times the
    /// overprovisioning factor 1.4, capped at 100%; levels take load in order, each as
    /// much as its health allows of what is left, normalised when all health adds up to
    /// less than 100% (so traffic spills over gradually as a level degrades, not at its
    /// last endpoint). `roll` (0..100) picks by those shares. With no healthy endpoint
    /// anywhere: the first level with a routable one (whose balancer then panics).
    fn level(&self, roll: u64) -> Option<&Level> {
        if let [only] = self.levels.as_slice() {
            return Some(only);
        }
        let now = std::time::Instant::now();
        // Percent health per level, as Envoy computes it (integers, 140 = factor 1.4).
        let health: Vec<u64> = self
            .levels
            .iter()
            .map(|l| {
                let healthy = l
                    .balancer
                    .hosts()
                    .iter()
                    .filter(|h| h.passes_health_checks() && !h.is_ejected(now))
                    .count();
                (140 * healthy as u64 / l.total as u64).min(100)
            })
            .collect();
        let normalized: u64 = health.iter().sum::<u64>().min(100);
        if normalized == 0 {
            return self.levels.iter().find(|l| !l.balancer.hosts().is_empty());
        }
        let mut left = 100u64;
        let mut upto = 0u64;
        for (l, h) in self.levels.iter().zip(&health) {
            let load = (h * 100 / normalized).min(left);
            left -= load;
            upto += load;
            if roll < upto {
                return Some(l);
            }
        }
        // Rounding left a sliver: the last level with health takes it.
        self.levels
            .iter()
            .zip(&health)
            .rev()
            .find(|(_, h)| **h > 0)
            .map(|(l, _)| l)
    }

    fn threshold(
        &self,
        f: impl Fn(&crate::model::cluster::Thresholds) -> u32,
        default: u32,
    ) -> usize {
        self.cluster
            .circuit_breakers
            .iter()
            .find(|t| t.priority == crate::model::cluster::RoutingPriority::Default)
            .map_or(default, f) as usize
    }

    /// The `max_retries` circuit breaker of the default priority (Envoy's default: 3).
    pub fn max_retries(&self) -> usize {
        self.threshold(|t| t.max_retries, 3)
    }

    /// The `max_requests` circuit breaker of the default priority (Envoy's default: 1024).
    pub fn max_requests(&self) -> usize {
        self.threshold(|t| t.max_requests, 1024)
    }

    fn admit(counter: &AtomicUsize, max: usize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Retries allowed in flight now: the retry budget's share of the requests in flight
    /// (at least its minimum concurrency) when the cluster has one, else `max_retries`.
    pub fn retry_limit(&self) -> usize {
        let budget = self
            .cluster
            .circuit_breakers
            .iter()
            .find(|t| t.priority == crate::model::cluster::RoutingPriority::Default)
            .and_then(|t| t.retry_budget.as_ref());
        match budget {
            Some(b) => {
                let active = self.counters.requests.load(Ordering::Relaxed) as f64;
                let share = (active * b.budget_percent / 100.0) as usize;
                share.max(b.min_retry_concurrency as usize)
            }
            None => self.max_retries(),
        }
    }

    /// The `max_connections` circuit breaker of the default priority (Envoy's default:
    /// 1024).
    pub fn max_connections(&self) -> usize {
        self.threshold(|t| t.max_connections, 1024)
    }

    /// The `max_pending_requests` circuit breaker of the default priority (Envoy's
    /// default: 1024).
    pub fn max_pending_requests(&self) -> usize {
        self.threshold(|t| t.max_pending_requests, 1024)
    }

    /// The cluster's connection circuit breakers, for the upstream pools.
    pub(crate) fn conn_limits(&self) -> ConnLimits<'_> {
        ConnLimits {
            cluster: &self.cluster,
            counters: &self.counters,
            max_connections: self.max_connections(),
            max_pending: self.max_pending_requests(),
        }
    }

    /// Starts a retry if the cluster's retry limit allows one more in flight.
    pub fn try_retry(&self) -> Option<InFlight> {
        Self::admit(&self.counters.retries, self.retry_limit()).then(|| InFlight {
            counters: self.counters.clone(),
            retry: true,
        })
    }

    /// Starts a request if the cluster's `max_requests` allows one more in flight.
    pub fn try_request(&self) -> Option<InFlight> {
        Self::admit(&self.counters.requests, self.max_requests()).then(|| InFlight {
            counters: self.counters.clone(),
            retry: false,
        })
    }

    /// Whether the cluster forwards to each connection's original destination
    /// (`ORIGINAL_DST`).
    pub fn is_original_dst(&self) -> bool {
        self.cluster.discovery == Discovery::OriginalDst
    }

    /// Picks an endpoint by the cluster's `lb_policy` (`hash` for ring hash and Maglev),
    /// avoiding ejected hosts and those `exclude` names while others are left.
    /// `ORIGINAL_DST` clusters answer `original_dst`. `None`: no routable endpoint.
    pub fn pick_host(
        &self,
        hash: Option<u64>,
        exclude: &dyn Fn(&Host) -> bool,
        original_dst: Option<SocketAddr>,
    ) -> Option<Picked> {
        if self.is_original_dst() {
            return original_dst.map(Picked::OriginalDst);
        }
        if !self.cluster.health_checks.is_empty() && !self.counters.used.load(Ordering::Relaxed) {
            self.counters.used.store(true, Ordering::Relaxed);
        }
        // Envoy picks the level by the request's hash when it has one, so a hash keeps
        // its level as long as the levels' health does not change.
        let roll = hash.map_or_else(|| fastrand::u64(0..100), |h| h % 100);
        self.level(roll)?
            .balancer
            .pick(hash, exclude)
            .map(Picked::Host)
    }

    /// The host at `addr` when the cluster has it and it is usable, whatever its level (a
    /// stateful session's host, Envoy's override host).
    pub fn pick_override(&self, addr: SocketAddr) -> Option<Picked> {
        if self.is_original_dst() {
            return None;
        }
        self.levels
            .iter()
            .find_map(|l| l.balancer.pick_address(addr))
            .map(Picked::Host)
    }

    /// [`ClusterTarget::pick_host`] without a hash or exclusions, as an address.
    pub fn pick(&self, original_dst: Option<SocketAddr>) -> Option<EndpointAddress> {
        self.pick_host(None, &|_| false, original_dst)
            .map(|p| p.address())
    }

    /// Tells outlier detection how an attempt to `host` went.
    pub fn report(&self, host: &Host, report: Report) {
        let level = match self.levels.as_slice() {
            [only] => Some(only),
            levels => levels
                .iter()
                .find(|l| l.balancer.hosts().iter().any(|h| std::ptr::eq(&**h, host))),
        };
        if let Some(l) = level {
            l.balancer.report(host, report);
        }
    }

    /// Whether a request was ever routed to the cluster (by this build or an earlier one).
    pub fn has_had_traffic(&self) -> bool {
        self.counters.used.load(Ordering::Relaxed)
    }

    /// The routable hosts, over all priority levels.
    pub fn routable(&self) -> usize {
        self.levels.iter().map(|l| l.balancer.hosts().len()).sum()
    }

    /// The routable hosts with their state, lowest priority first.
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.levels.iter().flat_map(|l| l.balancer.hosts())
    }

    /// Healthy (or degraded) hosts and all hosts, over all priority levels, as Envoy's
    /// membership counts them: a host EDS marks unhealthy, one failing its health checks,
    /// an ejected one or one EDS removed is not healthy.
    pub fn health(&self, now: std::time::Instant) -> (usize, usize) {
        let healthy = self
            .hosts()
            .filter(|h| h.passes_health_checks() && !h.is_ejected(now) && !h.is_removed())
            .count();
        let total = self.levels.iter().map(|l| l.total).sum();
        (healthy, total)
    }
}

/// One priority level of a cluster.
#[derive(Debug)]
struct Level {
    /// Its priority (0 the highest).
    priority: u32,
    /// Its endpoints, routable or not (the denominator of its health).
    total: usize,
    /// Over its routable endpoints.
    balancer: Balancer,
}

/// Resolves an endpoint address to socket addresses (DNS endpoints of STRICT_DNS and
/// LOGICAL_DNS clusters are looked up at connect time, LOGICAL_DNS style).
pub async fn resolve(addr: &EndpointAddress) -> std::io::Result<Vec<SocketAddr>> {
    match addr {
        EndpointAddress::Socket(s) => Ok(vec![*s]),
        EndpointAddress::Dns { host, port } => {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, *port)]);
            }
            Ok(tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .collect())
        }
    }
}

/// Where the current [`Traffic`] lives: the agent stores, connections load.
#[derive(Debug, Clone)]
pub struct TrafficHandle {
    current: Arc<ArcSwap<Traffic>>,
    changes: watch::Sender<u64>,
}

impl Default for TrafficHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl TrafficHandle {
    /// A handle holding the empty config (everything passes through).
    pub fn new() -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(Traffic::default())),
            changes: watch::Sender::new(0),
        }
    }

    /// The current config.
    pub fn load(&self) -> Arc<Traffic> {
        self.current.load_full()
    }

    /// The current config's generation (no reference taken).
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Publishes a new config: new connections and requests use it from now on.
    pub fn store(&self, traffic: Traffic) {
        let generation = traffic.generation;
        self.current.store(Arc::new(traffic));
        self.changes.send_replace(generation);
    }

    /// Builds from `input` on top of the current config and publishes the result.
    pub fn update(&self, input: TrafficInput) {
        let prev = self.load();
        self.store(Traffic::build(input, Some(&prev)));
    }

    /// Wakes after each [`TrafficHandle::store`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::{DnsLookupFamily, LbPolicy, UpstreamProtocol};
    use crate::model::endpoint::{Endpoint, HealthStatus, LocalityEndpoints};
    use std::time::Duration;

    fn l(name: &str, addr: &str, bind_to_port: bool) -> Arc<Listener> {
        Arc::new(Listener {
            name: name.into(),
            address: addr.parse().unwrap(),
            bind_to_port,
            ipv4_compat: false,
            filter_chains: vec![],
            default_filter_chain: None,
            listener_filters: Default::default(),
        })
    }

    #[test]
    fn original_dst_exact_then_wildcard() {
        let t = Traffic::build(
            TrafficInput {
                listeners: vec![
                    l("any80", "0.0.0.0:80", false),
                    l("exact", "10.0.0.1:80", false),
                    l("v6any", "[::]:80", false),
                    l("any90", "0.0.0.0:90", false),
                    l("bound", "0.0.0.0:91", true),
                    Arc::new(Listener {
                        ipv4_compat: true,
                        ..(*l("dual90", "[::]:90", false)).clone()
                    }),
                    Arc::new(Listener {
                        ipv4_compat: true,
                        ..(*l("dual93", "[::]:93", false)).clone()
                    }),
                    l("v6only94", "[::]:94", false),
                ],
                ..Default::default()
            },
            None,
        );
        let cases = [
            ("10.0.0.1:80", Some("exact")),
            ("10.0.0.2:80", Some("any80")),
            ("[fd00::1]:80", Some("v6any")),
            ("[::ffff:10.0.0.1]:80", Some("exact")),
            ("10.0.0.1:90", Some("any90")),
            // A bound listener never takes captured connections.
            ("10.0.0.1:91", None),
            ("10.0.0.1:92", None),
            // `ipv4_compat`: IPv4 too, unless a `0.0.0.0` listener has the port.
            ("10.0.0.1:93", Some("dual93")),
            ("[fd00::1]:93", Some("dual93")),
            ("10.0.0.1:94", None),
        ];
        for (dst, want) in cases {
            let got = t
                .listener_for_original_dst(dst.parse().unwrap())
                .map(|l| l.name.as_str());
            assert_eq!(got, want, "{dst}");
        }
        let bound: Vec<_> = t.bound_listeners().map(|l| l.name.as_str()).collect();
        assert_eq!(bound, ["bound"]);
    }

    fn ep(addr: &str, health: HealthStatus, weight: u32) -> Endpoint {
        Endpoint {
            address: EndpointAddress::Socket(addr.parse().unwrap()),
            health_status: health,
            load_balancing_weight: weight,
            metadata: Default::default(),
            hbone: None,
            health_check: None,
        }
    }

    fn cluster(name: &str, discovery: Discovery) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.into(),
            discovery,
            lb_policy: LbPolicy::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            circuit_breakers: vec![],
            outlier_detection: None,
            health_checks: vec![],
            ignore_health_on_host_removal: false,
            tls: None,
            proxy_protocol: None,
            transport_socket_matches: vec![],
            auto_sni: Default::default(),
            protocol: UpstreamProtocol::Http1,
            load_assignment: None,
            dns_lookup_family: DnsLookupFamily::Auto,
            dns_refresh_rate: None,
            tcp_keepalive: None,
            connection_life: Default::default(),
            locality_weighted: false,
        })
    }

    fn cla(name: &str, localities: Vec<(u32, Vec<Endpoint>)>) -> Arc<ClusterLoadAssignment> {
        Arc::new(ClusterLoadAssignment {
            cluster_name: name.into(),
            localities: localities
                .into_iter()
                .map(|(priority, endpoints)| LocalityEndpoints {
                    locality: None,
                    priority,
                    load_balancing_weight: None,
                    endpoints,
                })
                .collect(),
        })
    }

    fn picks(t: &ClusterTarget, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| match t.pick(None).unwrap() {
                EndpointAddress::Socket(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn endpoints_by_priority_health_and_weight() {
        use HealthStatus::*;
        let eds = Discovery::Eds { service_name: None };
        let input = TrafficInput {
            clusters: vec![cluster("c", eds.clone()), cluster("down", eds)],
            load_assignments: [
                (
                    "c".to_string(),
                    cla(
                        "c",
                        vec![(
                            0,
                            vec![
                                ep("10.0.0.1:80", Healthy, 1),
                                ep("10.0.0.2:80", Unknown, 2),
                                ep("10.0.0.3:80", Unhealthy, 1),
                                ep("10.0.0.4:80", Draining, 1),
                            ],
                        )],
                    ),
                ),
                (
                    "down".to_string(),
                    cla(
                        "down",
                        vec![
                            (0, vec![ep("10.0.0.9:80", Unhealthy, 1)]),
                            (1, vec![ep("10.0.1.9:80", Healthy, 1)]),
                        ],
                    ),
                ),
            ]
            .into(),
            ..Default::default()
        };
        let t = Traffic::build(input, None);
        let c = t.cluster("c").unwrap();
        assert_eq!(c.routable(), 2);
        let mut got = picks(c, 6);
        got.sort();
        assert_eq!(
            got,
            [
                "10.0.0.1:80",
                "10.0.0.1:80",
                "10.0.0.2:80",
                "10.0.0.2:80",
                "10.0.0.2:80",
                "10.0.0.2:80"
            ]
        );
        // Priority 0 has no routable endpoint: priority 1 takes over.
        assert_eq!(
            picks(t.cluster("down").unwrap(), 2),
            ["10.0.1.9:80", "10.0.1.9:80"]
        );
    }

    /// The share of rolls 0..100 that each priority level of `c` takes.
    fn level_loads(c: &ClusterTarget) -> Vec<usize> {
        let mut loads = vec![0; c.levels.len()];
        for roll in 0..100 {
            let l = c.level(roll).unwrap();
            let i = c.levels.iter().position(|x| std::ptr::eq(x, l)).unwrap();
            loads[i] += 1;
        }
        loads
    }

    /// Envoy's priority load: a level keeps all the load while at least 72% of its
    /// endpoints are healthy (overprovisioning 1.4), then spills the rest to the next;
    /// when all levels are degraded the load is normalised over their health.
    #[test]
    fn priority_load_spills_over_gradually() {
        use HealthStatus::*;
        let eds = Discovery::Eds { service_name: None };
        let level = |prefix: &str, healthy: usize| -> Vec<Endpoint> {
            (0..5)
                .map(|i| {
                    let health = if i < healthy { Healthy } else { Unhealthy };
                    ep(&format!("{prefix}.{}:80", i + 1), health, 1)
                })
                .collect()
        };
        let build = |p0: usize, p1: usize| {
            let input = TrafficInput {
                clusters: vec![cluster("c", eds.clone())],
                load_assignments: [(
                    "c".to_string(),
                    cla(
                        "c",
                        vec![(0, level("10.0.0", p0)), (1, level("10.0.1", p1))],
                    ),
                )]
                .into(),
                ..Default::default()
            };
            Traffic::build(input, None)
        };
        // (healthy in P0, healthy in P1) -> load of (P0, P1) in percent.
        let cases = [
            ((5, 5), [100, 0]),
            ((4, 5), [100, 0]),
            ((3, 5), [84, 16]),
            ((1, 5), [28, 72]),
            ((0, 5), [0, 100]),
            ((1, 1), [50, 50]),
        ];
        for ((p0, p1), want) in cases {
            let t = build(p0, p1);
            let c = t.cluster("c").unwrap();
            assert_eq!(level_loads(c), want, "P0 {p0}/5 healthy, P1 {p1}/5");
        }
        // Nothing routable at any level: no host (the request gets 503 `UH`).
        let t = build(0, 0);
        assert_eq!(t.cluster("c").unwrap().pick(None), None);

        // Outlier ejections count as unhealthy: ejecting 2 of P0's 5 spills 16%.
        let t = build(5, 5);
        let c = t.cluster("c").unwrap();
        let p0: Vec<Arc<Host>> = c.levels[0].balancer.hosts().to_vec();
        for h in &p0[..2] {
            h.eject_for_test(Duration::from_secs(60));
        }
        assert_eq!(level_loads(c), [84, 16]);
    }

    #[test]
    fn original_dst_cluster_uses_the_connection_destination() {
        let t = Traffic::build(
            TrafficInput {
                clusters: vec![cluster("passthrough", Discovery::OriginalDst)],
                ..Default::default()
            },
            None,
        );
        let c = t.cluster("passthrough").unwrap();
        let dst: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(c.pick(Some(dst)), Some(EndpointAddress::Socket(dst)));
        assert_eq!(c.pick(None), None);
    }

    #[test]
    fn retry_budget_scales_with_requests_in_flight() {
        use crate::model::cluster::{RetryBudget, RoutingPriority, Thresholds};
        let mut c = (*cluster("c", Discovery::Static)).clone();
        c.circuit_breakers = vec![Thresholds {
            retry_budget: Some(RetryBudget {
                budget_percent: 50.0,
                min_retry_concurrency: 1,
            }),
            ..Thresholds::envoy_default(RoutingPriority::Default)
        }];
        let t = Traffic::build(
            TrafficInput {
                clusters: vec![Arc::new(c)],
                ..Default::default()
            },
            None,
        );
        let c = t.cluster("c").unwrap();
        assert_eq!(c.retry_limit(), 1, "the minimum with nothing in flight");
        let requests: Vec<_> = (0..10).map(|_| c.try_request().unwrap()).collect();
        assert_eq!(c.retry_limit(), 5);
        let retries: Vec<_> = (0..5).map(|_| c.try_retry().unwrap()).collect();
        assert!(c.try_retry().is_none(), "the budget is spent");
        drop(retries);
        drop(requests);
        assert_eq!(c.retry_limit(), 1);
        // Without a budget: max_retries (Envoy's default 3).
        let plain = Traffic::build(
            TrafficInput {
                clusters: vec![cluster("p", Discovery::Static)],
                ..Default::default()
            },
            None,
        );
        assert_eq!(plain.cluster("p").unwrap().retry_limit(), 3);
    }

    #[test]
    fn rebuild_reuses_what_did_not_change() {
        let eds = Discovery::Eds { service_name: None };
        let a = cluster("a", eds.clone());
        let b = cluster("b", eds);
        let a_eps = cla(
            "a",
            vec![(0, vec![ep("10.0.0.1:80", HealthStatus::Healthy, 1)])],
        );
        let b_eps = cla(
            "b",
            vec![(0, vec![ep("10.0.0.2:80", HealthStatus::Healthy, 1)])],
        );
        let input = |b_eps: &Arc<ClusterLoadAssignment>| TrafficInput {
            generation: 1,
            clusters: vec![a.clone(), b.clone()],
            load_assignments: [
                ("a".to_string(), a_eps.clone()),
                ("b".to_string(), b_eps.clone()),
            ]
            .into(),
            ..Default::default()
        };
        let first = Traffic::build(input(&b_eps), None);
        let b_eps2 = cla(
            "b",
            vec![(0, vec![ep("10.0.0.3:80", HealthStatus::Healthy, 1)])],
        );
        let second = Traffic::build(input(&b_eps2), Some(&first));
        assert!(Arc::ptr_eq(
            first.cluster("a").unwrap(),
            second.cluster("a").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            first.cluster("b").unwrap(),
            second.cluster("b").unwrap()
        ));
        assert_eq!(picks(second.cluster("b").unwrap(), 1), ["10.0.0.3:80"]);
    }

    /// With active health checks, a host fails until checked and is passed over while
    /// others pass; EDS dropping a host that passes keeps it (Envoy's default), one that
    /// fails or any with `ignore_health_on_host_removal` goes; a host EDS names again is
    /// the same one.
    #[test]
    fn health_checked_hosts_and_removal() {
        use crate::model::health_check::{HealthCheck, HealthChecker, TcpHealthCheck};
        let hc = HealthCheck {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: 1,
            healthy_threshold: 1,
            reuse_connection: true,
            no_traffic_interval: Duration::from_secs(60),
            no_traffic_healthy_interval: None,
            unhealthy_interval: Duration::from_secs(1),
            unhealthy_edge_interval: Duration::from_secs(1),
            healthy_edge_interval: Duration::from_secs(1),
            always_log_health_check_failures: false,
            checker: HealthChecker::Tcp(TcpHealthCheck::default()),
        };
        let build = |ignore: bool, eps: &[&str], prev: Option<&Traffic>| {
            let mut c = (*cluster("c", Discovery::Eds { service_name: None })).clone();
            c.health_checks = vec![hc.clone()];
            c.ignore_health_on_host_removal = ignore;
            let eps = eps
                .iter()
                .map(|a| ep(a, HealthStatus::Healthy, 1))
                .collect();
            Traffic::build(
                TrafficInput {
                    generation: 1,
                    clusters: vec![Arc::new(c)],
                    load_assignments: [("c".to_string(), cla("c", vec![(0, eps)]))].into(),
                    ..Default::default()
                },
                prev,
            )
        };
        for ignore in [false, true] {
            let first = build(ignore, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None);
            let t = first.cluster("c").unwrap();
            let hosts: Vec<_> = t.hosts().cloned().collect();
            assert!(hosts.iter().all(|h| !h.passes_health_checks()));
            // Panic mode while none passes: any host.
            assert!(t.pick(None).is_some());
            hosts[0].set_check(0, true);
            hosts[1].set_check(0, true);
            let mut got = picks(t, 40);
            got.sort();
            got.dedup();
            assert_eq!(got, ["10.0.0.1:80", "10.0.0.2:80"], "ignore={ignore}");
            // EDS drops .1 (passing) and .3 (failing).
            let second = build(ignore, &["10.0.0.2:80"], Some(&first));
            let t2 = second.cluster("c").unwrap();
            let kept: Vec<String> = t2.hosts().map(|h| format!("{:?}", h.address)).collect();
            assert_eq!(kept.len(), if ignore { 1 } else { 2 }, "{kept:?}");
            assert!(Arc::ptr_eq(t2.hosts().next().unwrap(), &hosts[1]));
            if !ignore {
                let retained = t2.hosts().nth(1).unwrap();
                assert!(Arc::ptr_eq(retained, &hosts[0]) && retained.is_removed());
                // It fails a check: a later build drops it.
                retained.set_check(0, false);
                let third = build(ignore, &["10.0.0.2:80"], Some(&second));
                assert_eq!(third.cluster("c").unwrap().hosts().count(), 1);
                // Named again by EDS before that: the same host, no longer removed.
                let back = build(ignore, &["10.0.0.1:80", "10.0.0.2:80"], Some(&second));
                let h = back.cluster("c").unwrap().hosts().next().unwrap().clone();
                assert!(Arc::ptr_eq(&h, &hosts[0]) && !h.is_removed());
            }
        }
    }
}
