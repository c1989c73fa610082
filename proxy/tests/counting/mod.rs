//! Allocations per request, counted: a global allocator that counts, an upstream and a
//! client exchange that allocate nothing per request (raw sockets, fixed buffers), and the
//! steady-state count over `N` requests (env `N`, default 5000) after a warm-up. Shared by
//! `proxy/tests/allocations.rs` and `xds/tests/routed_path.rs` (included by path there).
//!
//! The same binaries under cachegrind give instructions per request (benches/RESULTS.md):
//! `N=1000` and `N=3000` runs, `(Ir(3000) - Ir(1000)) / 2000`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The system allocator, counting allocations (reallocations too).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// An upstream that answers every request head on its one connection with a fixed 200.
pub async fn raw_upstream() -> anyhow::Result<SocketAddr> {
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let addr = upstream.local_addr()?;
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await?;
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        loop {
            let n = s.read(&mut buf[have..]).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            have += n;
            while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello")
                    .await?;
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
            }
        }
    });
    Ok(addr)
}

/// Allocations per keep-alive request `head` on `client` (answered by [`raw_upstream`]
/// through the proxy), over `N` requests after 500 to warm up pools, metric series and
/// buffers; and how many requests were made in all.
pub async fn allocations_per_request(
    client: &mut TcpStream,
    head: &[u8],
) -> anyhow::Result<(f64, usize)> {
    let mut buf = vec![0u8; 4096];
    let request = async || -> anyhow::Result<()> {
        client.write_all(head).await?;
        let mut have = 0;
        while !buf[..have].ends_with(b"hello") {
            let n = client.read(&mut buf[have..]).await?;
            anyhow::ensure!(n > 0, "the proxy closed the connection");
            have += n;
        }
        anyhow::ensure!(
            buf.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(&buf[..have])
        );
        Ok(())
    };
    count(request, "request").await
}

/// Allocations per h2c request on `client` (answered by [`raw_upstream`] through the
/// proxy), one stream at a time on one connection, as [`allocations_per_request`] counts
/// HTTP/1.1: 500 requests to warm up, then `N`; and how many requests were made in all.
///
/// The client is a few HTTP/2 frames written by hand into fixed buffers, so that it
/// allocates nothing per request (the `h2` crate's client would be most of the count):
/// the preface, then per request one HEADERS frame, `GET /x` with `:authority` and
/// `user-agent` indexed in the server's HPACK table after the first request as h2load
/// does, and the response read frame by frame to the stream's end. It answers SETTINGS and
/// PING and gives the connection's receive window back; anything else fails the count.
#[allow(dead_code)] // `proxy/tests/allocations.rs` has no routed h2c test
pub async fn h2c_allocations_per_request(
    client: &mut TcpStream,
    authority: &str,
) -> anyhow::Result<(f64, usize)> {
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;
    fn frame_header(buf: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
        buf.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        buf.extend_from_slice(&[kind, flags]);
        buf.extend_from_slice(&stream.to_be_bytes());
    }
    anyhow::ensure!(authority.len() < 127, "a one-byte HPACK length");
    // The first request's header block: `:method GET` (static 2), `:scheme http` (6), then
    // `:authority`, `:path` and `user-agent` as literals with incremental indexing
    // (static names 1, 4 and 58). Later requests: the three from the dynamic table, the
    // newest (user-agent) at 62.
    let mut first = vec![0x82, 0x86, 0x41, authority.len() as u8];
    first.extend_from_slice(authority.as_bytes());
    first.extend_from_slice(&[0x44, 2, b'/', b'x', 0x7a, 1, b't']);
    let indexed = [0x82, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62];

    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    frame_header(&mut out, 0, 0x4, 0, 0);
    client.write_all(&out).await?;

    let mut buf = vec![0u8; 1 << 16];
    let mut have = 0;
    let mut next_stream = 1u32;
    let mut unacked_data = 0usize;
    let request = async || -> anyhow::Result<()> {
        let stream = next_stream;
        next_stream += 2;
        let block: &[u8] = if stream == 1 { &first } else { &indexed };
        out.clear();
        frame_header(&mut out, block.len(), 0x1, END_STREAM | END_HEADERS, stream);
        out.extend_from_slice(block);
        client.write_all(&out).await?;
        let mut status_ok = false;
        let mut body = 0;
        loop {
            // One whole frame at the front of `buf`.
            while have < 9 || have < 9 + (u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize)
            {
                let n = client.read(&mut buf[have..]).await?;
                anyhow::ensure!(n > 0, "the proxy closed the connection");
                have += n;
            }
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = &buf[9..9 + len];
            out.clear();
            let mut done = false;
            match kind {
                // DATA
                0x0 if id == stream => {
                    body += len;
                    unacked_data += len;
                    done = flags & END_STREAM != 0;
                }
                // HEADERS: `:status 200` is static entry 8, the first field of the block.
                0x1 if id == stream => {
                    anyhow::ensure!(flags & END_HEADERS != 0, "CONTINUATION not expected");
                    status_ok = payload.first() == Some(&0x88);
                    done = flags & END_STREAM != 0;
                }
                // SETTINGS: acknowledged; an ACK of ours needs nothing.
                0x4 if flags & ACK == 0 => frame_header(&mut out, 0, 0x4, ACK, 0),
                0x4 => {}
                // PING: answered with its payload.
                0x6 if flags & ACK == 0 => {
                    frame_header(&mut out, 8, 0x6, ACK, 0);
                    out.extend_from_slice(payload);
                }
                // WINDOW_UPDATE: our requests have no bodies.
                0x8 => {}
                _ => anyhow::bail!(
                    "unexpected frame: type {kind}, flags {flags:#x}, stream {id}, {len} bytes"
                ),
            }
            buf.copy_within(9 + len..have, 0);
            have -= 9 + len;
            // The connection's receive window back once half of the default is used.
            if unacked_data >= 32 * 1024 {
                frame_header(&mut out, 4, 0x8, 0, 0);
                out.extend_from_slice(&(unacked_data as u32).to_be_bytes());
                unacked_data = 0;
            }
            if !out.is_empty() {
                client.write_all(&out).await?;
            }
            if done {
                anyhow::ensure!(status_ok, "stream {stream}: the response was not a 200");
                anyhow::ensure!(body == 5, "stream {stream}: {body} bytes of body, not 5");
                return Ok(());
            }
        }
    };
    count(request, "h2c request").await
}

/// Allocations per call of `request`: 500 calls to warm up pools, metric series and
/// buffers, then `N` counted; and how many calls were made in all.
async fn count(
    mut request: impl AsyncFnMut() -> anyhow::Result<()>,
    what: &str,
) -> anyhow::Result<(f64, usize)> {
    for _ in 0..500 {
        request().await?;
    }
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        request().await?;
    }
    let per_request = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    eprintln!("{per_request:.2} allocations per {what}");
    Ok((per_request, 500 + n))
}
