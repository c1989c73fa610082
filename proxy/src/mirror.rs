//! Request mirroring (Envoy's `request_mirror_policies`, Istio's VirtualService `mirror`):
//! a copy of a routed request goes to another cluster, its answer read and dropped, as
//! Envoy's shadowing does. The copy never holds the request up:
//!
//! - it is sent from a task of its own, with the same method, path and headers (after the
//!   route's changes) and `-shadow` appended to its host;
//! - its body is teed from the request's as the request's is read, through a bounded
//!   channel per copy: a copy that cannot keep up is cut (its body ends with an error, so
//!   the mirror never takes a truncated body for a whole one) and the request goes on;
//! - an endpoint is taken only if the pick is immediate (a mirror to a DNS cluster not yet
//!   resolved is skipped), and under the mirror cluster's `max_requests`.
//!
//! Counted in `myelin_proxy_mirrored_requests_total{outcome}`: `answered`, `failed` (no
//! answer: connect failure, reset, cut body), `skipped` (no cluster, no endpoint, circuit
//! breaker).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::body::RequestBody;
use crate::error::{BodyError, ProxyBody};
use crate::metrics::ProxyMetrics;
use crate::upstream::{Endpoint, Pools, UpstreamProtocol};

/// Frames a copy may lag behind its request before it is cut.
const LAG: usize = 16;

/// The request side of one copy's body.
pub(crate) struct Tap {
    tx: mpsc::Sender<Frame<Bytes>>,
    cut: Arc<AtomicBool>,
}

/// The copy's body: the request's frames as the tee passes them on.
pub(crate) struct CopyBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
    cut: Arc<AtomicBool>,
}

/// A tap and the body it feeds.
pub(crate) fn tap() -> (Tap, CopyBody) {
    let (tx, rx) = mpsc::channel(LAG);
    let cut = Arc::new(AtomicBool::new(false));
    (
        Tap {
            tx,
            cut: cut.clone(),
        },
        CopyBody { rx, cut },
    )
}

impl Body for CopyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            // The tee is gone: at the request body's end, or cut.
            Poll::Ready(None) if self.cut.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err("the mirrored request's body was cut".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A request body that hands a copy of each frame to its taps as it is read.
struct Tee {
    inner: RequestBody,
    taps: Vec<Tap>,
    ended: bool,
}

impl Tee {
    fn cut(tap: &Tap) {
        tap.cut.store(true, Ordering::Release);
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let copy = || match frame.data_ref() {
                    Some(d) => Some(Frame::data(d.clone())),
                    None => frame.trailers_ref().map(|t| Frame::trailers(t.clone())),
                };
                this.taps.retain(|tap| {
                    let Some(c) = copy() else { return true };
                    let kept = tap.tx.try_send(c).is_ok();
                    if !kept {
                        // Full (the copy lags) or closed (the copy failed): cut it.
                        Tee::cut(tap);
                    }
                    kept
                });
            }
            Poll::Ready(Some(Err(_))) => {
                this.taps.iter().for_each(Tee::cut);
                this.taps.clear();
            }
            Poll::Ready(None) => {
                this.ended = true;
                // Dropping the senders ends the copies' bodies cleanly.
                this.taps.clear();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The request went away before its body's end: the copies must not look whole.
        if !self.ended {
            self.taps.iter().for_each(Tee::cut);
        }
    }
}

/// `body` with its frames copied to `taps`.
pub(crate) fn tee(body: RequestBody, taps: Vec<Tap>) -> RequestBody {
    RequestBody::Own(Box::pin(Tee {
        inner: body,
        taps,
        ended: false,
    }))
}

/// The copy of `req` (method, target, headers as they are now) with `body`; its host gets
/// `-shadow` unless `keep_host` (`foo:8080` becomes `foo-shadow:8080`, as in Envoy).
pub(crate) fn copy_of<B>(req: &Request<B>, keep_host: bool, body: ProxyBody) -> Request<ProxyBody> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    if !keep_host {
        let host = match req.headers().get(header::HOST) {
            Some(h) => h.to_str().ok().map(str::to_owned),
            None => req.uri().authority().map(|a| a.as_str().to_owned()),
        };
        if let Some(shadow) = host.and_then(|h| HeaderValue::from_str(&shadow_host(&h)).ok()) {
            copy.headers_mut().insert(header::HOST, shadow.clone());
            if copy.uri().authority().is_some() {
                let mut parts = copy.uri().clone().into_parts();
                parts.authority = shadow.to_str().ok().and_then(|s| s.parse().ok());
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *copy.uri_mut() = uri;
                }
            }
        }
    }
    copy
}

/// `host` with `-shadow` after its host part.
fn shadow_host(host: &str) -> String {
    // A bracketed IPv6 literal's colons are not a port's.
    let port_at = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => Some(i),
        _ => None,
    };
    match port_at {
        Some(i) => format!("{}-shadow{}", &host[..i], &host[i..]),
        None => format!("{host}-shadow"),
    }
}

/// Sends `copy` to `ep` and reads its answer to the end (so an HTTP/1.1 connection goes
/// back to the pool), holding `in_flight` (the mirror cluster's `max_requests`) meanwhile.
pub(crate) async fn send<G: Send>(
    pools: Arc<Pools>,
    ep: Endpoint,
    copy: Request<ProxyBody>,
    peer: std::net::SocketAddr,
    metrics: Arc<ProxyMetrics>,
    in_flight: G,
) {
    let addr = ep.addr;
    let sent = match ep.protocol {
        UpstreamProtocol::Http1 => pools.send_h1(ep, None, copy, peer, false).await,
        UpstreamProtocol::Http2(_) => pools.send_h2(ep, None, copy, peer).await,
    };
    let outcome = match sent {
        Ok(sent) => match sent.response.into_body().collect().await {
            Ok(_) => "answered",
            Err(e) => {
                tracing::debug!(%addr, error = %e, "mirrored request's answer failed");
                "failed"
            }
        },
        Err(e) => {
            tracing::debug!(%addr, error = %e, "mirrored request failed");
            "failed"
        }
    };
    drop(in_flight);
    metrics.mirrored(outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts() {
        assert_eq!(shadow_host("web"), "web-shadow");
        assert_eq!(shadow_host("web.ns:8080"), "web.ns-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn copies_keep_the_request_and_mark_the_host() {
        let req = Request::post("/p?q=1")
            .header("host", "web:80")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let empty = || http_body_util::Empty::new().map_err(|n| match n {}).boxed();
        let c = copy_of(&req, false, empty());
        assert_eq!(c.method(), "POST");
        assert_eq!(c.uri(), "/p?q=1");
        assert_eq!(c.headers()["host"], "web-shadow:80");
        assert_eq!(c.headers()["x-a"], "1");
        let c = copy_of(&req, true, empty());
        assert_eq!(c.headers()["host"], "web:80");
        // An HTTP/2 request's authority is in its URI.
        let req = Request::get("http://web/x").body(()).unwrap();
        let c = copy_of(&req, false, empty());
        assert_eq!(c.uri(), "http://web-shadow/x");
    }

    fn data(b: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(b.as_bytes()))
    }

    #[tokio::test]
    async fn the_tee_copies_each_frame_and_ends_the_copy_cleanly() {
        let (tap, copy) = tap();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
            Ok::<_, BodyError>(data("ab")),
            Ok(data("cd")),
        ]));
        let teed = tee(RequestBody::Own(Box::pin(body)), vec![tap]);
        let main = teed.collect().await.unwrap().to_bytes();
        assert_eq!(main, "abcd");
        let copied = copy.collect().await.unwrap().to_bytes();
        assert_eq!(copied, "abcd");
    }

    #[tokio::test]
    async fn a_copy_that_lags_is_cut_and_the_request_goes_on() {
        let (tap, copy) = tap();
        let frames: Vec<Result<Frame<Bytes>, BodyError>> =
            (0..LAG + 4).map(|_| Ok(data("x"))).collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        // Nobody reads the copy while the request's body is read.
        let teed = tee(RequestBody::Own(Box::pin(body)), vec![tap]);
        let main = teed.collect().await.unwrap().to_bytes();
        assert_eq!(main.len(), LAG + 4, "the request lost nothing");
        let err = copy
            .collect()
            .await
            .expect_err("a cut copy ends with an error");
        assert!(err.to_string().contains("cut"), "{err}");
    }

    #[tokio::test]
    async fn a_request_dropped_early_cuts_its_copies() {
        let (tap, copy) = tap();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
            Ok::<_, BodyError>(data("ab")),
            Ok(data("cd")),
        ]));
        let mut teed = tee(RequestBody::Own(Box::pin(body)), vec![tap]);
        let first = teed.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        drop(teed);
        assert!(copy.collect().await.is_err());
    }
}
