//! The gRPC path: the in-process control plane -> the real `AdsClient` -> a `ConfigStore`,
//! with the store wrapped so that every `apply` and `references` call is timed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use myelin_xds::ads::{
    type_url, AdsClient, AdsConfig, AdsProtocol, ApplyResult, ResourceSink, Update,
};
use myelin_xds::store::{ConfigStore, Snapshot};
use myelin_xds::testing::ControlPlane;
use xds_api::pb::envoy::config::core::v3::Node;

use super::{
    build_traffic, by_type, check_traffic, mesh, ms, reused, Change, Memory, Mesh, PathRun, PerType,
};
use crate::memory::Usage;

/// One `apply` call as the client made it.
#[derive(Debug, Clone)]
struct Applied {
    type_url: String,
    resources: usize,
    rejected: usize,
    start: Instant,
    took: Duration,
}

impl Applied {
    fn end(&self) -> Instant {
        self.start + self.took
    }
}

/// The store, timed.
#[derive(Debug)]
struct Timed {
    store: Arc<ConfigStore>,
    applied: Mutex<Vec<Applied>>,
    references: Mutex<(Duration, usize)>,
}

impl ResourceSink for Timed {
    fn apply(&self, type_url: &str, update: Update) -> Vec<(String, ApplyResult)> {
        // The log is locked across the store's apply, so a waiter that checks the store under
        // the lock (`wait`) sees every published change in the log too.
        let mut log = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let resources = update.resources.len();
        let start = Instant::now();
        let results = self.store.apply(type_url, update);
        let took = start.elapsed();
        let rejected = results.iter().filter(|(_, r)| r.is_err()).count();
        log.push(Applied {
            type_url: type_url.to_owned(),
            resources,
            rejected,
            start,
            took,
        });
        results
    }

    fn references(&self, type_url: &str) -> BTreeSet<String> {
        let start = Instant::now();
        let refs = self.store.references(type_url);
        let mut r = self
            .references
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        r.0 += start.elapsed();
        r.1 += 1;
        refs
    }
}

impl Timed {
    fn applied(&self) -> Vec<Applied> {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn references(&self) -> (Duration, usize) {
        *self
            .references
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waits until the store's snapshot satisfies `pred`, checked with the apply log locked (so
/// the log then has the apply that got the store there).
async fn wait(
    sink: &Timed,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Result<()> {
    let mut changes = sink.store.subscribe();
    tokio::time::timeout(timeout, async {
        loop {
            changes.borrow_and_update();
            {
                let _log = sink.applied.lock().unwrap_or_else(PoisonError::into_inner);
                if pred(&sink.store.snapshot()) {
                    return;
                }
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await
    .with_context(|| format!("the store did not get to: {what} within {timeout:?}"))
}

pub(super) async fn run(mesh: &Mesh, protocol: AdsProtocol, timeout: Duration) -> Result<PathRun> {
    let n = mesh.scale.clusters;
    let names: Vec<String> = mesh.clusters.iter().map(|p| p.name.clone()).collect();
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        for (_, items) in by_type(mesh) {
            for p in items {
                b.set_any(&p.name, p.any.clone());
            }
        }
    });

    let before = Usage::now();
    let store = Arc::new(ConfigStore::new());
    let sink = Arc::new(Timed {
        store: store.clone(),
        applied: Mutex::default(),
        references: Mutex::default(),
    });
    let mut config = AdsConfig::new(
        cp.uri(),
        Node {
            id: "sidecar~10.0.0.1~bench.default~default.svc.cluster.local".into(),
            cluster: "myelin-xds-scale".into(),
            ..Default::default()
        },
    );
    config.protocol = protocol;
    let start = Instant::now();
    let client = AbortOnDrop(tokio::spawn(AdsClient::new(config, sink.clone()).run()));
    wait(&sink, timeout, "the whole config", |s| {
        s.clusters.len() == n
            && s.cluster_load_assignments.len() == n
            && s.listener(mesh::LISTENER_NAME).is_some()
            && s.route_configuration(mesh::ROUTE_NAME).is_some()
    })
    .await?;
    let applied = sink.applied();
    let references = sink.references();
    let rejected: usize = applied.iter().map(|a| a.rejected).sum();
    ensure!(rejected == 0, "{rejected} resources rejected over gRPC");
    // Let the client's ACKs reach the control plane before anything else happens.
    for (t, _) in by_type(mesh) {
        let answer = cp.wait_for_answer(t).await;
        ensure!(answer.is_ack(), "{t} NACKed: {}", answer.error_message());
    }
    let loaded = Usage::now();

    let mut initial_apply = PerType::default();
    let mut ends = PerType::<Option<Instant>>::default();
    for a in &applied {
        if let Some(d) = initial_apply.get_mut(&a.type_url) {
            *d += ms(a.took);
        }
        if let Some(e) = ends.get_mut(&a.type_url) {
            *e = Some(e.map_or(a.end(), |e| e.max(a.end())));
        }
    }
    let mut initial_wall = PerType::default();
    let mut prev = start;
    for (_, t, end) in ends.each() {
        let end = end.with_context(|| format!("no {t} update applied"))?;
        *initial_wall.get_mut(t).expect("known type") = ms(end.saturating_duration_since(prev));
        prev = end;
    }
    let initial_total_ms = ms(prev - start);

    let (mut traffic, traffic_build_ms) = build_traffic(&store, None);
    let memory = Memory {
        before,
        loaded,
        traffic: Usage::now(),
        heap_by_type: None,
    };
    check_traffic(mesh, &names, &traffic)?;

    let k = n / 2;
    let changed = names[k].clone();
    let mut changes = Vec::new();
    let how = match protocol {
        AdsProtocol::StateOfTheWorld => "all resent (SotW)",
        AdsProtocol::Delta => "sent alone (delta)",
    };
    let assignment = mesh.assignment(k, 1);
    changes.push(
        change(
            &cp,
            &sink,
            &mut traffic,
            &names,
            timeout,
            format!("EDS: 1 assignment changed, {how}"),
            type_url::ENDPOINT,
            assignment,
            &[&changed],
        )
        .await?,
    );
    let route = mesh.route_configuration(1);
    changes.push(
        change(
            &cp,
            &sink,
            &mut traffic,
            &names,
            timeout,
            "RDS: 1 route changed (the whole RouteConfiguration)".into(),
            type_url::ROUTE,
            route,
            &[],
        )
        .await?,
    );
    // Stop the client and the control plane and let their tasks go, so that the next run's
    // memory figures do not see this one's being freed.
    drop(client);
    drop(cp);
    tokio::time::sleep(Duration::from_millis(200)).await;

    Ok(PathRun {
        initial_apply,
        initial_wall: Some(initial_wall),
        initial_total_ms,
        references: Some((ms(references.0), references.1)),
        traffic_build_ms,
        changes,
        memory,
    })
}

/// Sets one resource at the control plane, waits for the store to have it, and rebuilds
/// `traffic` on the previous one.
#[allow(clippy::too_many_arguments)]
async fn change(
    cp: &ControlPlane,
    sink: &Timed,
    traffic: &mut myelin_proxy::traffic::Traffic,
    names: &[String],
    timeout: Duration,
    what: String,
    type_url: &'static str,
    resource: mesh::Packed,
    changed: &[&str],
) -> Result<Change> {
    let seen = sink.applied().len();
    let start = Instant::now();
    cp.update(|b| {
        b.set_any(&resource.name, resource.any);
    });
    let version = cp.version(type_url);
    wait(sink, timeout, &what, |s| {
        s.version(type_url, &resource.name) == Some(version.as_str())
    })
    .await?;
    let applied: Vec<Applied> = sink
        .applied()
        .into_iter()
        .skip(seen)
        .filter(|a| a.type_url == type_url)
        .collect();
    ensure!(!applied.is_empty(), "{what}: nothing applied");
    ensure!(
        applied.iter().all(|a| a.rejected == 0),
        "{what}: rejected resources"
    );
    let end = applied.iter().map(Applied::end).max().expect("not empty");
    let (next, rebuild_ms) = build_traffic(&sink.store, Some(traffic));
    let reused = reused(names, traffic, &next, changed)?;
    *traffic = next;
    let answer = cp.wait_for_answer(type_url).await;
    ensure!(answer.is_ack(), "{what}: NACK {}", answer.error_message());
    Ok(Change {
        what,
        sent: applied.iter().map(|a| a.resources).sum(),
        wall_ms: Some(ms(end - start)),
        apply_ms: applied.iter().map(|a| ms(a.took)).sum(),
        rebuild_ms,
        clusters: names.len(),
        reused,
    })
}

/// Aborts the client's task when the run ends, also on an error.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
