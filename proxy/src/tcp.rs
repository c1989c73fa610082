//! Opaque TCP forwarding, and the upstream connect shared with the HTTP path.
//!
//! Half-close is preserved: when one side sends FIN, the proxy shuts down its write side
//! towards the other and keeps copying the opposite direction until it ends too
//! (`tokio::io::copy_bidirectional` does exactly this), so a client's `shutdown(SHUT_WR)`
//! reaches the server and the server's reply still comes back. A failed connect or a
//! broken copy resets the client (`SO_LINGER` 0, then close) rather than closing it
//! cleanly, so the app sees the failure the way it would without the mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::detect::Protocol;
use crate::error::{ProxyBody, ProxyError};
use crate::golden::TcpCounters;
use crate::metrics::{Direction, ProxyMetrics, TcpBytesLabels};
use crate::model::cluster::TcpKeepalive;
use crate::outbound::Source;
use crate::stream::{Counted, Rewind};
use crate::timeout::IdleStream;
use crate::tls::origin::{Alpn, TlsOrigin};
use crate::upstream::{Endpoint, Pools, UpstreamProtocol};

/// A cluster's TCP keepalive (`upstream_connection_options.tcp_keepalive`) in 12 bytes (it
/// rides in every request's target); 0: the kernel's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Keepalive {
    pub(crate) probes: u32,
    /// Seconds idle before the first probe.
    pub(crate) time: u32,
    /// Seconds between probes.
    pub(crate) interval: u32,
}

impl From<&TcpKeepalive> for Keepalive {
    fn from(k: &TcpKeepalive) -> Self {
        let secs =
            |d: Option<Duration>| d.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        Self {
            probes: k.probes.unwrap_or(0),
            time: secs(k.time),
            interval: secs(k.interval),
        }
    }
}

impl Keepalive {
    /// Turns `SO_KEEPALIVE` on with these settings.
    fn apply(self, stream: &TcpStream) -> std::io::Result<()> {
        let mut k = socket2::TcpKeepalive::new();
        if self.time > 0 {
            k = k.with_time(Duration::from_secs(self.time.into()));
        }
        if self.interval > 0 {
            k = k.with_interval(Duration::from_secs(self.interval.into()));
        }
        if self.probes > 0 {
            k = k.with_retries(self.probes);
        }
        let sock = socket2::SockRef::from(stream);
        sock.set_keepalive(true)?;
        sock.set_tcp_keepalive(&k)
    }
}

/// Connects to `dst` within `timeout`, with `TCP_NODELAY` set (the proxy forwards what
/// it gets as soon as it gets it; batching is the app's business) and the cluster's
/// keepalive, if it has one.
pub(crate) async fn connect(
    dst: SocketAddr,
    timeout: Duration,
    keepalive: Option<Keepalive>,
) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ProxyError::connect(dst, e)),
        Err(_elapsed) => return Err(ProxyError::connect_timeout(dst, timeout)),
    };
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%dst, error = %e, "setting TCP_NODELAY failed");
    }
    if let Some(k) = keepalive {
        if let Err(e) = k.apply(&stream) {
            debug!(%dst, error = %e, "setting TCP keepalive failed");
        }
    }
    Ok(stream)
}

/// Bumps the connections-closed counter when dropped.
struct CloseOnDrop(prometheus_client::metrics::counter::Counter);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.inc();
    }
}

/// Makes the close of `stream` send RST instead of FIN.
pub(crate) fn reset_on_close(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        debug!(error = %e, "setting SO_LINGER 0 failed");
    }
}

/// Where an opaque connection goes.
#[derive(Debug, Clone)]
pub(crate) struct TcpTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) connect_timeout: Duration,
    /// Closed after this long with no bytes either way (`None`: never).
    pub(crate) idle_timeout: Option<Duration>,
    /// Through an HBONE tunnel (a meshed workload on another node).
    pub(crate) hbone: Option<Arc<crate::dial::HboneRoute>>,
    /// The cluster's TCP keepalive (direct connections; a tunnel's is the HBONE pool's).
    pub(crate) keepalive: Option<Keepalive>,
    /// The bytes go inside an HTTP `CONNECT` (`tunneling_config`).
    pub(crate) http_tunnel: Option<HttpTunnel>,
    /// The cluster's upstream TLS (an endpoint outside the mesh): the bytes go inside it.
    pub(crate) tls: Option<Arc<TlsOrigin>>,
    /// The PROXY protocol header the upstream connection opens with (the cluster's
    /// transport socket), before TLS or a `CONNECT`.
    pub(crate) proxy_header: Option<crate::proxy_protocol::Header>,
}

/// A TCP proxy's `tunneling_config` for one connection: the `CONNECT` to send to the
/// endpoint, over HTTP/2 or HTTP/1.1 as its cluster speaks.
#[derive(Clone)]
pub(crate) struct HttpTunnel {
    /// The `CONNECT`'s target (`hostname` with the connection's values filled in).
    pub(crate) authority: http::uri::Authority,
    /// `headers_to_add`.
    pub(crate) headers: HeaderMap,
    /// How the `CONNECT` reaches the endpoint.
    pub(crate) via: TunnelVia,
}

impl std::fmt::Debug for HttpTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTunnel")
            .field("authority", &self.authority)
            .field("http2", &matches!(self.via, TunnelVia::Http2(..)))
            .finish_non_exhaustive()
    }
}

/// The protocol of a tunnel's `CONNECT`.
#[derive(Clone)]
pub(crate) enum TunnelVia {
    /// A stream of a pooled HTTP/2 connection to the endpoint, shared with the cluster's
    /// other tunnels and requests (as Envoy multiplexes them), within its settings'
    /// stream cap.
    Http2(Arc<Pools>, UpstreamProtocol),
    /// A connection of its own: an HTTP/1.1 `CONNECT` takes its connection over.
    Http1,
}

/// An open [`HttpTunnel`]: the upgraded stream, and for HTTP/2 the answer's body, which
/// holds the stream's place in its pooled connection while the tunnel lives.
struct HttpTunnelIo {
    io: TokioIo<hyper::upgrade::Upgraded>,
    _held: Option<ProxyBody>,
}

impl tokio::io::AsyncRead for HttpTunnelIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for HttpTunnelIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The `CONNECT` request of `tunnel`.
fn connect_request<B: Default>(tunnel: &HttpTunnel) -> Request<B> {
    let mut req = Request::new(B::default());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = Uri::from(tunnel.authority.clone());
    *req.headers_mut() = tunnel.headers.clone();
    req
}

/// The tunnel once its `CONNECT` has been answered: a 2xx upgrades to the stream that
/// carries the bytes; any other answer is an error (the client is reset, as for a failed
/// connect).
async fn tunnel_from<B>(
    mut resp: http::Response<B>,
    dst: SocketAddr,
    tunnel: &HttpTunnel,
    held: impl FnOnce(B) -> Option<ProxyBody>,
) -> Result<crate::dial::BoxIo, ProxyError> {
    if !resp.status().is_success() {
        return Err(ProxyError::UpstreamProtocol {
            addr: dst,
            source: format!(
                "the upstream answered the CONNECT for {} with {}",
                tunnel.authority,
                resp.status()
            )
            .into(),
        });
    }
    let upgrade = hyper::upgrade::on(&mut resp);
    let held = held(resp.into_body());
    let upgraded = upgrade.await.map_err(|e| ProxyError::UpstreamProtocol {
        addr: dst,
        source: e.into(),
    })?;
    Ok(Box::new(HttpTunnelIo {
        io: TokioIo::new(upgraded),
        _held: held,
    }))
}

/// Opens `tunnel` to `ep` over HTTP/2: a `CONNECT` on a stream of the endpoint's pooled
/// connections (one is opened when none has room), answered within the connect timeout.
async fn open_h2_tunnel(
    pools: &Arc<Pools>,
    ep: Endpoint,
    tunnel: &HttpTunnel,
    peer: SocketAddr,
) -> Result<crate::dial::BoxIo, ProxyError> {
    let (dst, timeout) = (ep.addr, ep.connect_timeout);
    let resp = tokio::time::timeout(
        timeout,
        pools.send_h2(ep, None, connect_request(tunnel), peer),
    )
    .await
    .map_err(|_| ProxyError::connect_timeout(dst, timeout))??
    .response;
    tunnel_from(resp, dst, tunnel, Some).await
}

/// Sends `tunnel`'s `CONNECT` over HTTP/1.1 on `io` (connected to `dst`, the tunnel's own
/// connection) and waits, within `timeout`, for the answer.
async fn open_h1_tunnel(
    io: crate::dial::BoxIo,
    dst: SocketAddr,
    tunnel: &HttpTunnel,
    timeout: Duration,
) -> Result<crate::dial::BoxIo, ProxyError> {
    let http = |e: hyper::Error| ProxyError::UpstreamProtocol {
        addr: dst,
        source: e.into(),
    };
    let mut req = connect_request::<Empty<Bytes>>(tunnel);
    if let Ok(host) = HeaderValue::from_str(tunnel.authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%dst, error = %e, "tunnel connection ended with an error");
            }
        });
        sender.send_request(req).await.map_err(http)
    };
    let resp = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProxyError::connect_timeout(dst, timeout))??;
    tunnel_from(resp, dst, tunnel, |_| None).await
}

/// The upstream side: a TCP connection (reset on failure) or an HBONE tunnel.
enum Upstream {
    Tcp(TcpStream),
    Tunnel(crate::dial::BoxIo),
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Upstream::Tunnel(t) => std::pin::Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Upstream::Tunnel(t) => std::pin::Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Upstream::Tunnel(t) => std::pin::Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Upstream::Tunnel(t) => std::pin::Pin::new(t).poll_shutdown(cx),
        }
    }
}

/// A downstream connection: its bytes, and the TCP socket under them (to reset).
pub(crate) trait Downstream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The client's socket.
    fn socket(&self) -> &TcpStream;
}

impl Downstream for Rewind<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.inner()
    }
}

/// A connection whose TLS the proxy terminated (a filter chain's `DownstreamTlsContext`).
impl Downstream for tokio_rustls::server::TlsStream<Rewind<TcpStream>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.inner()
    }
}

/// Forwards an opaque connection to `target` until both directions have ended (or it
/// has been idle for the idle timeout): the bytes the client sent and received.
pub(crate) async fn forward<D: Downstream>(
    downstream: D,
    peer: SocketAddr,
    target: TcpTarget,
    source: &Source,
    metrics: &Arc<ProxyMetrics>,
    golden: TcpCounters,
    destination: Option<TcpCounters>,
) -> Result<(u64, u64), ProxyError> {
    let TcpTarget {
        addr: dst,
        connect_timeout,
        idle_timeout,
        hbone,
        keepalive,
        http_tunnel,
        tls,
        proxy_header,
    } = target;
    // A TCP proxy names no protocol: ALPN as the TLS context says; a `CONNECT` tunnel's
    // is its cluster's codec's.
    let tls_for = |alpn| tls.as_deref().map(|t| (t, alpn, None));
    golden.opened.inc();
    // Closed whatever happens below, once.
    let _closed = CloseOnDrop(golden.closed.clone());
    // Pod to pod on this node: the destination's report of the same connection.
    let _destination_closed = destination.as_ref().map(|d| {
        d.opened.inc();
        CloseOnDrop(d.closed.clone())
    });
    let proxy = proxy_header.as_ref();
    let connected = match (&hbone, &http_tunnel) {
        (None, None) if tls.is_none() => {
            crate::dial::connect(dst, connect_timeout, keepalive, proxy)
                .await
                .map(Upstream::Tcp)
        }
        (hbone, None) => crate::dial::dial(
            dst,
            connect_timeout,
            hbone.as_deref(),
            keepalive,
            tls_for(Alpn::AsConfigured),
            proxy,
        )
        .await
        .map(Upstream::Tunnel),
        (hbone, Some(t)) => match &t.via {
            TunnelVia::Http2(pools, protocol) => {
                let ep = Endpoint {
                    addr: dst,
                    protocol: *protocol,
                    connect_timeout,
                    hbone: hbone.clone(),
                    keepalive,
                    // Tunnels are not pooled per request: the cluster's connection life
                    // does not apply to them.
                    life: Default::default(),
                    tls: tls.clone().map(crate::upstream::TlsTarget::new),
                    proxy: proxy_header.clone(),
                };
                open_h2_tunnel(pools, ep, t, peer)
                    .await
                    .map(Upstream::Tunnel)
            }
            TunnelVia::Http1 => {
                let tls = tls_for(Alpn::Http1);
                let hbone = hbone.as_deref();
                match crate::dial::dial(dst, connect_timeout, hbone, keepalive, tls, proxy).await {
                    Ok(io) => open_h1_tunnel(io, dst, t, connect_timeout)
                        .await
                        .map(Upstream::Tunnel),
                    Err(e) => Err(e),
                }
            }
        },
    };
    let mut upstream = match connected {
        Ok(s) => s,
        Err(e) => {
            if let Some(reason) = e.connect_reason() {
                metrics.connect_error(Protocol::Opaque, reason);
            }
            reset_on_close(downstream.socket());
            return Err(e);
        }
    };
    let bytes = |direction| {
        metrics
            .tcp_bytes
            .get_or_create(&TcpBytesLabels {
                direction,
                source_workload: source.workload.clone(),
                source_namespace: source.namespace.clone(),
            })
            .clone()
    };
    // Reading from the client is what it sent; writing to it is what it received.
    let mut counted = Counted::new(downstream, golden.sent, golden.received);
    if let Some(d) = destination {
        // Both ends see the same bytes: what the client sent is what the pod received.
        counted = counted.also(d.sent, d.received);
    }
    let mut downstream = IdleStream::new(Counted::new(
        counted,
        bytes(Direction::Sent),
        bytes(Direction::Received),
    ));
    let idle = downstream.clock();
    let copied = async {
        tokio::select! {
            done = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => Some(done),
            () = async {
                match idle_timeout {
                    Some(t) => idle.idle_for(t).await,
                    None => std::future::pending().await,
                }
            } => None,
        }
    };
    let Some(copied) = copied.await else {
        // Envoy closes both sides (FIN, not a reset) when the idle timeout passes.
        debug!(%peer, %dst, ?idle_timeout, "opaque connection idle: closing");
        return Ok(downstream.bytes());
    };
    match copied {
        Ok((sent, received)) => {
            debug!(%peer, %dst, sent, received, "opaque connection closed");
            Ok((sent, received))
        }
        Err(source) => {
            // One side broke (typically a reset): pass the reset on to both.
            reset_on_close(downstream.get_ref().get_ref().get_ref().socket());
            if let Upstream::Tcp(s) = &upstream {
                reset_on_close(s);
            }
            Err(ProxyError::Forward {
                peer,
                addr: dst,
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ConnectErrorReason;

    #[tokio::test(start_paused = true)]
    async fn connect_times_out_when_syn_is_dropped() {
        // A listener that never accepts, with a backlog of 0: once its accept queue is
        // full, Linux drops further SYNs, so a connect hangs like one to a dead host.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = sock.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        let start = tokio::time::Instant::now();
        let err = loop {
            match connect(addr, Duration::from_secs(5), None).await {
                Ok(s) => fillers.push(s),
                Err(e) => break e,
            }
            assert!(fillers.len() < 16, "the accept queue never filled up");
        };
        assert_eq!(err.connect_reason(), Some(ConnectErrorReason::Timeout));
        assert_eq!(err.response_flags(), "UF");
        // Paused time: the timeout fired at exactly 5 s of virtual time, in no real time.
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    /// A cluster's `tcp_keepalive` is on the connected socket, read back from the kernel;
    /// unset fields keep the kernel's values, and without one keepalive stays off.
    #[tokio::test]
    async fn a_cluster_s_keepalive_is_set_on_its_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let model = TcpKeepalive {
            probes: Some(4),
            time: Some(Duration::from_secs(30)),
            interval: None,
        };
        let s = connect(addr, Duration::from_secs(5), Some((&model).into()))
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        let plain = connect(addr, Duration::from_secs(5), None).await.unwrap();
        let plain = socket2::SockRef::from(&plain);
        assert!(!plain.keepalive().unwrap());
        // The interval left unset is the kernel's default (net.ipv4.tcp_keepalive_intvl).
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            plain.tcp_keepalive_interval().unwrap()
        );
    }
}
