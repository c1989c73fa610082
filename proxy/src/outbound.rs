//! The life of one accepted connection: original destination, source workload, protocol
//! detection, listener and filter chain, then the HTTP or opaque path.
//!
//! A captured connection whose original destination no listener claims is passed through
//! to that destination (Istio's `PassthroughCluster`), which is also all that happens
//! when the traffic config is empty (standalone mode without Envoy sections).
//!
//! This future is what every connection's task holds, so it stays small: both protocol
//! branches are boxed (they hold hyper's connection state or copy buffers), and only the
//! decision is inline. A test measures it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::detect::{self, ClientHelloInfo, Protocol};
use crate::drain;
use crate::error::ProxyError;
use crate::http::{self, HttpConn, HttpConnParams, ManagerSettings, RouteRef, Routing, Target};
use crate::local::Local;
use crate::metrics::{MissReason, ProtocolLabels, UNKNOWN};
use crate::model::filter::HttpFilters;
use crate::model::listener::{
    HeaderHandling, Listener, NetworkFilter, RouteSource, TcpCluster, Tunneling,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTENER_FILTERS_TIMEOUT,
};
use crate::model::proxy_protocol::ProxyProtocolListener;
use crate::model::rbac::RbacConfig;
use crate::proxy_protocol;
use crate::stream::Rewind;
use crate::tcp;
use crate::tls::terminate::TlsTermination;
use crate::traffic::{chain, router, Traffic};
use crate::Inner;

/// The source workload of a connection, as metric label values.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) workload: Arc<str>,
    pub(crate) namespace: Arc<str>,
    /// The workload's SPIFFE ID.
    pub(crate) principal: Arc<str>,
}

impl Source {
    fn unknown() -> Self {
        Self {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
        }
    }
}

/// How a connection reached the proxy.
pub(crate) enum Origin {
    /// Redirected by the kernel to the capture listener: the original destination is in
    /// the map.
    Captured,
    /// Accepted on the socket of a `bind_to_port` listener (by name).
    Bound(Arc<str>),
}

/// Serves one accepted connection to the end. Never fails: errors are logged and counted.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    origin: Origin,
    drain: drain::Watch,
) {
    if let Err(e) = try_handle(&inner, stream, peer, origin, drain).await {
        debug!(%peer, error = %e, "connection failed");
    }
}

async fn try_handle(
    inner: &Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    origin: Origin,
    drain: drain::Watch,
) -> Result<(), ProxyError> {
    let metrics = &inner.metrics;
    let config = &inner.config;
    let local = stream
        .local_addr()
        .map_err(|source| ProxyError::Sniff { peer, source })?;
    // The connection keeps the traffic config it was accepted with for its listener and
    // filter chain (HTTP requests load the current one for their routes).
    let traffic = inner.traffic.load();
    let (dst, listener, captured) = match origin {
        Origin::Captured => {
            let Some(dst) = inner.lookup.original_dst(peer, local) else {
                metrics.orig_dst_missing.inc();
                return Err(ProxyError::OrigDstMissing { peer, local });
            };
            (dst, traffic.listener_for_original_dst(dst).cloned(), true)
        }
        Origin::Bound(name) => {
            let Some(l) = traffic.listener(&name).cloned() else {
                // Removed between accept and here: as if it had been closed a moment sooner.
                return Ok(());
            };
            (local, Some(l), false)
        }
    };
    let workload = config.workload_by_ip(peer.ip());
    let source = workload
        .map(|w| Source {
            workload: w.name.as_str().into(),
            namespace: w.namespace.as_str().into(),
            principal: config.principal(w).into(),
        })
        .unwrap_or_else(Source::unknown);
    // The identity RBAC sees: a workload of this node's (the node vouches for the pods it
    // captures); a client certificate replaces it once TLS is terminated.
    let identity = workload.map(|_| source.principal.clone());
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "setting TCP_NODELAY failed");
    }

    let start = Instant::now();
    // The listener's filters: a PROXY protocol header first, then (below) a ClientHello,
    // within the listener's `listener_filters_timeout` together. Boxed: its state (the
    // header's, the sniffer's) is not held by every connection.
    let accepted = Box::pin(accept(inner, stream, listener.as_deref(), peer, dst))
        .await
        .map_err(|source| ProxyError::Sniff { peer, source })?;
    // What a PROXY protocol header said: the client and the address it connected to
    // (Envoy's downstream remote address and restored local address) replace `peer` and
    // `dst` from here on (the physical peer is kept in `proxied`). The source workload
    // and its identity stay those of the physical peer.
    let Some(accepted) = accepted else {
        return Ok(());
    };
    let Accepted {
        proxied,
        peer,
        dst,
        protocol,
        stream,
    } = *accepted;
    let labels = ProtocolLabels { protocol };

    // A TLS ClientHello to a listener: read whole for its SNI and ALPN, which filter
    // chains match on (Envoy's `tls_inspector`). The answer lives only until the chain is
    // picked.
    let (plan, rbac, stream) = {
        let (hello, stream) = if listener.is_some()
            && protocol == Protocol::Opaque
            && stream.prefix().first() == Some(&0x16)
        {
            let timeout = listener
                .as_ref()
                .map_or(Some(DEFAULT_LISTENER_FILTERS_TIMEOUT), |l| {
                    l.listener_filters.timeout
                });
            let left = timeout.map(|t| (start + t).saturating_duration_since(Instant::now()));
            Box::pin(detect::client_hello(stream, left))
                .await
                .map_err(|source| ProxyError::Sniff { peer, source })?
        } else {
            (None, stream)
        };
        let (plan, rbac) = match &listener {
            None => (Plan::Passthrough, None),
            Some(l) => match plan(
                &traffic,
                l,
                dst,
                protocol,
                stream.prefix().first() == Some(&0x16),
                hello.as_ref(),
            ) {
                Ok((plan, rbac)) => (plan, (!rbac.is_empty()).then_some(rbac)),
                Err(e) => {
                    if let ProxyError::Unrouted { reason, .. } = &e {
                        metrics.config_miss(*reason);
                    }
                    tcp::reset_on_close(stream.inner());
                    return Err(e);
                }
            },
        };
        // The chain's RBAC filters: now, unless they wait for the TLS the chain terminates
        // (then the SNI and the client's certificate are known).
        let rbac = match rbac {
            Some(r) if plan.terminate().is_none() => {
                let sni = hello.as_ref().and_then(|h| h.server_name.as_deref());
                let id = identity.as_deref();
                let direct = proxy_protocol::direct(peer, proxied.as_deref());
                if !network_rbac(inner, &r, (peer, direct), dst, sni, id) {
                    metrics.connections_opened.get_or_create(&labels).inc();
                    metrics.connections_closed.get_or_create(&labels).inc();
                    return Ok(());
                }
                None
            }
            r => r,
        };
        (plan, rbac, stream)
    };
    metrics.connections_opened.get_or_create(&labels).inc();
    debug!(%peer, %dst, %protocol, source = %source.workload, listener = listener.as_ref().map(|l| l.name.as_str()), "connection accepted");

    // Boxed: it lives across the connection's awaits, and every open connection holds
    // this future.
    let mut client = Box::new(Client {
        peer,
        proxied,
        source,
        identity,
        sni: None,
        rbac,
    });
    let res = match plan {
        Plan::Passthrough if protocol != Protocol::Opaque => {
            Box::pin(serve_http(
                inner,
                stream,
                *client,
                dst,
                captured,
                Routing::Passthrough,
                protocol,
                ManagerSettings::default(),
                drain,
            ))
            .await
        }
        Plan::Http(plan) => {
            let HttpPlan {
                routes,
                upgrades,
                headers,
                filters,
                manager,
                terminate,
            } = *plan;
            let routing = Routing::Routes {
                routes,
                upgrades,
                headers,
                filters,
            };
            match terminate {
                // An HTTP connection manager serves HTTP/1 unless the client opened with
                // the HTTP/2 preface.
                None => {
                    let downstream = match protocol {
                        Protocol::Http2 => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    Box::pin(serve_http(
                        inner, stream, *client, dst, captured, routing, downstream, manager, drain,
                    ))
                    .await
                }
                Some(t) => {
                    Box::pin(serve_https(
                        inner, stream, t, *client, dst, captured, routing, manager, drain,
                    ))
                    .await
                }
            }
        }
        Plan::Passthrough | Plan::Tcp(..) => {
            // Opaque connections cannot be closed gracefully: they run until they end or
            // the drain deadline passes, so the watch is not needed.
            drop(drain);
            // Boxed, as the HTTP branches: the connection's future stays small.
            match plan.terminate() {
                None => {
                    Box::pin(serve_opaque(
                        inner, &traffic, stream, &client, dst, captured, plan,
                    ))
                    .await
                }
                Some(t) => {
                    Box::pin(async {
                        let stream = accept_tls(inner, stream, &t, peer).await?;
                        if !tls_client(inner, &mut client, stream.get_ref().1, dst) {
                            return Ok(());
                        }
                        serve_opaque(inner, &traffic, stream, &client, dst, captured, plan).await
                    })
                    .await
                }
            }
        }
    };
    metrics.connections_closed.get_or_create(&labels).inc();
    res
}

/// A connection passed through as bytes, or given to a TCP proxy: to its upstream (a
/// cluster's endpoint, or the original destination), through HBONE, an HTTP `CONNECT` or
/// the cluster's TLS as the config says, until either side ends.
#[allow(clippy::too_many_arguments)]
async fn serve_opaque<D: tcp::Downstream>(
    inner: &Arc<Inner>,
    traffic: &Arc<Traffic>,
    stream: D,
    client: &Client,
    dst: SocketAddr,
    captured: bool,
    plan: Plan,
) -> Result<(), ProxyError> {
    let (peer, source) = (client.peer, &client.source);
    let metrics = &inner.metrics;
    let config = &inner.config;
    let tcp_service = match &plan {
        Plan::Tcp(TcpCluster::Cluster(c), ..) => Some(c.clone()),
        _ => None,
    };
    // Passed through: Envoy's default, as for Istio's passthrough TCP proxy.
    let idle_timeout = match &plan {
        Plan::Tcp(_, idle, _, _) => *idle,
        _ => Some(DEFAULT_IDLE_TIMEOUT),
    };
    let tunneling = match &plan {
        Plan::Tcp(_, _, t, _) => t.clone(),
        _ => None,
    };
    let upstream = match plan {
        Plan::Tcp(cluster, ..) => {
            Box::pin(tcp_upstream(traffic, &cluster, captured.then_some(dst))).await
        }
        _ => Ok(Target {
            addr: dst,
            connect_timeout: config.connect_timeout,
            protocol: crate::upstream::UpstreamProtocol::Http1,
            keepalive: None,
            life: crate::upstream::ConnLife::default(),
            tls: false,
            origin: None,
            proxy_protocol: None,
        }),
    };
    match upstream {
        Ok(upstream) => 'forward: {
            let hbone = match crate::dial::route(
                config,
                traffic,
                inner.hbone.as_ref(),
                source,
                upstream.addr,
            ) {
                Ok(h) => h,
                Err(e) => {
                    // Counted as closed like every other failure below.
                    tcp::reset_on_close(stream.socket());
                    break 'forward Err(e);
                }
            };
            // Pod to pod on this node (mutual TLS on): the inbound policy, before any
            // byte reaches the pod, and the destination's report.
            let same_node = match crate::local::decide(config, source, upstream.addr) {
                Local::No => None,
                Local::Allowed(_, security) => Some(security),
                Local::Refused(reason) => {
                    metrics.local_refused(reason);
                    debug!(%peer, upstream = %upstream.addr, source = %source.principal, reason = reason.as_str(), "same-node connection refused by the inbound policy");
                    tcp::reset_on_close(stream.socket());
                    break 'forward Err(ProxyError::Denied {
                        addr: upstream.addr,
                        reason,
                    });
                }
            };
            // The cluster's PROXY protocol header, naming this connection.
            let proxy_header = upstream
                .proxy_protocol
                .as_ref()
                .map(|pp| proxy_protocol::upstream_header(pp, Some(client.downstream(dst))));
            let http_tunnel = match tunneling
                .as_ref()
                .map(|t| http_tunnel(t, dst, &upstream, &inner.pools))
                .transpose()
            {
                Ok(t) => t,
                Err(e) => {
                    tcp::reset_on_close(stream.socket());
                    break 'forward Err(e);
                }
            };
            let (golden, destination) = tcp_golden(
                inner,
                source,
                upstream.addr,
                tcp_service.as_deref(),
                hbone.is_some(),
                same_node,
            );
            let opened = Instant::now();
            let res = Box::pin(tcp::forward(
                stream,
                peer,
                tcp::TcpTarget {
                    addr: upstream.addr,
                    connect_timeout: upstream.connect_timeout,
                    idle_timeout,
                    hbone,
                    keepalive: upstream.keepalive,
                    http_tunnel,
                    tls: upstream.origin.as_ref().map(|t| t.origin.clone()),
                    proxy_header,
                },
                source,
                metrics,
                golden,
                destination,
            ))
            .await;
            if config.access_log {
                let (sent, received) = res
                    .as_ref()
                    .map_or((None, None), |(s, r)| (Some(*s), Some(*r)));
                let line = serde_json::json!({
                    "kind": "tcp",
                    "downstream": peer.to_string(),
                    "original_dst": dst.to_string(),
                    "upstream": upstream.addr.to_string(),
                    "cluster": tcp_service,
                    "source_workload": &*source.workload,
                    "source_namespace": &*source.namespace,
                    "bytes_sent": sent,
                    "bytes_received": received,
                    "duration_ms": opened.elapsed().as_secs_f64() * 1000.0,
                    "error": res.as_ref().err().map(ToString::to_string),
                });
                tracing::info!(target: "myelin::access", "{line}");
            }
            res.map(drop)
        }
        Err(e) => {
            if let ProxyError::Unrouted { reason, .. } = &e {
                metrics.config_miss(*reason);
            }
            tcp::reset_on_close(stream.socket());
            Err(e)
        }
    }
}

/// The `CONNECT` of a TCP proxy's `tunneling_config` for a connection to `dst` (its
/// original destination, or the listener's address), to `upstream` over its cluster's
/// protocol. A hostname that is no authority once filled in fails the connection.
fn http_tunnel(
    t: &Tunneling,
    dst: SocketAddr,
    upstream: &Target,
    pools: &Arc<crate::upstream::Pools>,
) -> Result<tcp::HttpTunnel, ProxyError> {
    let authority = t
        .authority(dst)
        .parse::<::http::uri::Authority>()
        .map_err(|e| ProxyError::UpstreamProtocol {
            addr: upstream.addr,
            source: format!("tunneling hostname {:?} for {dst}: {e}", t.hostname).into(),
        })?;
    let mut headers = ::http::HeaderMap::new();
    crate::traffic::router::mutate_headers(&mut headers, &t.headers_to_add, &[]);
    Ok(tcp::HttpTunnel {
        authority,
        headers,
        via: match upstream.protocol {
            crate::upstream::UpstreamProtocol::Http2(_) => {
                tcp::TunnelVia::Http2(pools.clone(), upstream.protocol)
            }
            crate::upstream::UpstreamProtocol::Http1 => tcp::TunnelVia::Http1,
        },
    })
}

/// Whether every filter chain of `l` is a TCP proxy chosen without looking at the bytes
/// (no `transport_protocol`, no `application_protocols`): the connection is opaque by
/// declaration.
fn declares_opaque(l: &Listener) -> bool {
    let chains = || {
        l.filter_chains
            .iter()
            .chain(l.default_filter_chain.as_ref())
    };
    chains().next().is_some()
        && chains().all(|c| {
            matches!(c.filter, NetworkFilter::TcpProxy(_))
                && c.filter_chain_match.transport_protocol.is_none()
                && c.filter_chain_match.application_protocols.is_empty()
                && c.filter_chain_match.server_names.is_empty()
        })
}

/// What serves a connection.
enum Plan {
    /// No listener: HTTP/1 or bytes to the original destination.
    Passthrough,
    /// An HTTP connection manager (boxed: the plan lives in every connection's future).
    Http(Box<HttpPlan>),
    /// A TCP proxy to a cluster, its idle timeout, its `tunneling_config`, and the TLS its
    /// filter chain terminates.
    Tcp(
        TcpCluster,
        Option<Duration>,
        Option<Tunneling>,
        Option<Terminate>,
    ),
}

impl Plan {
    /// The TLS the chosen filter chain terminates.
    fn terminate(&self) -> Option<Terminate> {
        match self {
            Plan::Passthrough => None,
            Plan::Http(h) => h.terminate.clone(),
            Plan::Tcp(.., t) => t.clone(),
        }
    }
}

/// A filter chain's downstream TLS.
type Terminate = Arc<TlsTermination>;

/// What serves the connection of an HTTP connection manager.
struct HttpPlan {
    routes: RouteRef,
    /// The upgrade types it allows.
    upgrades: Arc<[String]>,
    headers: Arc<HeaderHandling>,
    filters: Arc<HttpFilters>,
    manager: ManagerSettings,
    /// The TLS its filter chain terminates.
    terminate: Option<Terminate>,
}

/// Picks the filter chain of `listener` for this connection and says what serves it.
fn plan(
    traffic: &Traffic,
    listener: &Arc<Listener>,
    dst: SocketAddr,
    protocol: Protocol,
    tls: bool,
    hello: Option<&ClientHelloInfo>,
) -> Result<(Plan, Arc<[RbacConfig]>), ProxyError> {
    let offered: Vec<&str>;
    let alpn: &[&str] = match (protocol, hello) {
        // A TLS client's ALPN list, as Envoy's `tls_inspector` reports it.
        (_, Some(h)) => {
            offered = h.alpn.iter().map(String::as_str).collect();
            &offered
        }
        (Protocol::Http1, None) => &["http/1.1", "http/1.0"],
        (Protocol::Http2, None) => &["h2c"],
        (Protocol::Opaque, None) => &[],
    };
    let cx = chain::ChainContext {
        dst,
        server_name: hello.and_then(|h| h.server_name.as_deref()),
        transport_protocol: if tls { "tls" } else { "raw_buffer" },
        application_protocols: alpn,
    };
    let Some((index, chain)) = chain::select(listener, &cx) else {
        return Err(ProxyError::unrouted(
            MissReason::NoFilterChain,
            format!("listener {:?} has no filter chain for {dst}", listener.name),
        ));
    };
    let terminate = match traffic.chain_tls(&listener.name, index) {
        None => None,
        Some(Ok(tls)) => Some(tls.clone()),
        Some(Err(why)) => {
            return Err(ProxyError::unrouted(
                MissReason::DownstreamTlsUnavailable,
                why.to_owned(),
            ))
        }
    };
    let plan = match &chain.filter {
        NetworkFilter::TcpProxy(tp) => Plan::Tcp(
            tp.cluster.clone(),
            tp.idle_timeout,
            tp.tunneling.clone(),
            terminate,
        ),
        // An HTTP connection manager speaks HTTP whatever the sniffing said (Envoy does
        // not sniff either): bytes that are not HTTP/1 get hyper's error and a close.
        NetworkFilter::HttpConnectionManager(hcm) => Plan::Http(Box::new(HttpPlan {
            routes: match &hcm.route {
                RouteSource::Rds(name) => RouteRef::Rds(name.clone()),
                RouteSource::Inline(_) => RouteRef::Inline(
                    traffic
                        .inline_route_table(&listener.name, index)
                        .cloned()
                        .expect("every inline route configuration is indexed at build"),
                ),
            },
            upgrades: hcm.upgrade_types.clone().into(),
            headers: hcm.headers.clone(),
            filters: hcm.http_filters.clone(),
            manager: ManagerSettings::from(&**hcm),
            terminate,
        })),
    };
    Ok((plan, chain.rbac.clone()))
}

/// The golden-metric counters of an opaque connection to `upstream`; the service is the
/// TCP proxy's cluster (its host part for Istio-style names) or the destination address.
/// `same_node`: `upstream` is a workload of this node that accepts the source (mutual TLS
/// on), with the security policy to report; then the destination's counters come second,
/// with the same labels but the reporter.
fn tcp_golden(
    inner: &Inner,
    source: &Source,
    upstream: SocketAddr,
    cluster: Option<&str>,
    mtls: bool,
    same_node: Option<&'static str>,
) -> (
    crate::golden::TcpCounters,
    Option<crate::golden::TcpCounters>,
) {
    let unknown = || Arc::<str>::from(UNKNOWN);
    let config = &inner.config;
    let (workload, namespace, principal): (Arc<str>, Arc<str>, Arc<str>) =
        match config.workload_by_ip(upstream.ip()) {
            Some(w) => (
                w.name.as_str().into(),
                w.namespace.as_str().into(),
                match same_node {
                    Some(_) => config.principal(w).into(),
                    None => unknown(),
                },
            ),
            None => match config.remote_by_ip(upstream.ip()).filter(|_| mtls) {
                Some(r) => (
                    r.name.as_str().into(),
                    r.namespace.as_str().into(),
                    config.remote_principal(r).into(),
                ),
                // An endpoint EDS marks as meshed on another node.
                None => match crate::dial::tunnel_peer(&inner.traffic.load(), upstream)
                    .filter(|_| mtls)
                {
                    Some(Some(id)) => (unknown(), id.namespace().into(), id.to_string().into()),
                    _ => (unknown(), unknown(), unknown()),
                },
            },
        };
    let service: Arc<str> = match cluster {
        Some(c) => http::service_of_cluster(c).into(),
        None => upstream.ip().to_string().into(),
    };
    let mut record = crate::golden::TcpRecord {
        reporter: "source",
        source_workload: source.workload.clone(),
        source_namespace: source.namespace.clone(),
        source_principal: source.principal.clone(),
        destination_workload: workload,
        destination_namespace: namespace,
        destination_service: service,
        destination_principal: principal,
        connection_security_policy: match same_node {
            Some(security) => security,
            None if mtls => "mutual_tls",
            None => "none",
        },
    };
    let source_side = inner.golden.tcp(&record);
    let destination_side = same_node.map(|_| {
        record.reporter = "destination";
        inner.golden.tcp(&record)
    });
    (source_side, destination_side)
}

/// The endpoint a TCP proxy connection goes to.
async fn tcp_upstream(
    traffic: &Traffic,
    cluster: &TcpCluster,
    original_dst: Option<SocketAddr>,
) -> Result<Target, ProxyError> {
    let name = match cluster {
        TcpCluster::Cluster(name) => name.as_str(),
        TcpCluster::Weighted(ws) => {
            router::pick_weighted(ws, fastrand::u64(..)).ok_or_else(|| {
                ProxyError::unrouted(MissReason::NoCluster, "weighted clusters add up to 0")
            })?
        }
    };
    Ok(http::pick_endpoint(
        http::find_cluster(traffic, name)?,
        original_dst,
        Protocol::Opaque,
        &[],
        None,
        None,
    )
    .await?
    .target)
}

/// Who an HTTP connection comes from.
struct Client {
    /// The client's address: as a PROXY protocol header said, else the connection's peer.
    peer: SocketAddr,
    /// What a PROXY protocol header said besides (the physical peer, TLVs).
    proxied: Option<Arc<proxy_protocol::Proxied>>,
    source: Source,
    /// For RBAC: the client certificate's identity, else the workload's SPIFFE ID.
    identity: Option<Arc<str>>,
    /// The SNI of terminated TLS.
    sni: Option<Arc<str>>,
    /// RBAC network filters that decide once the chain's TLS is terminated.
    rbac: Option<Arc<[RbacConfig]>>,
}

#[allow(clippy::too_many_arguments)]
async fn serve_http<I>(
    inner: &Arc<Inner>,
    stream: I,
    client: Client,
    dst: SocketAddr,
    captured: bool,
    routing: Routing,
    downstream: Protocol,
    manager: ManagerSettings,
    drain: drain::Watch,
) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Client {
        peer,
        proxied,
        source,
        identity,
        sni,
        rbac: _,
    } = client;
    let conn = Arc::new(HttpConn::new(HttpConnParams {
        peer,
        proxied,
        identity,
        sni,
        dst,
        captured,
        reporter: http::Reporter::Source,
        routing,
        traffic: inner.traffic.clone(),
        source,
        downstream,
        connect_timeout: inner.config.connect_timeout,
        metrics: inner.metrics.clone(),
        golden: inner.golden.clone(),
        config: inner.config.clone(),
        pools: inner.pools.clone(),
        manager,
        hbone: inner.hbone.clone(),
    }));
    http::serve(stream, conn, drain).await;
    Ok(())
}

impl Client {
    /// The physical peer (RBAC `direct_remote_ip`), whatever a PROXY protocol header said.
    fn direct(&self) -> SocketAddr {
        proxy_protocol::direct(self.peer, self.proxied.as_deref())
    }

    /// The downstream connection as upstream PROXY protocol headers name it.
    fn downstream(&self, dst: SocketAddr) -> proxy_protocol::Downstream<'_> {
        proxy_protocol::Downstream::of(self.peer, dst, self.proxied.as_deref())
    }
}

/// A connection after its PROXY protocol header (when its listener reads one) and
/// protocol detection.
struct Accepted {
    /// What the header said besides the addresses.
    proxied: Option<Arc<proxy_protocol::Proxied>>,
    /// The client: as the header said, else the connection's peer.
    peer: SocketAddr,
    /// Where it connected to: as the header said, else the original destination or the
    /// listener's address.
    dst: SocketAddr,
    protocol: Protocol,
    /// The stream with every byte read so far after the header put back.
    stream: Rewind<TcpStream>,
}

/// Reads the PROXY protocol header `listener` expects, then detects the protocol (unless
/// the listener declares it); `None`: the header filter closed the connection.
async fn accept(
    inner: &Inner,
    mut stream: TcpStream,
    listener: Option<&Listener>,
    peer: SocketAddr,
    dst: SocketAddr,
) -> std::io::Result<Option<Box<Accepted>>> {
    let metrics = &inner.metrics;
    let (proxied, peer, dst, read) =
        match listener.and_then(|l| l.listener_filters.proxy_protocol.as_ref().map(|pp| (l, pp))) {
            None => (None, peer, dst, bytes::Bytes::new()),
            Some((l, pp)) => {
                let f = &l.listener_filters;
                let timeouts = (f.timeout, f.continue_on_timeout);
                match proxy_header(metrics, &mut stream, pp, timeouts, (peer, dst)).await {
                    Some(found) => found,
                    None => return Ok(None),
                }
            }
        };
    let (protocol, stream) = if listener.is_some_and(declares_opaque) {
        // The listener declares the protocol: only TCP proxies, no chain looks at what
        // the client sends. No sniffing, so a server-first protocol waits for nothing.
        (Protocol::Opaque, Rewind::new(read, stream))
    } else {
        let start = Instant::now();
        let detected = detect::detect_from(read, stream, inner.config.sniff_timeout).await?;
        metrics
            .protocol_detect_duration
            .get_or_create(&ProtocolLabels {
                protocol: detected.0,
            })
            .observe(start.elapsed().as_secs_f64());
        detected
    };
    Ok(Some(Box::new(Accepted {
        proxied,
        peer,
        dst,
        protocol,
        stream,
    })))
}

/// The PROXY protocol listener filter on a connection from `peer` to `dst`: what it is
/// left with (what the header said besides the addresses, the client, the address it
/// connected to, the bytes read after the header), or `None` when it is to be closed.
/// Counted in `myelin_proxy_proxy_protocol_total`.
async fn proxy_header(
    metrics: &crate::metrics::ProxyMetrics,
    stream: &mut TcpStream,
    pp: &ProxyProtocolListener,
    (timeout, continue_on_timeout): (Option<Duration>, bool),
    (peer, dst): (SocketAddr, SocketAddr),
) -> Option<(
    Option<Arc<proxy_protocol::Proxied>>,
    SocketAddr,
    SocketAddr,
    bytes::Bytes,
)> {
    use proxy_protocol::{Read, ReadError};
    let count = |version, outcome| metrics.proxy_protocol(&pp.stat_prefix, version, outcome);
    match proxy_protocol::read(stream, pp, timeout).await {
        Ok(Read::Header(h, rest)) => {
            count(Some(h.version), "found");
            let (remote, local) = h.addresses.unwrap_or((peer, dst));
            let proxied = proxy_protocol::Proxied {
                direct: peer,
                tlvs: h.tlvs,
            };
            Some((Some(Arc::new(proxied)), remote, local, rest))
        }
        Ok(Read::NotFound(read)) => {
            count(None, "not_found_allowed");
            Some((None, peer, dst, read))
        }
        Err(e) => {
            match &e {
                ReadError::Invalid(v, _) => count(*v, "invalid"),
                ReadError::Disallowed(v) => count(Some(*v), "disallowed"),
                ReadError::TimedOut(..) => count(None, "timeout"),
                ReadError::Closed | ReadError::Io(_) => count(None, "closed"),
            }
            match e {
                ReadError::TimedOut(_, read) if continue_on_timeout => {
                    Some((None, peer, dst, read))
                }
                e => {
                    debug!(%peer, error = %e, "connection closed by the PROXY protocol filter");
                    None
                }
            }
        }
    }
}

/// What terminated TLS says of the client: its SNI, and its certificate's identity in
/// place of any other; then the chain's RBAC filters decide (`false`: the caller closes
/// the connection).
fn tls_client(
    inner: &Inner,
    client: &mut Client,
    session: &rustls::ServerConnection,
    dst: SocketAddr,
) -> bool {
    client.sni = session.server_name().map(Arc::from);
    if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
        client.identity = crate::tls::terminate::peer_identity(cert).map(Arc::from);
    }
    match client.rbac.take() {
        Some(rbac) => network_rbac(
            inner,
            &rbac,
            (client.peer, client.direct()),
            dst,
            client.sni.as_deref(),
            client.identity.as_deref(),
        ),
        None => true,
    }
}

/// A connection's RBAC network filters in order: `false` when one denies it (the caller
/// closes it).
fn network_rbac(
    inner: &Inner,
    rbac: &[RbacConfig],
    (peer, direct): (SocketAddr, SocketAddr),
    dst: SocketAddr,
    sni: Option<&str>,
    principal: Option<&str>,
) -> bool {
    let subject = crate::rbac::Subject {
        head: None,
        peer,
        direct: direct.ip(),
        remote_ip: peer.ip(),
        local: dst,
        sni,
        principal,
    };
    rbac.iter()
        .all(|config| crate::rbac::check(config, &subject, "network", &inner.metrics).allowed)
}

/// The TLS handshake of a filter chain that terminates TLS, within its timeout; a failure
/// is counted and closes the connection.
async fn accept_tls(
    inner: &Inner,
    stream: Rewind<TcpStream>,
    t: &Terminate,
    peer: SocketAddr,
) -> Result<tokio_rustls::server::TlsStream<Rewind<TcpStream>>, ProxyError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(t.config().clone());
    let timeout = t.handshake_timeout();
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(source)) => {
            inner.metrics.downstream_tls_failed("failed");
            Err(ProxyError::DownstreamTls { peer, source })
        }
        Err(_) => {
            inner.metrics.downstream_tls_failed("timeout");
            Err(ProxyError::DownstreamTls {
                peer,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no handshake within {timeout:?}"),
                ),
            })
        }
    }
}

/// An HTTP connection manager behind TLS its filter chain terminates: HTTP/2 when ALPN
/// says `h2`, HTTP/1.1 when it says `http/1.1`, else as the decrypted bytes begin (the
/// HTTP/2 preface or HTTP/1), as Envoy's `AUTO` codec.
#[allow(clippy::too_many_arguments)]
async fn serve_https(
    inner: &Arc<Inner>,
    stream: Rewind<TcpStream>,
    t: Terminate,
    mut client: Client,
    dst: SocketAddr,
    captured: bool,
    routing: Routing,
    manager: ManagerSettings,
    drain: drain::Watch,
) -> Result<(), ProxyError> {
    let peer = client.peer;
    let tls = accept_tls(inner, stream, &t, peer).await?;
    drop(t);
    if !tls_client(inner, &mut client, tls.get_ref().1, dst) {
        return Ok(());
    }
    let (downstream, tls) = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => (Protocol::Http2, Rewind::new(bytes::Bytes::new(), tls)),
        Some(_) => (Protocol::Http1, Rewind::new(bytes::Bytes::new(), tls)),
        None => {
            let (detected, tls) = detect::detect(tls, inner.config.sniff_timeout)
                .await
                .map_err(|source| ProxyError::Sniff { peer, source })?;
            let p = match detected {
                Protocol::Http2 => Protocol::Http2,
                _ => Protocol::Http1,
            };
            (p, tls)
        }
    };
    serve_http(
        inner, tls, client, dst, captured, routing, downstream, manager, drain,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProxyMetrics;
    use crate::model::ProxyConfig;
    use crate::OrigDstLookup;

    struct NoDst;
    impl OrigDstLookup for NoDst {
        fn original_dst(&self, _: SocketAddr, _: SocketAddr) -> Option<SocketAddr> {
            None
        }
    }

    /// Every open connection holds one of these futures: keep an eye on its size.
    #[tokio::test]
    async fn connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let inner = Arc::new(Inner {
            config: Arc::new(ProxyConfig::default()),
            lookup: Arc::new(NoDst),
            metrics: Arc::new(ProxyMetrics::unregistered()),
            traffic: crate::traffic::TrafficHandle::new(),
            pools: crate::upstream::Pools::new(Default::default()),
            golden: Arc::new(crate::golden::GoldenMetrics::unregistered()),
            hbone: None,
        });
        let (_signal, watch) = drain::channel();
        let fut = handle(inner, stream, peer, Origin::Captured, watch);
        let size = std::mem::size_of_val(&fut);
        // 704 bytes in a debug build when written, 864 with the timeouts, 1024 before the
        // opaque branch was boxed too (704 again); sniffing and the protocol branches are
        // boxed. RBAC's client (identity, SNI, the filters left for after TLS) is boxed
        // too: held here, it made 920. 760 before the PROXY protocol, 824 with it: the
        // client and destination a header may name are held beside the connection's own
        // peer and destination (the reading and sniffing are boxed, the TLVs in an `Arc`).
        assert!(size <= 832, "connection future is {size} bytes");
        fut.await;
        drop(client);
    }
}
