//! What the ADS client reports: connection state, reconnects, accepted and rejected updates per
//! resource type, the last accepted version and the last NACK per type.
//!
//! One [`AdsStats`] (cheap to clone, shared with the admin server) holds prometheus-client
//! metrics, which are atomics, plus a small mutex-guarded table for the strings (versions and
//! NACK messages). The mutex is never held across an `.await`.
//!
//! | name (after the caller's prefix)  | type    | labels |
//! |-----------------------------------|---------|--------|
//! | `xds_connected`                   | gauge   | |
//! | `xds_reconnects_total`            | counter | |
//! | `xds_updates_accepted_total`      | counter | `type` (`cds`, `eds`, `lds`, `rds`, `sds`) |
//! | `xds_updates_rejected_total`      | counter | `type` |
//!
//! An "update" is one discovery response: accepted when every resource in it applied (ACK),
//! rejected when at least one did not (NACK; the good ones still applied).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::type_url;

/// Labels of the per-type update counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `cds`, `eds`, `lds`, `rds`, `sds`, or `other`.
    pub r#type: &'static str,
}

/// Live xDS client statistics; clones share the same counters.
#[derive(Debug, Clone, Default)]
pub struct AdsStats {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connected: Gauge,
    reconnects: Counter,
    accepted: Family<TypeLabels, Counter>,
    rejected: Family<TypeLabels, Counter>,
    types: Mutex<BTreeMap<String, TypeStatus>>,
}

/// Per resource type: what was last accepted and rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// Responses applied in full and ACKed.
    pub accepted: u64,
    /// Responses NACKed (at least one resource rejected).
    pub rejected: u64,
    /// `version_info` (SotW) or `system_version_info` (delta) of the last ACKed response.
    pub last_accepted_version: Option<String>,
    /// When the last response was ACKed (serialized as RFC 3339 UTC, like the store's dump).
    #[serde(serialize_with = "opt_rfc3339")]
    pub last_accepted_at: Option<SystemTime>,
    /// The last NACK sent for this type.
    pub last_nack: Option<Nack>,
}

/// One NACK as sent to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// When it was sent (serialized as RFC 3339 UTC).
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// Version of the rejected response (the NACK itself carries the last accepted one).
    pub rejected_version: String,
    /// Nonce of the rejected response.
    pub nonce: String,
    /// The `error_detail` message: each rejected resource and why.
    pub message: String,
}

/// A point-in-time copy of [`AdsStats`], for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdsStatsSnapshot {
    /// An ADS stream is established.
    pub connected: bool,
    /// Connection attempts after the first one.
    pub reconnects: u64,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

impl AdsStats {
    /// Fresh statistics, not connected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the metrics (`xds_*`) in `registry`; the agent passes its `myelin`
    /// sub-registry, so the names come out as `myelin_xds_*`.
    pub fn register(&self, registry: &mut Registry) {
        let i = &self.inner;
        registry.register(
            "xds_connected",
            "1 while an ADS stream is established",
            i.connected.clone(),
        );
        registry.register(
            "xds_reconnects",
            "ADS connection attempts after the first one",
            i.reconnects.clone(),
        );
        registry.register(
            "xds_updates_accepted",
            "xDS responses applied in full and ACKed, per resource type",
            i.accepted.clone(),
        );
        registry.register(
            "xds_updates_rejected",
            "xDS responses NACKed (at least one resource rejected), per resource type",
            i.rejected.clone(),
        );
    }

    /// Whether an ADS stream is established now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.get() == 1
    }

    /// A copy of everything, for `/config_dump`.
    pub fn snapshot(&self) -> AdsStatsSnapshot {
        AdsStatsSnapshot {
            connected: self.is_connected(),
            reconnects: self.inner.reconnects.get(),
            types: self.table().clone(),
        }
    }

    /// The status of one type (default when nothing was received for it yet).
    pub fn type_status(&self, type_url: &str) -> TypeStatus {
        self.table().get(type_url).cloned().unwrap_or_default()
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.inner.connected.set(i64::from(connected));
    }

    pub(crate) fn reconnecting(&self) {
        self.inner.reconnects.inc();
    }

    pub(crate) fn accepted(&self, type_url: &str, version: &str) {
        self.inner.accepted.get_or_create(&labels(type_url)).inc();
        let mut t = self.table();
        let s = t.entry(type_url.to_owned()).or_default();
        s.accepted += 1;
        s.last_accepted_version = Some(version.to_owned());
        s.last_accepted_at = Some(SystemTime::now());
    }

    pub(crate) fn rejected(&self, type_url: &str, version: &str, nonce: &str, message: &str) {
        self.inner.rejected.get_or_create(&labels(type_url)).inc();
        let mut t = self.table();
        let s = t.entry(type_url.to_owned()).or_default();
        s.rejected += 1;
        s.last_nack = Some(Nack {
            at: SystemTime::now(),
            rejected_version: version.to_owned(),
            nonce: nonce.to_owned(),
            message: message.to_owned(),
        });
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TypeStatus>> {
        // Only plain data behind the lock: a panic elsewhere cannot leave it half-updated.
        self.inner
            .types
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::store::rfc3339(*t))
}

fn opt_rfc3339<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

fn labels(type_url: &str) -> TypeLabels {
    TypeLabels {
        r#type: type_url::short_name(type_url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn metrics_are_registered_under_the_callers_prefix() {
        let stats = AdsStats::new();
        let mut registry = Registry::default();
        stats.register(registry.sub_registry_with_prefix("myelin"));
        stats.set_connected(true);
        stats.reconnecting();
        stats.accepted(type_url::CLUSTER, "1");
        stats.rejected(type_url::LISTENER, "2", "n1", "bad: no");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "myelin_xds_connected 1",
            "myelin_xds_reconnects_total 1",
            "myelin_xds_updates_accepted_total{type=\"cds\"} 1",
            "myelin_xds_updates_rejected_total{type=\"lds\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let snap = stats.snapshot();
        assert!(snap.connected);
        assert_eq!(
            snap.types[type_url::CLUSTER]
                .last_accepted_version
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            snap.types[type_url::LISTENER]
                .last_nack
                .as_ref()
                .unwrap()
                .message,
            "bad: no"
        );
        // Times read as in the store's dump: RFC 3339, UTC.
        let json = serde_json::to_value(&snap).unwrap();
        let at = json["types"][type_url::CLUSTER]["last_accepted_at"]
            .as_str()
            .unwrap();
        assert!(at.ends_with('Z') && at.contains('T'), "{at}");
        let at = json["types"][type_url::LISTENER]["last_nack"]["at"]
            .as_str()
            .unwrap();
        assert!(at.ends_with('Z'), "{at}");
    }
}
