//! Upstream HTTP connections, pooled per endpoint and shared by every downstream
//! connection of the proxy.
//!
//! - HTTP/1.1: idle connections per endpoint, of our own client (`h1client`). A connection
//!   goes back to the pool when the response body has been read to its end and the whole
//!   request went out (not when the headers arrive), so a pooled connection is always ready
//!   for the next request; at most [`PoolConfig::max_idle_per_endpoint`] wait, each at most
//!   [`PoolConfig::idle_timeout`] (a sweeper closes older ones). A request that may take its
//!   connection over (an upgrade, CONNECT) gets one of these connections through hyper's
//!   client, which keeps it: handed over when the upstream switches, else closed after the
//!   response.
//! - HTTP/2: one multiplexed connection per endpoint, shared by all requests to it (so the
//!   requests of one downstream connection are balanced per request, not per connection);
//!   replaced when it closes or refuses new streams. A cluster's `max_concurrent_streams`
//!   caps the streams on each: beyond it another connection opens if `max_connections`
//!   has room; else the request waits as a pending request (counted against
//!   `max_pending_requests`, 503 `UO` beyond it) until a stream ends or a connection
//!   closes, as in Envoy. Its windows and PING
//!   keepalive apply to the connections it opens, which are pooled apart from those of
//!   clusters with other settings ([`H2Settings`]).
//!
//! - Circuit breakers: a routed request brings its cluster's [`ConnLimits`]. A new
//!   connection needs a slot of `max_connections` (held until the connection closes);
//!   without one the request waits, as one of at most `max_pending_requests` (more: 503
//!   `UO`), until a connection of the cluster closes or goes back to the pool idle (the
//!   route timeout bounds the wait). The pools are shared by all clusters: a connection
//!   counts against the cluster that opened it, whoever reuses it.
//!
//! hyper_util's legacy `Client` would pool too, but it keys its pool by the request URI's
//! authority and sends that authority as HTTP/2 `:authority`; a proxy must send the
//! client's authority while connecting to an endpoint address, hence these small pools
//! (linkerd2-proxy and ztunnel keep their own for the same reason).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::{debug, Instrument};

use crate::clock::Coarse;
use crate::dial::{self, HboneRoute};
use crate::error::{ProxyBody, ProxyError};
use crate::h1client::{self, HeadError, OwnBody, OwnConn, RequestWriter};
use crate::h1codec;
use crate::lock;
use crate::model::cluster::{ConnectionLife, Http2Options};
use crate::tls::origin::{Alpn, TlsOrigin};
use crate::traffic::{ConnLimits, ConnSlot, FreedNotice, Pending};

/// How requests reach an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum UpstreamProtocol {
    /// HTTP/1.1, one request at a time per connection.
    Http1,
    /// HTTP/2 prior knowledge, multiplexed, with the cluster's settings.
    Http2(H2Settings),
}

/// A cluster's HTTP/2 settings (`http2_protocol_options`) for its connections; unset:
/// hyper's client defaults. Part of the pool key: clusters that differ in them do not
/// share connections to an address. 20 bytes: it rides in every request's target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct H2Settings {
    /// Streams this proxy opens on one connection; more requests open another connection
    /// (under the cluster's `max_connections`). `None`: as many as the endpoint allows.
    pub(crate) max_streams: Option<NonZeroU32>,
    pub(crate) stream_window: Option<NonZeroU32>,
    pub(crate) conn_window: Option<NonZeroU32>,
    /// PING every `.0` ms, closing the connection when an answer takes longer than `.1` ms.
    pub(crate) keepalive_ms: Option<(NonZeroU32, u32)>,
    /// Upgrades may be sent as extended CONNECT (the cluster's `allow_connect`).
    pub(crate) allow_connect: bool,
}

impl From<&Http2Options> for H2Settings {
    fn from(o: &Http2Options) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Self {
            max_streams: o.max_concurrent_streams.and_then(NonZeroU32::new),
            stream_window: o.initial_stream_window_size.and_then(NonZeroU32::new),
            conn_window: o.initial_connection_window_size.and_then(NonZeroU32::new),
            keepalive_ms: o
                .connection_keepalive
                .as_ref()
                .and_then(|k| Some((NonZeroU32::new(ms(k.interval?).max(1))?, ms(k.timeout)))),
            allow_connect: o.allow_connect,
        }
    }
}

/// How long a cluster's upstream connections live ([`ConnectionLife`]), for the pools: part
/// of the pool key (clusters that differ do not share connections). 12 bytes: it rides in
/// every request's target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct ConnLife {
    /// Idle time before a connection is closed, ms: 0 for the pool's default, `u32::MAX`
    /// for never.
    idle_ms: u32,
    /// Requests one connection takes; 0: unbounded.
    max_requests: u32,
    /// Age after which a connection takes no new request, ms; 0: unbounded.
    max_age_ms: u32,
}

impl From<&ConnectionLife> for ConnLife {
    fn from(l: &ConnectionLife) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX - 1).max(1);
        Self {
            idle_ms: match l.idle_timeout {
                None => 0,
                Some(d) if d.is_zero() => u32::MAX,
                Some(d) => ms(d),
            },
            max_requests: l.max_requests_per_connection.unwrap_or(0),
            max_age_ms: l.max_connection_duration.map_or(0, ms),
        }
    }
}

impl ConnLife {
    /// How long an idle connection is kept; `None`: for ever.
    fn idle_timeout(self, default: Duration) -> Option<Duration> {
        match self.idle_ms {
            0 => Some(default),
            u32::MAX => None,
            ms => Some(Duration::from_millis(ms.into())),
        }
    }

    /// Whether a connection opened at `opened` that took `served` requests may take
    /// another.
    fn takes_more(self, served: u32, opened: Coarse) -> bool {
        (self.max_requests == 0 || served < self.max_requests)
            && (self.max_age_ms == 0
                || opened.elapsed() < Duration::from_millis(self.max_age_ms.into()))
    }

    /// Whether a connection idle since `since` is still within its idle timeout.
    fn fresh(self, since: Coarse, default: Duration) -> bool {
        self.idle_timeout(default)
            .is_none_or(|t| since.elapsed() < t)
    }
}

/// Envoy's default idle timeout of upstream connections, which Myelin keeps for HTTP/2
/// (HTTP/1.1 connections: [`PoolConfig::idle_timeout`]).
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Pool limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolConfig {
    /// Idle HTTP/1 connections kept per endpoint.
    pub(crate) max_idle_per_endpoint: usize,
    /// How long an idle HTTP/1 connection is kept, unless its cluster says otherwise.
    pub(crate) idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            // As many as a cluster may have connections by default (Envoy's
            // `max_connections`, 1024): a lower cap makes a busy endpoint's connections
            // churn (closed when given back, reopened for the next request), which cost
            // the L7 benchmark a connect and a close per request beyond the cap.
            max_idle_per_endpoint: 1024,
            // Below the usual 60 s server keep-alive timeouts, so we close first.
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) connect_timeout: Duration,
    /// Through an HBONE tunnel (a meshed workload on another node), as its source.
    pub(crate) hbone: Option<Arc<HboneRoute>>,
    /// The cluster's TCP keepalive for a connection this request opens (a pooled one keeps
    /// the settings it was opened with).
    pub(crate) keepalive: Option<crate::tcp::Keepalive>,
    /// How long the cluster's connections live.
    pub(crate) life: ConnLife,
    /// The cluster's upstream TLS, for an endpoint outside the mesh.
    pub(crate) tls: Option<Box<TlsTarget>>,
    /// The PROXY protocol header a new connection opens with (the cluster's
    /// `upstream_proxy_protocol` transport socket, naming the downstream connection).
    pub(crate) proxy: Option<crate::proxy_protocol::Header>,
}

/// TLS of the proxy's own to an endpoint outside the mesh, for one request (boxed where it
/// is carried: most targets have none).
#[derive(Debug, Clone)]
pub(crate) struct TlsTarget {
    /// The cluster's upstream TLS.
    pub(crate) origin: Arc<TlsOrigin>,
    /// The request's SNI for a new connection (`auto_sni`; set when the request is sent).
    pub(crate) sni: Option<Arc<str>>,
    /// `auto_config` with the endpoint's ALPN not known yet: the HTTP/2 settings should it
    /// pick `h2` (`HttpConn::discover` opens the first connection and finds out).
    pub(crate) discover: Option<H2Settings>,
}

impl TlsTarget {
    /// For a connection that names no SNI of its own.
    pub(crate) fn new(origin: Arc<TlsOrigin>) -> Box<Self> {
        Box::new(TlsTarget {
            origin,
            sni: None,
            discover: None,
        })
    }
}

impl Endpoint {
    /// The pool an upstream connection belongs to: its address, for a tunnel the source
    /// identity it speaks as (never shared with another source), its cluster's limits
    /// on a connection's life, its TLS settings (plain and TLS connections to one
    /// address, or TLS with other certificates, are never mixed), and its PROXY protocol
    /// header (a connection that named one downstream client is never another's, as in
    /// Envoy, whose pools are keyed by the header's addresses).
    fn key(&self) -> ConnKey {
        (
            self.addr,
            self.hbone.as_ref().map(|h| h.source.clone()),
            self.life,
            self.tls.as_ref().map(|t| (t.origin.key(), t.sni.clone())),
            self.proxy.clone(),
        )
    }

    /// How [`dial::dial`] opens TLS for this endpoint's `protocol`.
    fn tls(&self, alpn: Alpn) -> Option<(&TlsOrigin, Alpn, Option<&str>)> {
        self.tls
            .as_deref()
            .map(|t| (&*t.origin, alpn, t.sni.as_deref()))
    }
}

/// Address, the source principal of a tunnelled connection, how long a connection lives,
/// the digest of its TLS settings with the SNI (`auto_sni`), and its PROXY protocol
/// header.
type ConnKey = (
    SocketAddr,
    Option<Arc<str>>,
    ConnLife,
    Option<(u64, Option<Arc<str>>)>,
    Option<crate::proxy_protocol::Header>,
);

/// The HTTP/2 connections of one endpoint: one, unless its cluster caps the streams per
/// connection. The async lock is held only while picking and connecting (never while a
/// request waits for a stream), so concurrent first requests share one connection instead
/// of racing to open several.
type H2Slot = Arc<H2Conns>;

#[derive(Default)]
struct H2Conns {
    conns: tokio::sync::Mutex<Vec<H2Conn>>,
    /// A counted stream ended: a request waiting for room on these connections looks again.
    ended: Arc<tokio::sync::Notify>,
}

struct H2Conn {
    sender: http2::SendRequest<ProxyBody>,
    /// Streams open on it (counted under a stream cap only).
    streams: Arc<StreamGauge>,
    /// When it was opened (`max_connection_duration`).
    opened: Coarse,
    /// Streams started on it (`max_requests_per_connection`).
    started: u32,
    /// When its last stream started (its idle timeout runs from there).
    last_start: Coarse,
}

impl H2Conn {
    fn new(sender: http2::SendRequest<ProxyBody>, conns: &H2Conns) -> Self {
        let now = Coarse::now();
        Self {
            sender,
            streams: Arc::new(StreamGauge {
                open: AtomicUsize::new(0),
                ended: conns.ended.clone(),
            }),
            opened: now,
            started: 0,
            last_start: now,
        }
    }

    /// Whether it may take a new stream: open, and within its cluster's limits. One that
    /// may not leaves the pool; hyper closes it once its streams end (no sender is left).
    fn usable(&self, life: ConnLife) -> bool {
        !self.sender.is_closed() && life.takes_more(self.started, self.opened)
    }
}

struct StreamGauge {
    open: AtomicUsize,
    /// The endpoint's [`H2Conns::ended`].
    ended: Arc<tokio::sync::Notify>,
}

/// One stream counted on its connection until its response body is dropped (or the
/// request fails).
struct StreamCount(Arc<StreamGauge>);

impl StreamCount {
    fn enter(gauge: &Arc<StreamGauge>) -> Self {
        gauge.open.fetch_add(1, Ordering::Relaxed);
        Self(gauge.clone())
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        // One stream's room for one waiter (a permit kept when none waits only makes the
        // next waiter look once more).
        self.0.ended.notify_one();
    }
}

/// A response body that holds its stream's place in the connection's count.
struct Counted<B> {
    body: B,
    _count: StreamCount,
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Default)]
struct PoolState {
    /// Idle HTTP/1.1 connections (of our own client, `own_h1`). foldhash: looked up twice
    /// per request (checkout, give back).
    own: HashMap<ConnKey, Vec<OwnIdle>, foldhash::fast::RandomState>,
    h2: HashMap<(ConnKey, H2Settings), H2Slot, foldhash::fast::RandomState>,
}

/// The proxy's upstream pools.
pub(crate) struct Pools {
    config: PoolConfig,
    state: Mutex<PoolState>,
    /// Requests between entering [`Pools::own_h1`] and their response head: whether a
    /// yield can batch anything with them (see `own_h1`).
    exchanges: AtomicUsize,
}

/// What [`Pools::send_h1`] and [`Pools::send_h2`] hand back besides the response.
pub(crate) struct Sent {
    /// The response; for HTTP/1 its body returns the connection to the pool at its end.
    pub(crate) response: Response<ProxyBody>,
    /// For an HTTP/1 response that switched protocols: the connection, which must stay
    /// alive until the upgrade completes and is never pooled.
    pub(crate) upgraded: Option<http1::SendRequest<ProxyBody>>,
}

impl Pools {
    pub(crate) fn new(config: PoolConfig) -> Arc<Self> {
        let pools = Arc::new(Pools {
            config,
            state: Mutex::new(PoolState::default()),
            exchanges: AtomicUsize::new(0),
        });
        // The sweeper holds a weak reference: it ends with the pools. Without a runtime
        // (unit tests building an `Inner` by hand) idle connections are only dropped
        // lazily.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pools);
            rt.spawn(sweep(weak, config.idle_timeout));
        }
        pools
    }

    /// A place for a new connection of the cluster under its `max_connections`; while
    /// there is none, the request waits as one of at most `max_pending_requests` (more: 503
    /// `UO`) and takes the first connection `idle` finds (one given back meanwhile).
    async fn slot_or<T>(
        limits: &ConnLimits<'_>,
        mut idle: impl FnMut() -> Option<T>,
    ) -> Result<Result<ConnSlot, T>, ProxyError> {
        let mut pending = None;
        loop {
            // Registered before looking, so a connection freed after the look wakes us.
            let freed = limits.freed().notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = limits.try_connection() {
                return Ok(Ok(slot));
            }
            if pending.is_none() {
                // Counted before the pool is looked at again: a connection given back
                // after that look sees the count and wakes us.
                pending = Some(pending_place(limits)?);
            }
            if let Some(conn) = idle() {
                return Ok(Err(conn));
            }
            debug!(
                cluster = limits.cluster(),
                connections = limits.connections(),
                "waiting for an upstream connection (max_connections)"
            );
            freed.await;
        }
    }

    /// Sends `req` to `ep` on a pooled or new connection. `upgrade`: the request asks to
    /// take the connection over (HTTP/1 upgrades), so the response's body is not tied to
    /// the pool and a switched connection is handed back.
    /// `limits`: the connection circuit breakers of the request's cluster (none for
    /// traffic passed through).
    //
    // A plain fn returning an async block, not an `async fn`: an `async fn` keeps each
    // argument twice in its future (as passed, and moved into its body), and a request's
    // future is copied as it is created, for every request. New connections (dial, maybe
    // an HBONE tunnel, the handshake) are boxed where they are awaited: inline, their
    // futures made every request's future kilobytes larger for a path most requests
    // never take.
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    pub(crate) fn send_h1<'f>(
        self: &'f Arc<Self>,
        ep: Endpoint,
        limits: Option<&'f ConnLimits<'f>>,
        req: Request<ProxyBody>,
        peer: SocketAddr,
        upgrade: bool,
    ) -> impl Future<Output = Result<Sent, ProxyError>> + 'f {
        async move {
            // Our own client for every request that takes nothing over (see `own_h1`);
            // hyper's for upgrades and CONNECT, whose connection is handed to the tunnel.
            // Boxed: in place it saves an HTTP/1 request 1.3 % of its instructions (the
            // 1.5 KB allocation and copy) but costs an HTTP/2 request more, whose whole
            // future hyper's server boxes and copies per request (cachegrind, RESULTS
            // "Session of 2026-12-02 06:48").
            // The box allocated first and the future made straight into it (as in
            // `h2server`): `Box::pin(f)` made the 1.7 KB future on the stack and copied it.
            if takes_own_h1(upgrade, req.method()) {
                return Box::into_pin(Box::write(
                    Box::new_uninit(),
                    self.own_h1(ep, limits, req, peer),
                ))
                .await;
            }
            Box::pin(self.upgrade_h1(ep, limits, req, peer, upgrade)).await
        }
    }

    /// Whether other requests are waiting for an upstream HTTP/1 response head: their
    /// answers may arrive in the same tick as one just received (see the caller in
    /// `crate::http`).
    pub(crate) fn exchanges_waiting(&self) -> bool {
        self.exchanges.load(Ordering::Relaxed) > 0
    }

    /// A request that may take its connection over (an upgrade, CONNECT), through hyper's
    /// client on a connection of the pool, which hyper then owns: handed over when the
    /// upstream switches, closed after the response otherwise (never given back).
    async fn upgrade_h1(
        self: &Arc<Self>,
        ep: Endpoint,
        limits: Option<&ConnLimits<'_>>,
        req: Request<ProxyBody>,
        peer: SocketAddr,
        upgrade: bool,
    ) -> Result<Sent, ProxyError> {
        let addr = ep.addr;
        let is_connect = req.method() == http::Method::CONNECT;
        let key = ep.key();
        let (conn, reused) = match self.checkout_own(&key) {
            Some(c) => (c, true),
            None => (self.connect_own(&ep, &key, limits).await?, false),
        };
        let mut sender = handshake_h1(conn, addr, peer).await?;
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // The idle connection closed before our request went out (the keep-alive
                // race): nothing reached the upstream, so sending it on a fresh connection
                // is safe whatever the method.
                Some(req) if reused => {
                    debug!(%addr, error = %e.error(), "idle upstream connection closed; reconnecting");
                    let conn = self.connect_own(&ep, &key, limits).await?;
                    sender = handshake_h1(conn, addr, peer).await?;
                    sender
                        .send_request(req)
                        .await
                        .map_err(|e| ProxyError::upstream_http(addr, peer, e))?
                }
                _ => return Err(ProxyError::upstream_http(addr, peer, e.into_error())),
            },
        };
        let switched = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
            || (upgrade && is_connect && resp.status().is_success());
        Ok(Sent {
            response: resp.map(boxed),
            // Dropped with this `Sent` when not switched: hyper closes the connection once
            // the response has been read.
            upgraded: switched.then_some(sender),
        })
    }

    /// Takes `stream`, a direct connection to `addr` opened before its protocol was
    /// known, into the pool: as an idle HTTP/1 connection, or as the endpoint's HTTP/2
    /// connection when it has none open (else it is closed). The HBONE server connects to
    /// the pod before it accepts a tunnel (a pod that refuses is a refused tunnel); when
    /// the tunnel turns out to carry HTTP, its first request reuses that connection
    /// instead of opening a second one.
    pub(crate) async fn adopt(
        self: &Arc<Self>,
        stream: dial::BoxIo,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        peer: SocketAddr,
    ) -> Result<(), ProxyError> {
        let key = (addr, None, ConnLife::default(), None, None);
        self.adopt_keyed(stream, key, protocol, peer).await
    }

    /// [`Pools::adopt`] into `ep`'s pool (a connection opened to learn its protocol:
    /// `auto_config`).
    pub(crate) async fn adopt_for(
        self: &Arc<Self>,
        ep: &Endpoint,
        stream: dial::BoxIo,
        peer: SocketAddr,
    ) -> Result<(), ProxyError> {
        self.adopt_keyed(stream, ep.key(), ep.protocol, peer).await
    }

    async fn adopt_keyed(
        self: &Arc<Self>,
        stream: dial::BoxIo,
        key: ConnKey,
        protocol: UpstreamProtocol,
        peer: SocketAddr,
    ) -> Result<(), ProxyError> {
        let (addr, life) = (key.0, key.2);
        match protocol {
            UpstreamProtocol::Http1 => self.give_back_own(OwnConn::new(stream, None), key, None),
            UpstreamProtocol::Http2(settings) => {
                let slot = lock(&self.state)
                    .h2
                    .entry((key, settings))
                    .or_default()
                    .clone();
                let mut conns = slot.conns.lock().await;
                conns.retain(|c| c.usable(life));
                if conns.is_empty() {
                    let sender =
                        Box::pin(handshake_h2(stream, addr, peer, None, &settings)).await?;
                    conns.push(H2Conn::new(sender, &slot));
                }
            }
        }
        Ok(())
    }

    /// [`Pools::send_h1`] for an endpoint that speaks HTTP/2.
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    pub(crate) fn send_h2<'f>(
        self: &'f Arc<Self>,
        ep: Endpoint,
        limits: Option<&'f ConnLimits<'f>>,
        req: Request<ProxyBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Sent, ProxyError>> + 'f {
        async move {
            let addr = ep.addr;
            let settings = match ep.protocol {
                UpstreamProtocol::Http2(s) => s,
                UpstreamProtocol::Http1 => H2Settings::default(),
            };
            let slot = lock(&self.state)
                .h2
                .entry((ep.key(), settings))
                .or_default()
                .clone();
            let cap = settings
                .max_streams
                .map_or(usize::MAX, |m| m.get() as usize);
            // Held while this request waits for room on a full endpoint (Envoy's pending
            // request): counted against `max_pending_requests`.
            let mut pending = None;
            // A request that must wait registers for a stream's end and a connection's close
            // (boxed: only a waiting request pays for them) and looks once more before it
            // waits, so room made after that look wakes it.
            type Armed<'n> = (
                Pin<Box<tokio::sync::futures::Notified<'n>>>,
                Pin<Box<tokio::sync::futures::Notified<'n>>>,
            );
            let mut armed: Option<Armed<'_>> = None;
            let life = ep.life;
            let (mut sender, count) = loop {
                let mut conns = slot.conns.lock().await;
                conns.retain(|c| c.usable(life));
                let room = conns
                    .iter()
                    .position(|c| c.streams.open.load(Ordering::Relaxed) < cap);
                let i = match room {
                    Some(i) => i,
                    None => {
                        // The first connection waits for a connection slot like an HTTP/1
                        // request; one more beyond the stream cap opens only if a slot is
                        // free now, else the request waits for a stream to end or a
                        // connection to close.
                        let cx = match limits {
                            Some(l) if conns.is_empty() => {
                                Self::slot_or(l, || None::<std::convert::Infallible>)
                                    .await?
                                    .ok()
                            }
                            Some(l) => l.try_connection(),
                            None => None,
                        };
                        match limits {
                            Some(l) if cx.is_none() && !conns.is_empty() => {
                                drop(conns);
                                let Some((ended, freed)) = armed.as_mut() else {
                                    let mut ended = Box::pin(slot.ended.notified());
                                    ended.as_mut().enable();
                                    let mut freed = Box::pin(l.freed().notified());
                                    freed.as_mut().enable();
                                    armed = Some((ended, freed));
                                    continue;
                                };
                                if pending.is_none() {
                                    pending = Some(pending_place(l)?);
                                }
                                debug!(
                                    cluster = l.cluster(),
                                    %addr,
                                    "waiting for a stream on a full HTTP/2 endpoint (max_concurrent_streams, max_connections)"
                                );
                                tokio::select! {
                                    _ = ended.as_mut() => {}
                                    _ = freed.as_mut() => {}
                                }
                                armed = None;
                                continue;
                            }
                            _ => {}
                        }
                        let sender = Box::pin(connect_h2(ep, peer, cx, &settings)).await?;
                        conns.push(H2Conn::new(sender, &slot));
                        conns.len() - 1
                    }
                };
                let c = &mut conns[i];
                c.started = c.started.saturating_add(1);
                c.last_start = Coarse::now();
                let count = settings.max_streams.map(|_| StreamCount::enter(&c.streams));
                break (c.sender.clone(), count);
            };
            drop(pending);
            sender
                .ready()
                .await
                .map_err(|e| ProxyError::upstream_http(addr, peer, e))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| ProxyError::upstream_http(addr, peer, e))?;
            let response = match count {
                Some(count) => resp.map(|body| {
                    boxed(Counted {
                        body,
                        _count: count,
                    })
                }),
                None => resp.map(boxed),
            };
            Ok(Sent {
                response,
                upgraded: None,
            })
        }
    }
}

impl Pools {
    /// Our own HTTP/1.1 client (`h1client`), for every request that takes nothing over (no
    /// upgrade, no CONNECT): in the request's own future, where hyper's client hands each
    /// request to a task per connection and back (~3 us of CPU per request here;
    /// benches/RESULTS.md, "Session of 2026-12-01 20:05"). The response body streams from
    /// the connection, which goes back to the pool at its end.
    #[allow(clippy::manual_async_fn)] // arguments held once: see `HttpConn::handle`
    fn own_h1<'f>(
        self: &'f Arc<Self>,
        ep: Endpoint,
        limits: Option<&'f ConnLimits<'f>>,
        req: Request<ProxyBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Sent, ProxyError>> + 'f {
        async move {
            let key = ep.key();
            let (parts, body) = req.into_parts();
            let framing = h1client::request_framing(&parts.method, &parts.headers, &body);
            // A request from HTTP/2 has its authority in the URI, not in `Host` (see
            // `adapt_request`): written from there, not copied into the headers first.
            let host = if parts.headers.contains_key(http::header::HOST) {
                None
            } else {
                parts.uri.authority().map(|a| a.as_str())
            };
            // Written straight into the buffer the request goes out from; made again for the
            // rare second try below.
            let head = || {
                let mut head = BytesMut::with_capacity(512);
                h1codec::encode_request_head(
                    &parts.method,
                    parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                    host,
                    &parts.headers,
                    framing,
                    &mut head,
                );
                head
            };
            // Sent again on a new connection when a reused one turns out closed: only without a
            // body (nothing of it consumed) and for methods that may be repeated (RFC 9110
            // 9.2.2: the upstream may have seen it).
            let resendable = body.is_end_stream() && parts.method.is_idempotent();
            let mut body = Some(body);
            // The writes of the requests ready in this tick then go out back to back: the
            // upstream is woken once per batch, not per request (on this VM each wake-up of an
            // idle CPU is an IPI; RESULTS, the same session). Alone, there is nothing to
            // batch with, and a yield is one more look at the sockets (`epoll_wait`) before
            // this request goes out.
            let counted = Exchange::enter(&self.exchanges);
            if counted.others > 0 {
                tokio::task::yield_now().await;
            }
            if let Some(conn) = self.checkout_own(&key) {
                let writer = RequestWriter::new(head(), body.take(), framing);
                match self
                    .exchange(conn, writer, &ep, limits, &parts.method, peer)
                    .await
                {
                    Err(HeadError::Silent(source)) if resendable => {
                        debug!(addr = %ep.addr, error = %source, "reused upstream connection closed; sending again on a new one");
                    }
                    done => return done.map_err(|e| e.into_proxy(ep.addr)),
                }
            }
            let conn = Box::pin(self.connect_own(&ep, &key, limits)).await?;
            let writer = RequestWriter::new(head(), body.take(), framing);
            self.exchange(conn, writer, &ep, limits, &parts.method, peer)
                .await
                .map_err(|e| e.into_proxy(ep.addr))
        }
    }

    /// One exchange on `conn`; the response's body holds the connection.
    async fn exchange(
        self: &Arc<Self>,
        mut conn: OwnConn,
        writer: RequestWriter,
        ep: &Endpoint,
        limits: Option<&ConnLimits<'_>>,
        method: &http::Method,
        peer: SocketAddr,
    ) -> Result<Sent, HeadError> {
        conn.served = conn.served.saturating_add(1);
        let (head, writer) = h1client::exchange(&mut conn, writer, method, ep.addr, peer).await?;
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        let give_back = head.keep_alive.then(|| OwnGiveBack {
            pools: Arc::downgrade(self),
            key: ep.key(),
            freed: limits.map(ConnLimits::notice),
        });
        let body = OwnBody::new(conn, writer, head.body, give_back);
        Ok(Sent {
            response: resp.map(|()| body.boxed()),
            upgraded: None,
        })
    }

    fn checkout_own(&self, key: &ConnKey) -> Option<OwnConn> {
        let life = key.2;
        loop {
            let idle = lock(&self.state).own.get_mut(key)?.pop()?;
            let mut conn = idle.conn;
            if life.fresh(idle.since, self.config.idle_timeout)
                && life.takes_more(conn.served, conn.opened)
                && conn.is_reusable()
            {
                return Some(conn);
            }
        }
    }

    /// A new connection to `ep` under the cluster's `max_connections`, or an idle one
    /// given back while waiting for a place (as a pending request).
    async fn connect_own(
        &self,
        ep: &Endpoint,
        key: &ConnKey,
        limits: Option<&ConnLimits<'_>>,
    ) -> Result<OwnConn, ProxyError> {
        let new = |slot| async move {
            let io = dial::dial(
                ep.addr,
                ep.connect_timeout,
                ep.hbone.as_deref(),
                ep.keepalive,
                ep.tls(Alpn::Http1),
                ep.proxy.as_ref(),
            )
            .await?;
            Ok::<_, ProxyError>(OwnConn::new(io, slot))
        };
        let Some(limits) = limits else {
            return new(None).await;
        };
        match Self::slot_or(limits, || self.checkout_own(key)).await? {
            Ok(slot) => new(Some(slot)).await,
            Err(idle) => Ok(idle),
        }
    }

    fn give_back_own(&self, conn: OwnConn, key: ConnKey, freed: Option<FreedNotice>) {
        // One that took its last request closes here (its place under `max_connections`
        // with it, so the notice below still matters).
        if key.2.takes_more(conn.served, conn.opened) {
            let mut state = lock(&self.state);
            let idle = state.own.entry(key).or_default();
            if idle.len() < self.config.max_idle_per_endpoint {
                idle.push(OwnIdle {
                    conn,
                    since: Coarse::now(),
                });
            }
        }
        // After the push (and the lock's release).
        if let Some(f) = freed {
            f.notify();
        }
    }
}

/// A place among the cluster's pending requests for one that must wait (a connection under
/// `max_connections`, a stream on a full HTTP/2 endpoint); none left: 503 `UO`.
fn pending_place(limits: &ConnLimits<'_>) -> Result<Pending, ProxyError> {
    limits.try_pending().ok_or_else(|| ProxyError::Overflow {
        cluster: limits.cluster().to_owned(),
        breaker: "max_pending_requests",
    })
}

/// Whether [`Pools::send_h1`] sends a request through our own HTTP/1.1 client: all but
/// upgrades and CONNECT, whose connection is handed over (those go through hyper's).
pub(crate) fn takes_own_h1(upgrade: bool, method: &http::Method) -> bool {
    !upgrade && method != http::Method::CONNECT
}

impl HeadError {
    fn into_proxy(self, addr: SocketAddr) -> ProxyError {
        match self {
            HeadError::Silent(source) => ProxyError::UpstreamReset { addr, source },
            HeadError::Failed(e) => e,
        }
    }
}

struct OwnIdle {
    conn: OwnConn,
    /// Idle timeouts are seconds: the coarse clock will do.
    since: Coarse,
}

struct OwnGiveBack {
    pools: Weak<Pools>,
    key: ConnKey,
    freed: Option<FreedNotice>,
}

impl h1client::GiveBack for OwnGiveBack {
    fn give_back(self, conn: OwnConn) {
        if let Some(pools) = self.pools.upgrade() {
            pools.give_back_own(conn, self.key, self.freed);
        }
    }
}

fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    body.map_err(crate::error::BodyError::from).boxed()
}

/// Closes idle connections past their idle timeout: every second, or every half of the
/// shortest idle timeout in the pools when that is shorter (at most every 100 ms).
async fn sweep(pools: Weak<Pools>, idle_timeout: Duration) {
    let every = |shortest: Duration| {
        (shortest / 2)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(100))
    };
    let mut period = every(idle_timeout);
    loop {
        tokio::time::sleep(period).await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let mut shortest = idle_timeout;
        let mut state = lock(&pools.state);
        for (key, idle) in state.own.iter_mut() {
            let life = key.2;
            if let Some(t) = life.idle_timeout(idle_timeout) {
                shortest = shortest.min(t);
            }
            idle.retain(|c| life.fresh(c.since, idle_timeout));
        }
        state.own.retain(|_, v| !v.is_empty());
        // HTTP/2: a connection whose last stream started longer ago than its idle timeout
        // leaves the pool (and closes once a stream still open on it ends); a slot with
        // none left (and that nobody is connecting) goes.
        state.h2.retain(|(key, _), slot| {
            let life = key.2;
            if let Some(t) = life.idle_timeout(H2_IDLE_TIMEOUT) {
                shortest = shortest.min(t);
            }
            slot.conns.try_lock().map_or(true, |mut conns| {
                conns.retain(|c| c.usable(life) && life.fresh(c.last_start, H2_IDLE_TIMEOUT));
                !conns.is_empty()
            })
        });
        period = every(shortest);
    }
}

/// hyper's HTTP/1 client over `conn`; its task holds the connection's place under
/// `max_connections` until the connection closes.
async fn handshake_h1(
    conn: OwnConn,
    addr: SocketAddr,
    peer: SocketAddr,
) -> Result<http1::SendRequest<ProxyBody>, ProxyError> {
    let (stream, slot) = conn.into_parts();
    // Lowercase header names, as the downstream side (`http::serve`).
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        // The HTTP/1 handshake does no I/O; this only fails on a hyper bug.
        .map_err(|e| ProxyError::upstream_http(addr, peer, e))?;
    tokio::spawn(
        async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream HTTP/1 connection ended with an error");
            }
            drop(slot);
        }
        .in_current_span(),
    );
    Ok(sender)
}

async fn connect_h2(
    ep: Endpoint,
    peer: SocketAddr,
    slot: Option<ConnSlot>,
    settings: &H2Settings,
) -> Result<http2::SendRequest<ProxyBody>, ProxyError> {
    let addr = ep.addr;
    let stream = dial::dial(
        addr,
        ep.connect_timeout,
        ep.hbone.as_deref(),
        ep.keepalive,
        ep.tls(Alpn::Http2),
        ep.proxy.as_ref(),
    )
    .await?;
    handshake_h2(stream, addr, peer, slot, settings).await
}

/// HTTP/2 over a connected `stream`; its task holds `slot` until the connection closes.
async fn handshake_h2(
    stream: dial::BoxIo,
    addr: SocketAddr,
    peer: SocketAddr,
    slot: Option<ConnSlot>,
    settings: &H2Settings,
) -> Result<http2::SendRequest<ProxyBody>, ProxyError> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(w) = settings.stream_window {
        builder.initial_stream_window_size(w.get());
    }
    if let Some(w) = settings.conn_window {
        builder.initial_connection_window_size(w.get());
    }
    if let Some((interval, timeout)) = settings.keepalive_ms {
        // Envoy PINGs at the interval whether or not streams are open.
        builder
            .keep_alive_interval(Duration::from_millis(interval.get().into()))
            .keep_alive_timeout(Duration::from_millis(timeout.into()))
            .keep_alive_while_idle(true);
    }
    let (sender, conn) = builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::upstream_http(addr, peer, e))?;
    tokio::spawn(
        async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
            drop(slot);
        }
        .in_current_span(),
    );
    Ok(sender)
}

/// One request counted in [`Pools::exchanges`] until it drops (with its response head, or
/// when the request fails or is cancelled).
struct Exchange<'a> {
    count: &'a AtomicUsize,
    /// Requests counted when this one entered.
    others: usize,
}

impl<'a> Exchange<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let others = count.fetch_add(1, Ordering::Relaxed);
        Self { count, others }
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod size {
    /// Every request's target carries its upstream protocol and its connection life.
    #[test]
    fn upstream_protocol_stays_small() {
        assert!(size_of::<super::UpstreamProtocol>() <= 24);
        assert_eq!(size_of::<super::ConnLife>(), 12);
    }
}

#[cfg(test)]
mod life {
    use super::*;

    fn life(idle: Option<u64>, requests: Option<u32>, age: Option<u64>) -> ConnLife {
        (&ConnectionLife {
            idle_timeout: idle.map(Duration::from_millis),
            max_requests_per_connection: requests,
            max_connection_duration: age.map(Duration::from_millis),
        })
            .into()
    }

    #[test]
    fn idle_timeouts() {
        let default = Duration::from_secs(30);
        assert_eq!(life(None, None, None).idle_timeout(default), Some(default));
        assert_eq!(
            life(Some(0), None, None).idle_timeout(default),
            None,
            "0s: never"
        );
        assert_eq!(
            life(Some(250), None, None).idle_timeout(default),
            Some(Duration::from_millis(250))
        );
        // A sub-millisecond timeout is not "the default" (0) nor "never".
        let tiny: ConnLife = (&ConnectionLife {
            idle_timeout: Some(Duration::from_micros(10)),
            ..Default::default()
        })
            .into();
        assert_eq!(tiny.idle_timeout(default), Some(Duration::from_millis(1)));
        let now = Coarse::now();
        assert!(life(Some(0), None, None).fresh(now, default));
        assert!(life(Some(60_000), None, None).fresh(now, default));
    }

    #[test]
    fn requests_and_age() {
        let now = Coarse::now();
        let unbounded = life(None, None, None);
        assert!(unbounded.takes_more(u32::MAX - 1, now));
        let two = life(None, Some(2), None);
        assert!(two.takes_more(0, now) && two.takes_more(1, now));
        assert!(!two.takes_more(2, now));
        let young = life(None, None, Some(60_000));
        assert!(young.takes_more(1000, now));
        let old = life(None, None, Some(1));
        std::thread::sleep(Duration::from_millis(25));
        assert!(
            !old.takes_more(0, now),
            "older than max_connection_duration"
        );
    }
}
