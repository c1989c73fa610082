//! Where an upstream connection goes: straight over TCP, or, when the destination is a
//! meshed workload on another node (an endpoint with HBONE metadata from EDS, or a remote
//! workload of the standalone config), through an HBONE tunnel to that node's proxy
//! (mutual TLS as the source workload). Pod to pod on one node never takes the tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::ProxyError;
use crate::hbone;
use crate::model::ProxyConfig;
use crate::outbound::Source;
use crate::proxy_protocol;
use crate::tcp;
use crate::tls::origin::{Alpn, TlsOrigin};
use crate::tls::SpiffeId;
use crate::traffic::mesh::HboneLookup;
use crate::traffic::Traffic;

/// A connected upstream byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed upstream stream (TCP or an HBONE tunnel).
pub(crate) type BoxIo = Box<dyn Io>;

/// How one source reaches one remote workload over HBONE.
pub(crate) struct HboneRoute {
    client: Arc<hbone::Client>,
    /// Source identity, node, first expected identity.
    pub(crate) key: hbone::PoolKey,
    /// The other identities the node may present (a cluster's SAN list).
    also: Vec<SpiffeId>,
    /// `baggage` naming the source workload.
    headers: HeaderMap,
    /// The source principal: upstream connections through a tunnel belong to it.
    pub(crate) source: Arc<str>,
}

impl std::fmt::Debug for HboneRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneRoute")
            .field("key", &self.key)
            .field("also", &self.also)
            .finish()
    }
}

/// How an upstream address is reached, before any source is considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Straight over TCP (not a meshed workload on another node).
    Direct,
    /// Through an HBONE tunnel to `node`, which must present one of `expected`.
    Tunnel {
        node: SocketAddr,
        expected: Vec<SpiffeId>,
    },
    /// A meshed workload on another node that cannot be reached safely: fail closed.
    Refuse(String),
}

/// Decides how `addr` is reached: an endpoint with HBONE metadata in the traffic config
/// (EDS), else a remote workload of the proxy config, else directly. `hbone`: whether
/// this proxy has an HBONE client (mTLS on); without one a meshed destination on another
/// node is refused when EDS says so, and reached directly when only the standalone
/// config knows it (as before: remote workloads are part of `myelin.mtls`).
pub(crate) fn reach(
    config: &ProxyConfig,
    traffic: &Traffic,
    hbone: bool,
    addr: SocketAddr,
) -> Reach {
    match traffic.hbone_endpoint(addr) {
        Some(HboneLookup::Tunnel(_)) | Some(HboneLookup::Invalid(_)) if !hbone => {
            return Reach::Refuse(format!(
                "{addr} is a meshed workload on another node (myelin.io/hbone), but this \
                 node has no myelin.mtls to tunnel to it"
            ))
        }
        Some(HboneLookup::Tunnel(t)) => {
            return Reach::Tunnel {
                node: t.node,
                expected: t.expected.clone(),
            }
        }
        Some(HboneLookup::Invalid(why)) => return Reach::Refuse(why.to_string()),
        None => {}
    }
    let Some(remote) = config.remote_by_ip(addr.ip()).filter(|_| hbone) else {
        return Reach::Direct;
    };
    match SpiffeId::new(
        &config.trust_domain,
        &remote.namespace,
        &remote.service_account,
    ) {
        Ok(id) => Reach::Tunnel {
            node: remote.node,
            expected: vec![id],
        },
        Err(e) => Reach::Refuse(e.to_string()),
    }
}

/// The HBONE route to `addr` for a connection from `source`: `None` when `addr` is not a
/// meshed workload on another node ([`reach`]). A remote destination with a source that
/// has no identity, or that cannot be verified, is an error, not plain TCP: the mesh
/// never silently drops mutual TLS.
pub(crate) fn route(
    config: &ProxyConfig,
    traffic: &Traffic,
    client: Option<&Arc<hbone::Client>>,
    source: &Source,
    addr: SocketAddr,
) -> Result<Option<Arc<HboneRoute>>, ProxyError> {
    let identity = |what: &str| ProxyError::Hbone {
        addr,
        source: hbone::TunnelError::Identity(what.to_owned()),
    };
    let (node, mut expected) = match reach(config, traffic, client.is_some(), addr) {
        Reach::Direct => return Ok(None),
        Reach::Refuse(why) => return Err(identity(&why)),
        Reach::Tunnel { node, expected } => (node, expected),
    };
    let Some(client) = client else {
        unreachable!("reach() tunnels only with a client")
    };
    let source_id: SpiffeId = source.principal.parse().map_err(|_| {
        identity(&format!(
            "the source of this connection has no workload identity ({})",
            source.principal
        ))
    })?;
    let first = expected.remove(0);
    let mut headers = HeaderMap::new();
    if let Some(b) = hbone::baggage(&source.namespace, &source.workload) {
        headers.insert("baggage", b);
    }
    Ok(Some(Arc::new(HboneRoute {
        client: client.clone(),
        key: hbone::PoolKey {
            source: source_id,
            node,
            expected: first,
        },
        also: expected,
        headers,
        source: source.principal.clone(),
    })))
}

/// Connects to `addr`: through `hbone` when given, else over TCP (with `keepalive`) and
/// then `tls` when given (the cluster's upstream TLS, offering `Alpn`, with the request's
/// SNI under `auto_sni`); each within
/// `timeout`, the TLS handshake included (Envoy's `transport_socket_connect_timeout` is
/// not separate).
pub(crate) async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    hbone: Option<&HboneRoute>,
    keepalive: Option<tcp::Keepalive>,
    tls: Option<(&TlsOrigin, Alpn, Option<&str>)>,
    proxy: Option<&proxy_protocol::Header>,
) -> Result<BoxIo, ProxyError> {
    let Some(r) = hbone else {
        return match tls {
            None => Ok(Box::new(connect(addr, timeout, keepalive, proxy).await?)),
            Some((tls, alpn, sni)) => Ok(Box::new(
                dial_tls(addr, timeout, keepalive, tls, alpn, sni, proxy).await?,
            )),
        };
    };
    let connect = async {
        let mut tunnel = r
            .client
            .connect_any(&r.key, &r.also, addr, r.headers.clone())
            .await
            .map_err(|source| ProxyError::Hbone { addr, source })?;
        // Inside the tunnel: the header is the endpoint's, whatever carries it.
        if let Some(h) = proxy {
            proxy_protocol::send(&mut tunnel, h, None)
                .await
                .map_err(|e| ProxyError::connect(addr, e))?;
        }
        Ok(tunnel)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(tunnel)) => Ok(Box::new(tunnel)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProxyError::connect_timeout(addr, timeout)),
    }
}

/// A TCP connection to `addr` (with `keepalive`) that opens with `proxy`'s PROXY protocol
/// header when given, both within `timeout`.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<tcp::Keepalive>,
    proxy: Option<&proxy_protocol::Header>,
) -> Result<tokio::net::TcpStream, ProxyError> {
    let started = tokio::time::Instant::now();
    let mut tcp = tcp::connect(addr, timeout, keepalive).await?;
    let Some(header) = proxy else {
        return Ok(tcp);
    };
    let own = tcp.local_addr().ok().zip(tcp.peer_addr().ok());
    let send = proxy_protocol::send(&mut tcp, header, own);
    match tokio::time::timeout_at(started + timeout, send).await {
        Ok(Ok(())) => Ok(tcp),
        Ok(Err(e)) => Err(ProxyError::connect(addr, e)),
        Err(_) => Err(ProxyError::connect_timeout(addr, timeout)),
    }
}

/// A TCP connection to `addr` and `tls` over it, within `timeout` (the handshake
/// included); `proxy`: a PROXY protocol header first (before the ClientHello).
pub(crate) async fn dial_tls(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<tcp::Keepalive>,
    tls: &TlsOrigin,
    alpn: Alpn,
    sni: Option<&str>,
    proxy: Option<&proxy_protocol::Header>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ProxyError> {
    let started = tokio::time::Instant::now();
    let tcp = connect(addr, timeout, keepalive, proxy).await?;
    let handshake = tls.connect(addr, tcp, alpn, sni);
    match tokio::time::timeout_at(started + timeout, handshake).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ProxyError::UpstreamTls { addr, source }),
        Err(_) => Err(ProxyError::connect_timeout(addr, timeout)),
    }
}

/// The peer of a tunnel to an endpoint that EDS marks as meshed on another node, for the
/// golden metrics: `Some(Some(id))` when one identity is expected, `Some(None)` when the
/// node may present one of several (a cluster's SAN list), `None` when `addr` is not such
/// an endpoint.
pub(crate) fn tunnel_peer(traffic: &Traffic, addr: SocketAddr) -> Option<Option<SpiffeId>> {
    match traffic.hbone_endpoint(addr)? {
        HboneLookup::Tunnel(t) => Some(match t.expected.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }),
        HboneLookup::Invalid(_) => None,
    }
}
