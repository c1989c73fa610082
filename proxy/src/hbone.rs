//! HBONE: TCP connections tunnelled as HTTP/2 `CONNECT` streams over mutual TLS on port
//! 15008, the convention Istio's ambient mode made the de-facto standard.
//!
//! - [`Client`] (source node): per (source identity, destination node, expected identity)
//!   a pool of mTLS HTTP/2 connections, each carrying at most
//!   [`ClientConfig::max_streams`] tunnels; a tunnel is one `CONNECT` stream whose
//!   `:authority` is the destination pod's `ip:port`. The source workload presents its
//!   own certificate, and the destination node must present the expected identity. A
//!   tunnel that cannot be opened is counted by reason
//!   (`myelin_hbone_tunnel_failures_total{reason}`, [`TunnelError::reason`]).
//! - [`Server`] (destination node): terminates mTLS (the client's chain against the
//!   trust bundle, a SPIFFE ID of our trust domain), accepts `CONNECT` to pods of this
//!   node only, authorizes the source identity ([`InboundPolicy`]) and connects to the
//!   pod. Then it sniffs the tunnel as the proxy sniffs captured connections: HTTP/1 and
//!   h2c go through the proxy's HTTP path to the pod request by request, each recorded in
//!   the golden metrics with `reporter="destination"`, the source principal and
//!   `mutual_tls`; anything else is copied byte for byte and recorded as a
//!   destination-side TCP connection. Every refusal answers a clear HTTP/2 status and is
//!   counted by reason (`myelin_hbone_refused_total{reason}`).
//!
//! Source workload and trace context ride in the `CONNECT` headers (`baggage`, a W3C
//! `traceparent` the client starts per tunnel), so the destination can log and label the
//! source before any L7 parsing. The source's namespace and principal come from its
//! verified certificate; `baggage` only adds the workload name.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2 as client_h2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn, Instrument};

use crate::detect::{self, Protocol};
use crate::drain;
use crate::golden::{GoldenMetrics, TcpRecord, UNKNOWN};
use crate::http::{HttpConn, HttpConnParams, ManagerSettings, Reporter, Routing};
use crate::lock;
use crate::metrics::ProxyMetrics;
use crate::model::ProxyConfig;
use crate::outbound::Source;
use crate::stream::{Counted, Rewind};
use crate::tls::{sni_for_any, spiffe_id_of, Identities, RejectReason, SpiffeId};
use crate::traffic::TrafficHandle;
use crate::upstream::{PoolConfig, Pools, UpstreamProtocol};

/// The HBONE port.
pub const PORT: u16 = 15008;

/// HTTP/2 flow control and framing of HBONE connections, both ends. A tunnel is a byte
/// stream, often bulk: HTTP/2's defaults (64 KiB windows, 16 KiB frames) would cap one
/// tunnel at a window per round trip and cut the stream into many small frames. ztunnel
/// uses the same orders of magnitude (4 MiB stream, 16 MiB connection, 1 MiB frames).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const FRAME_SIZE: u32 = 1 << 20;
/// How much one stream may buffer for sending before it waits for the connection.
const SEND_BUF: usize = 1 << 20;

/// W3C baggage keys for the source workload, as Istio's ambient mode sends them.
const BAGGAGE_NAMESPACE: &str = "k8s.namespace.name";
const BAGGAGE_WORKLOAD: &str = "k8s.workload.name";

/// The W3C trace context header.
const TRACEPARENT: &str = "traceparent";

/// A W3C trace context (`traceparent`,
/// <https://www.w3.org/TR/trace-context/#traceparent-header>): which trace a tunnel
/// belongs to. The client starts a new trace per tunnel (as ztunnel does per outbound
/// connection) unless it is given one; the server logs it with the source workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16 bytes, never all zero.
    pub trace_id: u128,
    /// The caller's span: 8 bytes, never all zero.
    pub parent_id: u64,
    /// Bit 0: sampled.
    pub flags: u8,
}

impl Default for TraceParent {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceParent {
    /// A new trace with random ids, not sampled (the proxy records no spans).
    pub fn new() -> Self {
        // Zero ids are invalid; a random one is zero with probability 2^-128 (2^-64).
        Self {
            trace_id: fastrand::u128(1..),
            parent_id: fastrand::u64(1..),
            flags: 0,
        }
    }

    /// Parses a `traceparent` value: version `00` exactly, or a later version's first
    /// four fields (the spec's forward compatibility); lowercase hex; zero ids and
    /// version `ff` are invalid.
    pub fn parse(value: &str) -> Option<Self> {
        fn hex<const N: usize>(s: &str) -> Option<&str> {
            (s.len() == N && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(s)
        }
        let mut fields = value.split('-');
        let version = hex::<2>(fields.next()?)?;
        let trace_id = u128::from_str_radix(hex::<32>(fields.next()?)?, 16).ok()?;
        let parent_id = u64::from_str_radix(hex::<16>(fields.next()?)?, 16).ok()?;
        let flags = u8::from_str_radix(hex::<2>(fields.next()?)?, 16).ok()?;
        let valid = match version {
            "ff" => false,
            "00" => fields.next().is_none(),
            // Later versions may append fields; we read the ones we know.
            _ => true,
        };
        (valid && trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The header value (version `00`).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("hex digits and dashes")
    }

    /// The trace id as it is written in the header.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Why the server refused a connection or a tunnel (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The TLS handshake failed (the peer's certificate, or the handshake itself).
    Tls(RejectReason),
    /// A request that is not `CONNECT`.
    NotConnect,
    /// `:authority` is not an `ip:port`.
    BadAuthority,
    /// The destination is not a workload of this node.
    UnknownDestination,
    /// The inbound policy does not allow the source identity.
    Denied,
    /// The pod refused or did not answer.
    DestinationUnreachable,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tls(r) => r.as_str(),
            Refusal::NotConnect => "not_connect",
            Refusal::BadAuthority => "bad_authority",
            Refusal::UnknownDestination => "unknown_destination",
            Refusal::Denied => "denied",
            Refusal::DestinationUnreachable => "destination_unreachable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::Tls(_) => StatusCode::FORBIDDEN,
            Refusal::NotConnect => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::BadAuthority => StatusCode::BAD_REQUEST,
            Refusal::UnknownDestination => StatusCode::NOT_FOUND,
            Refusal::Denied => StatusCode::FORBIDDEN,
            Refusal::DestinationUnreachable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The HBONE counters: the server's, and the client's failures to open tunnels.
#[derive(Debug, Default)]
pub struct HboneMetrics {
    refused: Family<ReasonLabels, Counter>,
    tunnels: Counter,
    handshakes: Counter,
    tunnel_failures: Family<ReasonLabels, Counter>,
}

impl HboneMetrics {
    /// Creates the counters and registers them (names relative to the registry's prefix).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "hbone_refused",
            "HBONE connections (TLS) and tunnels (CONNECT) refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "hbone_tunnels",
            "HBONE tunnels accepted and connected to a pod",
            m.tunnels.clone(),
        );
        registry.register(
            "hbone_handshakes",
            "Mutual TLS handshakes completed by the HBONE server",
            m.handshakes.clone(),
        );
        registry.register(
            "hbone_tunnel_failures",
            "HBONE tunnels the client could not open, by reason (connect, timeout, tls, \
             the destination node's certificate: wrong_identity, untrusted_issuer, ...; http, \
             refused, no_identity)",
            m.tunnel_failures.clone(),
        );
        m
    }

    fn tunnel_failed(&self, reason: &'static str) {
        self.tunnel_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Tunnels the client failed to open for `reason` so far.
    pub fn tunnel_failure_count(&self, reason: &str) -> u64 {
        TunnelError::REASONS
            .iter()
            .find(|r| **r == reason)
            .map_or(0, |r| {
                self.tunnel_failures
                    .get_or_create(&ReasonLabels { reason: r })
                    .get()
            })
    }

    fn refused(&self, r: Refusal) {
        self.refused
            .get_or_create(&ReasonLabels { reason: r.as_str() })
            .inc();
    }

    /// Tunnels accepted so far.
    pub fn tunnel_count(&self) -> u64 {
        self.tunnels.get()
    }

    /// Refusals counted for `reason` so far.
    pub fn refused_count(&self, reason: &str) -> u64 {
        // Label values are static strings; find the one that matches.
        [
            Refusal::NotConnect,
            Refusal::BadAuthority,
            Refusal::UnknownDestination,
            Refusal::Denied,
            Refusal::DestinationUnreachable,
            Refusal::Tls(RejectReason::NoCertificate),
            Refusal::Tls(RejectReason::UntrustedIssuer),
            Refusal::Tls(RejectReason::Expired),
            Refusal::Tls(RejectReason::NotYetValid),
            Refusal::Tls(RejectReason::NoSpiffeId),
            Refusal::Tls(RejectReason::OtherTrustDomain),
            Refusal::Tls(RejectReason::WrongIdentity),
            Refusal::Tls(RejectReason::BadCertificate),
            Refusal::Tls(RejectReason::Handshake),
        ]
        .into_iter()
        .find(|r| r.as_str() == reason)
        .map_or(0, |r| {
            self.refused
                .get_or_create(&ReasonLabels { reason: r.as_str() })
                .get()
        })
    }
}

/// Which source identities may open tunnels to which workloads: the proxy config's
/// ([`ProxyConfig::inbound_policy`]), which also authorizes pod-to-pod connections on
/// one node.
pub use crate::model::InboundPolicy;

/// The destination side.
#[derive(Debug, Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    identities: Arc<Identities>,
    config: Arc<ProxyConfig>,
    metrics: Arc<HboneMetrics>,
    golden: Arc<GoldenMetrics>,
    /// Connections to this node's pods for tunnels that carry HTTP.
    pools: Arc<Pools>,
    /// What the HTTP path of tunnels needs and the server does not report: an empty
    /// traffic config (requests go to the tunnel's pod) and the proxy's own counters
    /// (`myelin_proxy_*` count captured connections; tunnels have `myelin_hbone_*`).
    traffic: TrafficHandle,
    proxy_metrics: Arc<ProxyMetrics>,
}

impl std::fmt::Debug for ServerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerInner")
            .field("identities", &self.identities)
            .field("policy", &self.config.inbound_policy())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for the workloads of `config`, with the certificates of `identities`,
    /// authorizing tunnels with the config's inbound policy (none: every identity of the
    /// trust domain). Call it on a runtime (the upstream pools start their sweeper there).
    pub fn new(
        identities: Arc<Identities>,
        config: Arc<ProxyConfig>,
        metrics: Arc<HboneMetrics>,
        golden: Arc<GoldenMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(ServerInner {
                identities,
                config,
                metrics,
                golden,
                pools: Pools::new(PoolConfig::default()),
                traffic: TrafficHandle::new(),
                proxy_metrics: Arc::new(ProxyMetrics::unregistered()),
            }),
        }
    }

    /// Accepts on `listener` until the drain starts; every connection holds the drain
    /// until its tunnels end (HTTP/2 connections get a GOAWAY).
    pub async fn serve(&self, listener: TcpListener, drain: drain::Watch) -> io::Result<()> {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = drain.signaled() => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: keep serving.
                    warn!(error = %e, "HBONE accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let inner = self.inner.clone();
            let drain = drain.clone();
            tokio::spawn(
                async move { inner.connection(stream, peer, drain).await }
                    .instrument(tracing::debug_span!("hbone", %peer)),
            );
        }
    }
}

impl ServerInner {
    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, drain: drain::Watch) {
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(self.identities.server_config());
        let tls = match acceptor.accept(stream).await {
            Ok(t) => t,
            Err(e) => {
                let reason = RejectReason::of_io(&e);
                debug!(%peer, reason = reason.as_str(), error = %e, "HBONE handshake refused");
                self.metrics.refused(Refusal::Tls(reason));
                return;
            }
        };
        self.metrics.handshakes.inc();
        // Verified by the handshake: the chain, and exactly one SPIFFE ID of ours.
        let Some(source) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| spiffe_id_of(c).ok())
        else {
            self.metrics.refused(Refusal::Tls(RejectReason::NoSpiffeId));
            return;
        };
        let source = Arc::new(source);
        let me = self.clone();
        let tunnels_drain = drain.clone();
        let svc = hyper::service::service_fn(move |req| {
            let (me, source, drain) = (me.clone(), source.clone(), tunnels_drain.clone());
            async move { Ok::<_, Infallible>(me.tunnel(req, &source, peer, drain).await) }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME_SIZE)
            .max_send_buf_size(SEND_BUF);
        let conn = builder.serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        let res = tokio::select! {
            res = conn.as_mut() => res,
            () = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = res {
            debug!(%peer, error = %e, "HBONE connection ended with an error");
        }
    }

    /// One `CONNECT`: checked, authorized and connected to the pod (so a pod that
    /// refuses is a refused tunnel), then carried in its own task once the stream is
    /// upgraded.
    async fn tunnel(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        source: &SpiffeId,
        peer: SocketAddr,
        drain: drain::Watch,
    ) -> Response<Empty<Bytes>> {
        let refuse = |r: Refusal| {
            self.metrics.refused(r);
            debug!(reason = r.as_str(), %source, "HBONE tunnel refused");
            let mut resp = Response::new(Empty::new());
            *resp.status_mut() = r.status();
            resp
        };
        if req.method() != Method::CONNECT {
            return refuse(Refusal::NotConnect);
        }
        let Some(dst) = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        else {
            return refuse(Refusal::BadAuthority);
        };
        let Some(workload) = self.config.workload_by_ip(dst.ip()) else {
            return refuse(Refusal::UnknownDestination);
        };
        if self
            .config
            .inbound_policy()
            .is_some_and(|p| !p.allows(&workload.namespace, &workload.name, source))
        {
            return refuse(Refusal::Denied);
        }
        let upstream = match crate::tcp::connect(dst, self.config.connect_timeout, None).await {
            Ok(s) => s,
            Err(e) => {
                debug!(%dst, error = %e, "HBONE destination unreachable");
                return refuse(Refusal::DestinationUnreachable);
            }
        };
        self.metrics.tunnels.inc();
        let src = tunnel_source(req.headers(), source);
        let trace = trace_context(req.headers());
        let span = tracing::debug_span!(
            "tunnel",
            trace_id = %trace.as_ref().map_or_else(|| "-".into(), TraceParent::trace_id_hex),
            %dst,
        );
        debug!(
            parent: &span,
            source_workload = %src.workload,
            source_namespace = %src.namespace,
            source_principal = %src.principal,
            "HBONE tunnel accepted"
        );
        let dest = Destination {
            addr: dst,
            workload: workload.name.as_str().into(),
            namespace: workload.namespace.as_str().into(),
            principal: self.config.principal(workload).into(),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let me = self.clone();
        tokio::spawn(
            async move {
                match on_upgrade.await {
                    Ok(up) => me.carry(up, upstream, peer, src, dest, drain).await,
                    Err(e) => debug!(error = %e, "HBONE upgrade failed"),
                }
            }
            .instrument(span),
        );
        Response::new(Empty::new())
    }

    /// Carries one accepted tunnel: HTTP (sniffed as the proxy sniffs captured
    /// connections) request by request, recording each request's destination-side
    /// golden metrics; anything else byte for byte, as an opaque connection.
    async fn carry(
        &self,
        up: Upgraded,
        upstream: TcpStream,
        peer: SocketAddr,
        source: Source,
        dest: Destination,
        drain: drain::Watch,
    ) {
        // A pod that speaks first (SMTP, MySQL, ...) makes it opaque at once.
        let sniffed = detect::detect_or(
            TokioIo::new(up),
            self.config.sniff_timeout,
            spoke_first(&upstream),
        )
        .await;
        let (protocol, tunnel) = match sniffed {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "HBONE tunnel failed before its first bytes");
                return;
            }
        };
        if protocol == Protocol::Opaque {
            drop(drain);
            return self.copy(tunnel, upstream, &source, &dest).await;
        }
        let upstream_protocol = match protocol {
            Protocol::Http2 => UpstreamProtocol::Http2(Default::default()),
            _ => UpstreamProtocol::Http1,
        };
        // The connection opened to check the pod serves the tunnel's first request.
        if let Err(e) = self
            .pools
            .adopt(Box::new(upstream), dest.addr, upstream_protocol, peer)
            .await
        {
            debug!(error = %e, "HBONE: pod connection not reusable");
        }
        let conn = Arc::new(HttpConn::new(HttpConnParams {
            peer,
            proxied: None,
            // Its certificate's: the tunnel is mutual TLS.
            identity: Some(source.principal.clone()),
            sni: None,
            dst: dest.addr,
            captured: false,
            reporter: Reporter::Destination,
            routing: Routing::Passthrough,
            traffic: self.traffic.clone(),
            source,
            downstream: protocol,
            connect_timeout: self.config.connect_timeout,
            metrics: self.proxy_metrics.clone(),
            golden: self.golden.clone(),
            config: self.config.clone(),
            pools: self.pools.clone(),
            manager: ManagerSettings::default(),
            hbone: None,
        }));
        crate::http::serve(tunnel, conn, drain).await;
        debug!(%protocol, "HBONE tunnel closed");
    }

    /// Copies an opaque tunnel both ways, counted as a destination-side TCP connection.
    async fn copy(
        &self,
        tunnel: Rewind<TokioIo<Upgraded>>,
        mut upstream: TcpStream,
        source: &Source,
        dest: &Destination,
    ) {
        let counters = self.golden.tcp(&TcpRecord {
            reporter: "destination",
            source_workload: source.workload.clone(),
            source_namespace: source.namespace.clone(),
            source_principal: source.principal.clone(),
            destination_workload: dest.workload.clone(),
            destination_namespace: dest.namespace.clone(),
            destination_service: dest.workload.clone(),
            destination_principal: dest.principal.clone(),
            connection_security_policy: "mutual_tls",
        });
        counters.opened.inc();
        let mut tunnel = Counted::new(tunnel, counters.sent, counters.received);
        match tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await {
            Ok((sent, received)) => debug!(sent, received, "HBONE tunnel closed"),
            Err(e) => debug!(error = %e, "HBONE tunnel failed"),
        }
        counters.closed.inc();
    }
}

/// Resolves once the pod has sent something other than an HTTP/2 server preface: an
/// h2c server sends its SETTINGS frame (type 4 in the fourth byte of the frame header) as
/// soon as it accepts, before it has seen the client's preface. Peeks, so nothing is
/// consumed.
async fn spoke_first(upstream: &TcpStream) {
    let mut head = [0u8; 4];
    if let Ok(n) = upstream.peek(&mut head).await {
        if n == head.len() && head[3] == 0x04 {
            std::future::pending::<()>().await;
        }
    }
}

/// The pod a tunnel goes to, as metric labels.
struct Destination {
    addr: SocketAddr,
    workload: Arc<str>,
    namespace: Arc<str>,
    principal: Arc<str>,
}

/// The source of a tunnel: its principal and namespace from the verified certificate,
/// its workload from the `baggage` the source node sent (a name the certificate does
/// not carry), unless the baggage names another namespace than the certificate.
fn tunnel_source(headers: &HeaderMap, id: &SpiffeId) -> Source {
    let (ns, workload) = source_from_baggage(headers);
    let workload = match (ns, workload) {
        (Some(ns), Some(_)) if &*ns != id.namespace() => {
            debug!(baggage_namespace = %ns, source = %id, "baggage disagrees with the certificate; source workload unknown");
            None
        }
        (_, w) => w,
    };
    Source {
        workload: workload.unwrap_or_else(|| UNKNOWN.into()),
        namespace: id.namespace().into(),
        principal: id.to_string().into(),
    }
}

/// The tunnel's `traceparent`; a malformed one is logged and ignored (the tunnel goes on
/// without a trace).
fn trace_context(headers: &HeaderMap) -> Option<TraceParent> {
    let value = headers.get(TRACEPARENT)?;
    let parsed = value.to_str().ok().and_then(TraceParent::parse);
    if parsed.is_none() {
        debug!(traceparent = ?value, "HBONE: malformed traceparent ignored");
    }
    parsed
}

/// The source workload's namespace and name from a W3C `baggage` header.
fn source_from_baggage(headers: &HeaderMap) -> (Option<Arc<str>>, Option<Arc<str>>) {
    let mut ns = None;
    let mut workload = None;
    for v in headers.get_all("baggage") {
        let Ok(v) = v.to_str() else { continue };
        for member in v.split(',') {
            let Some((k, val)) = member.split_once('=') else {
                continue;
            };
            // Properties after `;` are not ours.
            let val = val.split(';').next().unwrap_or("").trim();
            match k.trim() {
                BAGGAGE_NAMESPACE if !val.is_empty() => ns = Some(val.into()),
                BAGGAGE_WORKLOAD if !val.is_empty() => workload = Some(val.into()),
                _ => {}
            }
        }
    }
    (ns, workload)
}

/// Where an HBONE pool's connections go, and as whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity the source presents.
    pub source: SpiffeId,
    /// The destination node's HBONE address.
    pub node: SocketAddr,
    /// The identity the destination node must present.
    pub expected: SpiffeId,
}

/// Client limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Tunnels per HTTP/2 connection before another connection is opened.
    pub max_streams: usize,
    /// TCP connect and TLS handshake, each.
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_streams: 100,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// TCP to the node failed or timed out.
    #[error("connecting to HBONE node {node}: {source}")]
    Connect { node: SocketAddr, source: io::Error },
    /// The mTLS handshake failed (e.g. the node is not who it should be).
    #[error("mTLS with HBONE node {node} failed ({}): {source}", .reason.as_str())]
    Tls {
        node: SocketAddr,
        reason: RejectReason,
        source: io::Error,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2 with HBONE node {node}: {source}")]
    Http {
        node: SocketAddr,
        source: hyper::Error,
    },
    /// The node answered the `CONNECT` with something other than 200.
    #[error("HBONE node {node} refused the tunnel to {target}: {status}")]
    Refused {
        node: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    /// Our certificate for the source identity is missing or unusable.
    #[error("no usable certificate for {0}")]
    Identity(String),
    /// The TCP connect, the TLS handshake or the `CONNECT` exchange took longer than
    /// [`ClientConfig::connect_timeout`].
    #[error(
        "HBONE node {node}: {during} timed out after {timeout:?}; is the node up, and is a \
         firewall blocking port {PORT}?"
    )]
    Timeout {
        node: SocketAddr,
        during: &'static str,
        timeout: Duration,
    },
}

impl TunnelError {
    /// Every value of [`TunnelError::reason`].
    pub const REASONS: [&'static str; 14] = [
        "connect",
        "timeout",
        "tls",
        "http",
        "refused",
        "no_identity",
        "no_certificate",
        "untrusted_issuer",
        "expired",
        "not_yet_valid",
        "no_spiffe_id",
        "other_trust_domain",
        "wrong_identity",
        "bad_certificate",
    ];

    /// The `reason` label of `myelin_hbone_tunnel_failures_total`. A TLS failure is named
    /// by what was wrong with the destination node's certificate (`wrong_identity`,
    /// `untrusted_issuer`, `expired`, ...), or `tls` when it was not the certificate (a
    /// protocol error, or the node refusing ours: the client only sees an alert).
    pub fn reason(&self) -> &'static str {
        match self {
            TunnelError::Connect { .. } => "connect",
            TunnelError::Timeout { .. } => "timeout",
            TunnelError::Tls {
                reason: RejectReason::Handshake,
                ..
            } => "tls",
            TunnelError::Tls { reason, .. } => reason.as_str(),
            TunnelError::Http { .. } => "http",
            TunnelError::Refused { .. } => "refused",
            TunnelError::Identity(_) => "no_identity",
        }
    }
}

struct Conn {
    sender: client_h2::SendRequest<Empty<Bytes>>,
    streams: Arc<AtomicUsize>,
    /// When the source certificate it was opened with was issued: once the identity has
    /// a newer one (rotation), new tunnels go to a new connection that presents it, and
    /// this one is left to its open tunnels.
    cert_issued: Option<std::time::SystemTime>,
}

#[derive(Default)]
struct KeyPool {
    conns: Mutex<Vec<Conn>>,
    /// Held while connecting, so concurrent first tunnels share one new connection.
    connecting: tokio::sync::Mutex<()>,
}

impl KeyPool {
    /// A live connection with room for one more stream (counted now), opened with the
    /// source's current certificate (`cert_issued`).
    fn take(
        &self,
        max: usize,
        cert_issued: Option<std::time::SystemTime>,
    ) -> Option<(client_h2::SendRequest<Empty<Bytes>>, StreamSlot)> {
        let mut conns = lock(&self.conns);
        conns.retain(|c| !c.sender.is_closed() && c.cert_issued == cert_issued);
        conns.iter().find_map(|c| {
            c.streams
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()
                .map(|_| (c.sender.clone(), StreamSlot(c.streams.clone())))
        })
    }
}

/// One stream of a pooled connection, counted until dropped.
#[derive(Debug)]
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pool's key and the other identities its node may present.
type AnyKey = (PoolKey, Vec<SpiffeId>);

/// The source side: pooled mTLS HTTP/2 connections to other nodes' HBONE servers.
pub struct Client {
    identities: Arc<Identities>,
    config: ClientConfig,
    /// By key and the other identities the node may present ([`Client::connect_any`]).
    pools: Mutex<HashMap<AnyKey, Arc<KeyPool>>>,
    /// Where failures to open a tunnel are counted (none: not counted).
    metrics: Option<Arc<HboneMetrics>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .field("pools", &lock(&self.pools).len())
            .finish()
    }
}

impl Client {
    /// A client presenting the certificates of `identities`.
    pub fn new(identities: Arc<Identities>, config: ClientConfig) -> Self {
        Self {
            identities,
            config,
            pools: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Counts the tunnels that could not be opened in `metrics`
    /// (`myelin_hbone_tunnel_failures_total{reason}`).
    pub fn with_metrics(mut self, metrics: Arc<HboneMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// HTTP/2 connections open now, over all pools.
    pub fn connections(&self) -> usize {
        let pools: Vec<Arc<KeyPool>> = lock(&self.pools).values().cloned().collect();
        pools
            .iter()
            .map(|p| {
                let mut conns = lock(&p.conns);
                conns.retain(|c| !c.sender.is_closed());
                conns.len()
            })
            .sum()
    }

    /// A tunnel to `target` (a pod's `ip:port`) through the node and identities of
    /// `key`; `headers` go on the `CONNECT` (`baggage`; a `traceparent` is added when
    /// there is none, a new trace per tunnel). A failure is counted by its
    /// [`TunnelError::reason`].
    pub async fn connect(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        headers: HeaderMap,
    ) -> Result<Tunnel, TunnelError> {
        self.connect_any(key, &[], target, headers).await
    }

    /// [`Client::connect`] to a node that may present `key.expected` or one of `also`
    /// (a cluster's SAN list): the SNI names them all, in that order, and the node
    /// presents the first it holds.
    pub async fn connect_any(
        &self,
        key: &PoolKey,
        also: &[SpiffeId],
        target: SocketAddr,
        mut headers: HeaderMap,
    ) -> Result<Tunnel, TunnelError> {
        if !headers.contains_key(TRACEPARENT) {
            headers.insert(TRACEPARENT, TraceParent::new().header_value());
        }
        let res = self.open(key, also, target, headers).await;
        if let Err(e) = &res {
            debug!(reason = e.reason(), error = %e, "HBONE tunnel not opened");
            if let Some(m) = &self.metrics {
                m.tunnel_failed(e.reason());
            }
        }
        res
    }

    async fn open(
        &self,
        key: &PoolKey,
        also: &[SpiffeId],
        target: SocketAddr,
        headers: HeaderMap,
    ) -> Result<Tunnel, TunnelError> {
        let pool = lock(&self.pools)
            .entry((key.clone(), also.to_vec()))
            .or_default()
            .clone();
        let cert_issued = |ids: &Identities| ids.certificate(&key.source).map(|c| c.not_before);
        let issued = cert_issued(&self.identities);
        let (mut sender, slot) = match pool.take(self.config.max_streams, issued) {
            Some(s) => s,
            None => {
                let _connecting = pool.connecting.lock().await;
                let issued = cert_issued(&self.identities);
                match pool.take(self.config.max_streams, issued) {
                    Some(s) => s,
                    None => {
                        let sender = self.dial(key, also).await?;
                        let streams = Arc::new(AtomicUsize::new(1));
                        lock(&pool.conns).push(Conn {
                            sender: sender.clone(),
                            streams: streams.clone(),
                            cert_issued: issued,
                        });
                        (sender, StreamSlot(streams))
                    }
                }
            }
        };
        let node = key.node;
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = target
            .to_string()
            .parse()
            .expect("a socket address is a valid authority");
        *req.headers_mut() = headers;
        let http = |source| TunnelError::Http { node, source };
        let timeout = self.config.connect_timeout;
        let exchange = async {
            sender.ready().await.map_err(http)?;
            sender.send_request(req).await.map_err(http)
        };
        let resp = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TunnelError::Timeout {
                node,
                during: "the CONNECT exchange",
                timeout,
            })??;
        if resp.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                node,
                target,
                status: resp.status(),
            });
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(http)?;
        Ok(Tunnel {
            io: TokioIo::new(upgraded),
            _slot: slot,
        })
    }

    async fn dial(
        &self,
        key: &PoolKey,
        also: &[SpiffeId],
    ) -> Result<client_h2::SendRequest<Empty<Bytes>>, TunnelError> {
        let node = key.node;
        let timeout = self.config.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(node)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(TunnelError::Connect { node, source }),
            Err(_) => {
                return Err(TunnelError::Timeout {
                    node,
                    during: "the TCP connect",
                    timeout,
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        let expected: Vec<SpiffeId> = std::iter::once(&key.expected)
            .chain(also)
            .cloned()
            .collect();
        let tls_config = self
            .identities
            .client_config(&key.source, expected.clone())
            .map_err(|e| TunnelError::Identity(e.to_string()))?;
        if self.identities.certificate(&key.source).is_none() {
            return Err(TunnelError::Identity(key.source.to_string()));
        }
        let connector = TlsConnector::from(Arc::new(tls_config));
        let tls =
            match tokio::time::timeout(timeout, connector.connect(sni_for_any(&expected), tcp))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(source)) => {
                    return Err(TunnelError::Tls {
                        node,
                        reason: RejectReason::of_io(&source),
                        source,
                    })
                }
                Err(_) => {
                    return Err(TunnelError::Timeout {
                        node,
                        during: "the TLS handshake",
                        timeout,
                    })
                }
            };
        let mut builder = client_h2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME_SIZE)
            .max_send_buf_size(SEND_BUF);
        let (sender, conn) = builder
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| TunnelError::Http { node, source })?;
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    debug!(%node, error = %e, "HBONE client connection ended with an error");
                }
            }
            .in_current_span(),
        );
        Ok(sender)
    }
}

/// W3C `baggage` naming a source workload, for [`Client::connect`].
pub fn baggage(namespace: &str, workload: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{BAGGAGE_NAMESPACE}={namespace},{BAGGAGE_WORKLOAD}={workload}"
    ))
    .ok()
}

/// An open tunnel: bytes written reach the destination pod, bytes read come from it.
/// Keeps its place in the connection's stream count until dropped.
#[derive(Debug)]
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    _slot: StreamSlot,
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
