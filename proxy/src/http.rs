//! HTTP/1.1 forwarding for one captured (or bound-listener) connection, and for one
//! HBONE tunnel that carries HTTP on the destination node ([`Reporter::Destination`]).
//!
//! A downstream HTTP/1 connection starts on the HTTP/1.1 server of our own
//! ([`crate::h1server`]: requests without an upgrade, `CONNECT` or `Expect`) and moves to
//! hyper's server at its first request that is anything else; hyper serves HTTP/2.
//! Each request is either passed through to the connection's original destination (no
//! listener in the traffic config claims it) or routed: the route configuration of the
//! connection's filter chain picks a virtual host and route, the route picks a cluster,
//! the cluster an endpoint. Routing loads the current traffic config per request, so
//! route and endpoint changes apply to the next request on a keep-alive connection while
//! a request in flight finishes on the config it started with.
//!
//! Upstream connections are pooled per endpoint for all downstream connections
//! ([`crate::upstream::Pools`]). Bodies stream through in both directions without
//! buffering. Pipelined requests are answered in order because an HTTP/1 server
//! connection (ours or hyper's) runs one request at a time.
//!
//! Upgrades (`Connection: upgrade` + `101`, or `CONNECT` + `2xx`) are forwarded like
//! any request; when the upstream agrees, both sides are taken over from hyper and
//! bytes are copied both ways for the rest of the connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::body::{AccessInfo, CountingBody, MeteredBody, RequestBody};
use crate::conn_manager;
use crate::detect::Protocol;
use crate::drain;
use crate::error::{BodyError, HeaderRefusal, ProxyBody, ProxyError, Side};
use crate::extended_connect;
use crate::filters::{self, Filtered};
use crate::golden::{
    self, ConnGolden, DestinationLabels, GoldenMetrics, RequestRecord, SourceLabels, UNKNOWN,
};
use crate::h2server::{ConnectProtocol, Ended, Limits, Signals};
use crate::local_reply;
use crate::lock;
use crate::metrics::{MissReason, ProxyMetrics, RequestLabels};
use crate::model::cluster::{DnsLookupFamily, UpstreamProtocol as ClusterProtocol};
use crate::model::endpoint::EndpointAddress;
use crate::model::filter::HttpFilters;
use crate::model::listener::{
    HeaderHandling, HeaderLimits, Http10, Http2Settings, PathNormalization, UnderscoreAction,
    DEFAULT_BUFFER_LIMIT, DEFAULT_MAX_REQUEST_HEADERS_KB,
};
use crate::model::local_reply::LocalReplyConfig;
use crate::model::proxy_protocol::UpstreamProxyProtocol;
use crate::model::route::{Action, ClusterSpecifier, HostRewrite, MirrorCluster, RetryPolicy};
use crate::model::ProxyConfig;
use crate::outbound::Source;
use crate::path::{self, PathVerdict};
use crate::retry::{self, is_retriable, Outcome, ReplayBody};
use crate::stream::Rewind;
use crate::timeout::{
    ConnActivity, Deadlines, Expired, HcmTimeouts, IdleStream, StreamState, StreamTimer, TimedBody,
};
use crate::tls::origin::Alpn;
use crate::traffic::balance::Report;
use crate::traffic::router::{self, RequestHead, RouteTable};
use crate::traffic::{self, ClusterTarget, ConnLimits, Picked, TrafficHandle};
use crate::upstream::{self, H2Settings, Pools, UpstreamProtocol};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How the requests of a connection find their upstream.
pub(crate) enum Routing {
    /// To the connection's original destination (no listener claims it).
    Passthrough,
    /// By the route configuration of an HTTP connection manager.
    Routes {
        /// The route configuration.
        routes: RouteRef,
        /// Upgrades of these types (`upgrade_configs`) are allowed.
        upgrades: Arc<[String]>,
        /// What the connection manager does to headers itself.
        headers: Arc<HeaderHandling>,
        /// The HTTP filters before the router.
        filters: Arc<HttpFilters>,
    },
}

/// The route configuration of an HTTP connection manager.
pub(crate) enum RouteRef {
    /// Inline in the listener: fixed for the life of the connection.
    Inline(Arc<RouteTable>),
    /// RDS, by name: looked up in the current traffic config per request.
    Rds(String),
}

/// Which end of its requests a connection reports (the golden metrics' `reporter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reporter {
    /// The client's node: captured and bound-listener connections.
    Source,
    /// The destination's node: a connection that came through an HBONE tunnel (mutual
    /// TLS, the source's identity verified) to a pod of this node.
    Destination,
}

impl Reporter {
    fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// State shared by the requests of one downstream HTTP/1 connection.
pub(crate) struct HttpConn {
    /// The client's address: the connection's peer, or the client a PROXY protocol header
    /// named (Envoy's downstream remote address).
    peer: SocketAddr,
    /// What a PROXY protocol header said besides (the physical peer, TLVs).
    proxied: Option<Arc<crate::proxy_protocol::Proxied>>,
    /// The client's identity, for RBAC: its certificate's (a listener's downstream TLS, an
    /// HBONE tunnel), or the SPIFFE ID of the workload of this node it is.
    identity: Option<Arc<str>>,
    /// The SNI of a connection whose TLS the listener terminated.
    sni: Option<Arc<str>>,
    /// The original destination of a captured connection, or the local address of a
    /// bound listener's connection.
    dst: SocketAddr,
    /// Captured (`dst` is an original destination an `ORIGINAL_DST` cluster may use).
    captured: bool,
    reporter: Reporter,
    routing: Routing,
    traffic: TrafficHandle,
    source: Source,
    /// `source` as its requests' records label it.
    source_labels: Arc<SourceLabels>,
    /// HTTP/1 or HTTP/2 from the client.
    downstream: Protocol,
    connect_timeout: Duration,
    metrics: Arc<ProxyMetrics>,
    golden: Arc<ConnGolden>,
    /// For the destination workload of a request.
    config: Arc<ProxyConfig>,
    pools: Arc<Pools>,
    /// The connection manager's timeouts.
    timeouts: HcmTimeouts,
    /// The connection manager's HTTP/2 settings.
    http2: Http2Settings,
    /// The largest request head or header list, in bytes.
    max_request_headers: usize,
    /// The most of a body a request's filters hold, and of a request body kept for
    /// retries (with the route's limit), in bytes (the listener's
    /// `per_connection_buffer_limit_bytes`).
    buffer_limit: usize,
    /// How many request header fields, and what of names with underscores.
    header_limits: HeaderLimits,
    /// The connection manager's `local_reply_config`.
    local_reply: Option<Arc<LocalReplyConfig>>,
    /// Streams in flight, for the connection idle timeout.
    activity: Arc<ConnActivity>,
    /// For the deadlines of its requests until their responses.
    timer: StreamTimer,
    /// Tunnels to meshed workloads on other nodes.
    hbone: Option<Arc<crate::hbone::Client>>,
    /// The byte copy of an accepted upgrade. Run by [`serve`] once hyper has handed the
    /// downstream socket over, so the tunnel stays part of this connection's task (and
    /// of its drain).
    tunnel: Mutex<Option<BoxFuture>>,
    /// The `myelin_proxy_requests` series of this connection's last request: its source is
    /// fixed, and its code and flags rarely change, so most requests skip the families'
    /// lookup (a hash of the label set under a lock).
    last_series: Mutex<Option<RequestSeries>>,
    /// Token buckets of rate limits kept per connection.
    buckets: filters::ConnBuckets,
    /// The destination labels of this connection's last request, and the config
    /// generation and request host they were worked out for: a connection's requests
    /// mostly go to one place, and the labels are four allocations to make.
    last_destination: Mutex<Option<LastDestination>>,
}

/// [`HttpConn::last_destination`]: config generation, request host (without a cluster),
/// and the destination.
type LastDestination = (u64, Option<String>, Arc<Destination>);

/// A response body as served to the client: timed and metered, not boxed (a box of
/// half a kilobyte per request).
pub(crate) type ServedBody = MeteredBody<TimedBody>;

/// A response code and flags with their `myelin_proxy_requests` counter and histogram.
struct RequestSeries {
    code: u16,
    flags: &'static str,
    count: prometheus_client::metrics::counter::Counter,
    duration: prometheus_client::metrics::histogram::Histogram,
}

/// An upstream endpoint to connect to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The cluster's `connect_timeout` (the proxy's for passthrough).
    pub(crate) connect_timeout: Duration,
    /// How requests reach it.
    pub(crate) protocol: UpstreamProtocol,
    /// The cluster's TCP keepalive.
    pub(crate) keepalive: Option<crate::tcp::Keepalive>,
    /// How long the cluster's connections live.
    pub(crate) life: upstream::ConnLife,
    /// The cluster has upstream TLS (its requests go over TLS: the HBONE tunnel, or
    /// `origin`).
    pub(crate) tls: bool,
    /// TLS of the proxy's own over the TCP connection: an endpoint outside the mesh of a
    /// cluster with upstream TLS.
    pub(crate) origin: Option<Box<upstream::TlsTarget>>,
    /// The PROXY protocol header the cluster's connections open with.
    pub(crate) proxy_protocol: Option<Arc<UpstreamProxyProtocol>>,
}

/// The request body as the proxy forwards it (its bytes counted for the golden metrics).
type ReqBody = CountingBody<RequestBody>;

/// The destination labels of a request.
#[derive(Clone)]
struct Destination {
    /// Workload, namespace, service, and the destination's SPIFFE ID when it is reached
    /// over mutual TLS (HBONE) or is a workload of this node with mutual TLS on (else
    /// `unknown`).
    labels: Arc<DestinationLabels>,
    /// The principal is known (mutual TLS).
    mtls: bool,
    /// The first attempt's endpoint and its cluster (for the access log).
    upstream: Option<SocketAddr>,
    cluster: Option<Arc<str>>,
    /// A workload of this node reached from a captured connection with mutual TLS on: the
    /// request is reported by the destination too, with this security policy
    /// ([`crate::local`]).
    local: Option<&'static str>,
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto|...]`).
/// A gRPC request's deadline (gRPC over HTTP/2).
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The service a cluster stands for: the host of Istio's `outbound|port|subset|host`
/// names, else the cluster's name.
pub(crate) fn service_of_cluster(cluster: &str) -> &str {
    cluster.rsplit('|').next().unwrap_or(cluster)
}

/// The host of an authority (`host:port`, `[v6]:port` or `host`).
fn split_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Where one routed request goes, and what to do to it on the way.
struct Decision {
    target: Target,
    /// The chosen cluster, as in the traffic config the request was routed with (retries
    /// pick their endpoints from it).
    cluster: Arc<ClusterTarget>,
    /// The request's hash for ring-hash and Maglev clusters.
    hash: Option<u64>,
    /// The route table and the (virtual host, route) indexes in it, for the response's
    /// header mutations.
    table: Arc<RouteTable>,
    vhost: usize,
    route: usize,
    /// The index of the chosen cluster among the route's weighted clusters, for its own
    /// response header changes.
    weighted: Option<usize>,
    /// A stateful session (boxed: most requests have none).
    session: Option<Box<filters::Session>>,
}

/// The route and cluster a request goes by, once its filters are done choosing
/// ([`HttpConn::decide`]).
struct Chosen<'a> {
    traffic: &'a traffic::Traffic,
    table: &'a Arc<RouteTable>,
    vh: &'a crate::model::route::VirtualHost,
    route: &'a crate::model::route::Route,
    action: &'a crate::model::route::RouteAction,
    cluster: &'a str,
    /// The route's weighted cluster `cluster` is (its index), if it has them.
    weighted: Option<usize>,
}

impl Decision {
    /// Tells the client of a stateful session the host that answered (`pick`).
    fn answer_session(
        &self,
        pick: &PickedEndpoint,
        result: &mut Result<Response<ProxyBody>, ProxyError>,
    ) {
        if let (Some(s), Ok(resp), EndpointAddress::Socket(addr)) =
            (&self.session, result, &pick.endpoint)
        {
            s.answer(*addr, resp.headers_mut());
        }
    }

    /// Whether the virtual host wants the attempt count in each upstream request and in
    /// the response.
    fn attempt_count(&self) -> (bool, bool) {
        self.table
            .config
            .virtual_hosts
            .get(self.vhost)
            .map_or((false, false), |v| {
                (v.attempt_count_in_request, v.attempt_count_in_response)
            })
    }
}

/// Everything [`HttpConn::new`] needs.
pub(crate) struct HttpConnParams {
    pub(crate) peer: SocketAddr,
    pub(crate) proxied: Option<Arc<crate::proxy_protocol::Proxied>>,
    /// The client's identity, when it has one (see [`HttpConn::identity`]).
    pub(crate) identity: Option<Arc<str>>,
    /// The SNI of a connection whose TLS the listener terminated.
    pub(crate) sni: Option<Arc<str>>,
    pub(crate) dst: SocketAddr,
    pub(crate) captured: bool,
    pub(crate) reporter: Reporter,
    pub(crate) routing: Routing,
    pub(crate) traffic: TrafficHandle,
    pub(crate) source: Source,
    pub(crate) downstream: Protocol,
    pub(crate) connect_timeout: Duration,
    pub(crate) metrics: Arc<ProxyMetrics>,
    pub(crate) golden: Arc<GoldenMetrics>,
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) pools: Arc<Pools>,
    pub(crate) manager: ManagerSettings,
    pub(crate) hbone: Option<Arc<crate::hbone::Client>>,
}

/// The connection manager's settings a connection serves by: its timeouts, what an HTTP/2
/// client is told in SETTINGS, the largest request head. The default is what a connection
/// without a connection manager gets (Envoy's defaults, as for Istio's passthrough).
#[derive(Debug, Clone)]
pub(crate) struct ManagerSettings {
    pub(crate) timeouts: HcmTimeouts,
    pub(crate) http2: Http2Settings,
    /// The largest request head or header list, in bytes (`max_request_headers_kb`).
    pub(crate) max_request_headers: usize,
    /// The buffer limit, in bytes (the listener's `per_connection_buffer_limit_bytes`).
    pub(crate) buffer_limit: usize,
    /// How many request header fields, and what of names with underscores.
    pub(crate) header_limits: HeaderLimits,
    /// `local_reply_config`.
    pub(crate) local_reply: Option<Arc<LocalReplyConfig>>,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            timeouts: HcmTimeouts::default(),
            http2: Http2Settings::default(),
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS_KB as usize * 1024,
            buffer_limit: DEFAULT_BUFFER_LIMIT as usize,
            header_limits: HeaderLimits::default(),
            local_reply: None,
        }
    }
}

impl From<&crate::model::listener::HttpConnectionManager> for ManagerSettings {
    fn from(hcm: &crate::model::listener::HttpConnectionManager) -> Self {
        Self {
            timeouts: HcmTimeouts::from(hcm),
            http2: hcm.http2,
            max_request_headers: hcm.max_request_headers_kb as usize * 1024,
            buffer_limit: crate::model::listener::buffer_limit_bytes(hcm.buffer_limit),
            header_limits: hcm.header_limits,
            local_reply: hcm.local_reply.clone(),
        }
    }
}

impl HttpConn {
    pub(crate) fn new(p: HttpConnParams) -> Self {
        Self {
            peer: p.peer,
            proxied: p.proxied,
            identity: p.identity,
            sni: p.sni,
            dst: p.dst,
            captured: p.captured,
            reporter: p.reporter,
            routing: p.routing,
            traffic: p.traffic,
            source_labels: Arc::new(SourceLabels {
                workload: p.source.workload.clone(),
                namespace: p.source.namespace.clone(),
                principal: p.source.principal.clone(),
            }),
            source: p.source,
            downstream: p.downstream,
            connect_timeout: p.connect_timeout,
            metrics: p.metrics,
            golden: Arc::new(ConnGolden::new(p.golden)),
            config: p.config,
            pools: p.pools,
            timeouts: p.manager.timeouts,
            http2: p.manager.http2,
            max_request_headers: p.manager.max_request_headers,
            buffer_limit: p.manager.buffer_limit,
            header_limits: p.manager.header_limits,
            local_reply: p.manager.local_reply,
            activity: Arc::new(ConnActivity::default()),
            timer: StreamTimer::default(),
            hbone: p.hbone,
            tunnel: Mutex::new(None),
            last_series: Mutex::new(None),
            buckets: filters::ConnBuckets::default(),
            last_destination: Mutex::new(None),
        }
    }

    /// Counts a request in `myelin_proxy_requests` (the connection's cached series when its
    /// code and flags are the last request's).
    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// `resp`, a reply the proxy made (status `code` and `body` before any gRPC conversion,
    /// the gRPC status it names itself), marked for the `local_reply_config` when there is
    /// one.
    pub(crate) fn local(
        &self,
        resp: Response<ProxyBody>,
        code: u16,
        body: &str,
        grpc_status: Option<u32>,
    ) -> Response<ProxyBody> {
        match self.local_reply {
            Some(_) => local_reply::mark(resp, code, body, grpc_status),
            None => resp,
        }
    }

    /// A route's own answer (a direct response, a redirect) with `body`: made gRPC for a
    /// gRPC client ([`for_grpc`]) and marked as a local reply.
    fn route_answer(
        &self,
        resp: Response<ProxyBody>,
        body: &str,
        grpc: bool,
    ) -> Response<ProxyBody> {
        let (code, own) = (resp.status().as_u16(), named_grpc_status(resp.headers()));
        self.local(for_grpc(resp, body, grpc), code, body, own)
    }

    /// The proxy's counters.
    pub(crate) fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// The connection manager's timeouts.
    pub(crate) fn timeouts(&self) -> &crate::timeout::HcmTimeouts {
        &self.timeouts
    }

    /// The largest request head (HTTP/1.1) or header list (HTTP/2), in bytes; larger ones
    /// are answered 431.
    pub(crate) fn max_request_headers(&self) -> usize {
        self.max_request_headers
    }

    fn count_request(&self, code: u16, flags: &'static str, elapsed: Duration) {
        let mut last = lock(&self.last_series);
        let series = match last.as_ref() {
            Some(s) if s.code == code && s.flags == flags => s,
            _ => {
                let labels = RequestLabels {
                    source_workload: self.source.workload.clone(),
                    source_namespace: self.source.namespace.clone(),
                    response_code: code,
                    response_flags: flags,
                };
                last.insert(RequestSeries {
                    code,
                    flags,
                    count: self.metrics.requests.get_or_create(&labels).clone(),
                    duration: self.metrics.request_duration.get_or_create(&labels).clone(),
                })
            }
        };
        series.count.inc();
        series.duration.observe(elapsed.as_secs_f64());
    }

    /// Serves one request: route and forward it, turn errors into responses, count it.
    //
    // This and the request path below it are plain fns returning async blocks, not
    // `async fn`s: an `async fn` keeps each argument twice in its future (as passed, and
    // moved into its body), and a request's futures are copied as they are created, for
    // every request (here 7.5 KB -> 4 KB in all).
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
                                      //
                                      // It borrows the connection: the HTTP/2 server polls its streams' futures inside the
                                      // connection's own (no reference count taken and dropped per request); hyper's
                                      // service, which needs a `'static` future, holds an `Arc` around it.
    pub(crate) fn handle(
        &self,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Response<ServedBody>> + Send + '_ {
        async move {
            let active = self.activity.enter();
            // What the codec takes: before anything reads the headers (one comparison when
            // underscores are allowed, as they are by default).
            let mut refused = check_headers(&self.header_limits, req.headers_mut(), &self.metrics);
            // The connection manager's own header rules come before anything reads them.
            // (Downstream TLS is not terminated by a connection manager yet: `false`.)
            let managed = match &self.routing {
                Routing::Routes { headers, .. } => {
                    // The codec's rule for HTTP/1.0 (one comparison for other requests).
                    if req.version() == http::Version::HTTP_10 {
                        match &headers.http10 {
                            Http10::Refuse => refused = refused.or(Some(HeaderRefusal::Http10)),
                            Http10::Accept {
                                default_host: Some(host),
                            } if !req.headers().contains_key(header::HOST) => {
                                if let Ok(v) = HeaderValue::from_str(host) {
                                    req.headers_mut().insert(header::HOST, v);
                                }
                            }
                            Http10::Accept { .. } => {}
                        }
                    }
                    let facts = conn_manager::mutate_request(
                        headers,
                        req.headers_mut(),
                        self.peer,
                        false,
                        self.config.access_log,
                    );
                    if headers.host.any() {
                        conn_manager::normalize_host(&headers.host, &mut req, self.dst.port());
                    }
                    conn_manager::settle_scheme(
                        &mut req,
                        facts.scheme,
                        headers.scheme_to_overwrite,
                    );
                    if let Some(status) = facts.reject {
                        refused = refused.or(Some(HeaderRefusal::NoClientAddress { status }));
                    }
                    Some((headers, facts))
                }
                Routing::Passthrough => None,
            };
            let grpc = is_grpc(req.headers());
            // Then its path normalization, before anything reads the path (one branch when
            // it is off, as it is by default).
            let path_answer = match (&managed, refused) {
                (_, Some(r)) => Err(ProxyError::BadHeaders(r)),
                (Some((headers, _)), None) if headers.path.any() => {
                    normalize_path(&headers.path, &mut req, grpc)
                }
                _ => Ok(None),
            };
            let start = Instant::now();
            // What only the access log and the debug line need.
            let logged = (self.config.access_log
                || tracing::enabled!(target: "myelin_proxy::access", tracing::Level::DEBUG))
            .then(|| {
                (
                    req.method().clone(),
                    req.uri().clone(),
                    std::time::SystemTime::now(),
                )
            });
            let authority_seen = SeenAuthority::of(&req);
            // The request's head for a local reply config that reads it (boxed: one word in
            // every request's future).
            let kept = self
                .local_reply
                .as_ref()
                .filter(|c| c.reads_request_headers())
                .map(|_| Box::new(kept_head(&req)));
            let stream = Arc::new(StreamState::new(
                tokio::time::Instant::from_std(start),
                http_body::Body::is_end_stream(req.body()),
            ));
            let req = req.map(|b| CountingBody::new(b, stream.clone()));
            let mut deadlines = Deadlines::default();
            let mut filtered = Filtered::default();
            let outcome = match path_answer {
                Ok(None) => {
                    // The client the connection manager worked out, for RBAC's `remote_ip`.
                    let client = managed
                        .as_ref()
                        .and_then(|(_, facts)| facts.client)
                        .unwrap_or(self.peer.ip());
                    self.dispatch(req, &stream, &mut deadlines, &mut filtered, client)
                        .await
                }
                Ok(Some(redirect)) => {
                    let dest = self.destination(None, None, authority_seen.as_str());
                    Ok((self.local(redirect, 307, "", None), "-", dest))
                }
                Err(e) => Err(e),
            };
            let (mut resp, flags, dest) = match outcome {
                Ok(done) => done,
                Err(e) => {
                    match e.side() {
                        Side::Upstream => debug!(error = %e, "upstream request failed"),
                        Side::Downstream => debug!(error = %e, "downstream request failed"),
                    }
                    if let Some(reason) = e.connect_reason() {
                        self.metrics.connect_error(self.downstream, reason);
                    }
                    match &e {
                        ProxyError::Unrouted { reason, .. } => self.metrics.config_miss(*reason),
                        ProxyError::Overflow {
                            breaker: "max_pending_requests",
                            ..
                        } => {
                            self.metrics.pending_overflow.inc();
                        }
                        _ => {}
                    }
                    // The destination side knows its pod even when the request failed, and so
                    // does a same-node refusal.
                    let addr = match &e {
                        ProxyError::Denied { addr, .. } => Some(*addr),
                        _ => (self.reporter == Reporter::Destination).then_some(self.dst),
                    };
                    let dest = self.destination(None, addr, authority_seen.as_str());
                    let named = e.grpc_status();
                    let own =
                        (named != crate::error::grpc::status_of_http(e.status())).then_some(named);
                    let resp = self.local(e.to_response(grpc), e.status().as_u16(), e.body(), own);
                    (resp, e.response_flags(), dest)
                }
            };
            let mut flags = filtered.flags(flags);
            if let Some(cfg) = &self.local_reply {
                let facts = local_reply::Facts {
                    flags,
                    grpc,
                    request: kept.as_deref().map(request_head),
                    protocol: match self.downstream {
                        Protocol::Http2 => "HTTP/2",
                        _ => "HTTP/1.1",
                    },
                    elapsed: start.elapsed(),
                };
                resp = local_reply::rewrite(cfg, resp, &facts);
            }
            for exchange in filtered.take_ext_proc() {
                let processed = exchange.response(self, &mut resp, grpc, &self.metrics);
                // The processor answered the request while its body was told.
                if let Some(answered) = Box::pin(processed).await {
                    flags = filtered.flags(answered);
                }
            }
            resp = filtered.compress(resp, &self.metrics);
            filtered.finish_response(resp.headers_mut());
            if let Some(done) = filtered.take_stream_done() {
                crate::ratelimit::report(self, done);
            }
            drop(filtered);
            if let Some((headers, facts)) = &managed {
                conn_manager::mutate_response(headers, resp.headers_mut(), facts);
            }
            let elapsed = start.elapsed();
            self.count_request(resp.status().as_u16(), flags, elapsed);
            if let Some((method, uri, _)) = &logged {
                debug!(
                    target: "myelin_proxy::access",
                    src = %self.peer,
                    dst = %self.dst,
                    %method,
                    %uri,
                    status = resp.status().as_u16(),
                    flags,
                    duration_ms = elapsed.as_millis() as u64,
                );
            }
            let record = RequestRecord {
                reporter: self.reporter.label(),
                source: self.source_labels.clone(),
                destination: dest.labels.clone(),
                connection_security_policy: match dest.local {
                    Some(security) => security,
                    None if dest.mtls || self.reporter == Reporter::Destination => "mutual_tls",
                    None => "none",
                },
                request_protocol: if grpc { "grpc" } else { "http" },
                response_code: resp.status().as_u16(),
                // A trailers-only gRPC response carries the status in its headers.
                // (For gRPC requests only: Istio's `grpc_response_status` is empty for others,
                // and the lookup is one more hashed search per request.)
                grpc_status: grpc.then(|| retry::grpc_status(resp.headers())).flatten(),
                response_flags: flags,
                duration: elapsed,
                request_bytes: 0,
                response_bytes: 0,
            };
            let access =
                logged
                    .filter(|_| self.config.access_log)
                    .map(|(method, uri, started_at)| {
                        Box::new(AccessInfo {
                            start: started_at,
                            method: method.to_string(),
                            authority: authority_seen.as_str().to_owned(),
                            path: uri
                                .path_and_query()
                                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
                            downstream: self.peer,
                            original_dst: self.dst,
                            upstream: dest.upstream,
                            // Shared, not copied: every routed request has a cluster, and
                            // this log is off by default.
                            cluster: dest.cluster.clone(),
                            headers_after: elapsed,
                            request_id: managed
                                .as_ref()
                                .and_then(|(_, f)| f.request_id.as_ref())
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                        })
                    });
            let golden = self.golden.clone();
            let destination_too = dest.local.is_some();
            resp.map(|b| {
                let timed = TimedBody::new(b, deadlines, stream.clone(), Some(active));
                MeteredBody::new(timed, record, access, stream, golden)
                    .destination_too(destination_too)
            })
        }
    }

    /// Routes and forwards one request: the response and its response flags. `deadlines`
    /// is set to the timeouts that go on applying to the response body.
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    fn dispatch<'f>(
        &'f self,
        mut req: Request<ReqBody>,
        stream: &'f StreamState,
        deadlines: &'f mut Deadlines,
        filtered: &'f mut Filtered,
        client: IpAddr,
    ) -> impl Future<
        Output = Result<(Response<ProxyBody>, &'static str, Arc<Destination>), ProxyError>,
    > + 'f {
        async move {
            let route_ref = match &self.routing {
                Routing::Passthrough => {
                    let target = Target {
                        addr: self.dst,
                        connect_timeout: self.connect_timeout,
                        protocol: same_as(self.downstream),
                        keepalive: None,
                        life: upstream::ConnLife::default(),
                        tls: false,
                        origin: None,
                        proxy_protocol: None,
                    };
                    let dest = self.destination(None, Some(self.dst), authority(&req));
                    *deadlines = Deadlines::new(None, None, &self.timeouts);
                    let forwarded = std::pin::pin!(self.forward(target, None, req));
                    let resp = within(&self.timer, *deadlines, stream, self.dst, forwarded).await?;
                    return Ok((resp, "-", dest));
                }
                Routing::Routes {
                    routes,
                    upgrades,
                    filters,
                    ..
                } => (routes, upgrades, filters),
            };
            let (route_ref, hcm_upgrades, filters) = route_ref;
            // Asked before the route's header mutations.
            let upgrade = upgrade_type(&req);
            let upgrading = upgrade.is_some();
            let (decision, first) = match self
                .decide(route_ref, filters, &mut req, filtered, client)
                .await?
            {
                Ok(decided) => decided,
                Err((local, flags)) => {
                    // No route to forward by (none matched, a redirect, a direct answer):
                    // the connection manager alone decides on an upgrade, and before that
                    // answer, as Envoy's connection manager does before its router.
                    let local = match &upgrade {
                        Some(kind) if !hcm_upgrades.contains(kind) => refuse_upgrade(kind),
                        _ => local,
                    };
                    let dest = self.destination(None, None, authority(&req));
                    return Ok((local, flags, dest));
                }
            };
            let dest = self.destination(
                Some(&decision.cluster.cluster.name),
                Some(decision.target.addr),
                authority(&req),
            );
            let vh = &decision.table.config.virtual_hosts[decision.vhost];
            let route = &vh.routes[decision.route];
            let Action::Route(action) = &route.action else {
                unreachable!("decide() answers other actions locally");
            };
            if let Some(kind) = upgrade {
                // Envoy refuses an upgrade neither the route nor its connection manager
                // allows (the route's say first).
                if !action.allows_upgrade(&kind, hcm_upgrades) {
                    let dest = self.destination(None, None, authority(&req));
                    return Ok((refuse_upgrade(&kind), "-", dest));
                }
                // `connect` is a plain CONNECT's type (an extended one's is its protocol).
                if kind == "connect" && action.terminates_connect() {
                    req.extensions_mut().insert(TerminateConnect);
                }
            }
            // A route's retry policy replaces its virtual host's.
            let policy = action.retry_policy.as_ref().or(vh.retry_policy.as_ref());
            // The cluster's `max_requests` circuit breaker.
            let Some(_in_flight) = decision.cluster.try_request() else {
                self.metrics.request_overflow.inc();
                return Err(ProxyError::Overflow {
                    cluster: decision.cluster.cluster.name.clone(),
                    breaker: "max_requests",
                });
            };
            // The route timeout covers every attempt and the backoff between them, and then
            // the response body.
            *deadlines = Deadlines::new(action.timeout, action.idle_timeout, &self.timeouts);
            if let Some(limit) = &action.stream_limit {
                let l = crate::timeout::limits(
                    limit,
                    action.timeout,
                    self.timeouts.max_stream,
                    is_grpc(req.headers()),
                    req.headers()
                        .get(GRPC_TIMEOUT)
                        .and_then(|v| crate::timeout::parse_grpc_timeout(v.as_bytes())),
                    policy.and_then(|p| p.per_try_timeout),
                );
                deadlines.route = l.route;
                deadlines.duration = l.duration;
                if let Some(t) = l.upstream_grpc_timeout {
                    req.headers_mut()
                        .insert(GRPC_TIMEOUT, crate::timeout::grpc_timeout_value(t));
                }
            }
            // Copies to the route's mirrors go now, their bodies teed from this one's (not
            // of an upgrade or CONNECT, whose bytes after the head are a tunnel's).
            // The most specific level with any (route, virtual host, table) decides, as in
            // Envoy: policies are not merged.
            let mirrors = [&action.mirrors, &vh.mirrors, &decision.table.config.mirrors]
                .into_iter()
                .find(|m| !m.is_empty());
            if let (Some(mirrors), false) = (mirrors, upgrading) {
                self.mirror(mirrors, &mut req, decision.hash);
            }
            // Pinned here and lent to `within`: a future of several kilobytes is not copied
            // again into `within`'s.
            let attempts = std::pin::pin!(self.attempts(&decision, policy, req, first));
            let (mut resp, flags) = within(
                &self.timer,
                *deadlines,
                stream,
                decision.target.addr,
                attempts,
            )
            .await?;
            let own = weighted_routing(action, decision.weighted).map(|r| &r.headers);
            response_mutations(&mut resp, &decision.table, vh, route, own);
            Ok((resp, flags, dest))
        }
    }

    /// The destination labels of a request: the workload that owns the endpoint's address
    /// (a pod on this node), and the service: the cluster's host name (Istio's
    /// `outbound|port|subset|host` names give the host), else the request's host.
    fn destination(
        &self,
        cluster: Option<&str>,
        addr: Option<SocketAddr>,
        authority: &str,
    ) -> Arc<Destination> {
        let generation = self.traffic.generation();
        let mut last = lock(&self.last_destination);
        if let Some((g, host, d)) = last.as_ref() {
            // The request's host only matters without a cluster (it is the service).
            if *g == generation
                && d.upstream == addr
                && d.cluster.as_deref() == cluster
                && (cluster.is_some() || host.as_deref() == Some(authority))
            {
                return d.clone();
            }
        }
        let d = Arc::new(self.new_destination(cluster, addr, authority));
        let host = cluster.is_none().then(|| authority.to_owned());
        *last = Some((generation, host, d.clone()));
        d
    }

    /// [`HttpConn::destination`] worked out.
    fn new_destination(
        &self,
        cluster: Option<&str>,
        addr: Option<SocketAddr>,
        authority: &str,
    ) -> Destination {
        let service = match cluster {
            Some(c) => service_of_cluster(c),
            None => split_port(authority),
        };
        let local = addr.and_then(|a| self.config.workload_by_ip(a.ip()));
        // Pod to pod on this node with mutual TLS on: the proxy knows the destination's
        // identity, and reports the request for the destination too.
        let same_node = local
            .filter(|_| self.reporter == Reporter::Source && self.config.inbound_policy().is_some())
            .map(|_| crate::local::security(&self.config, &self.source));
        // A meshed workload on another node, reached through HBONE.
        let remote = addr
            .filter(|_| local.is_none() && self.hbone.is_some())
            .and_then(|a| self.config.remote_by_ip(a.ip()));
        let (workload, namespace, principal) = match (local, remote) {
            // Behind the HBONE server, the pod is who the source reached over mutual TLS.
            (Some(w), _) => (
                w.name.as_str(),
                w.namespace.as_str(),
                (self.reporter == Reporter::Destination || same_node.is_some())
                    .then(|| Arc::from(self.config.principal(w))),
            ),
            (None, Some(r)) => (
                r.name.as_str(),
                r.namespace.as_str(),
                Some(Arc::from(self.config.remote_principal(r))),
            ),
            (None, None) => (UNKNOWN, UNKNOWN, None),
        };
        // An endpoint EDS marks as meshed on another node: the identity its node presents.
        let tunnel = addr
            .filter(|_| principal.is_none() && local.is_none() && self.hbone.is_some())
            .and_then(|a| crate::dial::tunnel_peer(&self.traffic.load(), a));
        let (namespace, principal): (Arc<str>, _) = match tunnel {
            Some(Some(id)) => (id.namespace().into(), Some(id.to_string().into())),
            Some(None) => (UNKNOWN.into(), Some(UNKNOWN.into())),
            None => (namespace.into(), principal),
        };
        Destination {
            mtls: principal.is_some(),
            labels: Arc::new(DestinationLabels {
                workload: workload.into(),
                namespace,
                principal: principal.unwrap_or_else(golden::unknown),
                service: if service.is_empty() {
                    UNKNOWN.into()
                } else {
                    service.into()
                },
            }),
            upstream: addr,
            cluster: cluster.map(Arc::from),
            local: same_node,
        }
    }

    /// Sends `req` to the decided endpoint and retries as `policy` says: a retriable
    /// outcome with retries left, a replayable body and room in the cluster's
    /// `max_retries` circuit breaker is retried after a jittered backoff, on a newly
    /// picked endpoint (not a previous one with `retry_previous_hosts`). The last outcome
    /// is answered; `URX` when it was retriable but the retries ran out.
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    fn attempts<'f>(
        &'f self,
        d: &'f Decision,
        policy: Option<&'f RetryPolicy>,
        req: Request<ReqBody>,
        first_pick: PickedEndpoint,
    ) -> impl Future<Output = Result<(Response<ProxyBody>, &'static str), ProxyError>> + 'f {
        async move {
            let limits = d.cluster.conn_limits();
            match policy {
                // The retry loop is boxed: its state (the replayable body, the request's parts
                // for the next try, the endpoints tried) would otherwise make every request's
                // future kilobytes larger, and futures are copied as they are created.
                // (An upgrade is looked for only when there are retries to skip.)
                Some(p) if p.num_retries > 0 && !wants_upgrade(&req) => {
                    Box::pin(self.retried(d, p, &limits, req, first_pick)).await
                }
                _ => {
                    // No retries, but the per-try timeout still bounds the one try (as in
                    // Envoy).
                    let per_try = policy
                        .and_then(|p| p.per_try_timeout)
                        .filter(|_| !wants_upgrade(&req));
                    let addr = first_pick.target.addr;
                    let mut req = req;
                    let counted = d.attempt_count();
                    if counted.0 {
                        req.headers_mut()
                            .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(1));
                    }
                    let attempt = self.forward(first_pick.target.clone(), Some(&limits), req);
                    let result = match per_try {
                        Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
                            Err(ProxyError::Timeout {
                                addr,
                                which: "per-try",
                                timeout: t,
                            })
                        }),
                        None => attempt.await,
                    };
                    report_attempt(&d.cluster, &first_pick, &result);
                    let mut result = result;
                    d.answer_session(&first_pick, &mut result);
                    counted_answer(result, "-", counted.1.then_some(1))
                }
            }
        }
    }

    /// The tries of a request whose route retries (`policy.num_retries > 0`).
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    fn retried<'f>(
        &'f self,
        d: &'f Decision,
        policy: &'f RetryPolicy,
        limits: &'f ConnLimits<'f>,
        req: Request<ReqBody>,
        first_pick: PickedEndpoint,
    ) -> impl Future<Output = Result<(Response<ProxyBody>, &'static str), ProxyError>> + 'f {
        async move {
            let (parts, body) = req.into_parts();
            let (method, uri, version, headers) = (
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                parts.headers.clone(),
            );
            let vh = &d.table.config.virtual_hosts[d.vhost];
            let kept = retry::replay_limit(
                self.buffer_limit,
                vh.routes[d.route].buffer_limit.or(vh.buffer_limit),
            );
            let body = ReplayBody::new(body, kept);
            let mut first = Some(parts);
            let mut pick = first_pick;
            let mut tried = Vec::new();
            let mut retries = 0;
            let mut _retry = None;
            let counted = d.attempt_count();
            loop {
                let Some(attempt_body) = body.replay() else {
                    unreachable!("checked before every retry");
                };
                let mut req = match first.take() {
                    Some(parts) => Request::from_parts(parts, attempt_body),
                    None => {
                        let mut r = Request::new(attempt_body);
                        *r.method_mut() = method.clone();
                        *r.uri_mut() = uri.clone();
                        *r.version_mut() = version;
                        *r.headers_mut() = headers.clone();
                        r
                    }
                };
                if counted.0 {
                    req.headers_mut()
                        .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(retries + 1));
                }
                tried.push(pick.endpoint.clone());
                let addr = pick.target.addr;
                let attempt = self.forward(pick.target.clone(), Some(limits), req);
                let result = match policy.per_try_timeout {
                    Some(t) => match tokio::time::timeout(t, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err(ProxyError::Timeout {
                            addr,
                            which: "per-try",
                            timeout: t,
                        }),
                    },
                    None => attempt.await,
                };
                report_attempt(&d.cluster, &pick, &result);
                let mut result = result;
                d.answer_session(&pick, &mut result);
                let outcome = match &result {
                    Ok(resp) => Outcome::of_response(resp.status(), resp.headers()),
                    Err(ProxyError::Timeout { .. }) => Outcome::PerTryTimeout,
                    Err(e) => match Outcome::of_error(e) {
                        Some(o) => o,
                        None => {
                            return counted_answer(result, "-", counted.1.then_some(retries + 1))
                        }
                    },
                };
                if !is_retriable(policy, outcome) {
                    return counted_answer(result, "-", counted.1.then_some(retries + 1));
                }
                if retries >= policy.num_retries {
                    return counted_answer(result, "URX", counted.1.then_some(retries + 1));
                }
                if body.replay().is_none() {
                    // Too big to send again.
                    return counted_answer(result, "-", counted.1.then_some(retries + 1));
                }
                let Some(guard) = d.cluster.try_retry() else {
                    // The retry circuit breaker (max_retries or the budget) is full: Envoy
                    // answers the last try's response flagged `UO`.
                    self.metrics.retry_overflow.inc();
                    return counted_answer(result, "UO", counted.1.then_some(retries + 1));
                };
                // Let go of the failed attempt (and its connection) before waiting.
                drop(result);
                tokio::time::sleep(retry::backoff(policy, retries)).await;
                retries += 1;
                self.metrics.retries.inc();
                let exclude: &[EndpointAddress] = if policy.retry_previous_hosts {
                    &tried
                } else {
                    &[]
                };
                pick = pick_endpoint(
                    &d.cluster,
                    self.captured.then_some(self.dst),
                    self.downstream,
                    exclude,
                    d.hash,
                    None,
                )
                .await?;
                _retry = Some(guard);
            }
        }
    }

    /// Routes `req` (rewriting it as the route says): the upstream to send it to, or a
    /// local response (direct response, redirect).
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    fn decide<'f>(
        &'f self,
        route_ref: &'f RouteRef,
        filters: &'f HttpFilters,
        req: &'f mut Request<ReqBody>,
        filtered: &'f mut Filtered,
        client: IpAddr,
    ) -> impl Future<Output = Result<Result<(Decision, PickedEndpoint), filters::Answer>, ProxyError>> + 'f
    {
        async move {
            let traffic = self.traffic.load();
            let table = match route_ref {
                RouteRef::Inline(t) => t.clone(),
                RouteRef::Rds(name) => traffic.route_table(name).cloned().ok_or_else(|| {
                    ProxyError::unrouted(
                        MissReason::NoRouteConfig,
                        format!("route configuration {name:?} has not been received"),
                    )
                })?,
            };
            if !filters.is_empty() {
                let head = request_head(req);
                let grpc = is_grpc(req.headers());
                if let Some(answer) =
                    filters::before_route(filters, &head, &traffic, grpc, &self.metrics)
                {
                    return Ok(Err(answer));
                }
            }
            // The filters to run from: all of them, unless one that cleared the route cache
            // (`clear_route_cache`) stopped them; then the route is chosen again from the
            // request as they changed it, and the filters after that one run with it
            // (Envoy's `clearRouteCache`).
            let mut resume = 0;
            loop {
                let head = request_head(req);
                let (authority, path) = (head.authority, head.path);
                let Some((vh, route)) = table.find(&head) else {
                    return Err(ProxyError::unrouted(
                        MissReason::NoRoute,
                        format!("no route for {authority}{path} in {:?}", table.config.name),
                    ));
                };
                // A filter that tells a service the request's body with its head (external
                // authorization's `with_request_body`) has its start read first (more of it
                // if a route chosen again wants more); then the route is found again (the
                // same one), the request unchanged.
                if !filters.is_empty() && body_readable(req) {
                    let levels = filters::Levels {
                        route,
                        vhost: vh,
                        table: &table.config,
                    };
                    let wanted = filters::body_to_read(filters, resume, levels)
                        .filter(|n| filtered.body.as_ref().is_none_or(|b| !b.covers(*n)));
                    if let Some(n) = wanted {
                        let read = req.body_mut().read_ahead(n).await.map_err(|source| {
                            ProxyError::DownstreamAborted {
                                peer: self.peer,
                                source,
                            }
                        })?;
                        filtered.body = Some(read);
                        continue;
                    }
                }
                // A route to a cluster picks it first (its weights), for the filters too.
                let mut weighted = None;
                let cluster = match &route.action {
                    Action::Route(a) => Some(match &a.cluster {
                        ClusterSpecifier::Cluster(name) => name.as_str(),
                        ClusterSpecifier::WeightedClusters(ws) => {
                            let i = router::pick_weighted_index(ws, fastrand::u64(..)).ok_or_else(
                                || {
                                    ProxyError::unrouted(
                                        MissReason::NoCluster,
                                        "weighted clusters add up to 0",
                                    )
                                },
                            )?;
                            weighted = Some(i);
                            ws[i].name.as_str()
                        }
                    }),
                    _ => None,
                };
                // The filters before the router, for a request routed to a cluster (picked
                // above) or answered by its route (direct responses and redirects: only the
                // filters that guard or limit, see `filters`). They see the request as its
                // client sent it (the route's rewrites are the router's), and its body
                // beside it, for the filters that read it as they run (given back after);
                // boxed, as only their users pay for them.
                if !filters.is_empty() {
                    let grpc = is_grpc(req.headers());
                    let end_of_stream = http_body::Body::is_end_stream(req.body());
                    let mut body = body_readable(req).then(|| req.body_mut().take());
                    let head = request_head(req);
                    let cx = filters::Context {
                        levels: filters::Levels {
                            route,
                            vhost: vh,
                            table: &table.config,
                        },
                        cluster,
                        grpc,
                        metrics: &self.metrics,
                        buckets: &self.buckets,
                        client: crate::rbac::Subject {
                            head: None,
                            peer: self.peer,
                            direct: crate::proxy_protocol::direct(
                                self.peer,
                                self.proxied.as_deref(),
                            )
                            .ip(),
                            remote_ip: client,
                            local: self.dst,
                            sni: self.sni.as_deref(),
                            principal: self.identity.as_deref(),
                        },
                        services: self,
                        end_of_stream,
                        buffer_limit: self.buffer_limit,
                        body: body.as_mut(),
                    };
                    let ran = Box::pin(filters::run(filters, resume, cx, &head, filtered)).await;
                    if let Some(body) = body {
                        *req.body_mut() = body;
                    }
                    let answer = ran.map_err(|source| ProxyError::DownstreamAborted {
                        peer: self.peer,
                        source,
                    })?;
                    if let Some(answer) = answer {
                        return Ok(Err(answer));
                    }
                    if let Some(next) = filtered.take_resume() {
                        resume = next;
                        filtered.apply_now(req);
                        if let Some((data, trailers)) = filtered.take_new_body() {
                            req.body_mut().replace(data, trailers);
                        }
                        continue;
                    }
                }
                let (action, cluster) = match (&route.action, cluster) {
                    (Action::Route(a), Some(cluster)) => (a, cluster),
                    (Action::DirectResponse(d), _) => {
                        let body = d.body.clone().unwrap_or_default();
                        let mut resp = if d.body.is_some() {
                            text_response(d.status, body.clone())
                        } else {
                            local_response(d.status, String::new())
                        };
                        response_mutations(&mut resp, &table, vh, route, None);
                        let resp = self.route_answer(resp, &body, is_grpc(req.headers()));
                        return Ok(Err((resp, "-")));
                    }
                    (Action::Redirect(r), _) => {
                        let head = request_head(req);
                        let location = router::redirect_location(r, &route.route_match, &head);
                        let mut resp = local_response(r.response_code, String::new());
                        if let Ok(v) = HeaderValue::from_str(&location) {
                            resp.headers_mut().insert(header::LOCATION, v);
                        }
                        response_mutations(&mut resp, &table, vh, route, None);
                        let resp = self.route_answer(resp, "", is_grpc(req.headers()));
                        return Ok(Err((resp, "-")));
                    }
                    (Action::Route(_), None) => unreachable!("a route to a cluster has one"),
                };
                let chosen = Chosen {
                    traffic: &traffic,
                    table: &table,
                    vh,
                    route,
                    action,
                    cluster,
                    weighted,
                };
                break self.routed(chosen, req, filtered).await;
            }
        }
    }

    /// The rest of [`HttpConn::decide`] once the route and cluster are final: an endpoint
    /// picked, the route's rewrites and header changes made.
    async fn routed(
        &self,
        chosen: Chosen<'_>,
        req: &mut Request<ReqBody>,
        filtered: &mut Filtered,
    ) -> Result<Result<(Decision, PickedEndpoint), filters::Answer>, ProxyError> {
        let Chosen {
            traffic,
            table,
            vh,
            route,
            action,
            cluster,
            weighted,
        } = chosen;
        let routing = weighted_routing(action, weighted);
        {
            // An external processor's new body (its length already checked or removed).
            if let Some((data, trailers)) = filtered.take_new_body() {
                req.body_mut().replace(data, trailers);
            }
            let head = request_head(req);
            let path = head.path;
            let hash = router::request_hash(&action.hash_policy, &head, self.peer.ip());
            let cluster = find_cluster(traffic, cluster)?.clone();
            let session = filtered.take_session();
            let first = pick_endpoint(
                &cluster,
                self.captured.then_some(self.dst),
                self.downstream,
                &[],
                hash,
                session.as_ref(),
            )
            .await?;
            let endpoint = first.endpoint.clone();

            let new_path = router::rewrite_path(action, &route.route_match, path);
            // The weighted cluster's `Host` wins over the route's.
            let own_host = routing.and_then(|r| r.host_rewrite.as_ref());
            let new_host = match &action.host_rewrite {
                _ if own_host.is_some() => own_host.cloned(),
                Some(HostRewrite::Literal(h)) => Some(h.clone()),
                Some(HostRewrite::Auto) => match &endpoint {
                    EndpointAddress::Dns { host, .. } => Some(host.clone()),
                    EndpointAddress::Socket(_) => None,
                },
                None => None,
            };
            let vhost = index_of(&table.config.virtual_hosts, vh);
            let route_idx = index_of(&vh.routes, route);
            if let Some(p) = new_path {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = p.parse().ok();
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            if let Some(h) = new_host.and_then(|h| HeaderValue::from_str(&h).ok()) {
                req.headers_mut().insert(header::HOST, h);
            }
            // What the filters add goes first, as Envoy's filters run before its router.
            if let Some(uri) = filtered.rewritten_uri(req.uri()) {
                *req.uri_mut() = uri;
            }
            filtered.finish_request(req.headers_mut());
            let own = routing.map(|r| &r.headers);
            for m in own
                .into_iter()
                .chain([&route.headers, &vh.headers, &table.config.headers])
            {
                router::mutate_headers(
                    req.headers_mut(),
                    &m.request_headers_to_add,
                    &m.request_headers_to_remove,
                );
            }
            Ok(Ok((
                Decision {
                    target: first.target.clone(),
                    hash,
                    cluster,
                    table: table.clone(),
                    vhost,
                    route: route_idx,
                    weighted,
                    session: session.map(Box::new),
                },
                first,
            )))
        }
    }

    /// Sends `req` to `target`; `limits`: the connection circuit breakers of its
    /// cluster.
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    fn forward<'f, B>(
        &'f self,
        target: Target,
        limits: Option<&'f ConnLimits<'f>>,
        mut req: Request<B>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + 'f
    where
        B: http_body::Body<Data = Bytes, Error = BodyError> + Send + Sync + 'static,
    {
        async move {
            let addr = target.addr;
            let mut target = target;
            let discover = match &mut target.origin {
                Some(t) => {
                    t.sni = t.origin.sni_for(req.uri(), req.headers());
                    t.discover.take()
                }
                None => None,
            };
            // The rare paths' futures boxed (discovery, CONNECT terminated here, tunnels over
            // HTTP/2): inline, the largest of them (7.8 KB) sized every request's future, which
            // is copied as it is created (benches/RESULTS.md, 2026-12-07 08:55).
            if let Some(settings) = discover {
                target.protocol = Box::pin(self.discover(&target, settings)).await?;
            }
            if req.extensions_mut().remove::<TerminateConnect>().is_some() {
                return Box::pin(self.terminate_connect(target, req)).await;
            }
            let extended = req.extensions_mut().remove::<ConnectProtocol>();
            if let UpstreamProtocol::Http2(h2) = target.protocol {
                // A tunnel through an HTTP/2 upstream: a CONNECT, an extended CONNECT, or an
                // HTTP/1.1 upgrade where the cluster takes extended CONNECT (without
                // `allow_connect` an HTTP/1.1 upgrade goes as a plain request, its upgrade
                // headers stripped).
                if extended.is_some()
                    || req.method() == Method::CONNECT
                    || (h2.allow_connect
                        && self.downstream == Protocol::Http1
                        && wants_upgrade(&req))
                {
                    return Box::pin(self.tunnel_h2(target, limits, req, extended)).await;
                }
            }
            // An HTTP/2 extended CONNECT (WebSocket over HTTP/2) is passed to an HTTP/1.1
            // upstream as the upgrade of the same meaning (`extended_connect`).
            let mut generated_key = None;
            if let Some(protocol) = &extended {
                generated_key = extended_connect::to_h1_upgrade(&mut req, protocol);
            }
            let is_connect = req.method() == Method::CONNECT;
            // A CONNECT for a tunnel (not an extended one, which became an HTTP/1.1 upgrade
            // above), passed on whatever the two sides speak.
            let plain_connect = is_connect && extended.is_none();
            // Upgrades to HTTP/1.1 upstreams (those to HTTP/2 ones were taken above); an
            // HTTP/2 client's CONNECT opens a tunnel in its stream.
            let upgrade = target.protocol == UpstreamProtocol::Http1
                && (self.downstream == Protocol::Http1 || extended.is_some() || plain_connect)
                && wants_upgrade(&req);
            // The client's side of the tunnel is an HTTP/2 stream: no connection for hyper to
            // hand over, the tunnel is made below from the request's body.
            let stream_tunnel = upgrade && self.downstream == Protocol::Http2;
            let downstream_upgrade =
                (upgrade && !stream_tunnel).then(|| hyper::upgrade::on(&mut req));
            strip_hop_by_hop(req.headers_mut(), upgrade);
            let own_h1 = upstream::takes_own_h1(upgrade, req.method());
            adapt_request(&mut req, target.protocol, own_h1);
            if let Routing::Routes { headers, .. } = &self.routing {
                if headers.scheme_match_upstream {
                    conn_manager::match_upstream_scheme(&mut req, target.tls);
                }
            }

            let ep = self.endpoint(target)?;
            let mut from_client = None;
            let req = req.map(|b| {
                if stream_tunnel {
                    // The upgrade request itself has no body; the stream's DATA is the
                    // tunnel's.
                    from_client = Some(b.boxed());
                    empty_body()
                } else if b.is_end_stream() {
                    // No body (most requests).
                    empty_body()
                } else {
                    b.boxed()
                }
            });
            // Each protocol's future awaited here rather than through one more async
            // layer that would hold the request beside it.
            let sent = match ep.protocol {
                UpstreamProtocol::Http1 => {
                    let sent = self
                        .pools
                        .send_h1(ep, limits, req, self.peer, upgrade)
                        .await?;
                    if self.downstream == Protocol::Http1 {
                        // This task writes the response to the client as soon as it has it,
                        // and the upstream's answers arrive in bursts: yielding once lets
                        // the answers read in this tick go out back to back, so the client
                        // is woken once per burst, not per response. Each wake-up of an
                        // idle CPU is an IPI on this VM: 3x as many without this yield on
                        // the loopback bench (benches/RESULTS.md, "Session of 2026-12-01
                        // 23:41"). An HTTP/2 client's responses are batched by its
                        // connection's task already. With no other request waiting for an
                        // answer, none can come in this tick: no yield (it would be one more
                        // `epoll_wait` per request at low rates).
                        if self.pools.exchanges_waiting() {
                            tokio::task::yield_now().await;
                        }
                    }
                    sent
                }
                UpstreamProtocol::Http2(_) => {
                    self.pools.send_h2(ep, limits, req, self.peer).await?
                }
            };
            let mut resp = sent.response;
            match (downstream_upgrade, sent.upgraded) {
                (Some(down), Some(upstream)) if is_upgrade_accepted(is_connect, resp.status()) => {
                    let up = hyper::upgrade::on(&mut resp);
                    // The upstream connection becomes the tunnel; its sender must live until
                    // hyper hands the socket over.
                    *lock(&self.tunnel) =
                        Some(Box::pin(tunnel(down, up, upstream, self.tunnel_ends(addr))));
                }
                (None, Some(upstream)) if stream_tunnel => {
                    if let Err(why) =
                        extended_connect::accept_handshake(&mut resp, generated_key.as_ref())
                    {
                        return Err(ProxyError::UpstreamProtocol {
                            addr,
                            source: why.into(),
                        });
                    }
                    let up = hyper::upgrade::on(&mut resp);
                    // An extended CONNECT's 101 is a 200 to the HTTP/2 client.
                    *resp.status_mut() = StatusCode::OK;
                    let from_client = from_client.unwrap_or_else(empty_body);
                    *resp.body_mut() = extended_connect::tunnel(up, upstream, from_client);
                }
                (None, Some(_)) => return Err(ProxyError::UnexpectedUpgrade { addr }),
                // A 2xx to an extended CONNECT says the tunnel is open (RFC 8441): an
                // upstream that ignored the upgrade and answered 2xx must not say that.
                // Other answers (a 403, a 404) pass through as they are.
                (None, None) if extended.is_some() && resp.status().is_success() => {
                    return Err(ProxyError::UpstreamProtocol {
                        addr,
                        source: format!(
                            "the upstream answered the upgrade with {}, not 101",
                            resp.status()
                        )
                        .into(),
                    });
                }
                _ => {}
            }
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(resp.headers_mut(), switched);
            Ok(resp)
        }
    }
}

impl HttpConn {
    /// How the upstream at `addr` is reached: directly, or through an HBONE tunnel (a
    /// meshed workload on another node). Pod to pod on this node, the inbound policy first,
    /// as the HBONE server applies it to tunnels (which it serves as
    /// `Reporter::Destination`, already authorized).
    fn reach(&self, addr: SocketAddr) -> Result<Option<Arc<crate::dial::HboneRoute>>, ProxyError> {
        if self.reporter == Reporter::Source {
            if let crate::local::Local::Refused(reason) =
                crate::local::decide(&self.config, &self.source, addr)
            {
                self.metrics.local_refused(reason);
                debug!(%addr, source = %self.source.principal, reason = reason.as_str(), "same-node request refused by the inbound policy");
                return Err(ProxyError::Denied { addr, reason });
            }
        }
        crate::dial::route(
            &self.config,
            &self.traffic.load(),
            self.hbone.as_ref(),
            &self.source,
            addr,
        )
    }

    /// The ends of an HTTP/1.1 tunnel from this connection to `dst`.
    fn tunnel_ends(&self, dst: SocketAddr) -> TunnelEnds {
        TunnelEnds {
            peer: self.peer,
            dst,
            idle: self.timeouts.stream_idle,
        }
    }

    /// Sends copies of `req` to the chosen `mirrors` (`crate::mirror`), from tasks of
    /// their own; `req`'s body is teed to them when it has one.
    fn mirror(
        &self,
        mirrors: &[crate::model::route::MirrorPolicy],
        req: &mut Request<ReqBody>,
        hash: Option<u64>,
    ) {
        use futures_util::FutureExt as _;
        let traffic = self.traffic.load();
        let has_body = !http_body::Body::is_end_stream(req.body());
        let mut taps = Vec::new();
        for m in mirrors {
            if m.fraction.is_some_and(|f| !f.chooses(fastrand::u32(..))) {
                continue;
            }
            let name = match &m.cluster {
                MirrorCluster::Named(n) => Some(n.as_str()),
                MirrorCluster::FromHeader(h) => req
                    .headers()
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .filter(|n| !n.is_empty()),
            };
            // An endpoint now or none: the request does not wait for its copy.
            let picked = name
                .and_then(|n| find_cluster(&traffic, n).ok())
                .and_then(|cluster| {
                    let in_flight = cluster.try_request()?;
                    let pick = pick_endpoint(
                        cluster,
                        self.captured.then_some(self.dst),
                        self.downstream,
                        &[],
                        hash,
                        None,
                    )
                    .now_or_never()?
                    .ok()?;
                    Some((in_flight, self.endpoint(pick.target).ok()?))
                });
            let Some((in_flight, ep)) = picked else {
                debug!(cluster = ?m.cluster, "request mirror skipped: no cluster or endpoint now");
                self.metrics.mirrored("skipped");
                continue;
            };
            let body = if has_body {
                let (tap, body) = crate::mirror::tap();
                taps.push(tap);
                body.boxed()
            } else {
                empty_body()
            };
            let mut copy = crate::mirror::copy_of(req, m.keep_host, body);
            strip_hop_by_hop(copy.headers_mut(), false);
            let own_h1 = upstream::takes_own_h1(false, copy.method());
            adapt_request(&mut copy, ep.protocol, own_h1);
            tokio::spawn(crate::mirror::send(
                self.pools.clone(),
                ep,
                copy,
                self.peer,
                self.metrics.clone(),
                in_flight,
            ));
        }
        if !taps.is_empty() {
            let inner = req.body_mut().inner_mut();
            let body = std::mem::replace(inner, RequestBody::Empty);
            *inner = crate::mirror::tee(body, taps);
        }
    }

    /// `auto_config` over TLS, the endpoint's ALPN not known yet: a first connection
    /// offering `h2` and `http/1.1`; what the server picked is remembered for the cluster's
    /// endpoint and the connection goes into the pool as that protocol's, where the request
    /// then finds it.
    async fn discover(
        &self,
        target: &Target,
        settings: upstream::H2Settings,
    ) -> Result<UpstreamProtocol, ProxyError> {
        let t = target
            .origin
            .as_ref()
            .expect("discovery is for TLS endpoints");
        let ep = self.endpoint(target.clone())?;
        let tls = crate::dial::dial_tls(
            target.addr,
            target.connect_timeout,
            target.keepalive,
            &t.origin,
            Alpn::Auto,
            t.sni.as_deref(),
            ep.proxy.as_ref(),
        )
        .await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        t.origin.learn(target.addr, h2);
        let protocol = if h2 {
            UpstreamProtocol::Http2(settings)
        } else {
            UpstreamProtocol::Http1
        };
        let ep = upstream::Endpoint { protocol, ..ep };
        self.pools.adopt_for(&ep, Box::new(tls), self.peer).await?;
        Ok(protocol)
    }

    /// The pooled upstream for `target`, reached as [`HttpConn::reach`] says, for this
    /// connection's requests.
    fn endpoint(&self, target: Target) -> Result<upstream::Endpoint, ProxyError> {
        self.endpoint_for(target, true)
    }

    /// [`HttpConn::endpoint`]; `downstream`: for a request of this connection (its client
    /// named in a PROXY protocol header), else for a call a filter makes on its own
    /// (Envoy's async client: no downstream, so a `LOCAL` header).
    fn endpoint_for(
        &self,
        target: Target,
        downstream: bool,
    ) -> Result<upstream::Endpoint, ProxyError> {
        let proxy = self.proxy_header(&target, downstream);
        Ok(upstream::Endpoint {
            addr: target.addr,
            protocol: target.protocol,
            connect_timeout: target.connect_timeout,
            keepalive: target.keepalive,
            life: target.life,
            hbone: self.reach(target.addr)?,
            tls: target.origin,
            proxy,
        })
    }

    /// The PROXY protocol header of `target`'s cluster, for a connection made for this
    /// one (`downstream`) or for a filter's own call.
    fn proxy_header(
        &self,
        target: &Target,
        downstream: bool,
    ) -> Option<crate::proxy_protocol::Header> {
        target.proxy_protocol.as_ref().map(|pp| {
            let d = downstream.then(|| {
                crate::proxy_protocol::Downstream::of(self.peer, self.dst, self.proxied.as_deref())
            });
            crate::proxy_protocol::upstream_header(pp, d)
        })
    }

    /// A `CONNECT` its route terminates (`connect_config`, Envoy's "CONNECT termination"):
    /// a TCP connection to the endpoint, and once it is up a `200` whose tunnel carries the
    /// client's bytes to it as they are, both ways. A connect failure is a 503 `UF`, as
    /// for any request. Over HTTP/1.1 the client's connection becomes the tunnel after the
    /// `200`; over HTTP/2 the stream's DATA does (the stream's timeouts hold, as for an
    /// extended CONNECT; an HTTP/1.1 tunnel closes after `stream_idle_timeout` without
    /// bytes, [`TunnelEnds`]).
    async fn terminate_connect<B>(
        &self,
        target: Target,
        mut req: Request<B>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes, Error = BodyError> + Send + Sync + 'static,
    {
        let addr = target.addr;
        let hbone = self.reach(addr)?;
        // The tunnel's bytes are not HTTP: ALPN as the cluster's TLS context says.
        let io = crate::dial::dial(
            addr,
            target.connect_timeout,
            hbone.as_deref(),
            target.keepalive,
            target
                .origin
                .as_deref()
                .map(|t| (&*t.origin, Alpn::AsConfigured, t.sni.as_deref())),
            self.proxy_header(&target, true).as_ref(),
        )
        .await?;
        let body = if self.downstream == Protocol::Http2 {
            extended_connect::tunnel_io(io, req.into_body().boxed())
        } else {
            let down = hyper::upgrade::on(&mut req);
            *lock(&self.tunnel) = Some(Box::pin(connect_tunnel(down, io, self.tunnel_ends(addr))));
            empty_body()
        };
        debug!(peer = %self.peer, upstream = %addr, "CONNECT terminated: tunnelling to the upstream");
        Ok(Response::new(body))
    }

    /// A tunnel through an HTTP/2 upstream: a `CONNECT` (authority only), an HTTP/2
    /// client's extended CONNECT, or an HTTP/1.1 client's upgrade sent as extended CONNECT
    /// with the upgrade's type as `:protocol` (RFC 8441, as Envoy converts it). The last two
    /// need the cluster's `allow_connect` (else 502 `UPE`). A 2xx opens the tunnel in the
    /// stream: over HTTP/1.1 the client's connection (an upgrade's `200` answered as `101`,
    /// with the `Sec-WebSocket-Accept` for the client's key when the upstream sent none:
    /// RFC 8441 has no key exchange, an HTTP/1.1 WebSocket client insists on it), over
    /// HTTP/2 the client's stream. Another answer passes through.
    async fn tunnel_h2<B>(
        &self,
        target: Target,
        limits: Option<&ConnLimits<'_>>,
        mut req: Request<B>,
        extended: Option<ConnectProtocol>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes, Error = BodyError> + Send + Sync + 'static,
    {
        let addr = target.addr;
        let UpstreamProtocol::Http2(h2) = target.protocol else {
            unreachable!("only for HTTP/2 upstreams");
        };
        // An HTTP/1.1 upgrade: its type and the client's WebSocket key, for the `101`.
        let mut h1_upgrade = None;
        let protocol = match &extended {
            Some(p) => Some(p.as_str().to_owned()),
            None if req.method() == Method::CONNECT => None,
            None => {
                let kind = upgrade_type(&req).unwrap_or_default();
                h1_upgrade = Some((
                    kind.clone(),
                    req.headers()
                        .get(extended_connect::SEC_WEBSOCKET_KEY)
                        .cloned(),
                ));
                *req.method_mut() = Method::CONNECT;
                Some(kind)
            }
        };
        if let Some(p) = &protocol {
            if !h2.allow_connect {
                return Err(ProxyError::UpstreamProtocol {
                    addr,
                    source: format!(
                        "extended CONNECT ({p}) to an HTTP/2 upstream needs its cluster's \
                         http2_protocol_options.allow_connect"
                    )
                    .into(),
                });
            }
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from(p.as_str()));
        }
        let down = (self.downstream != Protocol::Http2).then(|| hyper::upgrade::on(&mut req));
        strip_hop_by_hop(req.headers_mut(), false);
        adapt_request(&mut req, target.protocol, false);
        let ep = self.endpoint(target)?;
        // The request itself has no body; an HTTP/2 client's stream DATA is the tunnel's.
        let (parts, body) = req.into_parts();
        let from_client = (self.downstream == Protocol::Http2).then(|| body.boxed());
        let req = Request::from_parts(parts, empty_body());
        let sent = self.pools.send_h2(ep, limits, req, self.peer).await?;
        let mut resp = sent.response;
        strip_hop_by_hop(resp.headers_mut(), false);
        if !resp.status().is_success() {
            return Ok(resp);
        }
        let up = hyper::upgrade::on(&mut resp);
        // The answer's body holds the stream's place in its connection: kept by the tunnel.
        let held = std::mem::replace(resp.body_mut(), empty_body());
        match down {
            Some(down) => {
                *lock(&self.tunnel) =
                    Some(Box::pin(tunnel(down, up, held, self.tunnel_ends(addr))));
                if let Some((kind, key)) = h1_upgrade {
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    extended_connect::switch_headers(resp.headers_mut(), &kind, key.as_ref());
                }
            }
            None => {
                *resp.body_mut() =
                    extended_connect::tunnel(up, held, from_client.unwrap_or_else(empty_body));
            }
        }
        Ok(resp)
    }
}

/// Marks a `CONNECT` its route terminates (set after the route decision, read by
/// [`HttpConn::forward`]).
#[derive(Debug, Clone, Copy)]
struct TerminateConnect;

/// Envoy's answer to an upgrade that `upgrade_configs` do not allow.
fn refuse_upgrade(kind: &str) -> Response<ProxyBody> {
    debug!(upgrade = %kind, "upgrade not allowed by upgrade_configs");
    local_response(403, String::new())
}

/// An empty body; zero-sized, so boxing it allocates nothing.
fn empty_body() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// `x-envoy-attempt-count`.
const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");

/// The answer of the last try, with its response flag, and the number of tries made in
/// `x-envoy-attempt-count` when the virtual host asks for it (`count`).
fn counted_answer(
    result: Result<Response<ProxyBody>, ProxyError>,
    flag: &'static str,
    count: Option<u32>,
) -> Result<(Response<ProxyBody>, &'static str), ProxyError> {
    result.map(|mut r| {
        if let Some(n) = count {
            r.headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(n));
        }
        (r, flag)
    })
}

/// Tells outlier detection how an attempt to `pick` went.
fn report_attempt(
    cluster: &ClusterTarget,
    pick: &PickedEndpoint,
    result: &Result<Response<ProxyBody>, ProxyError>,
) {
    let Picked::Host(active) = &pick.picked else {
        return;
    };
    let r = match result {
        Ok(resp) => Report::of_status(resp.status().as_u16()),
        Err(
            ProxyError::UpstreamConnect { .. }
            | ProxyError::Hbone { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::Timeout { .. },
        ) => Report::LocalOriginFailure,
        Err(_) => return,
    };
    cluster.report(active.host(), r);
}

/// Runs `work` (the attempts of a request) until it answers or one of `deadlines`
/// passes: the route timeout is a 504 `UT`, the stream duration a 504 once the request was
/// complete, the others a 408.
async fn within<T>(
    timer: &StreamTimer,
    deadlines: Deadlines,
    stream: &StreamState,
    addr: SocketAddr,
    work: Pin<&mut impl Future<Output = Result<T, ProxyError>>>,
) -> Result<T, ProxyError> {
    if !deadlines.any() {
        return work.await;
    }
    match timer.race(deadlines, stream, work).await {
        Ok(done) => done,
        Err(Expired::Route(timeout)) => Err(ProxyError::Timeout {
            addr,
            which: "route",
            timeout,
        }),
        Err(other) => Err(ProxyError::StreamTimeout(other)),
    }
}

/// The upstream protocol that matches the client's.
fn same_as(downstream: Protocol) -> UpstreamProtocol {
    match downstream {
        Protocol::Http2 => UpstreamProtocol::Http2(H2Settings::default()),
        _ => UpstreamProtocol::Http1,
    }
}

/// Puts the request target in the form the upstream protocol wants: HTTP/1 gets
/// origin-form (`/path?q`) and a `Host` header (our own client, `own_h1`, writes both
/// from the request as it is); HTTP/2 gets the authority in the URI (it becomes
/// `:authority`) and no `Host`.
fn adapt_request<B>(req: &mut Request<B>, protocol: UpstreamProtocol, own_h1: bool) {
    match protocol {
        // Most HTTP/1 requests already have a `Host` and an origin-form target: nothing
        // copied for them. Our own HTTP/1 client writes the request line from the path and
        // a missing `Host` from the URI's authority itself (an HTTP/2 request's): nothing
        // to change for it either.
        UpstreamProtocol::Http1 => {
            *req.version_mut() = http::Version::HTTP_11;
            if own_h1 || req.method() == Method::CONNECT {
                return;
            }
            if !req.headers().contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(authority(req)) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            if req.uri().authority().is_some() {
                *req.uri_mut() = Uri::from(path_of(req.uri()));
            }
        }
        UpstreamProtocol::Http2(_) => {
            // Scheme and path reused as they are (cheap clones); only the authority is
            // parsed, from `Host` when there is one. A CONNECT for a tunnel has only the
            // authority (RFC 9113 section 8.5).
            let tunnel = req.method() == Method::CONNECT
                && req.extensions().get::<hyper::ext::Protocol>().is_none();
            if tunnel {
                if let Ok(authority) = http::uri::Authority::try_from(authority(req)) {
                    *req.uri_mut() = Uri::from(authority);
                }
            } else if let Ok(authority) = http::uri::Authority::try_from(authority(req)) {
                let mut parts = http::uri::Parts::default();
                // HTTP/2's `:scheme` as it came, else the one the connection manager
                // settled (`x-forwarded-proto`'s), as Envoy forwards `:scheme`.
                parts.scheme = Some(match req.uri().scheme() {
                    Some(s) => s.clone(),
                    None if conn_manager::request_scheme(req) == "https" => Scheme::HTTPS,
                    None => Scheme::HTTP,
                });
                parts.authority = Some(authority);
                parts.path_and_query = Some(path_of(req.uri()));
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = http::Version::HTTP_2;
        }
    }
}

/// The request target's path and query (`/` when it has none); a cheap clone.
fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// What a route's chosen weighted cluster (index `weighted`) does of its own.
fn weighted_routing(
    action: &crate::model::route::RouteAction,
    weighted: Option<usize>,
) -> Option<&crate::model::listener::ClusterRouting> {
    match &action.cluster {
        ClusterSpecifier::WeightedClusters(ws) => ws.get(weighted?)?.routing.as_deref(),
        ClusterSpecifier::Cluster(_) => None,
    }
}

/// Applies the response header mutations of the chosen weighted cluster (`own`), the
/// route, then its virtual host, then its route configuration (Envoy's order when
/// `most_specific_header_mutations_wins` is off).
fn response_mutations<B>(
    resp: &mut Response<B>,
    table: &RouteTable,
    vh: &crate::model::route::VirtualHost,
    route: &crate::model::route::Route,
    own: Option<&crate::model::route::HeaderMutation>,
) {
    let levels = [&route.headers, &vh.headers, &table.config.headers];
    for m in own.into_iter().chain(levels) {
        router::mutate_headers(
            resp.headers_mut(),
            &m.response_headers_to_add,
            &m.response_headers_to_remove,
        );
    }
}

/// The request's authority: the `Host` header, else the URI's (absolute form).
fn authority<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// A request's authority as [`authority`] reads it, kept after the request has moved on: a
/// reference-counted clone of the header or the URI's part, not a copy.
enum SeenAuthority {
    Host(HeaderValue),
    Uri(http::uri::Authority),
    Empty,
}

impl SeenAuthority {
    fn of<B>(req: &Request<B>) -> Self {
        match req.headers().get(header::HOST) {
            Some(h) if h.to_str().is_ok() => SeenAuthority::Host(h.clone()),
            _ => match req.uri().authority() {
                Some(a) => SeenAuthority::Uri(a.clone()),
                None => SeenAuthority::Empty,
            },
        }
    }

    fn as_str(&self) -> &str {
        match self {
            SeenAuthority::Host(h) => h.to_str().unwrap_or_default(),
            SeenAuthority::Uri(a) => a.as_str(),
            SeenAuthority::Empty => "",
        }
    }
}

fn index_of<T>(items: &[T], item: &T) -> usize {
    items
        .iter()
        .position(|x| std::ptr::eq(x, item))
        .expect("the item is borrowed from the slice")
}

/// Picks an endpoint of `cluster` (`original_dst` for `ORIGINAL_DST` clusters) and
/// resolves it: the endpoint as configured and where to connect.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pick_endpoint(
    cluster: &ClusterTarget,
    original_dst: Option<SocketAddr>,
    downstream: Protocol,
    exclude: &[EndpointAddress],
    hash: Option<u64>,
    session: Option<&filters::Session>,
) -> Result<PickedEndpoint, ProxyError> {
    let name = &cluster.cluster.name;
    // A stateful session's host when the cluster has it, usable (Envoy's override host);
    // else the balancer, unless the session is strict.
    let chosen = session
        .and_then(|s| s.requested)
        .and_then(|a| cluster.pick_override(a));
    if chosen.is_none() && session.is_some_and(|s| s.policy.strict && s.requested.is_some()) {
        return Err(ProxyError::unrouted(
            MissReason::NoHealthyUpstream,
            format!("the session's host is not a usable host of cluster {name:?} (strict)"),
        ));
    }
    // `retry_previous_hosts` passes the hosts tried so far: they are avoided while others
    // are left.
    let picked = match chosen {
        Some(p) => p,
        None => cluster
            .pick_host(hash, &|h| exclude.contains(&h.address), original_dst)
            .ok_or_else(|| {
                ProxyError::unrouted(
                    MissReason::NoHealthyUpstream,
                    format!("cluster {name:?} has no healthy endpoint"),
                )
            })?,
    };
    // A meshed endpoint on another node gets its mutual TLS from the HBONE tunnel (the
    // cluster's TLS context gives the identities to expect); another endpoint of a cluster
    // with upstream TLS gets the proxy's own TLS, or none at all when that cannot be set
    // up (never plain text).
    let origin = match cluster.tls_origin(picked.socket()) {
        Some(_) if picked.hbone().is_some() => None,
        Some(Ok(o)) => Some(o.clone()),
        Some(Err(why)) => {
            return Err(ProxyError::unrouted(
                MissReason::UpstreamTlsUnavailable,
                why.to_owned(),
            ))
        }
        None => None,
    };
    let endpoint = picked.address();
    let addr = resolve_one(&endpoint, cluster.cluster.dns_lookup_family).await?;
    let mut discover = None;
    let protocol = match &cluster.cluster.protocol {
        ClusterProtocol::Http1 => UpstreamProtocol::Http1,
        ClusterProtocol::Http2(o) => UpstreamProtocol::Http2(o.into()),
        ClusterProtocol::UseDownstream(o) => match same_as(downstream) {
            UpstreamProtocol::Http2(_) => UpstreamProtocol::Http2(o.into()),
            p => p,
        },
        // ALPN decides over TLS; the first connection to an endpoint finds out
        // (`HttpConn::discover`). Plain connections are HTTP/1.1.
        ClusterProtocol::Auto(o) => match origin.as_ref().map(|t| t.learned_h2(addr)) {
            Some(Some(true)) => UpstreamProtocol::Http2(o.into()),
            Some(None) => {
                discover = Some(o.into());
                UpstreamProtocol::Http1
            }
            Some(Some(false)) | None => UpstreamProtocol::Http1,
        },
    };
    let target = Target {
        addr,
        connect_timeout: cluster.cluster.connect_timeout,
        protocol,
        keepalive: cluster.cluster.tcp_keepalive.as_ref().map(Into::into),
        life: (&cluster.cluster.connection_life).into(),
        tls: match picked.hbone() {
            Some(_) => cluster.cluster.tls_of(picked.socket()).is_some(),
            None => origin.is_some(),
        },
        origin: origin.map(|origin| {
            Box::new(upstream::TlsTarget {
                origin,
                sni: None,
                discover,
            })
        }),
        proxy_protocol: cluster.cluster.proxy_protocol_of(picked.socket()).cloned(),
    };
    Ok(PickedEndpoint {
        endpoint,
        target,
        picked,
    })
}

/// The cluster `name` of `traffic`.
pub(crate) fn find_cluster<'t>(
    traffic: &'t traffic::Traffic,
    name: &str,
) -> Result<&'t Arc<ClusterTarget>, ProxyError> {
    traffic.cluster(name).ok_or_else(|| {
        ProxyError::unrouted(MissReason::NoCluster, format!("cluster {name:?} not found"))
    })
}

impl HttpConn {
    /// Sends a filter's call to a service (`req`) to an endpoint of `cluster`, through the
    /// connection's pools, under the cluster's `max_requests` (the count returned, held
    /// while the answer is read): over HTTP/2 when `grpc`, else as the cluster speaks.
    async fn service_call(
        &self,
        cluster: &str,
        req: Request<ProxyBody>,
        grpc: bool,
    ) -> Result<(crate::traffic::InFlight, crate::upstream::Sent), String> {
        let (in_flight, mut ep) = self.service_endpoint(cluster).await?;
        if let Some(t) = &mut ep.tls {
            t.sni = t.origin.sni_for(req.uri(), req.headers());
        }
        let sent = match ep.protocol {
            UpstreamProtocol::Http1 if !grpc => {
                self.pools.send_h1(ep, None, req, self.peer, false).await
            }
            _ => self.pools.send_h2(ep, None, req, self.peer).await,
        }
        .map_err(|e| e.to_string())?;
        Ok((in_flight, sent))
    }

    /// An endpoint of `cluster` for a filter's call to a service, with the cluster's
    /// count of requests in flight (under its `max_requests`) to hold while the call lasts.
    async fn service_endpoint(
        &self,
        cluster: &str,
    ) -> Result<(crate::traffic::InFlight, upstream::Endpoint), String> {
        let traffic = self.traffic.load();
        let cluster = find_cluster(&traffic, cluster)
            .map_err(|e| e.to_string())?
            .clone();
        drop(traffic);
        let in_flight = cluster
            .try_request()
            .ok_or("the cluster's max_requests circuit breaker is open")?;
        let pick = pick_endpoint(&cluster, None, Protocol::Http2, &[], None, None)
            .await
            .map_err(|e| e.to_string())?;
        let ep = self
            .endpoint_for(pick.target, false)
            .map_err(|e| e.to_string())?;
        Ok((in_flight, ep))
    }
}

/// The calls of filters to services (a rate limit service): over HTTP/2 to an endpoint of
/// the service's cluster, through the connection's pools, under the cluster's
/// `max_requests`.
impl crate::services::Services for HttpConn {
    fn send<'a>(
        &'a self,
        cluster: &'a str,
        req: Request<Bytes>,
        grpc: bool,
    ) -> crate::services::Pending<'a, Result<crate::services::Reply, String>> {
        Box::pin(async move {
            let req = req.map(|b| Full::new(b).map_err(|never| match never {}).boxed());
            let (in_flight, sent) = self.service_call(cluster, req, grpc).await?;
            let (parts, body) = sent.response.into_parts();
            let collected = body.collect().await.map_err(|e| e.to_string())?;
            drop(in_flight);
            let trailers = collected.trailers().cloned();
            Ok(crate::services::Reply {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
                trailers,
            })
        })
    }

    fn open<'a>(
        &'a self,
        cluster: &'a str,
    ) -> crate::services::Pending<'a, Result<crate::services::Opener, String>> {
        Box::pin(async move {
            let (in_flight, mut ep) = self.service_endpoint(cluster).await?;
            let (pools, peer) = (self.pools.clone(), self.peer);
            let opener: crate::services::Opener = Box::new(move |req: Request<ProxyBody>| {
                Box::pin(async move {
                    if let Some(t) = &mut ep.tls {
                        t.sni = t.origin.sni_for(req.uri(), req.headers());
                    }
                    let sent = pools
                        .send_h2(ep, None, req, peer)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(crate::services::Opened {
                        response: sent.response,
                        held: Some(in_flight),
                    })
                })
            });
            Ok(opener)
        })
    }

    /// As a request mirror is sent: an endpoint is taken only if the pick is immediate,
    /// under the cluster's `max_requests`; the answer is read to its end (so the
    /// connection goes back to its pool) and dropped.
    fn send_detached(&self, cluster: &str, req: Request<Bytes>, timeout: Duration) {
        use futures_util::FutureExt as _;
        let traffic = self.traffic.load();
        let picked = traffic.cluster(cluster).and_then(|c| {
            let in_flight = c.try_request()?;
            let pick = pick_endpoint(c, None, Protocol::Http2, &[], None, None)
                .now_or_never()?
                .ok()?;
            Some((in_flight, self.endpoint_for(pick.target, false).ok()?))
        });
        let Some((in_flight, ep)) = picked else {
            debug!(target: "myelin::ratelimit", %cluster, "stream-done call skipped: no endpoint now");
            return;
        };
        let (pools, peer) = (self.pools.clone(), self.peer);
        let req = req.map(|b| Full::new(b).map_err(|never| match never {}).boxed());
        tokio::spawn(async move {
            let call = async {
                let sent = pools
                    .send_h2(ep, None, req, peer)
                    .await
                    .map_err(|e| e.to_string())?;
                sent.response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    debug!(target: "myelin::ratelimit", %error, "stream-done call failed")
                }
                Err(_) => debug!(target: "myelin::ratelimit", "stream-done call timed out"),
            }
            drop(in_flight);
        });
    }
}

/// An endpoint chosen for an attempt.
pub(crate) struct PickedEndpoint {
    /// As configured (a DNS name stays a name).
    pub(crate) endpoint: EndpointAddress,
    /// Where and how to connect.
    pub(crate) target: Target,
    /// The host, counted as active while this lives.
    pub(crate) picked: Picked,
}

/// The address to connect to among those a host name resolved to, as Envoy's
/// `dns_lookup_family` picks it (`AUTO`: IPv6 first; `ALL`: the resolver's first).
fn by_family(addrs: &[SocketAddr], family: DnsLookupFamily) -> Option<SocketAddr> {
    let v4 = addrs.iter().find(|a| a.is_ipv4());
    let v6 = addrs.iter().find(|a| a.is_ipv6());
    match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::V4Preferred => v4.or(v6),
        DnsLookupFamily::Auto => v6.or(v4),
        DnsLookupFamily::All => addrs.first(),
    }
    .copied()
}

/// Resolves an endpoint to the address to connect to (the first DNS answer).
async fn resolve_one(
    endpoint: &EndpointAddress,
    family: DnsLookupFamily,
) -> Result<SocketAddr, ProxyError> {
    if let EndpointAddress::Socket(addr) = endpoint {
        // Nearly every request: no lookup, and no `Vec` for the one address.
        return Ok(*addr);
    }
    match traffic::resolve(endpoint).await {
        Ok(addrs) => by_family(&addrs, family).ok_or_else(|| {
            ProxyError::unrouted(
                MissReason::Dns,
                format!("{endpoint:?} resolved to no address of {family:?}: {addrs:?}"),
            )
        }),
        Err(e) => Err(ProxyError::unrouted(
            MissReason::Dns,
            format!("resolving {endpoint:?}: {e}"),
        )),
    }
}

/// The connection manager's path normalization of `req` (Envoy's
/// `ConnectionManagerUtility::maybeNormalizePath`, see [`crate::path`]): the path is
/// rewritten in place (routes match it and the upstream gets it), or the request is answered
/// here: `Ok(Some(_))` a 307 redirect to the normalized path, `Err(_)` a 400. A `CONNECT`
/// (no path) is left alone.
fn normalize_path<B>(
    cfg: &PathNormalization,
    req: &mut Request<B>,
    grpc: bool,
) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(None);
    };
    let bad_path = || ProxyError::BadPath {
        path: pq.as_str().to_owned(),
    };
    match path::normalize(cfg, pq.as_str()) {
        PathVerdict::Keep => Ok(None),
        PathVerdict::Reject => Err(bad_path()),
        // A gRPC client cannot follow a redirect: Envoy refuses the request instead.
        PathVerdict::Redirect(_) if grpc => Err(bad_path()),
        PathVerdict::Redirect(to) => {
            let mut resp = local_response(307, String::new());
            // The normalized path is made of a valid path's bytes: always a header value.
            let location = HeaderValue::from_str(&to).map_err(|_| bad_path())?;
            resp.headers_mut().insert(header::LOCATION, location);
            Ok(Some(resp))
        }
        PathVerdict::Rewrite(to) => {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(to.try_into().map_err(|_| bad_path())?);
            *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| bad_path())?;
            Ok(None)
        }
    }
}

/// A request as routes and matchers see it: its authority ([`authority`]) and its path and
/// query (a `CONNECT` has none, `connect_matcher` routes it; other requests without one
/// are for `/`).
/// Whether a request's body may be read ahead for a filter: it has one, and it is not a
/// tunnel's (an upgrade or `CONNECT`, whose bytes flow only once the answer is in), as
/// Envoy's external authorization buffers none of those.
fn body_readable(req: &Request<ReqBody>) -> bool {
    !http_body::Body::is_end_stream(req.body())
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(header::UPGRADE)
}

fn request_head<B>(req: &Request<B>) -> RequestHead<'_> {
    RequestHead {
        method: req.method().as_str(),
        authority: authority(req),
        path: match req.uri().path_and_query() {
            Some(p) => p.as_str(),
            None if req.method() == Method::CONNECT => "",
            None => "/",
        },
        scheme: conn_manager::request_scheme(req),
        headers: req.headers(),
    }
}

/// A request's head without its body, kept for a local reply config that reads it.
fn kept_head<B>(req: &Request<B>) -> Request<()> {
    let mut kept = Request::new(());
    *kept.method_mut() = req.method().clone();
    *kept.uri_mut() = req.uri().clone();
    *kept.headers_mut() = req.headers().clone();
    kept
}

/// Checks a request's header fields against `limits` (Envoy's codec checks): too many is a
/// refusal; names with underscores are refused or dropped when the limits say so.
fn check_headers(
    limits: &HeaderLimits,
    headers: &mut HeaderMap,
    metrics: &ProxyMetrics,
) -> Option<HeaderRefusal> {
    if headers.len() > limits.max_count as usize {
        return Some(HeaderRefusal::TooMany {
            count: headers.len(),
            limit: limits.max_count,
        });
    }
    if limits.underscores == UnderscoreAction::Allow {
        return None;
    }
    let has_underscore = |k: &HeaderName| k.as_str().contains('_');
    if !headers.keys().any(has_underscore) {
        return None;
    }
    if limits.underscores == UnderscoreAction::RejectRequest {
        metrics.headers_with_underscores("rejected");
        return Some(HeaderRefusal::Underscore);
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| has_underscore(k))
        .cloned()
        .collect();
    for name in names {
        // Each field counted, as Envoy's `dropped_headers_with_underscores` is.
        for _ in headers.get_all(&name) {
            metrics.headers_with_underscores("dropped");
        }
        headers.remove(&name);
    }
    None
}

/// A response generated by the proxy (direct responses, redirects).
pub(crate) fn local_response(status: u16, body: String) -> Response<ProxyBody> {
    let len = body.len();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// [`local_response`] with a `text/plain` body (direct responses with a body, fault
/// aborts).
pub(crate) fn text_response(status: u16, body: String) -> Response<ProxyBody> {
    let mut resp = local_response(status, body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A route's own answer (a direct response, a redirect) to a gRPC request, as Envoy's local
/// replies are: trailers-only, `200`, the HTTP status mapped to a `grpc-status` unless the
/// route's headers set one, `body` as `grpc-message`; the route's other headers (a
/// redirect's `location`) kept. Other requests get `resp` as it is.
pub(crate) fn for_grpc(resp: Response<ProxyBody>, body: &str, grpc: bool) -> Response<ProxyBody> {
    if !grpc {
        return resp;
    }
    let (parts, _) = resp.into_parts();
    let mut headers = parts.headers;
    let status = named_grpc_status(&headers)
        .unwrap_or_else(|| crate::error::grpc::status_of_http(parts.status));
    let mut reply = crate::error::grpc_local_reply(status, body);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_TYPE);
    headers.remove(GRPC_STATUS);
    reply.headers_mut().extend(headers);
    reply
}

/// The `grpc-status` a route's own answer names in its headers.
fn named_grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Whether the upstream's response completes the upgrade the request asked for.
fn is_upgrade_accepted(is_connect: bool, status: StatusCode) -> bool {
    // CONNECT is "upgraded" by any 2xx (RFC 9110 section 9.3.6), other methods by 101.
    if is_connect {
        status.is_success()
    } else {
        status == StatusCode::SWITCHING_PROTOCOLS
    }
}

/// The upgrade a request asks for, as `upgrade_configs` names it: an extended CONNECT's
/// `:protocol`, `connect` for another CONNECT, else the `Upgrade` header's value
/// (lowercase).
fn upgrade_type<B>(req: &Request<B>) -> Option<String> {
    if !wants_upgrade(req) {
        return None;
    }
    // HTTP/2's extended CONNECT names its upgrade in `:protocol` (Envoy matches it against
    // `upgrade_configs` the same way).
    if let Some(p) = req.extensions().get::<ConnectProtocol>() {
        return Some(p.as_str().to_ascii_lowercase());
    }
    if req.method() == Method::CONNECT {
        return Some("connect".into());
    }
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// Whether the request asks for the connection to be taken over: `CONNECT`, or an
/// `Upgrade` header together with the `upgrade` token in `Connection`.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return true;
    }
    req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1): `Connection`, the headers it
/// names, `Keep-Alive` and `Proxy-Connection`. When `upgrade` is set, `Upgrade` and a
/// `Connection: upgrade` are kept, since the upstream must see them to agree.
///
/// Left alone on purpose: `Transfer-Encoding` and `Content-Length` (hyper frames the
/// message from them), and `Proxy-Authorization`/`Proxy-Authenticate`, which belong to
/// an explicit proxy the app may be talking to through us.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Removed below in any case, so not looked up by name: the usual `Connection: keep-alive`
    // costs no allocation (a custom `HeaderName` is one, and so is the list).
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    // Most messages carry none of them: one pass over the names, not four hashed lookups.
    let hop = |n: &HeaderName| {
        *n == header::CONNECTION
            || *n == header::UPGRADE
            || *n == KEEP_ALIVE
            || *n == PROXY_CONNECTION
    };
    if !upgrade && !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| {
            *n != header::TRANSFER_ENCODING
                && *n != header::CONTENT_LENGTH
                && *n != header::HOST
                && *n != header::PROXY_AUTHORIZATION
                && *n != header::PROXY_AUTHENTICATE
                && !(upgrade && *n == header::UPGRADE)
        })
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Joins both upgraded halves and copies bytes both ways until both directions end.
/// `upstream`: what keeps the upstream side alive (an HTTP/1.1 connection's sender until
/// hyper hands the socket over; an HTTP/2 answer's body, the stream's place in its
/// connection, to the end).
async fn tunnel<K: Send + 'static>(down: OnUpgrade, up: OnUpgrade, upstream: K, ends: TunnelEnds) {
    match up.await {
        Ok(up) => copy_upgraded(down, TokioIo::new(up), ends).await,
        Err(e) => debug!(peer = %ends.peer, dst = %ends.dst, error = %e, "upgrade failed"),
    }
    drop(upstream);
}

/// The tunnel of a terminated HTTP/1.1 `CONNECT`: the client's connection, once hyper has
/// sent the `200` and handed it over, and the upstream connection.
async fn connect_tunnel(down: OnUpgrade, up: crate::dial::BoxIo, ends: TunnelEnds) {
    copy_upgraded(down, up, ends).await;
}

/// Who an HTTP/1.1 tunnel connects, and how long it may stay quiet.
#[derive(Debug, Clone, Copy)]
struct TunnelEnds {
    peer: SocketAddr,
    dst: SocketAddr,
    /// The connection manager's `stream_idle_timeout`: in Envoy an upgraded HTTP/1.1
    /// connection is a stream like any other, so a tunnel with no bytes either way for
    /// that long is closed (as its HTTP/2 counterpart, a stream, is reset). Without it an
    /// abandoned WebSocket or `CONNECT` would hold two sockets forever.
    idle: Option<Duration>,
}

/// Copies bytes between the client's connection (once hyper hands it over) and `up` until
/// both directions end, or until no byte has moved either way for `ends.idle`: then both
/// are closed.
async fn copy_upgraded<T>(down: OnUpgrade, up: T, ends: TunnelEnds)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let TunnelEnds { peer, dst, idle } = ends;
    let down = match down.await {
        Ok(down) => down,
        Err(e) => {
            debug!(%peer, %dst, error = %e, "upgrade failed: the client's connection was not handed over");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    // Every byte either way goes through the upstream side: its clock is the tunnel's.
    let mut up = IdleStream::new(up);
    let clock = up.clock();
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut down, &mut up) => match copied {
            Ok((sent, received)) => debug!(%peer, %dst, sent, received, "upgraded connection closed"),
            Err(e) => debug!(%peer, %dst, error = %e, "upgraded connection failed"),
        },
        () = async {
            match idle {
                Some(t) => clock.idle_for(t).await,
                None => std::future::pending().await,
            }
        } => {
            let (received, sent) = up.bytes();
            debug!(%peer, %dst, sent, received, ?idle, "upgraded connection idle: closing");
        }
    }
}

/// Resolves once `conn` has had no request in flight for its idle timeout (never
/// without one).
pub(crate) async fn idle(conn: &HttpConn) {
    match conn.timeouts.idle {
        Some(t) => conn.activity.idle_for(t).await,
        None => std::future::pending().await,
    }
}

/// What closes a downstream HTTP/2 connection gracefully: a drain, or its idle timeout.
struct CloseOn<'a, D, T> {
    drained: Pin<&'a mut D>,
    idle: Pin<&'a mut T>,
    peer: SocketAddr,
}

impl<D: Future<Output = ()>, T: Future<Output = ()>> Signals for CloseOn<'_, D, T> {
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.drained.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if self.idle.as_mut().poll(cx).is_ready() {
            debug!(peer = %self.peer, "closing an idle downstream HTTP/2 connection");
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Serves HTTP/1 or HTTP/2 (prior knowledge) on `io` until the client closes, an error,
/// or a drain (which lets the requests in flight finish, then closes: HTTP/2 with a
/// GOAWAY). An upgraded HTTP/1 connection continues as a tunnel.
pub(crate) async fn serve<I>(io: I, conn: Arc<HttpConn>, drain: drain::Watch)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_conn = conn.clone();
    let res = if conn.downstream == Protocol::Http2 {
        let signals = CloseOn {
            drained: std::pin::pin!(drain.signaled()),
            idle: std::pin::pin!(idle(&conn)),
            peer: conn.peer,
        };
        let handle = |req| svc_conn.handle(req);
        let mut limits = Limits::from(&conn.http2);
        limits.max_header_list = conn.max_request_headers;
        // The encoded block is at most about as large as the list it decodes to.
        limits.max_header_block = limits.max_header_block.max(conn.max_request_headers);
        match crate::h2server::serve(io, limits, handle, signals).await {
            Ended::Closed => {}
            Ended::Error(e) => {
                debug!(peer = %conn.peer, code = e.code, why = e.why, "downstream HTTP/2 connection ended with an error");
            }
            Ended::Io(e) => {
                debug!(peer = %conn.peer, error = %e, "downstream HTTP/2 connection failed");
            }
        }
        Ok(())
    } else {
        match crate::h1server::serve(io, &conn, &drain).await {
            crate::h1server::Ended::Closed => Ok(()),
            crate::h1server::Ended::Handover(read, io) => {
                serve_h1_with_hyper(Rewind::new(read, io), svc_conn, &drain).await
            }
        }
    };
    if let Err(e) = res {
        debug!(peer = %conn.peer, error = %e, "downstream HTTP connection ended with an error");
    }
    let tunnel = lock(&conn.tunnel).take();
    if let Some(tunnel) = tunnel {
        tunnel.await;
    }
}

/// hyper's HTTP/1 server for the rest of a connection whose requests [`crate::h1server`]
/// does not serve (upgrades, `CONNECT`, `Expect`, HTTP/1.0, heads that do not parse).
async fn serve_h1_with_hyper<I>(
    io: I,
    conn: Arc<HttpConn>,
    drain: &drain::Watch,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_conn = conn.clone();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let conn = svc_conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req.map(RequestBody::Hyper)).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // Clients may shut down their write side while awaiting the response.
        .half_close(true)
        // Header names go out lowercase, as Envoy's HTTP/1 codec sends them by default
        // (its `header_key_format` is rejected): keeping each request's original case
        // cost a second header map per message. No `Date` the upstream did not send.
        .auto_date_header(false)
        // A backstop: our own server answers heads above the limit before handing any
        // over (hyper's buffer cannot be below 8 KiB).
        .max_buf_size(conn.max_request_headers.max(8192))
        // Heads with more fields than our own parser's slots come here: hyper takes as
        // many as the connection manager allows (`HttpConn::handle` checks the count for
        // both servers).
        .max_headers(conn.header_limits.max_count as usize);
    let server = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(server);
    tokio::select! {
        res = server.as_mut() => res,
        () = drain.signaled() => {
            server.as_mut().graceful_shutdown();
            server.await
        }
        () = idle(&conn) => {
            debug!(peer = %conn.peer, "closing an idle downstream HTTP/1 connection");
            server.as_mut().graceful_shutdown();
            server.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_authority_reads_as_authority_does() {
        let reqs = [
            Request::get("/")
                .header("host", "shop:8080")
                .body(())
                .unwrap(),
            Request::get("http://from-uri:81/x").body(()).unwrap(),
            // A Host that is not visible ASCII: the URI's authority, as `authority` does.
            Request::get("http://from-uri/")
                .header("host", HeaderValue::from_bytes(b"caf\xe9").unwrap())
                .body(())
                .unwrap(),
            Request::get("/").body(()).unwrap(),
        ];
        let seen: Vec<String> = reqs
            .iter()
            .map(|r| {
                assert_eq!(SeenAuthority::of(r).as_str(), authority(r));
                authority(r).to_owned()
            })
            .collect();
        assert_eq!(seen, ["shop:8080", "from-uri:81", "from-uri", ""]);
    }

    fn conn(traffic: TrafficHandle) -> HttpConn {
        let workloads = vec![crate::model::Workload {
            name: "reviews".into(),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            ip: "10.0.0.7".parse().unwrap(),
        }];
        HttpConn::new(HttpConnParams {
            peer: "10.0.0.9:40000".parse().unwrap(),
            proxied: None,
            identity: None,
            sni: None,
            dst: "10.0.0.7:80".parse().unwrap(),
            captured: true,
            reporter: Reporter::Source,
            routing: Routing::Passthrough,
            traffic,
            source: Source {
                workload: "web".into(),
                namespace: "shop".into(),
                principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
            },
            downstream: Protocol::Http1,
            connect_timeout: Duration::from_secs(1),
            metrics: Arc::new(ProxyMetrics::unregistered()),
            golden: Arc::new(GoldenMetrics::unregistered()),
            config: Arc::new(ProxyConfig::new(workloads).unwrap()),
            pools: Pools::new(Default::default()),
            manager: ManagerSettings::default(),
            hbone: None,
        })
    }

    /// `dns_lookup_family` picks among a host name's addresses as Envoy does.
    #[test]
    fn dns_lookup_family_picks_the_address() {
        use DnsLookupFamily as F;
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        let both = [v4, v6];
        let cases = [
            (F::Auto, &both[..], Some(v6)),
            (F::Auto, &[v4][..], Some(v4)),
            (F::V4Only, &both[..], Some(v4)),
            (F::V4Only, &[v6][..], None),
            (F::V6Only, &both[..], Some(v6)),
            (F::V6Only, &[v4][..], None),
            (F::V4Preferred, &[v6, v4][..], Some(v4)),
            (F::V4Preferred, &[v6][..], Some(v6)),
            (F::All, &[v6, v4][..], Some(v6)),
            (F::All, &[][..], None),
        ];
        for (family, addrs, want) in cases {
            assert_eq!(by_family(addrs, family), want, "{family:?} {addrs:?}");
        }
    }

    /// The labels a connection caches for its last request follow each request's cluster,
    /// endpoint and (without a cluster) host, and a new traffic config.
    #[test]
    fn destination_labels_follow_each_request() {
        let traffic = TrafficHandle::new();
        let c = conn(traffic.clone());
        let pod: SocketAddr = "10.0.0.7:80".parse().unwrap();
        let other: SocketAddr = "10.0.0.8:80".parse().unwrap();
        let labels = |d: Arc<Destination>| {
            (
                d.labels.workload.to_string(),
                d.labels.namespace.to_string(),
                d.labels.service.to_string(),
                d.cluster.as_ref().map(|c| c.to_string()),
            )
        };
        let a = "outbound|80||reviews.shop.svc.cluster.local";
        let b = "outbound|80||ratings.shop.svc.cluster.local";
        let want_a = (
            "reviews".to_string(),
            "shop".to_string(),
            "reviews.shop.svc.cluster.local".to_string(),
            Some(a.to_string()),
        );
        assert_eq!(labels(c.destination(Some(a), Some(pod), "x")), want_a);
        // Same again: from the cache, the same labels.
        assert_eq!(labels(c.destination(Some(a), Some(pod), "y")), want_a);
        // Another cluster, another endpoint (not a workload of this node).
        let (w, ns, svc, cl) = labels(c.destination(Some(b), Some(other), "x"));
        assert_eq!((w.as_str(), ns.as_str()), (UNKNOWN, UNKNOWN));
        assert_eq!(svc, "ratings.shop.svc.cluster.local");
        assert_eq!(cl.as_deref(), Some(b));
        // Same cluster, the pod's endpoint again.
        let (w, _, svc, _) = labels(c.destination(Some(b), Some(pod), "x"));
        assert_eq!(
            (w.as_str(), svc.as_str()),
            ("reviews", "ratings.shop.svc.cluster.local")
        );
        // Same endpoint, the first cluster again.
        assert_eq!(labels(c.destination(Some(a), Some(pod), "x")), want_a);
        // No cluster: the host is the service, and a new host is a new service.
        assert_eq!(
            labels(c.destination(None, None, "api.example:8080")).2,
            "api.example"
        );
        assert_eq!(
            labels(c.destination(None, None, "www.example")).2,
            "www.example"
        );
        // A new traffic config: worked out again (same answer here).
        let cached = lock(&c.last_destination).as_ref().map(|(g, _, _)| *g);
        let next = crate::traffic::TrafficInput {
            generation: 1,
            ..Default::default()
        };
        traffic.store(crate::traffic::Traffic::build(next, None));
        assert_eq!(
            labels(c.destination(None, None, "www.example")).2,
            "www.example"
        );
        let now = lock(&c.last_destination).as_ref().map(|(g, _, _)| *g);
        assert_ne!(cached, now, "the cache entry follows the config generation");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        v.sort();
        v
    }

    /// A route's direct response or redirect to a gRPC request is a gRPC status, as Envoy's
    /// local replies are; the route's headers stay, and a `grpc-status` among them wins.
    #[test]
    fn route_answers_to_grpc_requests_are_grpc_statuses() {
        let answer = |status: u16, body: &str, extra: &[(&str, &str)], grpc: bool| {
            let mut resp = local_response(status, body.to_owned());
            for (k, v) in extra {
                resp.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let out = for_grpc(resp, body, grpc);
            let h = |n: &str| out.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            (
                out.status().as_u16(),
                h("grpc-status"),
                h("grpc-message"),
                h("content-type"),
                h("location"),
                h("x-route"),
                out.headers().get_all("grpc-status").iter().count(),
            )
        };
        let s = |v: &str| Some(v.to_owned());
        // Direct responses: the HTTP status mapped, the body as the message.
        assert_eq!(
            answer(503, "down for maintenance", &[("x-route", "a")], true),
            (
                200,
                s("14"),
                s("down for maintenance"),
                s("application/grpc"),
                None,
                s("a"),
                1
            )
        );
        assert_eq!(
            answer(404, "", &[], true),
            (200, s("12"), None, s("application/grpc"), None, None, 1)
        );
        // The route said which status.
        assert_eq!(
            answer(200, "", &[("grpc-status", "0")], true),
            (200, s("0"), None, s("application/grpc"), None, None, 1)
        );
        // A redirect: UNKNOWN, where to go still said.
        assert_eq!(
            answer(301, "", &[("location", "https://b/x")], true),
            (
                200,
                s("2"),
                None,
                s("application/grpc"),
                s("https://b/x"),
                None,
                1
            )
        );
        // Not gRPC: untouched.
        assert_eq!(
            answer(301, "", &[("location", "https://b/x")], false),
            (301, None, None, None, s("https://b/x"), None, 0)
        );
    }

    #[test]
    fn strip_table() {
        /// (request headers, upgrade, headers left)
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[("host", "a"), ("x-y", "1")],
                false,
                &["host: a", "x-y: 1"],
            ),
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("host", "a"),
                ],
                false,
                &["host: a"],
            ),
            (
                &[
                    ("connection", "close, x-hop"),
                    ("x-hop", "1"),
                    ("x-end", "2"),
                ],
                false,
                &["x-end: 2"],
            ),
            (&[("upgrade", "websocket")], false, &[]),
            // Each of them alone, without a `Connection` naming it.
            (
                &[("keep-alive", "timeout=5"), ("host", "a")],
                false,
                &["host: a"],
            ),
            (&[("proxy-connection", "close")], false, &[]),
            (
                &[("connection", "Upgrade"), ("upgrade", "websocket")],
                true,
                &["connection: upgrade", "upgrade: websocket"],
            ),
            (
                // Framing and the proxy's own auth survive a hostile Connection header.
                &[
                    (
                        "connection",
                        "content-length, transfer-encoding, host, proxy-authorization",
                    ),
                    ("content-length", "3"),
                    ("host", "a"),
                    ("proxy-authorization", "Basic x"),
                ],
                false,
                &[
                    "content-length: 3",
                    "host: a",
                    "proxy-authorization: Basic x",
                ],
            ),
            (
                &[("proxy-connection", "keep-alive"), ("te", "trailers")],
                false,
                &["te: trailers"],
            ),
            (&[("connection", "bad header name")], false, &[]),
        ];
        for (input, upgrade, want) in cases {
            let mut h = headers(input);
            strip_hop_by_hop(&mut h, *upgrade);
            assert_eq!(names(&h), *want, "input {input:?} upgrade {upgrade}");
        }
    }

    #[test]
    fn upgrade_detection() {
        let req = |method: Method, h: &[(&str, &str)]| {
            let mut r = Request::builder().method(method).body(()).unwrap();
            *r.headers_mut() = headers(h);
            r
        };
        assert!(wants_upgrade(&req(Method::CONNECT, &[])));
        assert!(wants_upgrade(&req(
            Method::GET,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket")
            ]
        )));
        assert!(!wants_upgrade(&req(
            Method::GET,
            &[("upgrade", "websocket")]
        )));
        assert!(!wants_upgrade(&req(
            Method::GET,
            &[("connection", "upgrade")]
        )));
        assert!(is_upgrade_accepted(true, StatusCode::OK));
        assert!(!is_upgrade_accepted(true, StatusCode::FORBIDDEN));
        assert!(is_upgrade_accepted(false, StatusCode::SWITCHING_PROTOCOLS));
        assert!(!is_upgrade_accepted(false, StatusCode::OK));
    }
}
