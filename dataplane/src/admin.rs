//! The admin API (`/ready`, `/config_dump`) and the Prometheus endpoint (`/metrics`), on
//! localhost, served from their own single-threaded runtime so that scrapes and dumps never
//! compete with the data path's workers.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
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

/// OpenMetrics 1.0, for scrapers that ask for it (Prometheus does, first).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for everyone else (`promtool`, curl, older scrapers).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scrape's `Accept` header prefers OpenMetrics to the classic text format.
///
/// Each media range's weight is its `q` (default 1); a type takes the weight of the most
/// specific range that matches it (RFC 9110, 12.5.1). OpenMetrics is served only when it is
/// acceptable and weighs more than `text/plain`: a client that names neither, or says `*/*`,
/// gets the classic format, which every Prometheus-compatible reader understands.
pub fn wants_openmetrics(accept: &str) -> bool {
    // (specificity, q) of the best match so far for each type: 2 exact, 1 `type/*`, 0 `*/*`.
    let mut open: Option<(u8, f32)> = None;
    let mut text: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let (open_spec, text_spec) = match media.as_str() {
            "application/openmetrics-text" => (Some(2), None),
            "text/plain" => (None, Some(2)),
            "application/*" => (Some(1), None),
            "text/*" => (None, Some(1)),
            "*/*" => (Some(0), Some(0)),
            _ => (None, None),
        };
        for (spec, best) in [(open_spec, &mut open), (text_spec, &mut text)] {
            let Some(spec) = spec else { continue };
            // The most specific range decides; among equally specific ones (e.g. two
            // OpenMetrics versions) the highest weight.
            match best {
                Some((s, bq)) if *s > spec || (*s == spec && *bq >= q) => {}
                _ => *best = Some((spec, q)),
            }
        }
    }
    let q_open = open.map_or(0.0, |(_, q)| q);
    let q_text = text.map_or(0.0, |(_, q)| q);
    q_open > 0.0 && q_open > q_text
}

fn metrics<B>(req: &Request<B>, registry: &Registry) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "endpoint: /metrics\n");
    }
    let accept = req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if wants_openmetrics(&accept) {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, registry) {
            Ok(()) => reply(StatusCode::OK, OPENMETRICS, text),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        }
    } else {
        reply(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            myelin_proxy::metrics::prometheus_text(registry),
        )
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

/// Other control work that runs on the admin runtime (it never touches the data path).
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Binds both listeners (so a port conflict fails the start) and serves them on a thread,
/// with `tasks` (periodic housekeeping such as the golden metrics' idle expiry) beside them.
pub fn spawn(
    admin_addr: SocketAddr,
    metrics_addr: SocketAddr,
    state: Arc<AgentState>,
    registry: Arc<Registry>,
    tasks: Vec<Task>,
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
                for task in tasks {
                    tokio::spawn(task);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
    use prometheus_client::registry::Unit;

    /// What Prometheus 2.42 sends.
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation() {
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("*/*", false),
            ("text/plain", false),
            ("text/plain;version=0.0.4", false),
            (PROMETHEUS_ACCEPT, true),
            ("application/openmetrics-text", true),
            ("Application/OpenMetrics-Text; version=1.0.0", true),
            ("application/openmetrics-text;q=0.3,text/plain;q=0.5", false),
            ("application/openmetrics-text;q=0.5,text/plain;q=0.5", false),
            (
                "text/plain;q=0.2, application/openmetrics-text ; q=0.9",
                true,
            ),
            ("application/openmetrics-text;q=0", false),
            ("application/*", true),
            ("application/*;q=0.9,*/*;q=0.5", true),
            // The most specific range decides: text/plain is refused, */* does not bring it back.
            ("*/*, text/plain;q=0", true),
            ("application/json", false),
            ("application/openmetrics-text;q=oops", true),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_openmetrics(accept), *want, "Accept: {accept}");
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::default();
        let sub = r.sub_registry_with_prefix("myelin");
        let c = Counter::<u64>::default();
        c.inc_by(3);
        sub.register("things", "Things seen", c);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.5);
        sub.register_with_unit("wait", "Waits", Unit::Seconds, h);
        r
    }

    fn scrape(accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::get("/metrics");
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = metrics(&req.body(()).unwrap(), &registry());
        let status = resp.status();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let body = body_text(resp);
        (status, ct, body)
    }

    fn body_text(resp: Response<Body>) -> String {
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn classic_text_by_default() {
        for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
            let (status, ct, body) = scrape(accept);
            assert_eq!(status, StatusCode::OK);
            assert_eq!(ct, PROMETHEUS_TEXT, "{accept:?}");
            // Classic: the counter's metadata names the sample, no UNIT, no EOF.
            assert!(
                body.contains("# TYPE myelin_things_total counter\nmyelin_things_total 3\n"),
                "{body}"
            );
            assert!(
                body.contains("myelin_wait_seconds_bucket{le=\"1.0\"} 1\n"),
                "{body}"
            );
            assert!(!body.contains("# EOF"), "{body}");
            assert!(!body.contains("# UNIT"), "{body}");
        }
    }

    #[test]
    fn openmetrics_when_asked() {
        let (status, ct, body) = scrape(Some(PROMETHEUS_ACCEPT));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, OPENMETRICS);
        assert!(
            body.contains("# TYPE myelin_things counter\nmyelin_things_total 3\n"),
            "{body}"
        );
        assert!(
            body.contains("# UNIT myelin_wait_seconds seconds\n"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[test]
    fn other_paths_are_not_found() {
        let resp = metrics(
            &Request::get("/stats").body(()).unwrap(),
            &Registry::default(),
        );
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
