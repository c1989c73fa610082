//! HBONE: TCP connections tunnelled as HTTP/2 `CONNECT` streams over mutual TLS on port
//! 15008, the convention Istio's ambient mode made the de-facto standard.
//!
//! - [`Client`] (source node): per (source identity, destination node, expected identity)
//!   a pool of mTLS HTTP/2 connections, each carrying at most
//!   [`ClientConfig::max_streams`] tunnels; a tunnel is one `CONNECT` stream whose
//!   `:authority` is the destination pod's `ip:port`. The source workload presents its
//!   own certificate, and the destination node must present the expected identity.
//! - [`Server`] (destination node): terminates mTLS (the client's chain against the
//!   trust bundle, a SPIFFE ID of our trust domain), accepts `CONNECT` to pods of this
//!   node only, authorizes the source identity ([`InboundPolicy`]), connects to the pod
//!   and copies bytes both ways, recording destination-side golden metrics with the
//!   source principal. Every refusal answers a clear HTTP/2 status and is counted by
//!   reason (`myelin_hbone_refused_total{reason}`).
//!
//! Source workload and trace context ride in the `CONNECT` headers (`baggage`,
//! `traceparent`), so the destination can label the source before any L7 parsing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

use crate::drain;
use crate::golden::{GoldenMetrics, TcpRecord, UNKNOWN};
use crate::model::ProxyConfig;
use crate::stream::Counted;
use crate::tls::{sni_for, spiffe_id_of, Identities, RejectReason, SpiffeId};

/// The HBONE port.
pub const PORT: u16 = 15008;

/// W3C baggage keys for the source workload, as Istio's ambient mode sends them.
const BAGGAGE_NAMESPACE: &str = "k8s.namespace.name";
const BAGGAGE_WORKLOAD: &str = "k8s.workload.name";

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

/// The HBONE server's counters.
#[derive(Debug, Default)]
pub struct HboneMetrics {
    refused: Family<ReasonLabels, Counter>,
    tunnels: Counter,
    handshakes: Counter,
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
        m
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

/// Which source identities may open tunnels to which workloads.
#[derive(Debug, Clone, Default)]
pub struct InboundPolicy {
    /// Per destination workload (`namespace/name`): the identities allowed. A workload
    /// not listed accepts every meshed identity (any of our trust domain).
    pub allow: HashMap<String, Vec<SpiffeId>>,
}

impl InboundPolicy {
    fn allows(&self, namespace: &str, workload: &str, source: &SpiffeId) -> bool {
        match self.allow.get(&format!("{namespace}/{workload}")) {
            Some(ids) => ids.contains(source),
            None => true,
        }
    }
}

/// The destination side.
#[derive(Debug, Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

#[derive(Debug)]
struct ServerInner {
    identities: Arc<Identities>,
    config: Arc<ProxyConfig>,
    policy: InboundPolicy,
    metrics: Arc<HboneMetrics>,
    golden: Arc<GoldenMetrics>,
}

impl Server {
    /// A server for the workloads of `config`, with the certificates of `identities`.
    pub fn new(
        identities: Arc<Identities>,
        config: Arc<ProxyConfig>,
        policy: InboundPolicy,
        metrics: Arc<HboneMetrics>,
        golden: Arc<GoldenMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(ServerInner {
                identities,
                config,
                policy,
                metrics,
                golden,
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
        let svc = hyper::service::service_fn(move |req| {
            let (me, source) = (me.clone(), source.clone());
            async move { Ok::<_, Infallible>(me.tunnel(req, &source).await) }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
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

    /// One `CONNECT`: checked, authorized, connected to the pod, then copied both ways
    /// in its own task once the stream is upgraded.
    async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        source: &SpiffeId,
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
        if !self
            .policy
            .allows(&workload.namespace, &workload.name, source)
        {
            return refuse(Refusal::Denied);
        }
        let upstream = match crate::tcp::connect(dst, self.config.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                debug!(%dst, error = %e, "HBONE destination unreachable");
                return refuse(Refusal::DestinationUnreachable);
            }
        };
        self.metrics.tunnels.inc();
        let (src_ns, src_workload) = source_from_baggage(req.headers());
        let counters = self.golden.tcp(&TcpRecord {
            reporter: "destination",
            source_workload: src_workload.unwrap_or_else(|| UNKNOWN.into()),
            source_namespace: src_ns.unwrap_or_else(|| source.namespace().into()),
            source_principal: source.to_string().into(),
            destination_workload: workload.name.as_str().into(),
            destination_namespace: workload.namespace.as_str().into(),
            destination_service: workload.name.as_str().into(),
            destination_principal: self.config.principal(workload).into(),
            connection_security_policy: "mutual_tls",
        });
        let traceparent = req.headers().get("traceparent").cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        let source = source.to_string();
        tokio::spawn(
            async move {
                let up = match on_upgrade.await {
                    Ok(up) => up,
                    Err(e) => {
                        debug!(error = %e, "HBONE upgrade failed");
                        return;
                    }
                };
                counters.opened.inc();
                let mut tunnel = Counted::new(TokioIo::new(up), counters.sent, counters.received);
                let mut upstream = upstream;
                match tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await {
                    Ok((sent, received)) => {
                        debug!(%dst, %source, sent, received, ?traceparent, "HBONE tunnel closed");
                    }
                    Err(e) => debug!(%dst, %source, error = %e, "HBONE tunnel failed"),
                }
                counters.closed.inc();
            }
            .in_current_span(),
        );
        Response::new(Empty::new())
    }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Never held across an await.
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// The source side: pooled mTLS HTTP/2 connections to other nodes' HBONE servers.
pub struct Client {
    identities: Arc<Identities>,
    config: ClientConfig,
    pools: Mutex<HashMap<PoolKey, Arc<KeyPool>>>,
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
        }
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
    /// `key`; `headers` go on the `CONNECT` (baggage, traceparent).
    pub async fn connect(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        headers: HeaderMap,
    ) -> Result<Tunnel, TunnelError> {
        let pool = lock(&self.pools).entry(key.clone()).or_default().clone();
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
                        let sender = self.dial(key).await?;
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
        sender.ready().await.map_err(http)?;
        let resp = sender.send_request(req).await.map_err(http)?;
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
    ) -> Result<client_h2::SendRequest<Empty<Bytes>>, TunnelError> {
        let node = key.node;
        let timeout = self.config.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(node)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(TunnelError::Connect { node, source }),
            Err(_) => {
                return Err(TunnelError::Connect {
                    node,
                    source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls_config = self
            .identities
            .client_config(&key.source, vec![key.expected.clone()])
            .map_err(|e| TunnelError::Identity(e.to_string()))?;
        if self.identities.certificate(&key.source).is_none() {
            return Err(TunnelError::Identity(key.source.to_string()));
        }
        let connector = TlsConnector::from(Arc::new(tls_config));
        let tls =
            match tokio::time::timeout(timeout, connector.connect(sni_for(&key.expected), tcp))
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
                    return Err(TunnelError::Tls {
                        node,
                        reason: RejectReason::Handshake,
                        source: io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
                    })
                }
            };
        let mut builder = client_h2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
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
