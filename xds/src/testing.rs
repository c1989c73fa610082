//! An in-process ADS control plane for tests (feature `testing`): a real tonic
//! `AggregatedDiscoveryService` on `127.0.0.1:0`, SotW and delta, scripted resource by resource.
//!
//! - [`ControlPlane::update`] sets and removes resources; every type touched by one update gets
//!   one new version (so a single response carries the whole batch), and each changed resource
//!   takes that version as its own.
//! - Every request the client sends and every response pushed is recorded ([`ControlPlane::events`]);
//!   [`ControlPlane::wait_for_request`] waits (bounded) for a matching request.
//! - [`ControlPlane::kill`] ends every stream with `UNAVAILABLE` and closes the port;
//!   [`ControlPlane::restart`] serves again on the same port with the same resources.
//!
//! Server behaviour, close to go-control-plane's: SotW pushes a type when its version changed
//! since the last push on that stream, when the subscribed names changed, or on a stream's first
//! request whose `version_info` is not current (a resyncing client that is up to date gets
//! nothing). Delta pushes the resources whose version differs from what the client has
//! (`initial_resource_versions`, then what was pushed) and the removals of names it has.
//! ACKs and NACKs are recorded but change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::{Message, Name};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use xds_api::pb::google::protobuf::Any;
use xds_api::pb::google::rpc;

/// How long [`ControlPlane::wait_for_request`] waits before it panics.
pub const WAIT: Duration = Duration::from_secs(10);

/// Packs a message into an `Any` with its canonical type URL.
pub fn to_any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// A request as the control plane saw it (SotW and delta in one shape).
#[derive(Debug, Clone, PartialEq)]
pub struct SeenRequest {
    /// Which stream (1, 2, ... in order of arrival; a reconnect is a new stream).
    pub stream: u64,
    /// Sent on `DeltaAggregatedResources`.
    pub delta: bool,
    /// The node, if the request carried one.
    pub node: Option<Node>,
    /// Resource type.
    pub type_url: String,
    /// SotW `version_info` (empty for delta).
    pub version_info: String,
    /// Nonce of the response this ACKs or NACKs (empty on a subscription request).
    pub response_nonce: String,
    /// Present on a NACK.
    pub error_detail: Option<rpc::Status>,
    /// SotW: `resource_names`; delta: `resource_names_subscribe`.
    pub resource_names: Vec<String>,
    /// Delta: `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// Delta: `initial_resource_versions`.
    pub initial_resource_versions: BTreeMap<String, String>,
}

impl SeenRequest {
    /// Answers a response without rejecting anything.
    pub fn is_ack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error_detail.is_none()
    }

    /// Answers a response and rejects something in it.
    pub fn is_nack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error_detail.is_some()
    }

    /// The NACK's message ("" if none).
    pub fn error_message(&self) -> &str {
        self.error_detail
            .as_ref()
            .map_or("", |s| s.message.as_str())
    }
}

/// A response the control plane pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentResponse {
    /// Which stream.
    pub stream: u64,
    /// Sent on `DeltaAggregatedResources`.
    pub delta: bool,
    /// Resource type.
    pub type_url: String,
    /// SotW `version_info` / delta `system_version_info`.
    pub version: String,
    /// Its nonce.
    pub nonce: String,
    /// Names of the resources in it.
    pub resources: Vec<String>,
    /// Delta: removed names.
    pub removed: Vec<String>,
}

/// One thing that happened on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The client sent a request.
    Request(Box<SeenRequest>),
    /// The server pushed a response.
    Response(SentResponse),
}

/// A batch of changes, applied by [`ControlPlane::update`].
#[derive(Debug, Default)]
pub struct Batch {
    changes: Vec<(String, String, Option<Any>)>,
}

impl Batch {
    /// Adds or replaces resource `name` of the `Any`'s type.
    pub fn set_any(&mut self, name: &str, any: Any) -> &mut Self {
        self.changes
            .push((any.type_url.clone(), name.to_owned(), Some(any)));
        self
    }

    /// Adds or replaces resource `name` (the message's type).
    pub fn set<M: Message + Name>(&mut self, name: &str, msg: &M) -> &mut Self {
        self.set_any(name, to_any(msg))
    }

    /// Removes resource `name` of `type_url`.
    pub fn remove(&mut self, type_url: &str, name: &str) -> &mut Self {
        self.changes
            .push((type_url.to_owned(), name.to_owned(), None));
        self
    }
}

#[derive(Debug, Default)]
struct TypeStore {
    version: u64,
    /// name -> (resource version, resource)
    resources: BTreeMap<String, (u64, Any)>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<BTreeMap<String, TypeStore>>,
    /// Bumped on every update; streams watch it.
    generation: watch::Sender<u64>,
    log: Mutex<Vec<Event>>,
    /// Length of the log; waiters watch it.
    logged: watch::Sender<usize>,
    /// Bumped by `kill`; streams end when it changes.
    kills: watch::Sender<u64>,
    streams: AtomicU64,
    nonces: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn record(&self, e: Event) {
        let mut log = lock(&self.log);
        log.push(e);
        self.logged.send_replace(log.len());
    }

    fn nonce(&self) -> String {
        (self.nonces.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    fn version(&self, type_url: &str) -> u64 {
        lock(&self.store).get(type_url).map_or(0, |t| t.version)
    }
}

struct Serving {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The in-process control plane. Dropping it stops the server.
pub struct ControlPlane {
    shared: Arc<Shared>,
    addr: SocketAddr,
    serving: Mutex<Option<Serving>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts serving on `127.0.0.1:0`, with no resources.
    pub async fn start() -> ControlPlane {
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            generation: watch::Sender::new(0),
            log: Mutex::default(),
            logged: watch::Sender::new(0),
            kills: watch::Sender::new(0),
            streams: AtomicU64::new(0),
            nonces: AtomicU64::new(0),
        });
        let listener = bind("127.0.0.1:0".parse().expect("literal address"));
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let cp = ControlPlane {
            shared,
            addr,
            serving: Mutex::new(None),
        };
        cp.serve(listener);
        cp
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `AdsConfig::server`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let incoming = TcpIncoming::from_listener(listener, true, None).expect("nodelay listener");
        let svc = AggregatedDiscoveryServiceServer::new(Ads {
            shared: self.shared.clone(),
        })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
        let (shutdown, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        *lock(&self.serving) = Some(Serving { shutdown, task });
    }

    /// Stops serving: every open stream ends with `UNAVAILABLE` and the port is closed.
    /// Resources and the event log stay.
    pub async fn kill(&self) {
        let Some(serving) = lock(&self.serving).take() else {
            return;
        };
        self.shared.kills.send_modify(|k| *k += 1);
        let _ = serving.shutdown.send(());
        let abort = serving.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), serving.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Serves again on the same port (after [`ControlPlane::kill`]).
    pub async fn restart(&self) {
        if lock(&self.serving).is_some() {
            return;
        }
        self.serve(bind(self.addr));
    }

    /// Applies a batch of changes: each touched type gets one new version.
    pub fn update(&self, f: impl FnOnce(&mut Batch)) {
        let mut batch = Batch::default();
        f(&mut batch);
        {
            let mut store = lock(&self.shared.store);
            let touched: BTreeSet<String> = batch.changes.iter().map(|c| c.0.clone()).collect();
            for type_url in touched {
                let t = store.entry(type_url.clone()).or_default();
                t.version += 1;
                let v = t.version;
                for (_, name, any) in batch.changes.iter().filter(|c| c.0 == type_url) {
                    match any {
                        Some(any) => {
                            t.resources.insert(name.clone(), (v, any.clone()));
                        }
                        None => {
                            t.resources.remove(name);
                        }
                    }
                }
            }
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Adds or replaces one resource.
    pub fn set<M: Message + Name>(&self, name: &str, msg: &M) {
        self.update(|b| {
            b.set(name, msg);
        });
    }

    /// Removes one resource.
    pub fn remove(&self, type_url: &str, name: &str) {
        self.update(|b| {
            b.remove(type_url, name);
        });
    }

    /// The current version of a type (`"0"` before anything was set).
    pub fn version(&self, type_url: &str) -> String {
        self.shared.version(type_url).to_string()
    }

    /// Streams opened so far.
    pub fn streams(&self) -> u64 {
        self.shared.streams.load(Ordering::Relaxed)
    }

    /// Everything so far, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.log).clone()
    }

    /// The requests so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Request(r) => Some(*r),
                Event::Response(_) => None,
            })
            .collect()
    }

    /// The responses so far, in order.
    pub fn responses(&self) -> Vec<SentResponse> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Response(r) => Some(r),
                Event::Request(_) => None,
            })
            .collect()
    }

    /// Waits (up to [`WAIT`]) for a request, past or future, that matches; panics with the
    /// requests seen so far if none does.
    pub async fn wait_for_request(&self, pred: impl Fn(&SeenRequest) -> bool) -> SeenRequest {
        self.wait_for("request", || self.requests().into_iter().find(|r| pred(r)))
            .await
    }

    /// Waits (up to [`WAIT`]) for a response, past or future, that matches.
    pub async fn wait_for_response(&self, pred: impl Fn(&SentResponse) -> bool) -> SentResponse {
        self.wait_for("response", || {
            self.responses().into_iter().find(|r| pred(r))
        })
        .await
    }

    /// Re-runs `find` each time the event log grows, up to [`WAIT`]; panics with the events
    /// so far if it never finds anything.
    async fn wait_for<T>(&self, what: &str, find: impl Fn() -> Option<T>) -> T {
        let mut logged = self.shared.logged.subscribe();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                logged.borrow_and_update();
                if let Some(r) = find() {
                    return r;
                }
                if logged.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        match found {
            Ok(r) => r,
            Err(_) => panic!(
                "no matching xDS {what} within {WAIT:?}; events so far:\n{:#?}",
                self.events()
            ),
        }
    }

    /// Waits for the client's ACK or NACK of the current version of `type_url`: first for the
    /// response carrying that version (on the latest stream), then for the request answering
    /// its nonce.
    pub async fn wait_for_answer(&self, type_url: &str) -> SeenRequest {
        let version = self.version(type_url);
        let stream = self.streams();
        let resp = self
            .wait_for_response(|r| {
                r.stream == stream && r.type_url == type_url && r.version == version
            })
            .await;
        self.wait_for_request(|r| r.type_url == type_url && r.response_nonce == resp.nonce)
            .await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.serving).take() {
            self.shared.kills.send_modify(|k| *k += 1);
            s.task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    // SO_REUSEADDR so a restart can take the port back while old connections sit in TIME_WAIT.
    let socket = TcpSocket::new_v4().expect("TCP socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("cannot bind the test control plane to {addr}: {e}"));
    socket.listen(64).expect("listen")
}

struct Ads {
    shared: Arc<Shared>,
}

type ResponseStream<T> = Pin<Box<ReceiverStream<Result<T, Status>>>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let stream = self.shared.streams.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(sotw_stream(
            self.shared.clone(),
            stream,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let stream = self.shared.streams.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(delta_stream(
            self.shared.clone(),
            stream,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One SotW subscription on one stream.
struct SotwSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Type version last pushed (or that the client said it has).
    sent: Option<u64>,
}

async fn sotw_stream(
    shared: Arc<Shared>,
    stream: u64,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut generation = shared.generation.subscribe();
    let mut kills = shared.kills.subscribe();
    let mut subs: BTreeMap<String, SotwSub> = BTreeMap::new();
    loop {
        tokio::select! {
            req = requests.message() => {
                let Ok(Some(r)) = req else { return };
                shared.record(Event::Request(Box::new(SeenRequest {
                    stream,
                    delta: false,
                    node: r.node.clone(),
                    type_url: r.type_url.clone(),
                    version_info: r.version_info.clone(),
                    response_nonce: r.response_nonce.clone(),
                    error_detail: r.error_detail.clone(),
                    resource_names: r.resource_names.clone(),
                    unsubscribe: Vec::new(),
                    initial_resource_versions: BTreeMap::new(),
                })));
                let names: BTreeSet<String> =
                    r.resource_names.iter().filter(|n| *n != "*").cloned().collect();
                match subs.get_mut(&r.type_url) {
                    None => {
                        let current = shared.version(&r.type_url);
                        let up_to_date = r.version_info == current.to_string();
                        subs.insert(r.type_url.clone(), SotwSub {
                            wildcard: r.resource_names.is_empty()
                                || r.resource_names.iter().any(|n| n == "*"),
                            names,
                            sent: up_to_date.then_some(current),
                        });
                    }
                    Some(sub) => {
                        if !sub.wildcard && sub.names != names {
                            sub.names = names;
                            sub.sent = None;
                        }
                    }
                }
                if !sotw_push(&shared, stream, &mut subs, &tx, Some(&r.type_url)).await {
                    return;
                }
            }
            changed = generation.changed() => {
                if changed.is_err() || !sotw_push(&shared, stream, &mut subs, &tx, None).await {
                    return;
                }
            }
            _ = kills.changed() => {
                let _ = tx.send(Err(Status::unavailable("test control plane killed"))).await;
                return;
            }
        }
    }
}

/// Pushes every subscribed type (or just `only`) whose content is newer than what was sent.
async fn sotw_push(
    shared: &Shared,
    stream: u64,
    subs: &mut BTreeMap<String, SotwSub>,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    only: Option<&str>,
) -> bool {
    let mut out = Vec::new();
    {
        let store = lock(&shared.store);
        for (type_url, sub) in subs.iter_mut() {
            if only.is_some_and(|o| o != type_url) {
                continue;
            }
            let empty = TypeStore::default();
            let t = store.get(type_url).unwrap_or(&empty);
            if sub.sent == Some(t.version) {
                continue;
            }
            sub.sent = Some(t.version);
            let (names, resources): (Vec<String>, Vec<Any>) = t
                .resources
                .iter()
                .filter(|(n, _)| sub.wildcard || sub.names.contains(*n))
                .map(|(n, (_, any))| (n.clone(), any.clone()))
                .unzip();
            let nonce = shared.nonce();
            out.push((
                SentResponse {
                    stream,
                    delta: false,
                    type_url: type_url.clone(),
                    version: t.version.to_string(),
                    nonce: nonce.clone(),
                    resources: names,
                    removed: Vec::new(),
                },
                DiscoveryResponse {
                    version_info: t.version.to_string(),
                    resources,
                    type_url: type_url.clone(),
                    nonce,
                    ..Default::default()
                },
            ));
        }
    }
    for (seen, resp) in out {
        shared.record(Event::Response(seen));
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
    }
    true
}

/// One delta subscription on one stream.
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has: name -> version.
    has: BTreeMap<String, String>,
    /// The type version of the last push pass since the subscription last changed: the
    /// client has every resource up to it, so a pass looks only at later ones (one changed
    /// assignment out of 10,000 is not a scan of 10,000 versions).
    synced: Option<u64>,
}

async fn delta_stream(
    shared: Arc<Shared>,
    stream: u64,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut generation = shared.generation.subscribe();
    let mut kills = shared.kills.subscribe();
    let mut subs: BTreeMap<String, DeltaSub> = BTreeMap::new();
    loop {
        tokio::select! {
            req = requests.message() => {
                let Ok(Some(r)) = req else { return };
                shared.record(Event::Request(Box::new(SeenRequest {
                    stream,
                    delta: true,
                    node: r.node.clone(),
                    type_url: r.type_url.clone(),
                    version_info: String::new(),
                    response_nonce: r.response_nonce.clone(),
                    error_detail: r.error_detail.clone(),
                    resource_names: r.resource_names_subscribe.clone(),
                    unsubscribe: r.resource_names_unsubscribe.clone(),
                    initial_resource_versions: r
                        .initial_resource_versions
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })));
                match subs.get_mut(&r.type_url) {
                    None => {
                        subs.insert(r.type_url.clone(), DeltaSub {
                            wildcard: r.resource_names_subscribe.is_empty()
                                || r.resource_names_subscribe.iter().any(|n| n == "*"),
                            names: r
                                .resource_names_subscribe
                                .iter()
                                .filter(|n| *n != "*")
                                .cloned()
                                .collect(),
                            has: r.initial_resource_versions.into_iter().collect(),
                            synced: None,
                        });
                    }
                    Some(sub) => {
                        if !r.resource_names_subscribe.is_empty()
                            || !r.resource_names_unsubscribe.is_empty()
                        {
                            sub.synced = None;
                        }
                        for n in r.resource_names_subscribe {
                            if n == "*" {
                                sub.wildcard = true;
                            } else {
                                // A (re)subscription asks for the resource again.
                                sub.has.remove(&n);
                                sub.names.insert(n);
                            }
                        }
                        for n in r.resource_names_unsubscribe {
                            if n == "*" {
                                sub.wildcard = false;
                            } else {
                                sub.has.remove(&n);
                                sub.names.remove(&n);
                            }
                        }
                    }
                }
                if !delta_push(&shared, stream, &mut subs, &tx).await {
                    return;
                }
            }
            changed = generation.changed() => {
                if changed.is_err() || !delta_push(&shared, stream, &mut subs, &tx).await {
                    return;
                }
            }
            _ = kills.changed() => {
                let _ = tx.send(Err(Status::unavailable("test control plane killed"))).await;
                return;
            }
        }
    }
}

/// Pushes, per type, the resources the client lacks or has in another version, and removals.
async fn delta_push(
    shared: &Shared,
    stream: u64,
    subs: &mut BTreeMap<String, DeltaSub>,
    tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) -> bool {
    let mut out = Vec::new();
    {
        let store = lock(&shared.store);
        for (type_url, sub) in subs.iter_mut() {
            let empty = TypeStore::default();
            let t = store.get(type_url).unwrap_or(&empty);
            if sub.synced == Some(t.version) {
                continue;
            }
            let synced = sub.synced.replace(t.version);
            let mut resources = Vec::new();
            for (name, (v, any)) in &t.resources {
                if synced.is_some_and(|s| *v <= s) {
                    continue;
                }
                let v = v.to_string();
                if (sub.wildcard || sub.names.contains(name)) && sub.has.get(name) != Some(&v) {
                    sub.has.insert(name.clone(), v.clone());
                    resources.push(DeltaResource {
                        name: name.clone(),
                        version: v,
                        resource: Some(any.clone()),
                        ..Default::default()
                    });
                }
            }
            let removed: Vec<String> = sub
                .has
                .keys()
                .filter(|n| !t.resources.contains_key(*n))
                .cloned()
                .collect();
            for n in &removed {
                sub.has.remove(n);
            }
            if resources.is_empty() && removed.is_empty() {
                continue;
            }
            let nonce = shared.nonce();
            out.push((
                SentResponse {
                    stream,
                    delta: true,
                    type_url: type_url.clone(),
                    version: t.version.to_string(),
                    nonce: nonce.clone(),
                    resources: resources.iter().map(|r| r.name.clone()).collect(),
                    removed: removed.clone(),
                },
                DeltaDiscoveryResponse {
                    system_version_info: t.version.to_string(),
                    resources,
                    type_url: type_url.clone(),
                    removed_resources: removed,
                    nonce,
                    ..Default::default()
                },
            ));
        }
    }
    for (seen, resp) in out {
        shared.record(Event::Response(seen));
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
    }
    true
}
