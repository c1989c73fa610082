//! The xDS scale benchmark at a tiny scale, so that it cannot rot: every path runs, every
//! resource is applied, and the incremental updates reuse the untouched clusters.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use myelin_benches::memory::CountingAlloc;
use myelin_benches::xds_scale::mesh::{cluster_name, Mesh, ROUTE_NAME};
use myelin_benches::xds_scale::{run, Options, PathKind, Scale};
use myelin_proxy::traffic::Traffic;
use myelin_xds::ads::{type_url, Resource, ResourceSink, Update};
use myelin_xds::feed::traffic_input;
use myelin_xds::store::ConfigStore;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The heap counter is global to the process: the benchmark's heap deltas would count what the
/// other test allocates and frees meanwhile, so the tests here take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const SCALE: Scale = Scale {
    clusters: 100,
    endpoints: 3,
    routes: 20,
};

#[test]
fn the_benchmark_runs_every_path_and_checks_what_it_measures() {
    let _turn = one_at_a_time();
    let report = run(&Options {
        scale: SCALE,
        rounds: 1,
        paths: PathKind::ALL.to_vec(),
        timeout: Duration::from_secs(60),
    })
    .expect("benchmark run");
    assert_eq!(report.wire.resources.cds, 100);
    assert_eq!(report.wire.resources.eds, 100);
    let round = &report.rounds[0];
    let paths = [
        ("in-process", round.in_process.as_ref()),
        ("sotw", round.sotw.as_ref()),
        ("delta", round.delta.as_ref()),
    ];
    for (label, path) in paths {
        let path = path.unwrap_or_else(|| panic!("{label} did not run"));
        assert!(path.initial_total_ms > 0.0, "{label}");
        assert!(path.initial_apply.eds > 0.0, "{label}");
        // Loading the config grew the heap (the counting allocator is installed).
        let (before, loaded) = (path.memory.before.heap, path.memory.loaded.heap);
        assert!(
            loaded.unwrap() > before.unwrap(),
            "{label}: {:?}",
            path.memory
        );
        for c in &path.changes {
            assert_eq!(c.clusters, 100, "{label}: {c:?}");
            let untouched = if c.what.starts_with("EDS") { 99 } else { 100 };
            assert_eq!(c.reused, untouched, "{label}: {c:?}");
        }
    }
    let sent = |p: &myelin_benches::xds_scale::PathRun| -> Vec<usize> {
        p.changes.iter().map(|c| c.sent).collect()
    };
    assert_eq!(sent(round.in_process.as_ref().unwrap()), [1, 100, 1]);
    // SotW resends every assignment; delta sends the changed one.
    assert_eq!(sent(round.sotw.as_ref().unwrap()), [100, 1]);
    assert_eq!(sent(round.delta.as_ref().unwrap()), [1, 1]);
    let table = report.markdown();
    assert!(table.contains("| EDS | 100 |"), "{table}");
    assert!(table.contains("99 of 100"), "{table}");
}

fn update(items: &[myelin_benches::xds_scale::mesh::Packed], version: &str) -> Update {
    Update {
        resources: items
            .iter()
            .map(|p| Resource {
                name: p.name.clone(),
                version: version.into(),
                resource: p.any.clone(),
            })
            .collect(),
        removed: Vec::new(),
    }
}

/// The property the benchmark's rebuild numbers rest on, checked directly.
#[test]
fn an_eds_change_rebuilds_only_its_cluster() {
    let _turn = one_at_a_time();
    let mesh = Mesh::generate(SCALE);
    let store = ConfigStore::new();
    for (t, items) in [
        (type_url::CLUSTER, &mesh.clusters),
        (type_url::ENDPOINT, &mesh.assignments),
        (type_url::LISTENER, &mesh.listeners),
        (type_url::ROUTE, &mesh.routes),
    ] {
        let results = store.apply(t, update(items, "1"));
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    }
    let before = Traffic::build(traffic_input(&store.snapshot()), None);
    store.apply(type_url::ENDPOINT, update(&[mesh.assignment(7, 1)], "2"));
    let after = Traffic::build(traffic_input(&store.snapshot()), Some(&before));
    for i in 0..SCALE.clusters {
        let name = cluster_name(i);
        let same = Arc::ptr_eq(
            before.cluster(&name).unwrap(),
            after.cluster(&name).unwrap(),
        );
        assert_eq!(same, i != 7, "{name}");
    }
    assert!(Arc::ptr_eq(
        before.route_table(ROUTE_NAME).unwrap(),
        after.route_table(ROUTE_NAME).unwrap()
    ));
}
