//! `myelin-hyper-floor`: the stack's floor in the L7 benchmark (`myelin-l7-bench --targets
//! hyper-floor`). The smallest reverse proxy made of what the agent's proxy is made of
//! (tokio's current-thread runtime, hyper's server and client connections, a pool of
//! upstream HTTP/1.1 connections, mimalloc) and nothing else: no routing, balancing, timeouts,
//! retries, circuit breakers, golden metrics or logs. Its CPU per request, measured in the same
//! run as nginx, haproxy and the agent, is what the framework costs before Myelin does any work
//! of its own; the agent's row minus this one is Myelin's own share.
//!
//! From the client: HTTP/1.1 or h2c (prior knowledge, told apart by the preface as the agent
//! does). To the backend: HTTP/1.1 with keep-alive, an idle connection reused per request and
//! given back when the response body ends (as the agent's `upstream::Pools`). Not a product:
//! a request it cannot forward is a 502 and nothing more.
//!
//! With `--own-h1 --h2-inline` it is the `codec-floor` target instead: the same hop without
//! hyper's connections (`own_codec`), what an HTTP codec of our own would start from.
//! `--own-upstream` keeps hyper's server and drops only its client (for splitting the cost).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

#[path = "hyper_floor/own_codec.rs"]
mod own_codec;

/// The agent's allocator, so the floor is measured on equal terms.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A minimal hyper reverse proxy: the stack's floor for the L7 benchmark.
#[derive(Debug, Parser)]
#[command(name = "myelin-hyper-floor", version)]
struct Args {
    /// Where clients connect (HTTP/1.1 and h2c).
    #[arg(long)]
    listen: SocketAddr,
    /// The HTTP/1.1 backend.
    #[arg(long)]
    backend: SocketAddr,
    /// HTTP/1.1 clients are served without hyper: parsed with `httparse` in the connection's
    /// task, which has its own upstream connection (`own_codec::serve_h1`).
    #[arg(long)]
    own_h1: bool,
    /// h2c clients are served with the `h2` crate directly, every stream in the connection's
    /// task, each request sent upstream without hyper's client (`own_codec::serve_h2`).
    #[arg(long)]
    h2_inline: bool,
    /// hyper's server, but each request sent upstream and answered in its own future without
    /// hyper's client (`own_codec::exchange`; requests without a body).
    #[arg(long)]
    own_upstream: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // As the agent runs its proxy when it may use one CPU.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let pool = Arc::new(Pool {
        backend: args.backend,
        idle: Mutex::new(Vec::new()),
        own_idle: own_codec::Idle::default(),
    });
    let args = Arc::new(args);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, pool.clone(), args.clone()));
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn connection(stream: TcpStream, pool: Arc<Pool>, args: Arc<Args>) {
    let mut head = [0u8; 24];
    let h2 = loop {
        match stream.peek(&mut head).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&head[..n]) => {
                break head[..n] == *H2_PREFACE;
            }
            // A prefix of the preface so far: wait for more (`readable` would return at once:
            // the peeked bytes are still there).
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    };
    if h2 && args.h2_inline {
        let _ = own_codec::serve_h2(stream, &pool.own_idle, pool.backend).await;
        return;
    }
    if !h2 && args.own_h1 {
        let _ = own_codec::serve_h1(stream, pool.backend).await;
        return;
    }
    let own_upstream = args.own_upstream;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let pool = pool.clone();
        async move {
            let resp = if own_upstream {
                own_exchange(&pool, req).await.map(Either::Right)
            } else {
                forward(pool, req).await.map(Either::Left)
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let io = TokioIo::new(stream);
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .auto_date_header(false)
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .auto_date_header(false)
            .serve_connection(io, svc)
            .await
    };
}

/// `--own-upstream`: `req` through [`own_codec::exchange`]; a 502 when that fails or the
/// request has a body.
async fn own_exchange(pool: &Pool, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let resp = if body.is_end_stream() {
        own_codec::exchange(&pool.own_idle, pool.backend, &parts)
            .await
            .ok()
    } else {
        None
    };
    resp.map_or_else(
        || {
            let mut r = Response::new(Full::default());
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        },
        |r| r.map(Full::new),
    )
}

/// Sends `req` to the backend on a pooled connection; a 502 when that fails.
async fn forward(pool: Arc<Pool>, mut req: Request<Incoming>) -> Response<PooledBody> {
    // What any proxy must do for an HTTP/1.1 upstream: origin-form, and a Host header (an
    // HTTP/2 request carries its authority in the URI).
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    if req.uri().scheme().is_some() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
    *req.version_mut() = Version::HTTP_11;
    let sent = async {
        let mut sender = pool.checkout().await?;
        let resp = sender.send_request(req).await?;
        anyhow::Ok((sender, resp))
    };
    match sent.await {
        Ok((sender, resp)) => resp.map(|body| PooledBody {
            body: Some(body),
            give_back: Some((pool, sender)),
        }),
        Err(_) => {
            let mut r = Response::new(PooledBody {
                body: None,
                give_back: None,
            });
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

struct Pool {
    backend: SocketAddr,
    /// Upstream connections of `own_codec::exchange`.
    own_idle: own_codec::Idle,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

impl Pool {
    /// An idle connection that is ready, else a new one (its dispatcher on a task of its
    /// own, as hyper's client runs it and as the agent does).
    async fn checkout(&self) -> Result<SendRequest<Incoming>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = TcpStream::connect(self.backend).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn give_back(&self, sender: SendRequest<Incoming>) {
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sender);
        }
    }
}

/// The backend's response body; its connection goes back to the pool at its end.
struct PooledBody {
    /// `None` for the proxy's own 502.
    body: Option<Incoming>,
    give_back: Option<(Arc<Pool>, SendRequest<Incoming>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, sender)) = self.give_back.take() {
            pool.give_back(sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is empty.
        if self.body.as_ref().is_some_and(Body::is_end_stream) {
            self.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.give_back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
