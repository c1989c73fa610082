//! The `codec-floor` target's proxy: the L7 benchmark's hop without hyper's connections, to
//! price the "HTTP codec of our own" option for the L7 CPU targets (issue 4). Only what the
//! benchmark sends is handled (`Content-Length` bodies; over HTTP/2, requests without a body);
//! anything else ends the connection or is a 502. Not a product, a measurement.
//!
//! - [`serve_h1`]: one task per client connection parses each request head with `httparse`
//!   (what hyper uses underneath), writes the edited head and the body to its own upstream
//!   connection (opened at the first request and kept, as haproxy pairs them), parses the
//!   response head and writes it and the body back, all in that task: no channel, no second
//!   task, no `http::HeaderMap`.
//! - [`serve_h2`]: the `h2` crate's server with every stream served in the connection's task
//!   (hyper spawns a task per stream), each request sent upstream by [`exchange`].
//! - [`exchange`]: one bodiless request written upstream and its response read back in the
//!   caller's future, on a pooled connection (hyper's client runs a task per connection and
//!   hands requests over a channel).

use std::net::SocketAddr;

use anyhow::{bail, Context as _, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEADERS: usize = 64;

/// Serves one client connection until it closes or sends something this floor does not take.
pub async fn serve_h1(mut down: TcpStream, backend: SocketAddr) -> Result<()> {
    let mut inbuf = BytesMut::with_capacity(8 * 1024);
    let mut up: Option<(TcpStream, BytesMut)> = None;
    let mut out: Vec<u8> = Vec::with_capacity(4 * 1024);
    loop {
        // The request head.
        let (head_len, body_len, keep_alive) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&inbuf)? {
                httparse::Status::Complete(n) => {
                    out.clear();
                    out.extend_from_slice(req.method.context("method")?.as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(req.path.context("path")?.as_bytes());
                    out.extend_from_slice(b" HTTP/1.1\r\n");
                    let mut keep_alive = req.version == Some(1);
                    let body_len = copy_headers(req.headers, &mut out, &mut keep_alive)?;
                    out.extend_from_slice(b"\r\n");
                    break (n, body_len, keep_alive);
                }
                httparse::Status::Partial => {
                    if down.read_buf(&mut inbuf).await? == 0 {
                        return Ok(());
                    }
                }
            }
        };
        inbuf.advance(head_len);
        let now = body_len.min(inbuf.len());
        out.extend_from_slice(&inbuf[..now]);
        inbuf.advance(now);
        let (upstream, upbuf) = match &mut up {
            Some(u) => u,
            None => {
                let s = TcpStream::connect(backend).await?;
                s.set_nodelay(true)?;
                up.insert((s, BytesMut::with_capacity(8 * 1024)))
            }
        };
        upstream.write_all(&out).await?;
        copy_body(&mut down, upstream, body_len - now).await?;

        // The response head.
        let (head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(upbuf)? {
                httparse::Status::Complete(n) => {
                    out.clear();
                    out.extend_from_slice(b"HTTP/1.1 ");
                    let code = resp.code.context("status")?;
                    out.extend_from_slice(itoa3(code).as_slice());
                    out.push(b' ');
                    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
                    out.extend_from_slice(b"\r\n");
                    let mut upstream_keep_alive = resp.version == Some(1);
                    let len = copy_headers(resp.headers, &mut out, &mut upstream_keep_alive)?;
                    if !upstream_keep_alive {
                        bail!("the backend closes its connections: not a case of this floor");
                    }
                    if !keep_alive {
                        out.extend_from_slice(b"connection: close\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    break (n, len);
                }
                httparse::Status::Partial => {
                    if upstream.read_buf(upbuf).await? == 0 {
                        bail!("the backend closed");
                    }
                }
            }
        };
        upbuf.advance(head_len);
        let now = body_len.min(upbuf.len());
        out.extend_from_slice(&upbuf[..now]);
        upbuf.advance(now);
        down.write_all(&out).await?;
        copy_body(upstream, &mut down, body_len - now).await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Copies the end-to-end headers to `out` as `name: value` lines; returns the
/// `Content-Length` (0 without one). Hop-by-hop headers stay behind; `Connection: close`
/// clears `keep_alive`.
fn copy_headers(
    headers: &[httparse::Header<'_>],
    out: &mut Vec<u8>,
    keep_alive: &mut bool,
) -> Result<usize> {
    let mut len = 0;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                if token.trim_ascii().eq_ignore_ascii_case(b"close") {
                    *keep_alive = false;
                } else if token.trim_ascii().eq_ignore_ascii_case(b"keep-alive") {
                    *keep_alive = true;
                }
            }
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("transfer-encoding: not a case of this floor");
        }
        if name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("proxy-connection")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("te")
        {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)?.trim().parse()?;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    Ok(len)
}

/// The rest of a body: `n` bytes from `from` to `to`.
async fn copy_body(from: &mut TcpStream, to: &mut TcpStream, n: usize) -> Result<()> {
    if n > 0 {
        let copied = tokio::io::copy(&mut from.take(n as u64), to).await?;
        if copied < n as u64 {
            bail!("body cut short");
        }
    }
    Ok(())
}

fn itoa3(code: u16) -> [u8; 3] {
    [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

/// Idle upstream connections of [`exchange`], with their read buffers.
pub type Idle = std::sync::Mutex<Vec<(TcpStream, BytesMut)>>;

/// One request (its head: no body) sent upstream and its response read back in the caller's
/// future, on a connection from `idle` (else a new one), given back after the response.
pub async fn exchange(
    idle: &Idle,
    backend: SocketAddr,
    req: &http::request::Parts,
) -> Result<http::Response<Bytes>> {
    let found = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let (mut upstream, mut upbuf) = match found {
        Some(c) => c,
        None => {
            let s = TcpStream::connect(backend).await?;
            s.set_nodelay(true)?;
            (s, BytesMut::with_capacity(8 * 1024))
        }
    };
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(a) = req.uri.authority() {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(a.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    upstream.write_all(&out).await?;
    let (resp, head_len, body_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&upbuf)? {
            httparse::Status::Complete(n) => {
                let mut resp = http::Response::builder().status(parsed.code.context("status")?);
                let mut len = 0;
                for h in parsed.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection")
                        || h.name.eq_ignore_ascii_case("keep-alive")
                    {
                        continue;
                    }
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)?.trim().parse()?;
                        continue;
                    }
                    resp = resp.header(h.name, h.value);
                }
                break (resp, n, len);
            }
            httparse::Status::Partial => {
                if upstream.read_buf(&mut upbuf).await? == 0 {
                    bail!("the backend closed");
                }
            }
        }
    };
    upbuf.advance(head_len);
    while upbuf.len() < body_len {
        if upstream.read_buf(&mut upbuf).await? == 0 {
            bail!("body cut short");
        }
    }
    let body = upbuf.split_to(body_len).freeze();
    idle.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((upstream, upbuf));
    Ok(resp.body(body)?)
}

/// An h2c connection served with the `h2` crate directly, every stream in the connection's
/// own task, each request through [`exchange`] (requests without a body; others get a 502).
pub async fn serve_h2(stream: TcpStream, idle: &Idle, backend: SocketAddr) -> Result<()> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut conn = h2::server::handshake(stream).await?;
    let mut inflight = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => inflight.push(answer(req, respond, idle, backend)),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            Some(_) = inflight.next(), if !inflight.is_empty() => {}
        }
    }
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    idle: &Idle,
    backend: SocketAddr,
) {
    let (parts, body) = req.into_parts();
    let resp = if body.is_end_stream() {
        exchange(idle, backend, &parts).await.ok()
    } else {
        None
    };
    let Some(resp) = resp else {
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
        let _ = respond.send_response(r, true);
        return;
    };
    let (parts, body) = resp.into_parts();
    let empty = body.is_empty();
    if let Ok(mut send) = respond.send_response(http::Response::from_parts(parts, ()), empty) {
        if !empty {
            let _ = send.send_data(body, true);
        }
    }
}
