//! Keeps the proxy's [`TrafficHandle`] in step with the [`ConfigStore`]: every published
//! snapshot becomes a new [`myelin_proxy::traffic::Traffic`], built on the previous one so
//! unchanged clusters keep their state.

use std::sync::Arc;

use myelin_proxy::traffic::{TrafficHandle, TrafficInput};
use tracing::debug;

use crate::store::{ConfigStore, Snapshot};

/// The proxy's view of a snapshot (pointers only; no model is copied).
pub fn traffic_input(snap: &Snapshot) -> TrafficInput {
    TrafficInput {
        generation: snap.generation,
        listeners: snap
            .listeners
            .values()
            .map(|e| e.resource.clone())
            .collect(),
        route_configurations: snap
            .route_configurations
            .values()
            .map(|e| e.resource.clone())
            .collect(),
        clusters: snap.clusters.values().map(|e| e.resource.clone()).collect(),
        load_assignments: snap
            .cluster_load_assignments
            .iter()
            .map(|(name, e)| (name.clone(), e.resource.clone()))
            .collect(),
        secrets: snap
            .secrets
            .iter()
            .map(|(name, e)| (name.clone(), e.resource.clone()))
            .collect(),
    }
}

/// Publishes the store's current snapshot to `handle`, then every later one, for as long as
/// the task runs. Several publishes in a row are coalesced into one build.
pub async fn feed(store: Arc<ConfigStore>, handle: TrafficHandle) {
    let mut changes = store.subscribe();
    loop {
        changes.borrow_and_update();
        let snap = store.snapshot();
        handle.update(traffic_input(&snap));
        debug!(generation = snap.generation, "proxy traffic config updated");
        if changes.changed().await.is_err() {
            return;
        }
    }
}
