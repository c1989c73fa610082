//! The admin API (`/ready`, `/config_dump`) and the Prometheus endpoint (`/metrics`), on
//! localhost, served from their own single-threaded runtime so that scrapes and dumps never
//! compete with the data path's workers.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tracing::debug;

use crate::agent::AgentState;

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

fn admin(req: &Request<Incoming>, state: &AgentState) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => {
            if state.ready.load(Ordering::SeqCst) {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (&Method::GET, "/config_dump") => {
            // Read now: the xDS view is the store's current snapshot.
            match state.config_dump_json() {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        (_, "/ready" | "/config_dump") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "endpoints: /ready /config_dump\n",
        ),
    }
}

fn metrics(req: &Request<Incoming>, registry: &Registry) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "endpoint: /metrics\n");
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            text,
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

async fn serve<F>(listener: tokio::net::TcpListener, handler: Arc<F>)
where
    F: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handler(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%e, "admin connection");
            }
        });
    }
}

/// Binds both listeners (so a port conflict fails the start) and serves them on a thread.
pub fn spawn(
    admin_addr: SocketAddr,
    metrics_addr: SocketAddr,
    state: Arc<AgentState>,
    registry: Arc<Registry>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the admin runtime")?;
    let (admin_l, metrics_l) = rt.block_on(async {
        let a = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("binding the admin listener on {admin_addr}"))?;
        let m = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("binding the metrics listener on {metrics_addr}"))?;
        anyhow::Ok((a, m))
    })?;
    Ok(std::thread::Builder::new()
        .name("myelin-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let a = tokio::spawn(serve(
                    admin_l,
                    Arc::new(move |r: &Request<Incoming>| admin(r, &state)),
                ));
                let m = tokio::spawn(serve(
                    metrics_l,
                    Arc::new(move |r: &Request<Incoming>| metrics(r, &registry)),
                ));
                let _ = tokio::join!(a, m);
            })
        })?)
}
