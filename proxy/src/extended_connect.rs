//! Extended CONNECT (RFC 8441) from an HTTP/2 client to an HTTP/1.1 upstream: a WebSocket
//! over HTTP/2 (or any `:protocol`) becomes an HTTP/1.1 `Upgrade`, as Envoy downgrades it,
//! and the tunnel's bytes ride the HTTP/2 stream's DATA frames both ways.
//!
//! The request: `CONNECT` with `:protocol P` becomes `GET` with `Upgrade: P` and
//! `Connection: upgrade` (path and authority kept). RFC 8441 drops WebSocket's key
//! exchange, but an HTTP/1.1 WebSocket server insists on it (Envoy issue #8547, where the
//! upstream answered 400): for `websocket` without a client-supplied `Sec-WebSocket-Key`
//! one is generated (and `Sec-WebSocket-Version: 13` added when missing), the upstream's
//! `Sec-WebSocket-Accept` is checked against it (a mismatch is a 502 `UPE`, the handshake
//! did not complete) and removed from the answer, which the client did not ask for.
//!
//! The answer: the upstream's `101` becomes `200` (its other headers kept, hop-by-hop ones
//! stripped). A 2xx without the switch is a 502 `UPE` (Envoy passes it on, but to an
//! extended CONNECT a 2xx means the tunnel is open); any other status goes back as it is,
//! body and all, and no tunnel is made.
//! After a `200` one task copies the request body's DATA to the upgraded connection and the
//! connection's bytes into the response body: the client ending its stream half-closes the
//! upstream side (the answer goes on until the upstream closes), the upstream closing ends
//! the response (END_STREAM), and a reset of the stream ends both.

use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::{BodyError, ProxyBody};
use crate::h2server::ConnectProtocol;

/// RFC 6455 section 1.3.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
pub(crate) const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
/// How much of the upstream's bytes one DATA frame of the answer carries at most.
const READ_CHUNK: usize = 16 << 10;

/// The `Sec-WebSocket-Key` Myelin put on a downgraded WebSocket request (none when the
/// client sent its own, which is then the client's to check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GeneratedKey(HeaderValue);

/// Turns an extended CONNECT for `protocol` into the HTTP/1.1 upgrade request of the same
/// meaning (see the module's docs).
pub(crate) fn to_h1_upgrade<B>(
    req: &mut Request<B>,
    protocol: &ConnectProtocol,
) -> Option<GeneratedKey> {
    *req.method_mut() = Method::GET;
    let headers = req.headers_mut();
    // `:protocol` is a token (`ConnectProtocol::parse`), so a valid field value.
    if let Ok(v) = HeaderValue::from_str(protocol.as_str()) {
        headers.insert(header::UPGRADE, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if !protocol.as_str().eq_ignore_ascii_case("websocket")
        || headers.contains_key(SEC_WEBSOCKET_KEY)
    {
        return None;
    }
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(nonce))
        .expect("base64 is a valid header value");
    headers.insert(SEC_WEBSOCKET_KEY, key.clone());
    if !headers.contains_key(SEC_WEBSOCKET_VERSION) {
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    Some(GeneratedKey(key))
}

/// The headers of the `101` an HTTP/1.1 client gets for its upgrade of `kind` carried as
/// extended CONNECT (RFC 8441, the reverse of [`to_h1_upgrade`]): `Upgrade`, `Connection`,
/// and for `websocket` the `Sec-WebSocket-Accept` for the client's `key` unless the
/// upstream gave one.
pub(crate) fn switch_headers(headers: &mut HeaderMap, kind: &str, key: Option<&HeaderValue>) {
    if let Ok(v) = HeaderValue::from_str(kind) {
        headers.insert(header::UPGRADE, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let (true, Some(key), false) = (
        kind.eq_ignore_ascii_case("websocket"),
        key,
        headers.contains_key(SEC_WEBSOCKET_ACCEPT),
    ) {
        let accept = accept_for(key.as_bytes());
        if let Ok(v) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
    }
}

/// The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 section 4.2.2).
fn expected_accept(key: &GeneratedKey) -> String {
    accept_for(key.0.as_bytes())
}

fn accept_for(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Checks the upstream's `101` against the key Myelin generated (exactly one
/// `Sec-WebSocket-Accept`, the right one) and removes that header; `Err`: why the
/// handshake failed.
pub(crate) fn accept_handshake<B>(
    resp: &mut Response<B>,
    key: Option<&GeneratedKey>,
) -> Result<(), &'static str> {
    let Some(key) = key else {
        return Ok(());
    };
    let mut accepts = resp.headers().get_all(SEC_WEBSOCKET_ACCEPT).iter();
    let (Some(accept), None) = (accepts.next(), accepts.next()) else {
        return Err("the upstream's 101 has no single Sec-WebSocket-Accept");
    };
    if accept.as_bytes() != expected_accept(key).as_bytes() {
        return Err("the upstream's Sec-WebSocket-Accept does not match the key sent");
    }
    resp.headers_mut().remove(SEC_WEBSOCKET_ACCEPT);
    Ok(())
}

/// The tunnel behind an accepted upgrade: spawns the task that moves the bytes (see the
/// module's docs) and returns the answer's body. `sender`: what keeps the upstream side
/// alive until hyper has handed it over (an HTTP/1.1 connection's sender, an HTTP/2
/// answer's body).
pub(crate) fn tunnel<K: Send + 'static>(
    upgraded: OnUpgrade,
    sender: K,
    from_client: ProxyBody,
) -> ProxyBody {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BodyError>>(2);
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(io) => io,
            Err(e) => {
                debug!(error = %e, "extended CONNECT: the upstream upgrade failed");
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        pump(TokioIo::new(io), from_client, tx).await;
        drop(sender);
    });
    TunnelBody(rx).boxed()
}

/// The tunnel of an HTTP/2 stream to a connection already open (a `CONNECT` the route
/// terminates): the stream's DATA (`from_client`) to `io`, `io`'s bytes into the returned
/// body, by one task, as [`tunnel`] does.
pub(crate) fn tunnel_io<T>(io: T, from_client: ProxyBody) -> ProxyBody
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, BodyError>>(2);
    tokio::spawn(pump(io, from_client, tx));
    TunnelBody(rx).boxed()
}

/// Moves a tunnel's bytes until it is over (see the module's docs).
async fn pump<T>(io: T, mut from_client: ProxyBody, tx: mpsc::Sender<Result<Bytes, BodyError>>)
where
    T: AsyncRead + AsyncWrite,
{
    let (mut read, mut write) = tokio::io::split(io);
    let upward = async {
        while let Some(frame) = from_client.frame().await {
            // Trailers carry nothing for the tunnel.
            if let Ok(data) = frame?.into_data() {
                write.write_all(&data).await?;
            }
        }
        write.shutdown().await?;
        Ok::<_, BodyError>(())
    };
    let downward = async {
        loop {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match read.read_buf(&mut buf).await {
                Ok(0) => return,
                Ok(_) => {
                    if tx.send(Ok(buf.freeze())).await.is_err() {
                        return; // the stream is gone
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
    };
    tokio::pin!(upward, downward);
    tokio::select! {
        // The upstream closed, or the client's stream is gone: the tunnel is over.
        () = &mut downward => {}
        r = &mut upward => match r {
            // The client is done sending; the answer goes on.
            Ok(()) => downward.await,
            Err(e) => debug!(error = %e, "tunnel: the client's side failed"),
        },
    }
}

/// The answer's body: the upstream's bytes as they come.
struct TunnelBody(mpsc::Receiver<Result<Bytes, BodyError>>);

impl Body for TunnelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.0.poll_recv(cx).map(|r| r.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(protocol: &str, fields: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri("http://chat.test/socket?room=1");
        for (n, v) in fields {
            req = req.header(*n, *v);
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut()
            .insert(ConnectProtocol::parse(protocol.as_bytes()).unwrap());
        req
    }

    fn upgrade(req: &mut Request<()>) -> Option<GeneratedKey> {
        let p = req.extensions_mut().remove::<ConnectProtocol>().unwrap();
        to_h1_upgrade(req, &p)
    }

    #[test]
    fn the_key_example_of_rfc_6455() {
        let key = GeneratedKey(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(expected_accept(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// The reverse direction: an HTTP/1.1 client's upgrade answered from an extended
    /// CONNECT's `200`: the switch headers, and the accept for the client's key unless the
    /// upstream gave one; other upgrades get no accept.
    #[test]
    fn an_h1_upgrade_gets_its_switch_headers_and_accept() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut h = HeaderMap::new();
        switch_headers(&mut h, "websocket", Some(&key));
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut given = HeaderMap::new();
        given.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("upstream's"));
        switch_headers(&mut given, "websocket", Some(&key));
        assert_eq!(given["sec-websocket-accept"], "upstream's");
        let mut other = HeaderMap::new();
        switch_headers(&mut other, "h2c-like", Some(&key));
        assert_eq!(other["upgrade"], "h2c-like");
        assert!(!other.contains_key(SEC_WEBSOCKET_ACCEPT));
    }

    #[test]
    fn a_websocket_connect_becomes_an_upgrade_with_a_fresh_key() {
        let mut req = connect("websocket", &[("sec-websocket-protocol", "chat")]);
        let key = upgrade(&mut req).expect("a key is generated");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "http://chat.test/socket?room=1");
        let h = req.headers();
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-version"], "13");
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert_eq!(h["sec-websocket-key"], key.0);
        let nonce = base64::engine::general_purpose::STANDARD
            .decode(key.0.as_bytes())
            .unwrap();
        assert_eq!(nonce.len(), 16);
        // Another request, another nonce.
        let other = upgrade(&mut connect("websocket", &[])).unwrap();
        assert_ne!(other, key);
    }

    #[test]
    fn a_client_key_or_another_protocol_is_left_alone() {
        let mut req = connect(
            "websocket",
            &[("sec-websocket-key", "abc"), ("sec-websocket-version", "8")],
        );
        assert_eq!(upgrade(&mut req), None);
        assert_eq!(req.headers()["sec-websocket-key"], "abc");
        assert_eq!(req.headers()["sec-websocket-version"], "8");

        let mut req = connect("connect-udp", &[]);
        assert_eq!(upgrade(&mut req), None);
        assert_eq!(req.headers()["upgrade"], "connect-udp");
        assert!(!req.headers().contains_key("sec-websocket-key"));
    }

    #[test]
    fn the_upstream_accept_is_checked_and_removed() {
        let key = GeneratedKey(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        let answer = |accepts: &[&str]| {
            let mut r = Response::builder().status(101);
            for a in accepts {
                r = r.header("sec-websocket-accept", *a);
            }
            r.header("x-server", "ws").body(()).unwrap()
        };
        let mut ok = answer(&["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]);
        assert_eq!(accept_handshake(&mut ok, Some(&key)), Ok(()));
        assert!(!ok.headers().contains_key("sec-websocket-accept"));
        assert_eq!(ok.headers()["x-server"], "ws");

        for bad in [
            &[][..],
            &["AAAAAAAAAAAAAAAAAAAAAAAAAAA="],
            &[
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            ],
        ] {
            assert!(
                accept_handshake(&mut answer(bad), Some(&key)).is_err(),
                "{bad:?}"
            );
        }
        // The client's own key: the client checks.
        let mut theirs = answer(&["whatever"]);
        assert_eq!(accept_handshake(&mut theirs, None), Ok(()));
        assert_eq!(theirs.headers()["sec-websocket-accept"], "whatever");
    }
}
