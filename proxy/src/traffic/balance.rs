//! Endpoint selection for one cluster: Envoy's load-balancing policies over the routable
//! hosts, outlier detection (consecutive 5xx and gateway failures), and the per-host
//! state both need.
//!
//! Hosts are the endpoints of the lowest priority that has a routable one (health
//! `UNKNOWN`/`HEALTHY`). Outlier detection ejects a host for `base_ejection_time` times
//! its number of ejections (capped at `max_ejection_time`), never more than
//! `max_ejection_percent` of the hosts (but always at least one, as Envoy does). A host
//! that an active health checker fails (`crate::health`) is passed over like an ejected
//! one. When every host is ejected or failing the cluster is in panic mode and balances
//! over all of them.
//!
//! Host state (active requests, outlier counters, ejections, health-check results)
//! survives EDS updates: a rebuilt cluster takes over the `Arc<Host>` of every endpoint
//! that did not change.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use smallvec::SmallVec;

use crate::lock;
use crate::model::cluster::{LbPolicy, OutlierDetection};
use crate::model::endpoint::{EndpointAddress, HboneEndpoint};
use crate::model::health_check::EndpointHealthCheck;

/// At most this many health checkers per cluster (one bit of a host's state each).
pub const MAX_HEALTH_CHECKERS: usize = 32;

/// The bits of `n` checkers.
fn checker_bits(n: usize) -> u32 {
    if n >= MAX_HEALTH_CHECKERS {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// Entries of a ring-hash ring (Envoy's `minimum_ring_size` default).
const RING_SIZE: usize = 1024;
/// Entries of a Maglev table (Envoy's default, a prime).
const MAGLEV_SIZE: usize = 65537;

/// One endpoint and its run-time state.
#[derive(Debug)]
pub struct Host {
    /// Where it is.
    pub address: EndpointAddress,
    /// `load_balancing_weight` (at least 1).
    pub weight: u32,
    /// Reached through HBONE (a meshed workload on another node), if set.
    pub hbone: Option<HboneEndpoint>,
    /// Its cluster's transport socket for it (`Cluster::socket_for`: 0 the cluster's own).
    pub socket: usize,
    /// Its endpoint's `health_check_config`.
    pub health_check: Option<EndpointHealthCheck>,
    active: AtomicUsize,
    outlier: Mutex<OutlierState>,
    /// Active health checking: the checkers of its cluster that fail it (bit `i`: checker
    /// `i`); 0: it passes them all, or there are none.
    hc_failing: AtomicU32,
    /// The number of checkers its cluster had when it was made (its state is kept across
    /// cluster builds only while that holds).
    pub(crate) hc_checkers: usize,
    /// Removed by EDS but kept because it still passed its health checks (Envoy's default
    /// without `ignore_health_on_host_removal`): gone once it fails one.
    removed: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Requests and failures since the last success-rate / failure-percentage sweep.
    window_requests: u32,
    window_failures: u32,
    /// With local-origin errors split: consecutive ones, and the window's connection
    /// attempts and their failures.
    consecutive_local: u32,
    window_local: u32,
    window_local_failures: u32,
}

impl Host {
    /// A host with fresh state.
    pub fn new(address: EndpointAddress, weight: u32) -> Self {
        Host {
            address,
            weight: weight.max(1),
            hbone: None,
            socket: 0,
            health_check: None,
            active: AtomicUsize::new(0),
            outlier: Mutex::new(OutlierState::default()),
            hc_failing: AtomicU32::new(0),
            hc_checkers: 0,
            removed: AtomicBool::new(false),
        }
    }

    /// The host checked by `checkers` active health checkers, as its endpoint's
    /// `health_check_config` says. Until a checker has passed it once, it fails (Envoy
    /// marks new hosts `FAILED_ACTIVE_HC` until their first check); an endpoint with
    /// `disable_active_health_check` always passes.
    pub fn with_health_checks(
        mut self,
        checkers: usize,
        config: Option<EndpointHealthCheck>,
    ) -> Self {
        let disabled = config.as_ref().is_some_and(|c| c.disabled);
        self.hc_checkers = checkers;
        self.health_check = config;
        if !disabled && checkers > 0 {
            self.hc_failing = AtomicU32::new(checker_bits(checkers));
        }
        self
    }

    /// Whether every active health checker passes it (true without any).
    pub fn passes_health_checks(&self) -> bool {
        self.hc_failing.load(Ordering::Relaxed) == 0
    }

    /// Records what checker `checker` last concluded about the host; whether the host as a
    /// whole changed between passing and failing.
    pub(crate) fn set_check(&self, checker: usize, passes: bool) -> bool {
        let bit = 1u32 << checker.min(31);
        let before = if passes {
            self.hc_failing.fetch_and(!bit, Ordering::Relaxed)
        } else {
            self.hc_failing.fetch_or(bit, Ordering::Relaxed)
        };
        let after = if passes { before & !bit } else { before | bit };
        (before == 0) != (after == 0)
    }

    /// Whether checker `checker` fails it.
    pub(crate) fn check_fails(&self, checker: usize) -> bool {
        self.hc_failing.load(Ordering::Relaxed) & (1u32 << checker.min(31)) != 0
    }

    /// Marks it as removed by EDS and kept while it passes its health checks.
    pub(crate) fn mark_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Relaxed);
    }

    /// Whether EDS removed it (it is kept while it passes its health checks).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// The host reached through HBONE as `hbone` says.
    pub fn with_hbone(mut self, hbone: Option<HboneEndpoint>) -> Self {
        self.hbone = hbone;
        self
    }

    /// The host reached over its cluster's transport socket `socket`.
    pub fn with_socket(mut self, socket: usize) -> Self {
        self.socket = socket;
        self
    }

    /// Requests in flight to this host.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the host is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        lock(&self.outlier).ejected_until.is_some_and(|t| now < t)
    }

    /// Whether the host is ejected now (reads the clock only when it has an ejection).
    fn is_ejected_now(&self) -> bool {
        lock(&self.outlier)
            .ejected_until
            .is_some_and(|t| Instant::now() < t)
    }

    /// How many times the host has been ejected.
    pub fn ejections(&self) -> u32 {
        lock(&self.outlier).ejections
    }

    /// Ejects the host for `d` (tests of what ejection does to balancing).
    #[cfg(test)]
    pub(crate) fn eject_for_test(&self, d: std::time::Duration) {
        let mut s = lock(&self.outlier);
        s.ejections += 1;
        s.ejected_until = Some(Instant::now() + d);
    }
}

/// A request in flight to a host (for least-request balancing): counted until dropped.
#[derive(Debug)]
pub struct Active(Arc<Host>);

impl Active {
    /// The host.
    pub fn host(&self) -> &Arc<Host> {
        &self.0
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an attempt came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A response that is not a 5xx.
    Success,
    /// A 500 or 501 or 505+ response.
    ServerError,
    /// A 502, 503 or 504 response.
    GatewayError,
    /// A failure of the proxy's own: no connection, a reset before the answer, a timeout.
    /// A gateway failure unless the cluster splits local-origin errors.
    LocalOriginFailure,
}

impl Report {
    /// The report for a response status.
    pub fn of_status(status: u16) -> Report {
        match status {
            502..=504 => Report::GatewayError,
            500..=599 => Report::ServerError,
            _ => Report::Success,
        }
    }
}

/// Envoy's locality-weighted balancing: one locality, picked by its weight times its
/// health (the share of its endpoints that are usable, times the overprovisioning factor
/// 1.4, at most 1), and only its hosts left usable. When no locality has weight left, all
/// stay usable (Envoy then balances over the whole level).
fn keep_one_locality(localities: &[LocalityShare], usable: &mut [bool]) {
    let effective = |l: &LocalityShare| {
        let up = usable[l.start..l.end].iter().filter(|u| **u).count() as u64;
        let health = (140 * up / l.total.max(1) as u64).min(100);
        u64::from(l.weight) * health
    };
    let sum: u64 = localities.iter().map(effective).sum();
    if sum == 0 {
        return;
    }
    let mut x = fastrand::u64(0..sum);
    let Some(chosen) = localities.iter().find(|l| {
        let w = effective(l);
        if x < w {
            true
        } else {
            x -= w;
            false
        }
    }) else {
        return;
    };
    for (i, u) in usable.iter_mut().enumerate() {
        if i < chosen.start || i >= chosen.end {
            *u = false;
        }
    }
}

/// The load balancer of one cluster.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    hosts: Vec<Arc<Host>>,
    /// Weighted round-robin order (host indexes, each repeated by weight, interleaved).
    rr: Vec<usize>,
    next: AtomicUsize,
    /// Ring hash: (point, host), sorted by point.
    ring: Vec<(u64, usize)>,
    /// Maglev lookup table.
    maglev: Vec<usize>,
    outlier: Option<OutlierDetection>,
    /// When the next success-rate / failure-percentage sweep is due (done by the first
    /// report after it: no timer).
    next_sweep: Mutex<Instant>,
    /// Locality-weighted balancing: the localities of `hosts`; `None`: off.
    localities: Option<Vec<LocalityShare>>,
}

/// One locality of a priority level, for locality-weighted balancing: its routable hosts
/// are `hosts[start..end]` of the balancer, out of `total` endpoints it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityShare {
    /// Its `load_balancing_weight` (0 when not given: no traffic, as in Envoy).
    pub weight: u32,
    pub start: usize,
    pub end: usize,
    pub total: usize,
}

fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
    // SipHash with fixed keys: stable for a given build, so a restarted agent keeps the
    // same ring.
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fn addr_key(a: &EndpointAddress) -> String {
    match a {
        EndpointAddress::Socket(s) => s.to_string(),
        EndpointAddress::Dns { host, port } => format!("{host}:{port}"),
    }
}

impl Balancer {
    /// Builds the balancer over `hosts` (already filtered to the routable ones of one
    /// priority).
    pub fn new(policy: LbPolicy, hosts: Vec<Arc<Host>>, outlier: Option<OutlierDetection>) -> Self {
        let rr = interleave(&hosts);
        let weights: Vec<f64> = hosts.iter().map(|h| f64::from(h.weight)).collect();
        let ring = if policy == LbPolicy::RingHash {
            build_ring(&hosts, &weights)
        } else {
            Vec::new()
        };
        let maglev = if policy == LbPolicy::Maglev {
            build_maglev(&hosts, &weights)
        } else {
            Vec::new()
        };
        Balancer {
            policy,
            hosts,
            rr,
            next: AtomicUsize::new(0),
            ring,
            maglev,
            next_sweep: Mutex::new(
                Instant::now()
                    + outlier
                        .as_ref()
                        .map_or(std::time::Duration::ZERO, |o| o.interval),
            ),
            outlier,
            localities: None,
        }
    }

    /// Balances by locality: round robin, least request and random pick a locality first
    /// (see [`LocalityShare`]); ring hash and Maglev keep one table over every host, built
    /// with each host's weight normalized within its locality times its locality's share
    /// of the weights (Envoy's `ThreadAwareLoadBalancerBase` with locality weighting), so a
    /// locality of weight 0 gets no entries.
    pub fn with_localities(mut self, localities: Vec<LocalityShare>) -> Self {
        match self.policy {
            LbPolicy::RoundRobin | LbPolicy::LeastRequest | LbPolicy::Random => {
                self.localities = Some(localities);
            }
            LbPolicy::RingHash | LbPolicy::Maglev => {
                let weights = locality_weights(&self.hosts, &localities);
                if self.policy == LbPolicy::RingHash {
                    self.ring = build_ring(&self.hosts, &weights);
                } else {
                    self.maglev = build_maglev(&self.hosts, &weights);
                }
            }
        }
        self
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// Picks a host: by `hash` for ring hash and Maglev (random without one), skipping
    /// ejected and `exclude`d hosts while others are available.
    pub fn pick(&self, hash: Option<u64>, exclude: &dyn Fn(&Host) -> bool) -> Option<Active> {
        if self.hosts.is_empty() {
            return None;
        }
        // On the stack for up to 16 hosts, and no clock read while no host has an ejection:
        // this runs for every request.
        let mut usable: SmallVec<[bool; 16]> = self
            .hosts
            .iter()
            .map(|h| !exclude(h) && h.passes_health_checks() && !h.is_ejected_now())
            .collect();
        if !usable.contains(&true) {
            // Panic mode: everything is ejected or excluded; use everything.
            usable.fill(true);
        }
        if let Some(localities) = &self.localities {
            keep_one_locality(localities, &mut usable);
        }
        let i = match self.policy {
            LbPolicy::RoundRobin => self.pick_rr(&usable),
            LbPolicy::Random => self.pick_random(&usable),
            LbPolicy::LeastRequest => self.pick_least(&usable),
            LbPolicy::RingHash => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let start = self.ring.partition_point(|(p, _)| *p < h) % self.ring.len();
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1)
                    .find(|&i| usable[i])
            }
            LbPolicy::Maglev => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let start = (h % self.maglev.len() as u64) as usize;
                (0..self.maglev.len())
                    .map(|k| self.maglev[(start + k) % self.maglev.len()])
                    .find(|&i| usable[i])
            }
        }?;
        let host = self.hosts[i].clone();
        host.active.fetch_add(1, Ordering::Relaxed);
        Some(Active(host))
    }

    /// The host at `addr`, when it is one of these and usable (passing its health
    /// checks, not ejected, not removed): a stateful session's host.
    pub fn pick_address(&self, addr: SocketAddr) -> Option<Active> {
        let want = EndpointAddress::Socket(addr);
        let host = self.hosts.iter().find(|h| {
            h.address == want && h.passes_health_checks() && !h.is_ejected_now() && !h.is_removed()
        })?;
        host.active.fetch_add(1, Ordering::Relaxed);
        Some(Active(host.clone()))
    }

    fn pick_rr(&self, usable: &[bool]) -> Option<usize> {
        let n = self.rr.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.rr[(start + k) % n])
            .find(|&i| usable[i])
    }

    fn pick_random(&self, usable: &[bool]) -> Option<usize> {
        let total: u64 = self
            .hosts
            .iter()
            .zip(usable)
            .filter(|(_, u)| **u)
            .map(|(h, _)| u64::from(h.weight))
            .sum();
        let mut x = fastrand::u64(0..total.max(1));
        for (i, h) in self.hosts.iter().enumerate() {
            if !usable[i] {
                continue;
            }
            if x < u64::from(h.weight) {
                return Some(i);
            }
            x -= u64::from(h.weight);
        }
        None
    }

    /// Power of two choices: the less loaded of two random hosts; with unequal weights
    /// the higher `weight / (active + 1)` (Envoy's weighted least request, bias 1).
    fn pick_least(&self, usable: &[bool]) -> Option<usize> {
        let candidates: SmallVec<[usize; 16]> =
            (0..self.hosts.len()).filter(|&i| usable[i]).collect();
        if candidates.is_empty() {
            return None;
        }
        let a = candidates[fastrand::usize(..candidates.len())];
        let b = candidates[fastrand::usize(..candidates.len())];
        let score = |i: usize| {
            let h = &self.hosts[i];
            f64::from(h.weight) / (h.active() as f64 + 1.0)
        };
        Some(if score(b) > score(a) { b } else { a })
    }

    /// Records what an attempt to `host` came to, and ejects the host when the outlier
    /// detection's consecutive-failure thresholds say so; once an `interval` has passed,
    /// sweeps the hosts for success-rate and failure-percentage outliers.
    pub fn report(&self, host: &Host, report: Report) {
        let Some(cfg) = &self.outlier else {
            return;
        };
        let now = Instant::now();
        let eject = {
            let mut s = lock(&host.outlier);
            if s.ejected_until.is_some_and(|t| now >= t) {
                // Back from an ejection: counting starts over.
                s.ejected_until = None;
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                s.consecutive_local = 0;
            }
            let split = cfg.split_external_local_origin_errors;
            let report = match report {
                Report::LocalOriginFailure if !split => Report::GatewayError,
                r => r,
            };
            if split {
                // A connection attempt: failed, or (any answer) made.
                s.window_local = s.window_local.saturating_add(1);
            }
            match report {
                Report::LocalOriginFailure => {
                    s.window_local_failures = s.window_local_failures.saturating_add(1);
                    s.consecutive_local += 1;
                    cfg.consecutive_local_origin_failure > 0
                        && s.consecutive_local >= cfg.consecutive_local_origin_failure
                        && roll(cfg.enforcing_consecutive_local_origin_failure)
                }
                Report::Success => {
                    s.window_requests = s.window_requests.saturating_add(1);
                    s.consecutive_5xx = 0;
                    s.consecutive_gateway = 0;
                    s.consecutive_local = 0;
                    false
                }
                Report::ServerError | Report::GatewayError => {
                    s.window_requests = s.window_requests.saturating_add(1);
                    s.window_failures = s.window_failures.saturating_add(1);
                    if split {
                        s.consecutive_local = 0;
                    }
                    s.consecutive_5xx += 1;
                    if report == Report::GatewayError {
                        s.consecutive_gateway += 1;
                    }
                    let by_5xx = cfg.consecutive_5xx > 0
                        && s.consecutive_5xx >= cfg.consecutive_5xx
                        && roll(cfg.enforcing_consecutive_5xx);
                    let by_gateway = cfg.consecutive_gateway_failure > 0
                        && s.consecutive_gateway >= cfg.consecutive_gateway_failure
                        && roll(cfg.enforcing_consecutive_gateway_failure);
                    by_5xx || by_gateway
                }
            }
        };
        if eject {
            self.eject(host, now, cfg);
        }
        let local = cfg.split_external_local_origin_errors
            && (cfg.enforcing_local_origin_success_rate > 0
                || cfg.enforcing_failure_percentage_local_origin > 0);
        if cfg.enforcing_success_rate > 0 || cfg.enforcing_failure_percentage > 0 || local {
            self.sweep_if_due(now, cfg);
        }
    }

    /// Ejects `host` unless it is out already or `max_ejection_percent` of the hosts are
    /// (at least one may always be); each ejection lasts longer than the last.
    fn eject(&self, host: &Host, now: Instant, cfg: &OutlierDetection) {
        if host.is_ejected(now) {
            return;
        }
        let ejected = self.hosts.iter().filter(|h| h.is_ejected(now)).count();
        let max = (self.hosts.len() * cfg.max_ejection_percent as usize / 100).max(1);
        if ejected >= max {
            return;
        }
        let mut s = lock(&host.outlier);
        s.ejections += 1;
        let time = cfg
            .base_ejection_time
            .saturating_mul(s.ejections)
            .min(cfg.max_ejection_time.max(cfg.base_ejection_time));
        s.ejected_until = Some(now + time);
        s.consecutive_5xx = 0;
        s.consecutive_gateway = 0;
    }

    /// Envoy's interval sweep for the statistical ejections, over this balancer's hosts
    /// (one priority level), counting what was reported since the last sweep: success
    /// rate (a host more than `success_rate_stdev_factor / 1000` standard deviations
    /// below the mean success rate of the hosts with enough requests, when there are
    /// enough such hosts) and failure percentage (a host whose failures reach the
    /// threshold). Failures are what [`Report`] says failed: 5xx answers and connection
    /// failures, resets and timeouts.
    fn sweep_if_due(&self, now: Instant, cfg: &OutlierDetection) {
        {
            // One sweep at a time; a report that finds it taken goes on.
            let Ok(mut next) = self.next_sweep.try_lock() else {
                return;
            };
            if now < *next {
                return;
            }
            *next = now + cfg.interval;
        }
        // Each host's window: (answers, failed answers), (connection attempts, failed
        // ones), taken and reset.
        let windows: SmallVec<[(Window, Window); 16]> = self
            .hosts
            .iter()
            .map(|h| {
                let mut s = lock(&h.outlier);
                let w = (
                    (s.window_requests, s.window_failures),
                    (s.window_local, s.window_local_failures),
                );
                (s.window_requests, s.window_failures) = (0, 0);
                (s.window_local, s.window_local_failures) = (0, 0);
                w
            })
            .collect();
        let external: SmallVec<[Window; 16]> = windows.iter().map(|w| w.0).collect();
        let mut outliers = statistical_outliers(
            &external,
            cfg,
            cfg.enforcing_success_rate,
            cfg.enforcing_failure_percentage,
        );
        if cfg.split_external_local_origin_errors {
            let local: SmallVec<[Window; 16]> = windows.iter().map(|w| w.1).collect();
            outliers.extend(statistical_outliers(
                &local,
                cfg,
                cfg.enforcing_local_origin_success_rate,
                cfg.enforcing_failure_percentage_local_origin,
            ));
        }
        for i in outliers {
            self.eject(&self.hosts[i], now, cfg);
        }
    }
}

/// A host's events and failures since the last sweep.
type Window = (u32, u32);

/// The hosts (by index) whose window of `(events, failures)` makes them a statistical
/// outlier, each kind enforced with its chance: success rate (more than
/// `success_rate_stdev_factor / 1000` standard deviations below the mean of the hosts with
/// `success_rate_request_volume` events, when there are `success_rate_minimum_hosts` of
/// them) and failure percentage (at least the threshold, among hosts with enough events).
fn statistical_outliers(
    windows: &[Window],
    cfg: &OutlierDetection,
    enforcing_success_rate: u32,
    enforcing_failure_percentage: u32,
) -> SmallVec<[usize; 4]> {
    let mut outliers = SmallVec::new();
    if enforcing_success_rate > 0 {
        let rates: SmallVec<[(usize, f64); 16]> = windows
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n > 0 && *n >= cfg.success_rate_request_volume)
            .map(|(i, &(n, f))| (i, 100.0 * f64::from(n - f) / f64::from(n)))
            .collect();
        if !rates.is_empty() && rates.len() >= cfg.success_rate_minimum_hosts as usize {
            let k = rates.len() as f64;
            let mean = rates.iter().map(|r| r.1).sum::<f64>() / k;
            let variance = rates.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / k;
            let threshold =
                mean - f64::from(cfg.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
            outliers.extend(
                rates
                    .iter()
                    .filter(|r| r.1 < threshold && roll(enforcing_success_rate))
                    .map(|r| r.0),
            );
        }
    }
    if enforcing_failure_percentage > 0 {
        let enough: SmallVec<[(usize, u32, u32); 16]> = windows
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n > 0 && *n >= cfg.failure_percentage_request_volume)
            .map(|(i, &(n, f))| (i, n, f))
            .collect();
        if !enough.is_empty() && enough.len() >= cfg.failure_percentage_minimum_hosts as usize {
            outliers.extend(
                enough
                    .iter()
                    .filter(|&&(_, n, f)| {
                        u64::from(f) * 100
                            >= u64::from(cfg.failure_percentage_threshold) * u64::from(n)
                            && roll(enforcing_failure_percentage)
                    })
                    .map(|&(i, _, _)| i),
            );
        }
    }
    outliers
}

/// `true` with probability `percent`%.
fn roll(percent: u32) -> bool {
    percent >= 100 || fastrand::u32(0..100) < percent
}

/// Smooth weighted round robin order (nginx's): over one cycle each host appears `weight`
/// times, spread out rather than in runs.
fn interleave(hosts: &[Arc<Host>]) -> Vec<usize> {
    let total: i64 = hosts.iter().map(|h| i64::from(h.weight)).sum();
    let mut current = vec![0i64; hosts.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, h) in hosts.iter().enumerate() {
            current[i] += i64::from(h.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best);
    }
    order
}

/// Each host's weight for a hash table under locality weighting: its weight over its
/// locality's, times its locality's weight over all localities' (a host outside every
/// locality counts as a locality of its own weight). All zero (no locality weighted): the
/// hosts' own weights.
fn locality_weights(hosts: &[Arc<Host>], localities: &[LocalityShare]) -> Vec<f64> {
    let mut weights: Vec<f64> = hosts.iter().map(|h| f64::from(h.weight)).collect();
    let sum: f64 = localities
        .iter()
        .filter(|l| l.end > l.start)
        .map(|l| f64::from(l.weight))
        .sum();
    if sum == 0.0 {
        return weights;
    }
    let mut covered = vec![false; hosts.len()];
    for l in localities {
        let within: f64 = weights[l.start..l.end].iter().sum();
        for i in l.start..l.end {
            covered[i] = true;
            weights[i] = if within > 0.0 {
                weights[i] / within * f64::from(l.weight) / sum
            } else {
                0.0
            };
        }
    }
    // Retained hosts (removed from EDS, still draining) belong to no locality: none.
    for (w, c) in weights.iter_mut().zip(&covered) {
        if !c {
            *w = 0.0;
        }
    }
    if weights.iter().all(|w| *w == 0.0) {
        return hosts.iter().map(|h| f64::from(h.weight)).collect();
    }
    weights
}

/// `weights`, or all alike when none is above 0 (a table must have entries).
fn some_weight(weights: &[f64]) -> std::borrow::Cow<'_, [f64]> {
    if weights.iter().any(|w| *w > 0.0) {
        std::borrow::Cow::Borrowed(weights)
    } else {
        std::borrow::Cow::Owned(vec![1.0; weights.len()])
    }
}

fn build_ring(hosts: &[Arc<Host>], weights: &[f64]) -> Vec<(u64, usize)> {
    let weights = some_weight(weights);
    let total: f64 = weights.iter().sum();
    let mut ring = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let entries = (RING_SIZE as f64 * weights[i] / total).ceil() as u64;
        let key = addr_key(&h.address);
        for k in 0..entries {
            ring.push((hash_of(&format!("{key}_{k}")), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// The Maglev lookup table (Eisenbud et al. 2016), weighted as Envoy does: each round a
/// host claims its next preferred slot only while its share of claims stays within its
/// share of the weight.
fn build_maglev(hosts: &[Arc<Host>], weights: &[f64]) -> Vec<usize> {
    let m = MAGLEV_SIZE;
    if hosts.is_empty() {
        return Vec::new();
    }
    let weights = some_weight(weights);
    let max_weight = weights.iter().copied().fold(0.0, f64::max);
    let prefs: Vec<(usize, usize)> = hosts
        .iter()
        .map(|h| {
            let key = addr_key(&h.address);
            let offset = (hash_of(&(&key, 0u8)) % m as u64) as usize;
            let skip = (hash_of(&(&key, 1u8)) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; hosts.len()];
    let mut claimed = vec![0usize; hosts.len()];
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    let mut iteration = 0usize;
    while filled < m {
        for i in 0..hosts.len() {
            let share = weights[i] / max_weight;
            if share <= 0.0 {
                continue;
            }
            if ((iteration + 1) as f64 * share) < (claimed[i] + 1) as f64 {
                continue;
            }
            let (offset, skip) = prefs[i];
            loop {
                let c = (offset + next[i] * skip) % m;
                next[i] += 1;
                if table[c] == usize::MAX {
                    table[c] = i;
                    claimed[i] += 1;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
        iteration += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Host::new(
                    EndpointAddress::Socket(format!("10.0.0.{}:80", i + 1).parse().unwrap()),
                    *w,
                ))
            })
            .collect()
    }

    fn name(a: &Active) -> String {
        addr_key(&a.host().address)
    }

    fn counts(
        b: &Balancer,
        n: usize,
        hash: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for i in 0..n {
            *c.entry(name(&b.pick(hash(i), &|_| false).unwrap()))
                .or_default() += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_is_exact_and_spread() {
        let b = Balancer::new(LbPolicy::RoundRobin, hosts(&[1, 2, 3]), None);
        let c = counts(&b, 600, |_| None);
        assert_eq!(c["10.0.0.1:80"], 100);
        assert_eq!(c["10.0.0.2:80"], 200);
        assert_eq!(c["10.0.0.3:80"], 300);
        // Smooth: the heaviest host never gets more than 2 in a row.
        let order = interleave(&hosts(&[1, 2, 3]));
        assert_eq!(order.len(), 6);
        assert!(
            order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
            "{order:?}"
        );
    }

    /// Locality-weighted balancing: a locality by weight times health, then a host in it by
    /// the policy; an unweighted locality gets nothing; the hash policies are not affected.
    #[test]
    fn localities_share_by_weight_and_health() {
        let share = |weight, start, end, total| LocalityShare {
            weight,
            start,
            end,
            total,
        };
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::Random,
        ] {
            // Hosts 1-2 in a locality of weight 3, 3-4 in one of weight 1, 5 in one
            // without a weight.
            let b = Balancer::new(policy, hosts(&[1, 1, 1, 1, 1]), None).with_localities(vec![
                share(3, 0, 2, 2),
                share(1, 2, 4, 2),
                share(0, 4, 5, 1),
            ]);
            let c = counts(&b, 8000, |_| None);
            let of = |h: &[&str]| {
                h.iter()
                    .map(|h| c.get(*h).copied().unwrap_or(0))
                    .sum::<usize>()
            };
            let first = of(&["10.0.0.1:80", "10.0.0.2:80"]) as f64 / 8000.0;
            assert!((first - 0.75).abs() < 0.03, "{policy:?} {c:?}");
            assert_eq!(of(&["10.0.0.5:80"]), 0, "{policy:?} {c:?}");
            // Both hosts of a locality take traffic.
            assert!(c["10.0.0.1:80"] > 1000 && c["10.0.0.2:80"] > 1000, "{c:?}");
        }
        // Health: one routable endpoint of four is 35 % of its weight (1.4 x 1/4), against
        // a whole locality of the same weight: 35 / 135.
        let b = Balancer::new(LbPolicy::Random, hosts(&[1, 1]), None)
            .with_localities(vec![share(1, 0, 1, 4), share(1, 1, 2, 1)]);
        let c = counts(&b, 8000, |_| None);
        let degraded = c["10.0.0.1:80"] as f64 / 8000.0;
        assert!((degraded - 35.0 / 135.0).abs() < 0.03, "{c:?}");
        // No weight anywhere: every host, as without localities.
        let b = Balancer::new(LbPolicy::RoundRobin, hosts(&[1, 1]), None)
            .with_localities(vec![share(0, 0, 1, 1), share(0, 1, 2, 1)]);
        assert_eq!(counts(&b, 100, |_| None).len(), 2);
        // Maglev keeps its table over all hosts.
        let b = Balancer::new(LbPolicy::Maglev, hosts(&[1, 1]), None)
            .with_localities(vec![share(1, 0, 1, 1), share(0, 1, 2, 1)]);
        assert!(b.localities.is_none());
    }

    #[test]
    fn random_follows_weights() {
        let b = Balancer::new(LbPolicy::Random, hosts(&[1, 3]), None);
        let c = counts(&b, 8000, |_| None);
        let share = c["10.0.0.2:80"] as f64 / 8000.0;
        assert!((share - 0.75).abs() < 0.03, "{c:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_host() {
        let b = Balancer::new(LbPolicy::LeastRequest, hosts(&[1, 1, 1]), None);
        // Hold 50 requests on host 1.
        let held: Vec<Active> = (0..50)
            .map(|_| {
                let a = b
                    .pick(None, &|h| addr_key(&h.address) != "10.0.0.1:80")
                    .unwrap();
                assert_eq!(name(&a), "10.0.0.1:80");
                a
            })
            .collect();
        let c = counts(&b, 3000, |_| None);
        // Picked only when both choices are host 1: 1/9 of the time.
        let busy = c.get("10.0.0.1:80").copied().unwrap_or(0) as f64 / 3000.0;
        assert!(busy < 0.16, "{c:?}");
        drop(held);
        assert_eq!(b.hosts()[0].active(), 0);
    }

    #[test]
    fn ring_hash_and_maglev_are_consistent() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let b = Balancer::new(policy, hosts(&[1, 1, 1]), None);
            // The same hash always goes to the same host.
            for h in [1u64, 42, 7_000_000_007, u64::MAX] {
                let first = name(&b.pick(Some(h), &|_| false).unwrap());
                for _ in 0..5 {
                    assert_eq!(name(&b.pick(Some(h), &|_| false).unwrap()), first);
                }
            }
            // Hashes spread roughly evenly.
            let c = counts(&b, 3000, |i| Some(hash_of(&i)));
            for (host, n) in &c {
                assert!((700..=1300).contains(n), "{policy:?} {host}: {c:?}");
            }
            // Removing one host moves only (about) its share of keys.
            let fewer = Balancer::new(policy, hosts(&[1, 1]), None);
            let moved = (0..3000)
                .filter(|i| {
                    let h = Some(hash_of(i));
                    let before = name(&b.pick(h, &|_| false).unwrap());
                    let after = name(&fewer.pick(h, &|_| false).unwrap());
                    before != "10.0.0.3:80" && before != after
                })
                .count();
            assert!(
                moved < 300,
                "{policy:?}: {moved} keys of surviving hosts moved"
            );
        }
    }

    #[test]
    fn maglev_follows_weights() {
        let b = Balancer::new(LbPolicy::Maglev, hosts(&[1, 3]), None);
        let heavy = b.maglev.iter().filter(|&&i| i == 1).count() as f64 / MAGLEV_SIZE as f64;
        assert!((heavy - 0.75).abs() < 0.02, "{heavy}");
    }

    #[test]
    fn hash_tables_follow_locality_weights() {
        // Hosts 0-1 in a locality of weight 3, host 2 alone in one of weight 1, host 3 in
        // one of weight 0: 3/8, 3/8, 1/4 and nothing, whatever the hosts' own weights
        // within a locality say about the split between localities.
        let shares = || {
            vec![
                LocalityShare {
                    weight: 3,
                    start: 0,
                    end: 2,
                    total: 2,
                },
                LocalityShare {
                    weight: 1,
                    start: 2,
                    end: 3,
                    total: 1,
                },
                LocalityShare {
                    weight: 0,
                    start: 3,
                    end: 4,
                    total: 1,
                },
            ]
        };
        let want = [0.375, 0.375, 0.25, 0.0];
        let maglev =
            Balancer::new(LbPolicy::Maglev, hosts(&[5, 5, 1, 9]), None).with_localities(shares());
        let ring =
            Balancer::new(LbPolicy::RingHash, hosts(&[5, 5, 1, 9]), None).with_localities(shares());
        for (i, w) in want.iter().enumerate() {
            let m = maglev.maglev.iter().filter(|&&h| h == i).count() as f64 / MAGLEV_SIZE as f64;
            assert!((m - w).abs() < 0.02, "maglev host {i}: {m}");
            let r =
                ring.ring.iter().filter(|(_, h)| *h == i).count() as f64 / ring.ring.len() as f64;
            assert!((r - w).abs() < 0.02, "ring host {i}: {r}");
        }
        // Picks follow the table; the hash still picks the same host.
        let picked = ring.pick(Some(42), &|_| false).map(|a| name(&a));
        assert_eq!(picked, ring.pick(Some(42), &|_| false).map(|a| name(&a)));
        assert!(
            maglev.localities.is_none(),
            "no locality is picked first for hashes"
        );
    }

    fn outlier() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_time: Duration::from_millis(50),
            max_ejection_time: Duration::from_millis(500),
            max_ejection_percent: 50,
            ..OutlierDetection::default()
        }
    }

    /// Success rate and failure percentage, swept once per interval over what was reported
    /// in it: only hosts with enough requests count, and only when enough hosts have them.
    #[test]
    fn statistical_outliers_are_ejected_at_the_interval() {
        let statistical = |sr: u32, fp: u32| OutlierDetection {
            consecutive_5xx: 0,
            interval: Duration::from_millis(20),
            enforcing_success_rate: sr,
            enforcing_failure_percentage: fp,
            ..outlier()
        };
        // `fails[i]` of 100 requests to host i fail; then the interval passes and one more
        // report sweeps. Which hosts are ejected?
        let run = |cfg: OutlierDetection, fails: &[u32]| {
            let b = Balancer::new(
                LbPolicy::RoundRobin,
                hosts(&vec![1; fails.len()]),
                Some(cfg),
            );
            for (h, &f) in b.hosts().iter().zip(fails) {
                for k in 0..100 {
                    let r = if k < f {
                        Report::ServerError
                    } else {
                        Report::Success
                    };
                    b.report(h, r);
                }
            }
            let ejected = |b: &Balancer| -> Vec<usize> {
                (0..fails.len())
                    .filter(|&i| b.hosts()[i].is_ejected(Instant::now()))
                    .collect()
            };
            assert_eq!(
                ejected(&b),
                Vec::<usize>::new(),
                "nothing before the interval"
            );
            std::thread::sleep(Duration::from_millis(25));
            b.report(&b.hosts()[0].clone(), Report::Success);
            ejected(&b)
        };
        // Success rate (Envoy's default): 50 % against 99-100 % is far below the mean.
        assert_eq!(run(statistical(100, 0), &[0, 1, 0, 1, 0, 50]), [5]);
        // Five hosts with enough requests are needed.
        assert_eq!(
            run(statistical(100, 0), &[0, 1, 0, 50]),
            Vec::<usize>::new()
        );
        // Off when not enforced.
        assert_eq!(
            run(statistical(0, 0), &[0, 1, 0, 1, 0, 50]),
            Vec::<usize>::new()
        );
        // Failure percentage: 85 % or more.
        assert_eq!(run(statistical(0, 100), &[0, 90, 84, 0, 85]), [1, 4]);
        // At most max_ejection_percent (50 % of 5: 2).
        assert_eq!(run(statistical(0, 100), &[90, 90, 90, 0, 90]).len(), 2);
    }

    /// Failures of the proxy's own (no connection, a reset, a timeout) are gateway failures,
    /// unless the cluster splits them off: then they have their own count, and an answer
    /// (even a 5xx) resets it.
    #[test]
    fn local_origin_failures_count_apart_when_split() {
        let cfg = |split| OutlierDetection {
            consecutive_5xx: 3,
            split_external_local_origin_errors: split,
            consecutive_local_origin_failure: 2,
            enforcing_success_rate: 0,
            max_ejection_percent: 100,
            ..outlier()
        };
        let b = Balancer::new(LbPolicy::RoundRobin, hosts(&[1, 1]), Some(cfg(false)));
        let h = b.hosts()[0].clone();
        for _ in 0..2 {
            b.report(&h, Report::LocalOriginFailure);
        }
        assert!(!h.is_ejected(Instant::now()), "2 gateway failures of 3");
        b.report(&h, Report::LocalOriginFailure);
        assert!(h.is_ejected(Instant::now()), "3 gateway failures");

        let b = Balancer::new(LbPolicy::RoundRobin, hosts(&[1, 1]), Some(cfg(true)));
        let h = b.hosts()[0].clone();
        // Interleaved, the local count never reaches 2 (an answer resets it) and local
        // failures do not count as 5xx: only the third 5xx ejects.
        for i in 0..3 {
            assert!(!h.is_ejected(Instant::now()), "{i}");
            b.report(&h, Report::LocalOriginFailure);
            b.report(&h, Report::ServerError);
        }
        assert!(h.is_ejected(Instant::now()), "the third 5xx ejects");
        let h = b.hosts()[1].clone();
        for _ in 0..4 {
            b.report(&h, Report::LocalOriginFailure);
            b.report(&h, Report::Success);
        }
        assert!(!h.is_ejected(Instant::now()));
        b.report(&h, Report::LocalOriginFailure);
        b.report(&h, Report::LocalOriginFailure);
        assert!(h.is_ejected(Instant::now()), "two in a row");
    }

    #[test]
    fn consecutive_errors_eject_for_growing_times() {
        let b = Balancer::new(LbPolicy::RoundRobin, hosts(&[1, 1]), Some(outlier()));
        let bad = b.hosts()[0].clone();
        b.report(&bad, Report::ServerError);
        b.report(&bad, Report::Success);
        b.report(&bad, Report::ServerError);
        b.report(&bad, Report::ServerError);
        assert!(
            !bad.is_ejected(Instant::now()),
            "a success resets the count"
        );
        b.report(&bad, Report::GatewayError);
        assert!(bad.is_ejected(Instant::now()));
        assert_eq!(bad.ejections(), 1);
        let c = counts(&b, 10, |_| None);
        assert_eq!(c.get("10.0.0.1:80"), None, "an ejected host is not picked");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !bad.is_ejected(Instant::now()),
            "back after base_ejection_time"
        );
        for _ in 0..3 {
            b.report(&bad, Report::ServerError);
        }
        assert_eq!(bad.ejections(), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            bad.is_ejected(Instant::now()),
            "the second ejection lasts 2 x base"
        );
    }

    #[test]
    fn max_ejection_percent_and_panic() {
        let b = Balancer::new(LbPolicy::RoundRobin, hosts(&[1, 1]), Some(outlier()));
        for h in b.hosts().to_vec() {
            for _ in 0..3 {
                b.report(&h, Report::ServerError);
            }
        }
        // 50% of 2 hosts: only one may be out.
        let ejected = b
            .hosts()
            .iter()
            .filter(|h| h.is_ejected(Instant::now()))
            .count();
        assert_eq!(ejected, 1);
        // With every host excluded the balancer still answers (panic mode).
        assert!(b.pick(None, &|_| true).is_some());
    }
}
