//! The ADS client's decisions, free of I/O: which requests to send when a stream starts, what a
//! response does to the sink, the ACK or NACK it earns, and how subscriptions follow the names
//! that loaded resources reference. The transport (`super::run_stream`) only moves
//! [`Outgoing`] and [`Incoming`] values between this and the wire.
//!
//! Ordering follows Envoy (xDS protocol docs, "Eventual consistency considerations"): CDS first;
//! EDS for the service names that clusters reference; LDS only once the clusters are warm (every
//! referenced EDS name received) or the initial fetch timeout passed; RDS for the route names
//! listeners reference; SDS for the secrets anything references. Non-wildcard types are opened
//! only with at least one name, since an empty first request would mean "wildcard".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use prost::Message;
use tracing::{debug, info, warn};
use xds_api::pb::google::protobuf::Any;
use xds_api::pb::google::rpc::Status;

use super::stats::AdsStats;
use super::{type_url, Resource, ResourceSink, Update};

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// One request to send, in protocol-neutral form.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Outgoing {
    pub type_url: &'static str,
    /// SotW: last accepted version of the type (also on a NACK).
    pub version_info: String,
    pub response_nonce: String,
    pub error_detail: Option<Status>,
    /// SotW: the full subscription (empty for wildcard types).
    pub resource_names: Vec<String>,
    /// Delta: names added to / removed from the subscription.
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    /// Delta, first request of a type on a stream: what the client already has.
    pub initial_resource_versions: BTreeMap<String, String>,
}

/// One resource as received, before the sink sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Received {
    Ok(Resource),
    /// The resource could not even be named or unwrapped; it is rejected with this reason.
    Broken {
        name: String,
        reason: String,
    },
}

/// One response, in protocol-neutral form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Incoming {
    pub type_url: String,
    /// SotW `version_info`, delta `system_version_info`.
    pub version: String,
    pub nonce: String,
    pub resources: Vec<Received>,
    /// Delta only: names the server removed.
    pub removed: Vec<String>,
}

/// Per type, what the client knows.
#[derive(Debug)]
struct TypeState {
    type_url: &'static str,
    /// LDS and CDS: subscribed to everything.
    wildcard: bool,
    /// Non-wildcard: the subscribed names.
    subscribed: BTreeSet<String>,
    /// SotW: the last accepted `version_info` (kept across streams for the resync).
    version: String,
    /// Delta: accepted version per resource (kept across streams: `initial_resource_versions`).
    versions: BTreeMap<String, String>,
    /// SotW wildcard types: names in the last response, to see which ones disappeared.
    last_names: BTreeSet<String>,
    /// This stream: the last nonce received.
    nonce: String,
    /// This stream: a request for this type was sent.
    opened: bool,
    /// This stream: a response for this type arrived.
    responded: bool,
}

impl TypeState {
    fn new(type_url: &'static str) -> Self {
        TypeState {
            type_url,
            wildcard: matches!(type_url, type_url::CLUSTER | type_url::LISTENER),
            subscribed: BTreeSet::new(),
            version: String::new(),
            versions: BTreeMap::new(),
            last_names: BTreeSet::new(),
            nonce: String::new(),
            opened: false,
            responded: false,
        }
    }
}

/// Envoy's order; also the order of requests when a stream (re)starts.
const ORDER: [&str; 5] = [
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::SECRET,
];

/// Types whose resources reference the followers' names (clusters: EDS service names and
/// secrets; listeners: route configurations and secrets): only their responses can change
/// the subscriptions, so only they make the client re-read the sink's references (an O(n)
/// walk of every cluster that a one-assignment EDS update must not pay).
const REFERRERS: [&str; 2] = [type_url::CLUSTER, type_url::LISTENER];

/// Types whose subscription is the set of referenced names.
const FOLLOWERS: [&str; 3] = [type_url::ENDPOINT, type_url::ROUTE, type_url::SECRET];

/// The state machine of an ADS client.
#[derive(Debug)]
pub(crate) struct Engine<S: ?Sized> {
    delta: bool,
    types: Vec<TypeState>,
    /// LDS may be requested: the first CDS round (and its EDS) is in, or the timeout passed.
    /// Once true it stays true, so a reconnect requests everything at once, like Envoy.
    lds_released: bool,
    /// EDS names for which an assignment ever arrived (cluster warming).
    eds_received: BTreeSet<String>,
    sink: std::sync::Arc<S>,
    stats: AdsStats,
}

impl<S: ResourceSink + ?Sized> Engine<S> {
    pub(crate) fn new(delta: bool, sink: std::sync::Arc<S>, stats: AdsStats) -> Self {
        Engine {
            delta,
            types: ORDER.iter().map(|t| TypeState::new(t)).collect(),
            lds_released: false,
            eds_received: BTreeSet::new(),
            sink,
            stats,
        }
    }

    /// Whether LDS still waits for the clusters to warm (the caller arms the initial fetch
    /// timeout while this is true).
    pub(crate) fn lds_pending(&self) -> bool {
        !self.lds_released
    }

    fn state(&mut self, type_url: &str) -> Option<&mut TypeState> {
        self.types.iter_mut().find(|t| t.type_url == type_url)
    }

    fn st(&mut self, type_url: &'static str) -> &mut TypeState {
        self.state(type_url).expect("a known type")
    }

    /// A new stream: the requests that open it, in Envoy's order.
    pub(crate) fn start_stream(&mut self) -> Vec<Outgoing> {
        for t in &mut self.types {
            t.nonce.clear();
            t.opened = false;
            t.responded = false;
        }
        let mut out = Vec::new();
        self.refresh_followers(&mut out);
        for type_url in ORDER {
            let t = self.st(type_url);
            let open = if t.wildcard {
                type_url != type_url::LISTENER || self.lds_released
            } else {
                !self.st(type_url).subscribed.is_empty()
            };
            if open {
                out.push(self.open(type_url));
            }
        }
        out
    }

    /// The first request of a type on this stream: the whole subscription and what we have.
    fn open(&mut self, type_url: &'static str) -> Outgoing {
        let delta = self.delta;
        let t = self.st(type_url);
        t.opened = true;
        let names: Vec<String> = if t.wildcard {
            Vec::new()
        } else {
            t.subscribed.iter().cloned().collect()
        };
        if delta {
            Outgoing {
                type_url,
                subscribe: names,
                initial_resource_versions: t.versions.clone(),
                ..Default::default()
            }
        } else {
            Outgoing {
                type_url,
                version_info: t.version.clone(),
                resource_names: names,
                ..Default::default()
            }
        }
    }

    /// The initial fetch timeout passed without warm clusters: ask for listeners anyway.
    pub(crate) fn initial_fetch_timeout(&mut self) -> Vec<Outgoing> {
        if self.lds_released {
            return Vec::new();
        }
        warn!("initial fetch timeout: requesting listeners before every cluster is warm");
        self.release_lds()
    }

    fn release_lds(&mut self) -> Vec<Outgoing> {
        self.lds_released = true;
        vec![self.open(type_url::LISTENER)]
    }

    /// Re-reads the sink's references and updates the subscriptions that changed (also called
    /// when something outside the client changed what is referenced).
    pub(crate) fn resubscribe(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.refresh_followers(&mut out);
        out
    }

    fn refresh_followers(&mut self, out: &mut Vec<Outgoing>) {
        for type_url in FOLLOWERS {
            let wanted = self.sink.references(type_url);
            let delta = self.delta;
            let t = self.st(type_url);
            if wanted == t.subscribed {
                continue;
            }
            let added: Vec<String> = wanted.difference(&t.subscribed).cloned().collect();
            let dropped: Vec<String> = t.subscribed.difference(&wanted).cloned().collect();
            debug!(type_url, ?added, ?dropped, "subscription changes");
            t.subscribed = wanted;
            for name in &dropped {
                t.versions.remove(name);
            }
            if !dropped.is_empty() {
                // Nothing references them any more and the server will stop sending them:
                // drop them from the sink, as Envoy drops unreferenced route configs.
                let update = Update {
                    resources: Vec::new(),
                    removed: dropped.clone(),
                };
                self.sink.apply(type_url, update);
            }
            let t = self.st(type_url);
            if !t.opened {
                if !t.subscribed.is_empty() {
                    out.push(self.open(type_url));
                }
            } else if delta {
                out.push(Outgoing {
                    type_url,
                    subscribe: added,
                    unsubscribe: dropped,
                    ..Default::default()
                });
            } else {
                out.push(Outgoing {
                    type_url,
                    version_info: t.version.clone(),
                    response_nonce: t.nonce.clone(),
                    resource_names: t.subscribed.iter().cloned().collect(),
                    ..Default::default()
                });
            }
        }
    }

    /// A response: apply it, ACK or NACK it, then follow the references it changed.
    pub(crate) fn on_response(&mut self, resp: Incoming) -> Vec<Outgoing> {
        let Some(ti) = self.types.iter().position(|t| t.type_url == resp.type_url) else {
            // Like Envoy ("ignoring unwatched type URL"): no ACK, no NACK.
            warn!(type_url = %resp.type_url, "ignoring a response for a type never requested");
            return Vec::new();
        };
        let t = &mut self.types[ti];
        let type_url = t.type_url;
        let wildcard = t.wildcard;
        t.nonce.clone_from(&resp.nonce);
        t.responded = true;
        // Borrowed, not copied: at 10,000 EDS names a copy per response was most of the
        // client's own work on a one-resource delta update.
        let subscribed = &self.types[ti].subscribed;

        // Split what the sink can judge from what is broken already.
        let mut resources = Vec::with_capacity(resp.resources.len());
        let mut rejected: Vec<(String, String)> = Vec::new();
        let mut names = BTreeSet::new();
        for r in resp.resources {
            match r {
                Received::Ok(r) if r.resource.type_url != type_url => {
                    names.insert(r.name.clone());
                    rejected.push((
                        r.name,
                        format!(
                            "resource type {} in a {type_url} response",
                            r.resource.type_url
                        ),
                    ));
                }
                Received::Ok(r) if !wildcard && !subscribed.contains(&r.name) => {
                    // Sent before the server saw our unsubscription: like Envoy, ignore it
                    // (applying it would resurrect what we just dropped).
                    debug!(type_url, name = %r.name, "ignoring a resource not subscribed to");
                }
                Received::Ok(r) => {
                    names.insert(r.name.clone());
                    resources.push(r);
                }
                Received::Broken { name, reason } => rejected.push((name, reason)),
            }
        }
        let removed = if self.delta {
            resp.removed
        } else if wildcard {
            // SotW LDS/CDS responses are complete: a name that is gone was deleted.
            self.st(type_url)
                .last_names
                .difference(&names)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let versions: BTreeMap<String, String> = resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        if type_url == type_url::ENDPOINT {
            self.eds_received.extend(versions.keys().cloned());
        }

        let update = Update {
            resources,
            removed: removed.clone(),
        };
        for (name, result) in self.sink.apply(type_url, update) {
            if let Err(reason) = result {
                rejected.push((name, reason));
            }
        }
        rejected.sort();
        rejected.dedup();

        let delta = self.delta;
        let t = self.st(type_url);
        if !delta && wildcard {
            t.last_names = names;
        }
        for name in &removed {
            t.versions.remove(name);
        }
        for (name, version) in versions {
            if !rejected.iter().any(|(n, _)| *n == name) {
                t.versions.insert(name, version);
            }
        }

        let mut ack = Outgoing {
            type_url,
            response_nonce: resp.nonce.clone(),
            resource_names: if wildcard || delta {
                Vec::new()
            } else {
                t.subscribed.iter().cloned().collect()
            },
            ..Default::default()
        };
        if rejected.is_empty() {
            t.version.clone_from(&resp.version);
            debug!(type_url, version = %resp.version, "ACK");
            self.stats.accepted(type_url, &resp.version);
        } else {
            let message = nack_message(&rejected);
            info!(type_url, version = %resp.version, %message, "NACK");
            self.stats
                .rejected(type_url, &resp.version, &resp.nonce, &message);
            ack.error_detail = Some(Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            });
        }
        if !delta {
            // An ACK carries the new version, a NACK the last accepted one.
            ack.version_info = self.st(type_url).version.clone();
        }

        let mut out = vec![ack];
        if REFERRERS.contains(&type_url) {
            self.refresh_followers(&mut out);
        }
        if !self.lds_released && self.clusters_warm() {
            out.extend(self.release_lds());
        }
        out
    }

    /// CDS answered on this stream and every EDS name it references has an assignment.
    fn clusters_warm(&mut self) -> bool {
        let received = &self.eds_received;
        let cds_in = self
            .types
            .iter()
            .any(|t| t.type_url == type_url::CLUSTER && t.responded);
        let eds = self.types.iter().find(|t| t.type_url == type_url::ENDPOINT);
        cds_in && eds.is_some_and(|e| e.subscribed.iter().all(|n| received.contains(n)))
    }
}

/// The `error_detail` message: one line per rejected resource, `name: reason`.
pub(crate) fn nack_message(rejected: &[(String, String)]) -> String {
    let mut m = String::new();
    for (i, (name, reason)) in rejected.iter().enumerate() {
        if i > 0 {
            m.push('\n');
        }
        let _ = write!(m, "{name}: {reason}");
    }
    m
}

/// Just the first field of a resource: `name` of Listener, Cluster, RouteConfiguration and
/// Secret, `cluster_name` of ClusterLoadAssignment (all tag 1). Decoding only this keeps the
/// client independent of the conversion and cheap on large responses.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// Names a SotW resource (unwrapping an `envoy.service.discovery.v3.Resource` wrapper).
pub(crate) fn sotw_resource(index: usize, any: Any, version: &str) -> Received {
    use xds_api::pb::envoy::service::discovery::v3::Resource as Wrapper;
    if any.type_url == type_url::RESOURCE_WRAPPER {
        return match Wrapper::decode(any.value.as_slice()) {
            Ok(w) => match w.resource {
                Some(inner) => Received::Ok(Resource {
                    name: w.name,
                    version: if w.version.is_empty() {
                        version.to_owned()
                    } else {
                        w.version
                    },
                    resource: inner,
                }),
                None => Received::Broken {
                    name: w.name,
                    reason: "resource wrapper without a resource".into(),
                },
            },
            Err(e) => Received::Broken {
                name: format!("#{index}"),
                reason: format!("cannot decode resource wrapper: {e}"),
            },
        };
    }
    match NameOnly::decode(any.value.as_slice()) {
        Ok(n) if !n.name.is_empty() => Received::Ok(Resource {
            name: n.name,
            version: version.to_owned(),
            resource: any,
        }),
        Ok(_) => Received::Broken {
            name: format!("#{index}"),
            reason: "resource without a name".into(),
        },
        Err(e) => Received::Broken {
            name: format!("#{index}"),
            reason: format!("cannot decode {}: {e}", any.type_url),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Rejects names starting with `bad`; references are set by hand.
    #[derive(Default)]
    struct Sink {
        refs: Mutex<BTreeMap<&'static str, BTreeSet<String>>>,
        applied: Mutex<Vec<(String, Update)>>,
        reference_reads: std::sync::atomic::AtomicUsize,
    }

    impl ResourceSink for Sink {
        fn apply(&self, type_url: &str, update: Update) -> Vec<(String, Result<(), String>)> {
            let results = update
                .resources
                .iter()
                .map(|r| {
                    let res = if r.name.starts_with("bad") {
                        Err("no".into())
                    } else {
                        Ok(())
                    };
                    (r.name.clone(), res)
                })
                .collect();
            self.applied
                .lock()
                .unwrap()
                .push((type_url.to_owned(), update));
            results
        }
        fn references(&self, type_url: &str) -> BTreeSet<String> {
            self.reference_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.refs
                .lock()
                .unwrap()
                .get(type_url)
                .cloned()
                .unwrap_or_default()
        }
    }

    fn engine(delta: bool) -> (Engine<Sink>, Arc<Sink>) {
        let sink = Arc::new(Sink::default());
        (Engine::new(delta, sink.clone(), AdsStats::new()), sink)
    }

    fn res(type_url: &str, name: &str, version: &str) -> Received {
        let any = Any {
            type_url: type_url.to_owned(),
            value: NameOnly {
                name: name.to_owned(),
            }
            .encode_to_vec(),
        };
        Received::Ok(Resource {
            name: name.to_owned(),
            version: version.to_owned(),
            resource: any,
        })
    }

    fn resp(type_url: &str, version: &str, nonce: &str, resources: Vec<Received>) -> Incoming {
        Incoming {
            type_url: type_url.to_owned(),
            version: version.to_owned(),
            nonce: nonce.to_owned(),
            resources,
            removed: Vec::new(),
        }
    }

    fn types(out: &[Outgoing]) -> Vec<&'static str> {
        out.iter()
            .map(|o| type_url::short_name(o.type_url))
            .collect()
    }

    #[test]
    fn lds_waits_for_warm_clusters_or_the_initial_fetch_timeout() {
        let (mut e, sink) = engine(false);
        assert_eq!(types(&e.start_stream()), ["cds"]);
        sink.refs
            .lock()
            .unwrap()
            .insert(type_url::ENDPOINT, ["x".to_owned()].into());
        let out = e.on_response(resp(
            type_url::CLUSTER,
            "1",
            "n1",
            vec![res(type_url::CLUSTER, "c", "1")],
        ));
        // ACK, then EDS; no LDS while `x` has no assignment.
        assert_eq!(types(&out), ["cds", "eds"]);
        assert!(e.lds_pending());
        assert_eq!(types(&e.initial_fetch_timeout()), ["lds"]);
        assert!(!e.lds_pending());
        assert!(e.initial_fetch_timeout().is_empty());

        // Without the timeout: the assignment warms the cluster and releases LDS.
        let (mut e, sink) = engine(true);
        e.start_stream();
        sink.refs
            .lock()
            .unwrap()
            .insert(type_url::ENDPOINT, ["x".to_owned()].into());
        e.on_response(resp(
            type_url::CLUSTER,
            "1",
            "n1",
            vec![res(type_url::CLUSTER, "c", "1")],
        ));
        let out = e.on_response(resp(
            type_url::ENDPOINT,
            "1",
            "n2",
            vec![res(type_url::ENDPOINT, "x", "1")],
        ));
        assert_eq!(types(&out), ["eds", "lds"]);
    }

    #[test]
    fn only_cluster_and_listener_responses_reread_references() {
        let (mut e, sink) = engine(true);
        let reads = || {
            sink.reference_reads
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        e.start_stream();
        sink.refs
            .lock()
            .unwrap()
            .insert(type_url::ENDPOINT, ["x".to_owned()].into());
        let before = reads();
        e.on_response(resp(
            type_url::CLUSTER,
            "",
            "n1",
            vec![res(type_url::CLUSTER, "c", "1")],
        ));
        assert!(reads() > before);
        // An assignment references nothing: the subscriptions cannot have changed.
        let before = reads();
        let out = e.on_response(resp(
            type_url::ENDPOINT,
            "",
            "n2",
            vec![res(type_url::ENDPOINT, "x", "1")],
        ));
        assert_eq!(types(&out), ["eds", "lds"]);
        assert_eq!(reads(), before);
        e.on_response(resp(
            type_url::LISTENER,
            "",
            "n3",
            vec![res(type_url::LISTENER, "l", "1")],
        ));
        assert!(reads() > before);
    }

    #[test]
    fn sotw_nack_keeps_the_last_accepted_version_and_applies_the_good_ones() {
        let (mut e, sink) = engine(false);
        e.start_stream();
        let ack = &e.on_response(resp(
            type_url::CLUSTER,
            "1",
            "n1",
            vec![res(type_url::CLUSTER, "a", "1")],
        ))[0];
        assert_eq!(
            (ack.version_info.as_str(), ack.error_detail.is_none()),
            ("1", true)
        );
        let out = e.on_response(resp(
            type_url::CLUSTER,
            "2",
            "n2",
            vec![
                res(type_url::CLUSTER, "a", "2"),
                res(type_url::CLUSTER, "bad", "2"),
                Received::Broken {
                    name: "#2".into(),
                    reason: "resource without a name".into(),
                },
                res(type_url::LISTENER, "wrong-type", "2"),
            ],
        ));
        let nack = &out[0];
        assert_eq!(nack.version_info, "1");
        assert_eq!(nack.response_nonce, "n2");
        assert_eq!(
            nack.error_detail.as_ref().unwrap().message,
            "#2: resource without a name\nbad: no\nwrong-type: resource type \
             type.googleapis.com/envoy.config.listener.v3.Listener in a \
             type.googleapis.com/envoy.config.cluster.v3.Cluster response"
        );
        let applied = sink.applied.lock().unwrap();
        let names: Vec<_> = applied[1]
            .1
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["a", "bad"], "the sink judges what is well-formed");
    }

    #[test]
    fn sotw_wildcard_removal_and_delta_versions() {
        let (mut e, sink) = engine(false);
        e.start_stream();
        e.on_response(resp(
            type_url::CLUSTER,
            "1",
            "n1",
            vec![
                res(type_url::CLUSTER, "a", "1"),
                res(type_url::CLUSTER, "b", "1"),
            ],
        ));
        e.on_response(resp(
            type_url::CLUSTER,
            "2",
            "n2",
            vec![res(type_url::CLUSTER, "a", "2")],
        ));
        assert_eq!(sink.applied.lock().unwrap()[1].1.removed, ["b"]);

        // Delta: a rejected resource keeps its old version for `initial_resource_versions`.
        let (mut e, _) = engine(true);
        e.start_stream();
        e.on_response(resp(
            type_url::CLUSTER,
            "",
            "n1",
            vec![res(type_url::CLUSTER, "bad", "1")],
        ));
        e.on_response(resp(
            type_url::CLUSTER,
            "",
            "n2",
            vec![res(type_url::CLUSTER, "a", "1")],
        ));
        let mut removal = resp(type_url::CLUSTER, "", "n3", Vec::new());
        removal.removed = vec!["gone".into()];
        e.on_response(removal);
        let open = e.start_stream();
        assert_eq!(
            open[0].initial_resource_versions,
            BTreeMap::from([("a".into(), "1".into())])
        );
    }

    #[test]
    fn unsubscribed_and_unknown_types_are_ignored() {
        let (mut e, sink) = engine(false);
        e.start_stream();
        sink.refs
            .lock()
            .unwrap()
            .insert(type_url::ROUTE, ["r1".to_owned()].into());
        let out = e.resubscribe();
        assert_eq!(out[0].resource_names, ["r1"]);
        // A route nobody subscribed to (late, after an unsubscribe) is not applied.
        e.on_response(resp(
            type_url::ROUTE,
            "1",
            "n1",
            vec![
                res(type_url::ROUTE, "r1", "1"),
                res(type_url::ROUTE, "old", "1"),
            ],
        ));
        let names: Vec<_> = sink.applied.lock().unwrap()[0]
            .1
            .resources
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["r1"]);
        assert!(e
            .on_response(resp("type.googleapis.com/x.Y", "1", "n2", Vec::new()))
            .is_empty());
    }
}
