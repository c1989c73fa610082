//! Active health checking (a cluster's `health_checks`, Envoy's semantics).
//!
//! One task per (cluster, checker, host): it checks the host on the checker's schedule and
//! records the result in the host's state ([`Host::set_check`]), which the balancer reads
//! on every pick. [`HealthCheckers::reconcile`] starts and stops tasks as the traffic
//! config changes (the proxy's accept loop calls it at every change); a host kept across
//! builds keeps its task and its results.
//!
//! A check is an HTTP request (HTTP/1.1 or HTTP/2, whose status must be expected, whose
//! body may have to contain byte blocks, whose `x-envoy-upstream-healthchecked-cluster`
//! may have to match), a `grpc.health.v1.Health/Check` call (the answer must say
//! `SERVING`), or a TCP connection (optionally bytes sent and blocks expected back). It
//! goes to the endpoint (or its `health_check_config` address and port) over the
//! cluster's transport socket for the host, plain or TLS. Meshed endpoints on other
//! nodes are not checked: the tunnel needs a source workload's identity.
//!
//! Envoy's state machine: a new host fails until its first check passes (one pass is
//! enough then); a passing host fails after `unhealthy_threshold` network failures or
//! retriable statuses in a row, or at once on an answer that is plainly wrong (an
//! unexpected status, a body or service name that does not match, a gRPC status other
//! than `SERVING`); a failing host passes again after `healthy_threshold` passes in a row.
//! The wait before the next check depends on whether the cluster has had traffic, the
//! result and whether the host's state is about to change (Envoy's interval, edge
//! intervals and no-traffic intervals, with jitter).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::dial::{self, BoxIo};
use crate::metrics::{HealthCheckLabels, ProxyMetrics};
use crate::model::endpoint::EndpointAddress;
use crate::model::health_check::{
    payload_matches, GrpcHealthCheck, HealthCheck, HealthChecker, HttpHealthCheck, TcpHealthCheck,
};
use crate::tls::origin::Alpn;
use crate::traffic::balance::Host;
use crate::traffic::{self, Traffic, TrafficHandle};

/// The tracing target of health-check events.
const TARGET: &str = "myelin::health";

/// The `user-agent` of HTTP checks: Envoy's, so servers that recognise health checks by it
/// keep doing so.
const USER_AGENT: &str = "Envoy/HC";

/// A gRPC check's answer is read up to this much (a `HealthCheckResponse` is 2 bytes).
const GRPC_RESPONSE_LIMIT: usize = 64 * 1024;

/// The running checks, by cluster, checker and host.
#[derive(Default)]
pub(crate) struct HealthCheckers {
    running: HashMap<Key, Running>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    cluster: Arc<str>,
    checker: usize,
    /// The host's `Arc` address; `Running` holds the `Arc`, so it is not reused meanwhile.
    host: usize,
}

struct Running {
    config: Arc<HealthCheck>,
    _host: Arc<Host>,
    task: JoinHandle<()>,
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

impl HealthCheckers {
    /// Starts checks for hosts and checkers that have none, stops those of hosts, clusters
    /// and checkers that are gone or changed.
    pub(crate) fn reconcile(&mut self, traffic: &TrafficHandle, metrics: &Arc<ProxyMetrics>) {
        let current = traffic.load();
        let mut wanted: HashMap<Key, (Arc<HealthCheck>, Arc<Host>)> = HashMap::new();
        for target in current.clusters() {
            let cluster = &target.cluster;
            if cluster.health_checks.is_empty() {
                continue;
            }
            let name: Arc<str> = cluster.name.as_str().into();
            for host in target.hosts() {
                if host.hc_checkers == 0
                    || host.health_check.as_ref().is_some_and(|c| c.disabled)
                    // Removed by EDS and then failed: done with (its task ended); the next
                    // build of its cluster drops it. A new task would let it pass again.
                    || (host.is_removed() && !host.passes_health_checks())
                {
                    continue;
                }
                for (i, config) in cluster.health_checks.iter().enumerate() {
                    let key = Key {
                        cluster: name.clone(),
                        checker: i,
                        host: Arc::as_ptr(host) as usize,
                    };
                    // The config by value: a cluster rebuilt with the same checker keeps
                    // its tasks.
                    let config = match self.running.get(&key) {
                        Some(r) if *r.config == *config => r.config.clone(),
                        _ => Arc::new(config.clone()),
                    };
                    wanted.insert(key, (config, host.clone()));
                }
            }
        }
        self.running.retain(|key, r| {
            let keep = wanted
                .get(key)
                .is_some_and(|(c, _)| Arc::ptr_eq(c, &r.config))
                && !r.task.is_finished();
            if !keep {
                r.task.abort();
            }
            keep
        });
        for (key, (config, host)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let session = Session::new(
                key.cluster.clone(),
                key.checker,
                config.clone(),
                host.clone(),
                traffic.clone(),
                metrics.clone(),
            );
            let task = tokio::spawn(session.run());
            self.running.insert(
                key,
                Running {
                    config,
                    _host: host,
                    task,
                },
            );
        }
    }
}

/// What one check came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Passed.
    Pass,
    /// A plainly wrong answer: the host fails at once.
    Fail(String),
    /// A retriable status: counts towards `unhealthy_threshold`.
    Retriable(String),
    /// No answer (connect failure, reset, timeout): counts towards `unhealthy_threshold`.
    Network(String),
}

impl Outcome {
    fn result_label(&self) -> &'static str {
        match self {
            Outcome::Pass => "success",
            Outcome::Fail(_) | Outcome::Retriable(_) => "failure",
            Outcome::Network(_) => "network_failure",
        }
    }
}

/// Whether a check changed its host's state (Envoy's `HealthTransition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// No change, none coming.
    Unchanged,
    /// Towards a change that a threshold has not allowed yet.
    Pending,
    /// The checker now passes (or fails) the host where it did not before.
    Changed,
}

/// The counting of one checker for one host.
#[derive(Debug, Clone)]
pub(crate) struct Counts {
    first: bool,
    healthy: u32,
    unhealthy: u32,
}

impl Counts {
    pub(crate) fn new() -> Self {
        Counts {
            first: true,
            healthy: 0,
            unhealthy: 0,
        }
    }

    /// Records `outcome` for a host that the checker fails (`failing`) or not: whether it
    /// fails it now, and the transition.
    pub(crate) fn record(
        &mut self,
        config: &HealthCheck,
        failing: bool,
        outcome: &Outcome,
    ) -> (bool, Transition) {
        let first = std::mem::replace(&mut self.first, false);
        match outcome {
            Outcome::Pass => {
                self.unhealthy = 0;
                if !failing {
                    return (false, Transition::Unchanged);
                }
                self.healthy += 1;
                if first || self.healthy >= config.healthy_threshold {
                    self.healthy = 0;
                    (false, Transition::Changed)
                } else {
                    (true, Transition::Pending)
                }
            }
            failure => {
                self.healthy = 0;
                if failing {
                    return (true, Transition::Unchanged);
                }
                self.unhealthy += 1;
                if matches!(failure, Outcome::Fail(_))
                    || self.unhealthy >= config.unhealthy_threshold
                {
                    self.unhealthy = 0;
                    (true, Transition::Changed)
                } else {
                    (false, Transition::Pending)
                }
            }
        }
    }
}

/// The wait before the next check (Envoy's `HealthCheckerImplBase::interval`), before
/// jitter: `used` whether the cluster has had traffic, `passed` whether this check passed.
pub(crate) fn base_interval(
    config: &HealthCheck,
    used: bool,
    passed: bool,
    transition: Transition,
) -> Duration {
    if !used {
        return match config.no_traffic_healthy_interval {
            Some(d) if passed => d,
            _ => config.no_traffic_interval,
        };
    }
    match (passed, transition == Transition::Pending) {
        (true, true) => config.healthy_edge_interval,
        (true, false) => config.interval,
        (false, true) => config.unhealthy_edge_interval,
        (false, false) => config.unhealthy_interval,
    }
}

/// `base` with the checker's jitter added: up to `interval_jitter_percent` of it, and up
/// to `interval_jitter`.
fn jittered(config: &HealthCheck, base: Duration) -> Duration {
    let mut d = base;
    if config.interval_jitter_percent > 0 {
        let max = base.as_nanos() as u64 * u64::from(config.interval_jitter_percent) / 100;
        if max > 0 {
            d += Duration::from_nanos(fastrand::u64(0..max));
        }
    }
    let j = config.interval_jitter.as_nanos() as u64;
    if j > 0 {
        d += Duration::from_nanos(fastrand::u64(0..j));
    }
    d
}

/// A connection kept between checks.
enum Conn {
    Tcp(BoxIo),
    Http(Sender),
}

/// hyper's HTTP/1.1 or HTTP/2 client connection (two types with the same methods).
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Whether the connection can take a request.
    async fn ready(&mut self) -> bool {
        match self {
            Sender::Http1(s) => s.ready().await.is_ok(),
            Sender::Http2(s) => s.ready().await.is_ok(),
        }
    }

    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::Http1(s) => s.send_request(req).await,
            Sender::Http2(s) => s.send_request(req).await,
        }
    }
}

/// What a check connects to (apart from the session's connection, which is not `Sync`).
struct Dialer {
    cluster: Arc<str>,
    host: Arc<Host>,
    traffic: TrafficHandle,
    timeout: Duration,
}

/// One checker checking one host.
struct Session {
    cluster: Arc<str>,
    index: usize,
    config: Arc<HealthCheck>,
    host: Arc<Host>,
    traffic: TrafficHandle,
    metrics: Arc<ProxyMetrics>,
    counts: Counts,
    dialer: Dialer,
    conn: Option<Conn>,
}

impl Session {
    fn new(
        cluster: Arc<str>,
        index: usize,
        config: Arc<HealthCheck>,
        host: Arc<Host>,
        traffic: TrafficHandle,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        let dialer = Dialer {
            cluster: cluster.clone(),
            host: host.clone(),
            traffic: traffic.clone(),
            timeout: config.timeout,
        };
        Session {
            cluster,
            index,
            config,
            host,
            traffic,
            metrics,
            counts: Counts::new(),
            dialer,
            conn: None,
        }
    }

    async fn run(mut self) {
        if !self.config.initial_jitter.is_zero() {
            let j = self.config.initial_jitter.as_nanos() as u64;
            tokio::time::sleep(Duration::from_nanos(fastrand::u64(0..j))).await;
        }
        loop {
            let outcome = match tokio::time::timeout(self.config.timeout, self.check()).await {
                Ok(o) => o,
                Err(_) => Outcome::Network(format!(
                    "no answer within the timeout ({:?})",
                    self.config.timeout
                )),
            };
            if outcome != Outcome::Pass || !self.config.reuse_connection {
                self.conn = None;
            }
            let labels = HealthCheckLabels {
                cluster: self.cluster.to_string(),
                result: outcome.result_label(),
            };
            self.metrics.health_checks.get_or_create(&labels).inc();
            let failing = self.host.check_fails(self.index);
            let (now_failing, transition) = self.counts.record(&self.config, failing, &outcome);
            let address = self.host.address.clone();
            if transition == Transition::Changed {
                let host_changed = self.host.set_check(self.index, !now_failing);
                let to = if now_failing { "unhealthy" } else { "healthy" };
                self.metrics
                    .health_check_transitions
                    .get_or_create(&HealthCheckLabels {
                        cluster: self.cluster.to_string(),
                        result: to,
                    })
                    .inc();
                match &outcome {
                    Outcome::Pass => {
                        info!(target: TARGET, cluster = %self.cluster, host = ?address, checker = self.index, host_changed, "health check passes the host")
                    }
                    Outcome::Fail(why) | Outcome::Retriable(why) | Outcome::Network(why) => {
                        warn!(target: TARGET, cluster = %self.cluster, host = ?address, checker = self.index, host_changed, reason = %why, "health check fails the host")
                    }
                }
            } else if let Outcome::Fail(why) | Outcome::Retriable(why) | Outcome::Network(why) =
                &outcome
            {
                if self.config.always_log_health_check_failures {
                    warn!(target: TARGET, cluster = %self.cluster, host = ?address, checker = self.index, reason = %why, "health check failed");
                } else {
                    debug!(target: TARGET, cluster = %self.cluster, host = ?address, checker = self.index, reason = %why, "health check failed");
                }
            }
            if now_failing && self.host.is_removed() {
                // EDS removed it and it no longer passes: Envoy deletes such a host; here
                // it takes no traffic and the next build of its cluster drops it.
                info!(target: TARGET, cluster = %self.cluster, host = ?address, "a host removed by EDS failed its health check: no longer checked");
                return;
            }
            let used = self
                .traffic
                .load()
                .cluster(&self.cluster)
                .is_some_and(|t| t.has_had_traffic());
            let wait = base_interval(&self.config, used, outcome == Outcome::Pass, transition);
            tokio::time::sleep(jittered(&self.config, wait)).await;
        }
    }

    async fn check(&mut self) -> Outcome {
        let config = self.config.clone();
        match &config.checker {
            HealthChecker::Tcp(t) => self.check_tcp(t).await,
            HealthChecker::Http(h) => self.check_http(h).await,
            HealthChecker::Grpc(g) => self.check_grpc(g).await,
        }
    }

    async fn check_tcp(&mut self, t: &TcpHealthCheck) -> Outcome {
        let mut io = match self.conn.take() {
            Some(Conn::Tcp(io)) => io,
            _ => match self.dialer.connect(Alpn::AsConfigured).await {
                Ok(io) => io,
                Err(o) => return o,
            },
        };
        if t.send.is_empty() && t.receive.is_empty() {
            // Connect only: done, and the connection is closed (as Envoy does).
            return Outcome::Pass;
        }
        if !t.send.is_empty() {
            if let Err(e) = io.write_all(&t.send).await {
                return Outcome::Network(format!("sending the payload: {e}"));
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !payload_matches(&t.receive, &got) {
            match io.read(&mut buf).await {
                Ok(0) => {
                    return Outcome::Network(
                        "the connection closed before the expected payload came".into(),
                    )
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Outcome::Network(format!("reading the answer: {e}")),
            }
        }
        self.conn = Some(Conn::Tcp(io));
        Outcome::Pass
    }

    /// The kept HTTP connection when it is of the kind asked for and still usable, else a
    /// new one (HTTP/2 when `h2`).
    async fn sender(&mut self, h2: bool) -> Result<Sender, Outcome> {
        if let Some(Conn::Http(mut s)) = self.conn.take() {
            if s.is_http2() == h2 && s.ready().await {
                return Ok(s);
            }
        }
        if h2 {
            let io = self.dialer.connect(Alpn::Http2).await?;
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .map_err(|e| Outcome::Network(format!("HTTP/2 handshake: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::Http2(sender))
        } else {
            let io = self.dialer.connect(Alpn::Http1).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| Outcome::Network(format!("HTTP/1.1 handshake: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::Http1(sender))
        }
    }

    /// Sends `req` over the kept connection or a new one (HTTP/2 when `h2`), keeping the
    /// connection for the next check unless the answer closes it.
    async fn send(
        &mut self,
        h2: bool,
        mut req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, Outcome> {
        if !h2 {
            // HTTP/1.1 takes the authority from `Host`, the path from the URI.
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .unwrap_or_else(|_| http::Uri::from_static("/"));
            *req.uri_mut() = path;
        }
        // A kept connection the server closed while idle fails the request before it is
        // sent: that says nothing about the host, so the request goes once more on a new
        // connection.
        let kept = self.conn.is_some();
        let mut s = self.sender(h2).await?;
        let resp = match s.send(copy(&req)).await {
            Err(e) if kept && (e.is_canceled() || e.is_incomplete_message()) => {
                s = self.sender(h2).await?;
                s.send(req).await
            }
            r => r,
        }
        .map_err(|e| Outcome::Network(format!("request failed: {e}")))?;
        // (HTTP/2 has no `Connection` header.)
        let closes = resp
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if !closes {
            self.conn = Some(Conn::Http(s));
        }
        Ok(resp)
    }

    async fn check_http(&mut self, h: &HttpHealthCheck) -> Outcome {
        let authority = self.dialer.authority(h.host.as_deref());
        let req = match http_request(h, &authority) {
            Ok(r) => r,
            Err(why) => return Outcome::Fail(why),
        };
        let resp = match self.send(h.http2, req).await {
            Ok(r) => r,
            Err(o) => return o,
        };
        let status = resp.status().as_u16();
        let service = resp
            .headers()
            .get("x-envoy-upstream-healthchecked-cluster")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // The body is read (and, with `receive`, checked) before the connection is reused.
        let limit = if h.response_buffer_size == 0 {
            usize::MAX
        } else {
            h.response_buffer_size
        };
        let body = match read_body(resp.into_body(), limit).await {
            Ok(b) => b,
            Err(e) => {
                self.conn = None;
                return Outcome::Network(format!("reading the answer: {e}"));
            }
        };
        if !h.expects(status) {
            let why = format!("status {status}");
            return if h.retriable(status) {
                Outcome::Retriable(why)
            } else {
                Outcome::Fail(why)
            };
        }
        if !payload_matches(&h.receive, &body) {
            return Outcome::Fail("the response body lacks the expected payload".into());
        }
        if let Some(m) = &h.service_name_matcher {
            let got = service.unwrap_or_default();
            if !m.matches(&got) {
                return Outcome::Fail(format!(
                    "x-envoy-upstream-healthchecked-cluster {got:?} does not match"
                ));
            }
        }
        Outcome::Pass
    }

    async fn check_grpc(&mut self, g: &GrpcHealthCheck) -> Outcome {
        let authority = self.dialer.authority(g.authority.as_deref());
        let req = match grpc_request(g, &authority) {
            Ok(r) => r,
            Err(why) => return Outcome::Fail(why),
        };
        let resp = match self.send(true, req).await {
            Ok(r) => r,
            Err(o) => return o,
        };
        let status = resp.status();
        let head_status = grpc_status(resp.headers());
        let collected = match http_body_util::Limited::new(resp.into_body(), GRPC_RESPONSE_LIMIT)
            .collect()
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.conn = None;
                return Outcome::Network(format!("reading the answer: {e}"));
            }
        };
        if status != http::StatusCode::OK {
            return Outcome::Fail(format!("HTTP status {status}"));
        }
        let trailer_status = collected.trailers().and_then(grpc_status);
        match head_status.or(trailer_status) {
            Some(0) => {}
            Some(s) => return Outcome::Fail(format!("grpc-status {s}")),
            None => return Outcome::Fail("no grpc-status".into()),
        }
        match serving_status(&collected.to_bytes()) {
            Some(1) => Outcome::Pass,
            Some(s) => Outcome::Fail(format!("health status {s}, not SERVING")),
            None => Outcome::Fail("no HealthCheckResponse".into()),
        }
    }
}

impl Dialer {
    /// Where checks go: the endpoint, or its `health_check_config` address and port.
    async fn target(&self) -> Result<SocketAddr, String> {
        let hc = self.host.health_check.as_ref();
        let mut addr = match hc.and_then(|c| c.address) {
            Some(a) => a,
            None => match &self.host.address {
                EndpointAddress::Socket(a) => *a,
                dns @ EndpointAddress::Dns { host, .. } => traffic::resolve(dns)
                    .await
                    .map_err(|e| format!("resolving {host}: {e}"))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| format!("{host} resolves to no address"))?,
            },
        };
        if let Some(port) = hc.and_then(|c| c.port) {
            addr.set_port(port);
        }
        Ok(addr)
    }

    /// The `Host` or `:authority` of HTTP and gRPC checks.
    fn authority(&self, configured: Option<&str>) -> String {
        self.host
            .health_check
            .as_ref()
            .and_then(|c| c.hostname.clone())
            .or_else(|| configured.map(str::to_owned))
            .unwrap_or_else(|| self.cluster.to_string())
    }

    /// A new connection, plain or over the cluster's TLS for the host.
    async fn connect(&self, alpn: Alpn) -> Result<BoxIo, Outcome> {
        let addr = self.target().await.map_err(Outcome::Network)?;
        let current: Arc<Traffic> = self.traffic.load();
        let Some(target) = current.cluster(&self.cluster) else {
            return Err(Outcome::Network("the cluster is gone".into()));
        };
        let timeout = target.cluster.connect_timeout.min(self.timeout);
        let keepalive = target.cluster.tcp_keepalive.as_ref().map(Into::into);
        // The cluster's PROXY protocol header, as for a connection with no downstream
        // (Envoy's health checker: v1 with the connection's own addresses, v2 `LOCAL`).
        let proxy = target
            .cluster
            .proxy_protocol_of(self.host.socket)
            .map(|pp| crate::proxy_protocol::upstream_header(pp, None));
        let network = |e: crate::error::ProxyError| Outcome::Network(e.to_string());
        let io: BoxIo = match target.tls_origin(self.host.socket) {
            None => Box::new(
                dial::connect(addr, timeout, keepalive, proxy.as_ref())
                    .await
                    .map_err(network)?,
            ),
            Some(Err(why)) => return Err(Outcome::Network(why.to_owned())),
            Some(Ok(origin)) => {
                let origin = origin.clone();
                Box::new(
                    dial::dial_tls(
                        addr,
                        timeout,
                        keepalive,
                        &origin,
                        alpn,
                        None,
                        proxy.as_ref(),
                    )
                    .await
                    .map_err(network)?,
                )
            }
        };
        Ok(io)
    }
}

/// Reads a body up to `limit` bytes (the rest is read and dropped, so the connection can
/// be reused).
async fn read_body(mut body: hyper::body::Incoming, limit: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(out)
}

/// Another request like `req` (`http::Request` is not `Clone`: its extensions are not;
/// a check's request has none).
fn copy(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut r = Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// The request of an HTTP check.
fn http_request(h: &HttpHealthCheck, authority: &str) -> Result<Request<Full<Bytes>>, String> {
    let uri = format!("http://{authority}{}", h.path);
    let mut req = Request::builder()
        .method(Method::from_bytes(h.method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(
            uri.parse::<http::Uri>()
                .unwrap_or_else(|_| http::Uri::from_static("/")),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("the request cannot be made: {e}"))?;
    let headers = req.headers_mut();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(authority)
            .map_err(|_| format!("host {authority:?} is not a header value"))?,
    );
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    traffic::router::mutate_headers(
        headers,
        &h.request_headers_to_add,
        &h.request_headers_to_remove,
    );
    Ok(req)
}

/// The request of a gRPC check: `grpc.health.v1.Health/Check` with the service name.
fn grpc_request(g: &GrpcHealthCheck, authority: &str) -> Result<Request<Full<Bytes>>, String> {
    let uri: http::Uri = format!("http://{authority}/grpc.health.v1.Health/Check")
        .parse()
        .map_err(|_| format!("authority {authority:?} is not valid"))?;
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .body(Full::new(health_check_request(&g.service_name)))
        .map_err(|e| format!("the request cannot be made: {e}"))?;
    let headers = req.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    traffic::router::mutate_headers(headers, &g.initial_metadata, &[]);
    Ok(req)
}

/// A length-prefixed `grpc.health.v1.HealthCheckRequest { service }`. Its one string
/// field is written by hand: this crate has no protobuf runtime (see the crate's text), and
/// one tag, one length and the bytes do not need one.
pub(crate) fn health_check_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.extend_from_slice(&[0x0a]); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.freeze()
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.extend_from_slice(&[(v as u8) | 0x80]);
        v >>= 7;
    }
    out.extend_from_slice(&[v as u8]);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.first()?;
        b.advance(1);
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of the first `grpc.health.v1.HealthCheckResponse` in a gRPC response body
/// (0 when the message leaves it out, protobuf's default: `UNKNOWN`); `None` when there is
/// no whole uncompressed message.
pub(crate) fn serving_status(body: &[u8]) -> Option<u64> {
    let (&[flag], rest) = body.split_first_chunk::<1>()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if flag != 0 || rest.len() < len {
        return None;
    }
    let mut msg = &rest[..len];
    let mut status = 0;
    while !msg.is_empty() {
        let tag = get_varint(&mut msg)?;
        match tag & 7 {
            0 => {
                let v = get_varint(&mut msg)?;
                if tag >> 3 == 1 {
                    status = v;
                }
            }
            1 => msg = msg.get(8..)?,
            2 => {
                let n = usize::try_from(get_varint(&mut msg)?).ok()?;
                msg = msg.get(n..)?;
            }
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
