//! The in-process path: prebuilt updates straight into `ConfigStore::apply`.

use std::time::Instant;

use anyhow::{ensure, Result};
use myelin_proxy::traffic::Traffic;
use myelin_xds::ads::{type_url, ResourceSink, Update};
use myelin_xds::store::ConfigStore;

use super::{
    build_traffic, by_type, check_traffic, mesh, ms, reused, update, Change, Memory, Mesh, PathRun,
    PerType,
};
use crate::memory::Usage;

/// Applies `update` of `type_url`, timed; every resource must be accepted.
fn apply(store: &ConfigStore, type_url: &str, update: Update) -> Result<f64> {
    let n = update.resources.len();
    let start = Instant::now();
    let results = store.apply(type_url, update);
    let took = ms(start.elapsed());
    let rejected: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    ensure!(
        rejected.is_empty(),
        "{} of {n} resources of {type_url} rejected, e.g. {:?}",
        rejected.len(),
        rejected[0]
    );
    Ok(took)
}

pub(super) fn run(mesh: &Mesh) -> Result<PathRun> {
    let names: Vec<String> = mesh.clusters.iter().map(|p| p.name.clone()).collect();
    let before = Usage::now();
    let store = ConfigStore::new();
    let mut initial_apply = PerType::default();
    let mut heap_by_type = PerType::default();
    for (type_url, items) in by_type(mesh) {
        let heap = Usage::now().heap;
        // Building the update (copying the encoded resources) is not the store's work.
        let u = update(items, "1");
        *initial_apply.get_mut(type_url).expect("known type") = apply(&store, type_url, u)?;
        if let (Some(a), Some(b)) = (heap, Usage::now().heap) {
            *heap_by_type.get_mut(type_url).expect("known type") = b as i64 - a as i64;
        }
    }
    let loaded = Usage::now();
    let snap = store.snapshot();
    ensure!(
        snap.clusters.len() == mesh.scale.clusters
            && snap.cluster_load_assignments.len() == mesh.scale.clusters
            && snap.listeners.len() == 1
            && snap.route_configurations.len() == 1,
        "the store does not hold the whole config"
    );
    drop(snap);
    let (mut traffic, traffic_build_ms) = build_traffic(&store, None);
    let memory = Memory {
        before,
        loaded,
        traffic: Usage::now(),
        heap_by_type: before.heap.map(|_| heap_by_type),
    };
    check_traffic(mesh, &names, &traffic)?;

    let k = mesh.scale.clusters / 2;
    let changed = names[k].clone();
    let mut changes = Vec::new();

    // Delta style: the one changed assignment.
    let u = update(&[mesh.assignment(k, 1)], "2");
    changes.push(change(
        &store,
        &mut traffic,
        &names,
        "EDS: 1 assignment changed, sent alone (delta)",
        type_url::ENDPOINT,
        u,
        &[&changed],
    )?);

    // SotW style: every assignment again with a new version, one of them changed.
    let mut all = mesh.assignments.clone();
    all[k] = mesh.assignment(k, 2);
    let u = update(&all, "3");
    drop(all);
    changes.push(change(
        &store,
        &mut traffic,
        &names,
        "EDS: 1 assignment changed, all resent (SotW)",
        type_url::ENDPOINT,
        u,
        &[&changed],
    )?);

    let u = update(&[mesh.route_configuration(1)], "2");
    let route_before = traffic
        .route_table(mesh::ROUTE_NAME)
        .cloned()
        .expect("checked");
    changes.push(change(
        &store,
        &mut traffic,
        &names,
        "RDS: 1 route changed (the whole RouteConfiguration)",
        type_url::ROUTE,
        u,
        &[],
    )?);
    let route_after = traffic.route_table(mesh::ROUTE_NAME).expect("checked");
    ensure!(
        !std::sync::Arc::ptr_eq(&route_before, route_after),
        "the route change did not reach the Traffic"
    );

    Ok(PathRun {
        initial_total_ms: initial_apply.total(),
        initial_apply,
        initial_wall: None,
        references: None,
        traffic_build_ms,
        changes,
        memory,
    })
}

/// Applies one change and rebuilds `traffic` on top of the previous one.
fn change(
    store: &ConfigStore,
    traffic: &mut Traffic,
    names: &[String],
    what: &str,
    type_url: &str,
    u: Update,
    changed: &[&str],
) -> Result<Change> {
    let sent = u.resources.len();
    let apply_ms = apply(store, type_url, u)?;
    let (next, rebuild_ms) = build_traffic(store, Some(traffic));
    let reused = reused(names, traffic, &next, changed)?;
    *traffic = next;
    Ok(Change {
        what: what.to_owned(),
        sent,
        wall_ms: None,
        apply_ms,
        rebuild_ms,
        clusters: names.len(),
        reused,
    })
}
