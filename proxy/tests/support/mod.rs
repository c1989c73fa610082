//! Harness for the in-process end-to-end tests: the real proxy on 127.0.0.1:0, a
//! `HashMap` original-destination lookup, and small real servers.

#![allow(dead_code)] // each test uses a different subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Channel, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use myelin_proxy::drain::{self, Signal};
use myelin_proxy::metrics::ProxyMetrics;
use myelin_proxy::model::{ProxyConfig, Workload};
use myelin_proxy::traffic::TrafficHandle;
use myelin_proxy::{OrigDstLookup, Proxy};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Original destinations keyed by the client socket's address (the proxy's `peer`).
#[derive(Default)]
pub struct MapLookup(Mutex<HashMap<SocketAddr, SocketAddr>>);

impl MapLookup {
    /// Records that the connection from `peer` was going to `dst`.
    pub fn insert(&self, peer: SocketAddr, dst: SocketAddr) {
        self.0.lock().unwrap().insert(peer, dst);
    }
}

impl OrigDstLookup for MapLookup {
    fn original_dst(&self, peer: SocketAddr, _local: SocketAddr) -> Option<SocketAddr> {
        self.0.lock().unwrap().get(&peer).copied()
    }
}

/// The workload the test clients (all on 127.0.0.1) belong to.
pub fn client_workload() -> Workload {
    Workload {
        name: "client".into(),
        namespace: "test-ns".into(),
        service_account: "client-sa".into(),
        ip: "127.0.0.1".parse().unwrap(),
    }
}

pub fn config() -> ProxyConfig {
    ProxyConfig::new(vec![client_workload()]).unwrap()
}

pub struct TestProxy {
    pub addr: SocketAddr,
    lookup: Arc<MapLookup>,
    registry: Registry,
    signal: Option<Signal>,
    pub task: JoinHandle<io::Result<()>>,
    /// The proxy's traffic config: publish listeners, routes and clusters here.
    pub traffic: TrafficHandle,
}

impl TestProxy {
    pub async fn start(config: ProxyConfig) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let metrics = Arc::new(ProxyMetrics::new(
            registry.sub_registry_with_prefix("myelin"),
        ));
        let lookup = Arc::new(MapLookup::default());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (signal, watch) = drain::channel();
        let proxy = Proxy::new(Arc::new(config), lookup.clone(), metrics);
        let traffic = proxy.traffic();
        let task = tokio::spawn(proxy.serve(listener, watch));
        Ok(Self {
            addr,
            lookup,
            registry,
            signal: Some(signal),
            task,
            traffic,
        })
    }

    /// A client connection to the proxy, captured as if it had been going to `dst`.
    pub async fn connect(&self, dst: SocketAddr) -> anyhow::Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        sock.bind("127.0.0.1:0".parse()?)?;
        self.lookup
            .0
            .lock()
            .unwrap()
            .insert(sock.local_addr()?, dst);
        Ok(sock.connect(self.addr).await?)
    }

    /// A client connection with no original destination recorded.
    pub async fn connect_uncaptured(&self) -> anyhow::Result<TcpStream> {
        Ok(TcpStream::connect(self.addr).await?)
    }

    /// The Prometheus text exposition of the proxy's metrics.
    pub fn scrape(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }

    /// The value of the sample line starting with `series` (name and labels), if present.
    pub fn sample(&self, series: &str) -> Option<f64> {
        let text = self.scrape();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits (polling, bounded) until the sample `series` has `value`: for counters
    /// bumped just after the client can observe the connection's end.
    pub async fn wait_for_sample(&self, series: &str, value: f64) {
        let poll = async {
            while self.sample(series) != Some(value) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .is_err()
        {
            panic!(
                "{series} never reached {value}; now {:?}\n{}",
                self.sample(series),
                self.scrape()
            );
        }
    }

    pub fn take_signal(&mut self) -> Signal {
        self.signal.take().expect("signal already taken")
    }
}

/// Everything `stream` sends until it closes, as text; panics when it stays open 10 s.
pub async fn read_to_close(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the proxy kept the connection open")?;
    Ok(String::from_utf8(out)?)
}

/// An HTTP/1 client over `stream`, with upgrades.
pub async fn http_client(stream: TcpStream) -> anyhow::Result<SendRequest<ClientBody>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

pub type ClientBody = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).boxed()
}

pub fn empty() -> ClientBody {
    full(Bytes::new())
}

pub async fn body_string(resp: Response<Incoming>) -> anyhow::Result<String> {
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec())?)
}

/// A real hyper HTTP/1.1 server. Routes:
/// - `GET /hello`: `hello`, with `x-conn-id` telling which upstream connection served it;
/// - `POST /echo`: streams the request body back, `x-request-te` tells the request's
///   `transfer-encoding`;
/// - `GET /chunked`: a chunked body in three chunks;
/// - `GET /upgrade` with `Upgrade: echo`: `101`, then echoes bytes prefixed with nothing
///   until EOF, then writes `bye` and closes;
/// - `GET /wait`: responds once `release` is notified.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Requests parked in `GET /wait`.
    pub waiting: Arc<AtomicUsize>,
    pub release: Arc<Notify>,
}

type ServerBody = BoxBody<Bytes, hyper::Error>;

pub async fn http_server() -> anyhow::Result<HttpServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let waiting = Arc::new(AtomicUsize::new(0));
    let (conns, rel, wait) = (connections.clone(), release.clone(), waiting.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let id = conns.fetch_add(1, Ordering::SeqCst);
            let (rel, wait) = (rel.clone(), wait.clone());
            let svc =
                hyper::service::service_fn(move |req| route(req, id, rel.clone(), wait.clone()));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades(),
            );
        }
    });
    Ok(HttpServer {
        addr,
        connections,
        waiting,
        release,
    })
}

fn text(s: &'static str) -> ServerBody {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

async fn route(
    mut req: Request<Incoming>,
    id: usize,
    release: Arc<Notify>,
    waiting: Arc<AtomicUsize>,
) -> Result<Response<ServerBody>, Infallible> {
    let resp = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/hello") => Response::builder()
            .header("x-conn-id", id.to_string())
            .body(text("hello")),
        ("POST", "/echo") => {
            let te = req
                .headers()
                .get(http::header::TRANSFER_ENCODING)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .unwrap_or_else(|| "none".into());
            Response::builder()
                .header("x-request-te", te)
                .body(req.into_body().boxed())
        }
        ("GET", "/chunked") => {
            let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                for chunk in ["one,", "two,", "three"] {
                    if tx
                        .send_data(Bytes::from_static(chunk.as_bytes()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            });
            Response::builder().body(body.map_err(|never| match never {}).boxed())
        }
        ("GET", "/upgrade") if req.headers().get(http::header::UPGRADE).is_some() => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = io.write_all(b"bye").await;
                let _ = io.shutdown().await;
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, "echo")
                .body(text(""))
        }
        ("GET", "/wait") => {
            waiting.fetch_add(1, Ordering::SeqCst);
            release.notified().await;
            Response::builder().body(text("released"))
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(text("not found")),
    };
    Ok(resp.unwrap())
}

/// A TCP server running `handler` on each accepted connection.
pub async fn tcp_server<F, Fut>(handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    Ok(addr)
}

/// Echoes everything back; on EOF, shuts down its write side.
pub async fn echo_server() -> anyhow::Result<SocketAddr> {
    tcp_server(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// An address where nothing listens (bound, then closed).
pub async fn refused_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    drop(l);
    // Make sure it really refuses.
    let err = TcpStream::connect(addr)
        .await
        .err()
        .context("port unexpectedly open")?;
    anyhow::ensure!(err.kind() == io::ErrorKind::ConnectionRefused, "{err}");
    Ok(addr)
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
