//! Where an upstream connection goes: straight over TCP, or, when the destination is a
//! meshed workload on another node, through an HBONE tunnel to that node's proxy (mutual
//! TLS as the source workload). Pod to pod on one node never takes the tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::ProxyError;
use crate::hbone;
use crate::model::ProxyConfig;
use crate::outbound::Source;
use crate::tcp;
use crate::tls::SpiffeId;

/// A connected upstream byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed upstream stream (TCP or an HBONE tunnel).
pub(crate) type BoxIo = Box<dyn Io>;

/// How one source reaches one remote workload over HBONE.
pub(crate) struct HboneRoute {
    client: Arc<hbone::Client>,
    /// Source identity, node, expected identity.
    pub(crate) key: hbone::PoolKey,
    /// `baggage` naming the source workload.
    headers: HeaderMap,
    /// The source principal: upstream connections through a tunnel belong to it.
    pub(crate) source: Arc<str>,
}

impl std::fmt::Debug for HboneRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneRoute")
            .field("key", &self.key)
            .finish()
    }
}

/// The HBONE route to `addr` for a connection from `source`: `None` when `addr` is not a
/// meshed workload on another node (or this proxy has no HBONE client). A remote
/// destination with a source that has no identity is an error, not plain TCP: the mesh
/// never silently drops mutual TLS.
pub(crate) fn route(
    config: &ProxyConfig,
    client: Option<&Arc<hbone::Client>>,
    source: &Source,
    addr: SocketAddr,
) -> Result<Option<Arc<HboneRoute>>, ProxyError> {
    let (Some(client), Some(remote)) = (client, config.remote_by_ip(addr.ip())) else {
        return Ok(None);
    };
    let identity = |what: &str| ProxyError::Hbone {
        addr,
        source: hbone::TunnelError::Identity(what.to_owned()),
    };
    let source_id: SpiffeId = source.principal.parse().map_err(|_| {
        identity(&format!(
            "the source of this connection has no workload identity ({})",
            source.principal
        ))
    })?;
    let expected = SpiffeId::new(
        &config.trust_domain,
        &remote.namespace,
        &remote.service_account,
    )
    .map_err(|e| identity(&e.to_string()))?;
    let mut headers = HeaderMap::new();
    if let Some(b) = hbone::baggage(&source.namespace, &source.workload) {
        headers.insert("baggage", b);
    }
    Ok(Some(Arc::new(HboneRoute {
        client: client.clone(),
        key: hbone::PoolKey {
            source: source_id,
            node: remote.node,
            expected,
        },
        headers,
        source: source.principal.clone(),
    })))
}

/// Connects to `addr`: through `hbone` when given, else over TCP; each within `timeout`.
pub(crate) async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    hbone: Option<&HboneRoute>,
) -> Result<BoxIo, ProxyError> {
    let Some(r) = hbone else {
        return Ok(Box::new(tcp::connect(addr, timeout).await?));
    };
    match tokio::time::timeout(timeout, r.client.connect(&r.key, addr, r.headers.clone())).await {
        Ok(Ok(tunnel)) => Ok(Box::new(tunnel)),
        Ok(Err(source)) => Err(ProxyError::Hbone { addr, source }),
        Err(_) => Err(ProxyError::connect_timeout(addr, timeout)),
    }
}
