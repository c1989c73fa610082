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
    let mut request = async || -> anyhow::Result<()> {
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
    eprintln!("{per_request:.2} allocations per request");
    Ok((per_request, 500 + n))
}
