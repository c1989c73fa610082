//! Myelin's node-local L7 proxy.
//!
//! The agent's eBPF programs redirect captured connections to one capture listener and
//! record each connection's original destination; the agent hands the listener to
//! [`Proxy::serve`] and the map to the proxy through [`OrigDstLookup`]. For each
//! accepted connection the proxy finds the original destination and the source workload,
//! sniffs the protocol, picks the listener and filter chain of the traffic config
//! ([`traffic`], published by the agent from xDS or files; none: pass through to the
//! original destination), and forwards HTTP/1.1 request by request (through hyper, routed
//! by virtual host and route to a cluster's endpoint) or opaque TCP byte for byte,
//! counting everything in [`metrics::ProxyMetrics`]. Listeners with `bind_to_port` get
//! their own sockets.
//!
//! This crate knows nothing of eBPF or protobuf: it builds and tests on its own.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

mod body;
mod clock;
mod compress;
mod conn_manager;
mod detect;
mod dial;
pub mod drain;
mod error;
mod ext_authz;
mod ext_proc;
mod extended_connect;
mod filters;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod golden;
mod h1client;
mod h1codec;
mod h1server;
mod h2server;
pub mod hbone;
mod health;
mod http;
mod jwt;
mod local;
mod local_reply;
pub mod metrics;
mod mirror;
pub mod model;
mod outbound;
mod path;
mod proxy_protocol;
mod ratelimit;
mod rbac;
mod retry;
mod services;
mod stream;
mod tcp;
mod timeout;
pub mod tls;
pub mod traffic;
mod upstream;

pub use detect::Protocol;

/// Where a captured connection was originally going. Implemented by the agent over the
/// eBPF map; tests implement it with a `HashMap`.
pub trait OrigDstLookup: Send + Sync + 'static {
    /// `peer` is the accepted socket's peer (the app's address), `local` the capture
    /// address the app was redirected to.
    fn original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr>;
}

/// Locks `m`, poisoned or not. No lock of ours is held across an await or user code: a
/// poisoned one only means a panic elsewhere, and the data behind it is still consistent.
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every connection task shares.
pub(crate) struct Inner {
    pub(crate) config: Arc<model::ProxyConfig>,
    pub(crate) lookup: Arc<dyn OrigDstLookup>,
    pub(crate) metrics: Arc<metrics::ProxyMetrics>,
    /// The xDS traffic config (empty: every connection passes through).
    pub(crate) traffic: traffic::TrafficHandle,
    /// Upstream HTTP connections, shared by all downstream connections.
    pub(crate) pools: Arc<upstream::Pools>,
    /// Rate, errors and latency per workload pair.
    pub(crate) golden: Arc<golden::GoldenMetrics>,
    /// Tunnels to meshed workloads on other nodes (none: mTLS off).
    pub(crate) hbone: Option<Arc<hbone::Client>>,
}

/// The proxy: serves captured connections from one listener.
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// After a failed `accept` that is not about one connection (e.g. out of file
/// descriptors), wait this long before the next, instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

impl Proxy {
    /// Creates a proxy with a config snapshot, the original-destination lookup and the
    /// metrics to record into.
    pub fn new(
        config: Arc<model::ProxyConfig>,
        lookup: Arc<dyn OrigDstLookup>,
        metrics: Arc<metrics::ProxyMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                lookup,
                metrics,
                traffic: traffic::TrafficHandle::new(),
                pools: upstream::Pools::new(upstream::PoolConfig::default()),
                golden: Arc::new(golden::GoldenMetrics::unregistered()),
                hbone: None,
            }),
        }
    }

    /// Sends traffic for meshed workloads on other nodes (the config's remote workloads)
    /// through HBONE tunnels of `client`, as the connection's source workload.
    pub fn with_hbone(mut self, client: Arc<hbone::Client>) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("a new proxy is not shared yet");
        inner.hbone = Some(client);
        self
    }

    /// Records golden metrics into `golden` (by default they are recorded nowhere).
    pub fn with_golden(mut self, golden: Arc<golden::GoldenMetrics>) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("a new proxy is not shared yet");
        inner.golden = golden;
        self
    }

    /// Serves with the listeners, routes and clusters published through `traffic`
    /// (without it, every captured connection goes to its original destination).
    pub fn with_traffic(mut self, traffic: traffic::TrafficHandle) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("a new proxy is not shared yet");
        inner.traffic = traffic;
        self
    }

    /// The handle the proxy reads its traffic config from.
    pub fn traffic(&self) -> traffic::TrafficHandle {
        self.inner.traffic.clone()
    }

    /// Accept loop on the capture listener until `drain` fires; then stop accepting
    /// (the listener is closed, so new connects are refused), let connections finish up
    /// to the config's `drain_deadline`, close the rest, and return.
    ///
    /// HTTP connections finish the request in flight and then close; opaque connections
    /// run until they end or the deadline passes. `serve` holds `drain` until it
    /// returns, so the drain's signaller waits for it.
    ///
    /// Listeners of the traffic config with `bind_to_port` get their own sockets, bound
    /// and closed as the config changes; their connections are served (and drained) like
    /// captured ones.
    pub async fn serve(self, listener: TcpListener, drain: drain::Watch) -> io::Result<()> {
        let mut conns = JoinSet::new();
        let signaled = drain.signaled();
        tokio::pin!(signaled);
        let (bound_tx, mut bound_rx) = mpsc::channel(64);
        let mut bound = BoundListeners {
            tx: bound_tx,
            running: HashMap::new(),
        };
        let mut health = health::HealthCheckers::default();
        let mut changes = self.inner.traffic.subscribe();
        bound.reconcile(&self.inner.traffic.load(), &self.inner.metrics);
        health.reconcile(&self.inner.traffic, &self.inner.metrics);
        loop {
            tokio::select! {
                biased;
                () = &mut signaled => break,
                Some(res) = conns.join_next(), if !conns.is_empty() => log_join(res),
                Ok(()) = changes.changed() => {
                    bound.reconcile(&self.inner.traffic.load(), &self.inner.metrics);
                    health.reconcile(&self.inner.traffic, &self.inner.metrics);
                }
                Some((stream, peer, name)) = bound_rx.recv() => {
                    let origin = outbound::Origin::Bound(name);
                    conns.spawn(outbound::handle(self.inner.clone(), stream, peer, origin, drain.clone()));
                }
                res = listener.accept() => match res {
                    Ok((stream, peer)) => {
                        let origin = outbound::Origin::Captured;
                        conns.spawn(outbound::handle(self.inner.clone(), stream, peer, origin, drain.clone()));
                    }
                    Err(e) if is_connection_error(&e) => {
                        debug!(error = %e, "accept: connection failed before it was accepted");
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed (out of file descriptors?); backing off");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
            }
        }
        drop(listener);
        drop(bound);
        drop(health);
        let deadline = self.inner.config.drain_deadline;
        info!(open = conns.len(), ?deadline, "draining proxy connections");
        let finished = tokio::time::timeout(deadline, async {
            while let Some(res) = conns.join_next().await {
                log_join(res);
            }
        })
        .await;
        if finished.is_err() {
            warn!(
                open = conns.len(),
                "drain deadline passed; closing remaining connections"
            );
            conns.shutdown().await;
        }
        Ok(())
    }
}

/// The accept tasks of the `bind_to_port` listeners, by listener name.
struct BoundListeners {
    tx: mpsc::Sender<(TcpStream, SocketAddr, Arc<str>)>,
    /// By name: the address and `ipv4_compat` bound, and the accept task.
    running: HashMap<String, ((SocketAddr, bool), JoinHandle<()>)>,
}

impl Drop for BoundListeners {
    fn drop(&mut self) {
        for (_, (_, task)) in self.running.drain() {
            task.abort();
        }
    }
}

impl BoundListeners {
    /// Binds new listeners, closes removed ones, rebinds moved ones. A listener whose
    /// address cannot be bound is logged and counted, and tried again at the next config
    /// change; the others are unaffected.
    fn reconcile(&mut self, traffic: &traffic::Traffic, metrics: &metrics::ProxyMetrics) {
        let wanted: HashMap<&str, (SocketAddr, bool)> = traffic
            .bound_listeners()
            .map(|l| (l.name.as_str(), (l.address, l.ipv4_compat)))
            .collect();
        self.running.retain(|name, (addr, task)| {
            let keep = wanted.get(name.as_str()) == Some(addr) && !task.is_finished();
            if !keep {
                task.abort();
                info!(listener = %name, addr = %addr.0, "listener closed");
            }
            keep
        });
        for (name, (addr, ipv4_compat)) in wanted {
            if self.running.contains_key(name) {
                continue;
            }
            match bind(addr, ipv4_compat) {
                Ok(listener) => {
                    info!(listener = %name, %addr, "listener bound");
                    let task = tokio::spawn(accept_bound(listener, name.into(), self.tx.clone()));
                    self.running
                        .insert(name.to_owned(), ((addr, ipv4_compat), task));
                }
                Err(e) => {
                    metrics.listener_bind_errors.inc();
                    warn!(listener = %name, %addr, error = %e, "cannot bind listener; it is not served");
                }
            }
        }
    }
}

/// A listening socket with `SO_REUSEADDR`, so a restarted proxy can rebind while old
/// connections linger in TIME_WAIT. An IPv6 one takes IPv4 connections only with
/// `ipv4_compat` (Envoy sets `IPV6_V6ONLY` otherwise; Linux's default is dual-stack).
fn bind(addr: SocketAddr, ipv4_compat: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!ipv4_compat)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_bound(
    listener: TcpListener,
    name: Arc<str>,
    tx: mpsc::Sender<(TcpStream, SocketAddr, Arc<str>)>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if tx.send((stream, peer, name.clone())).await.is_err() {
                    return;
                }
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                warn!(listener = %name, error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

fn log_join(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        if e.is_panic() {
            warn!(error = %e, "connection task panicked");
        }
    }
}

/// Accept errors that concern one connection only (RFC 793 resets in the backlog etc.):
/// accept again at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound `::` listener takes IPv4 connections only with `ipv4_compat`, as in Envoy.
    #[tokio::test]
    async fn a_v6_wildcard_listener_is_dual_stack_only_with_ipv4_compat() {
        for ipv4_compat in [false, true] {
            let l = bind("[::]:0".parse().unwrap(), ipv4_compat).unwrap();
            let port = l.local_addr().unwrap().port();
            let v4 = TcpStream::connect(("127.0.0.1", port)).await;
            assert_eq!(v4.is_ok(), ipv4_compat, "ipv4_compat={ipv4_compat}");
            assert!(TcpStream::connect(("::1", port)).await.is_ok());
        }
    }
}
