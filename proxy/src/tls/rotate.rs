//! Keeps the certificates of the node's workloads fresh: each is renewed at half its
//! lifetime (as Istio and SPIRE do), a failed renewal is retried with backoff, and the
//! time left on every certificate is a gauge (`myelin_identity_cert_expiry_seconds`);
//! a certificate whose renewal is failing is logged as a warning with the time it has
//! left.
//!
//! Certificates come from a [`CertSource`]: the embedded CA in standalone mode. With SDS
//! the control plane rotates them (`super::sds`), and [`watch_expiry`] keeps the gauge.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use super::ca::{Ca, Issued};
use super::{Identities, SpiffeId};

/// Where certificates come from.
pub trait CertSource: Send + Sync + 'static {
    /// A new certificate for `id`.
    fn issue(&self, id: &SpiffeId) -> Result<Issued, String>;
}

/// The embedded CA, issuing certificates of one lifetime.
#[derive(Debug)]
pub struct CaSource {
    pub ca: Ca,
    pub lifetime: Duration,
}

impl CertSource for CaSource {
    fn issue(&self, id: &SpiffeId) -> Result<Issued, String> {
        self.ca.issue(id, self.lifetime).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Rotation metrics.
#[derive(Debug, Default, Clone)]
pub struct RotationMetrics {
    expiry: Family<IdentityLabels, Gauge>,
    issued: Family<ResultLabels, Counter>,
}

impl RotationMetrics {
    /// Registers `identity_cert_expiry_seconds` and `identity_certs_issued_total`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "identity_cert_expiry_seconds",
            "Seconds until the workload certificate expires (negative: expired)",
            m.expiry.clone(),
        );
        registry.register(
            "identity_certs_issued",
            "Workload certificates issued or renewed, by result",
            m.issued.clone(),
        );
        m
    }

    /// Issues so far with `result` (`ok` or `error`).
    pub fn issued(&self, result: &'static str) -> u64 {
        self.issued.get_or_create(&ResultLabels { result }).get()
    }

    /// Sets `id`'s expiry gauge to the seconds from `now` to `not_after`, and returns them.
    fn set_expiry(&self, id: &SpiffeId, not_after: SystemTime, now: SystemTime) -> i64 {
        let left = seconds_left(not_after, now);
        self.expiry
            .get_or_create(&IdentityLabels {
                identity: id.to_string(),
            })
            .set(left);
        left
    }
}

/// Keeps the expiry gauge of every certificate in `identities` current (every 10 s) and
/// warns about certificates with less than a quarter of their lifetime left: with SDS the
/// control plane renews them, and one that does not is on its way to expiry. Runs until
/// dropped.
pub async fn watch_expiry(identities: Arc<Identities>, metrics: RotationMetrics) {
    let mut known: BTreeSet<SpiffeId> = BTreeSet::new();
    loop {
        let now = SystemTime::now();
        let certs = identities.certificates();
        for id in &known {
            if !certs.iter().any(|(c, _)| c == id) {
                metrics.expiry.remove(&IdentityLabels {
                    identity: id.to_string(),
                });
            }
        }
        known = certs.iter().map(|(id, _)| id.clone()).collect();
        for (id, c) in certs {
            let left = metrics.set_expiry(&id, c.not_after, now);
            let lifetime = c.not_after.duration_since(c.not_before).unwrap_or_default();
            if left < (lifetime / 4).as_secs() as i64 {
                warn!(identity = %id, seconds_left = left, "workload certificate is close to expiry and SDS has not renewed it");
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

fn seconds_left(not_after: SystemTime, now: SystemTime) -> i64 {
    match not_after.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Backoff after a failed issue: 1 s doubling to 1 min.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60))
}

/// When a certificate valid from `nb` to `na` is renewed: at half its lifetime.
fn renew_at(nb: SystemTime, na: SystemTime) -> SystemTime {
    nb + na.duration_since(nb).unwrap_or_default() / 2
}

/// Keeps `wanted`'s identities issued and fresh in `identities`, until `wanted`'s
/// sender is dropped. Identities that leave the set are removed.
pub async fn run(
    identities: Arc<Identities>,
    source: Arc<dyn CertSource>,
    metrics: RotationMetrics,
    mut wanted: watch::Receiver<BTreeSet<SpiffeId>>,
) {
    // Next attempt per identity, and consecutive failures.
    let mut due: HashMap<SpiffeId, (SystemTime, u32)> = HashMap::new();
    loop {
        let set = wanted.borrow_and_update().clone();
        due.retain(|id, _| set.contains(id));
        for id in identities.certificates().into_iter().map(|(id, _)| id) {
            if !set.contains(&id) {
                identities.remove(&id);
                metrics.expiry.remove(&IdentityLabels {
                    identity: id.to_string(),
                });
            }
        }
        let now = SystemTime::now();
        for id in &set {
            let (at, failures) =
                *due.entry(id.clone())
                    .or_insert_with(|| match identities.certificate(id) {
                        Some(c) => (renew_at(c.not_before, c.not_after), 0),
                        None => (now, 0),
                    });
            if at > now {
                continue;
            }
            match source.issue(id).and_then(|issued| {
                identities
                    .insert(&issued)
                    .map(|()| issued)
                    .map_err(|e| e.to_string())
            }) {
                Ok(issued) => {
                    metrics
                        .issued
                        .get_or_create(&ResultLabels { result: "ok" })
                        .inc();
                    info!(identity = %id, not_after = ?issued.not_after, "workload certificate issued");
                    // Half of what is left from now: the CA backdates `not_before` a
                    // little for clock skew, which must not count as lifetime used.
                    let left = issued.not_after.duration_since(now).unwrap_or_default();
                    let at = now + (left / 2).max(Duration::from_secs(1));
                    due.insert(id.clone(), (at, 0));
                }
                Err(e) => {
                    metrics
                        .issued
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    warn!(identity = %id, error = %e, failures = failures + 1, "issuing a workload certificate failed; retrying");
                    due.insert(id.clone(), (now + backoff(failures), failures + 1));
                }
            }
        }
        // Time left on each certificate; a warning once three quarters are gone.
        for (id, c) in identities.certificates() {
            let left = metrics.set_expiry(&id, c.not_after, now);
            // Renewals keep a certificate in its first half; one whose renewal keeps
            // failing is on its way to expiry: say so with every failed attempt.
            let failing = due.get(&id).is_some_and(|(_, failures)| *failures > 0);
            if failing {
                warn!(identity = %id, seconds_left = left, "workload certificate is close to expiry and its renewal is failing");
            }
        }
        let next = due.values().map(|(at, _)| *at).min();
        let sleep = next
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            // Refresh the gauges at least every 10 s.
            .map_or(Duration::from_secs(10), |d| d.min(Duration::from_secs(10)));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            changed = wanted.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A source that fails its first `fail` issues.
    struct Flaky {
        inner: CaSource,
        fail: AtomicU32,
    }

    impl CertSource for Flaky {
        fn issue(&self, id: &SpiffeId) -> Result<Issued, String> {
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("CA unavailable".into());
            }
            self.inner.issue(id)
        }
    }

    #[tokio::test]
    async fn renews_at_half_life_and_retries_failures() {
        let ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let ids = Identities::new("cluster.local", &[ca.cert_der().clone()]).unwrap();
        let web = SpiffeId::new("cluster.local", "shop", "web").unwrap();
        let source = Arc::new(Flaky {
            // 4 s certificates: renewed every 2 s.
            inner: CaSource {
                ca,
                lifetime: Duration::from_secs(4),
            },
            fail: AtomicU32::new(1),
        });
        let mut registry = Registry::default();
        let metrics = RotationMetrics::new(&mut registry);
        let (tx, rx) = watch::channel(BTreeSet::from([web.clone()]));
        let task = tokio::spawn(run(ids.clone(), source, metrics.clone(), rx));
        // The first issue fails; the retry (1 s later) succeeds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ids.certificate(&web).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never issued");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metrics.issued("error"), 1);
        let first = ids.certificate(&web).unwrap();
        let issued_first = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let c = ids.certificate(&web).unwrap();
            if c.not_after > first.not_after {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never renewed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // At half the lifetime (2 s), not at once although `not_before` is backdated.
        let renewed_after = issued_first.elapsed();
        assert!(
            renewed_after >= Duration::from_millis(1500),
            "{renewed_after:?}"
        );
        assert_eq!(metrics.issued("ok"), 2);
        // Leaving the set removes the identity.
        tx.send_replace(BTreeSet::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ids.certificate(&web).is_some() {
            assert!(tokio::time::Instant::now() < deadline, "never removed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the task ends with its sender")
            .unwrap();
    }
}
