//! The life of one captured outbound connection: original destination, source workload,
//! protocol detection, then the HTTP or opaque path.
//!
//! This future is what every connection's task holds, so it stays small: both protocol
//! branches are boxed (they hold hyper's connection state or copy buffers), and only the
//! decision is inline. A test measures it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::debug;

use crate::detect::{self, Protocol};
use crate::drain;
use crate::error::ProxyError;
use crate::http::{self, HttpConn};
use crate::metrics::{ProtocolLabels, UNKNOWN};
use crate::tcp;
use crate::Inner;

/// The source workload of a connection, as metric label values.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) workload: Arc<str>,
    pub(crate) namespace: Arc<str>,
}

impl Source {
    fn unknown() -> Self {
        Self {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }
}

/// Serves one accepted connection to the end. Never fails: errors are logged and counted.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: drain::Watch,
) {
    if let Err(e) = try_handle(&inner, stream, peer, drain).await {
        debug!(%peer, error = %e, "connection failed");
    }
}

async fn try_handle(
    inner: &Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: drain::Watch,
) -> Result<(), ProxyError> {
    let metrics = &inner.metrics;
    let config = &inner.config;
    let local = stream
        .local_addr()
        .map_err(|source| ProxyError::Sniff { peer, source })?;
    let Some(dst) = inner.lookup.original_dst(peer, local) else {
        metrics.orig_dst_missing.inc();
        return Err(ProxyError::OrigDstMissing { peer, local });
    };
    let source = config
        .workload_by_ip(peer.ip())
        .map(|w| Source {
            workload: w.name.as_str().into(),
            namespace: w.namespace.as_str().into(),
        })
        .unwrap_or_else(Source::unknown);
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "setting TCP_NODELAY failed");
    }

    let start = Instant::now();
    let (protocol, stream) = detect::detect(stream, config.sniff_timeout)
        .await
        .map_err(|source| ProxyError::Sniff { peer, source })?;
    let labels = ProtocolLabels { protocol };
    metrics
        .protocol_detect_duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    metrics.connections_opened.get_or_create(&labels).inc();
    debug!(%peer, %dst, %protocol, source = %source.workload, "connection accepted");

    let res = match protocol {
        Protocol::Http1 => {
            let conn = Arc::new(HttpConn::new(
                peer,
                dst,
                source,
                config.connect_timeout,
                metrics.clone(),
            ));
            Box::pin(http::serve(stream, conn, drain)).await;
            Ok(())
        }
        Protocol::Opaque => {
            // Opaque connections cannot be closed gracefully: they run until they end or
            // the drain deadline passes, so the watch is not needed.
            drop(drain);
            Box::pin(tcp::forward(
                stream,
                peer,
                dst,
                &source,
                config.connect_timeout,
                metrics,
            ))
            .await
        }
    };
    metrics.connections_closed.get_or_create(&labels).inc();
    res
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
        });
        let (_signal, watch) = drain::channel();
        let fut = handle(inner, stream, peer, watch);
        let size = std::mem::size_of_val(&fut);
        // 704 bytes in a debug build when written; the protocol branches are boxed.
        assert!(size <= 1024, "connection future is {size} bytes");
        fut.await;
        drop(client);
    }
}
