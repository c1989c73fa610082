//! Heap allocations per request on the routed HTTP/1.1 keep-alive path, as the benchmark's
//! and a mesh's traffic takes it: a captured connection, a listener and route from xDS
//! (RDS), an EDS cluster, golden metrics on. The client and the upstream are raw sockets
//! with fixed buffers that allocate nothing per request, and the control plane is idle
//! once the config is applied, so every allocation counted in the steady state is the
//! proxy's (or the runtime's for it). The bound is the count measured when it was
//! written: an allocation added to the request path fails this test.
//!
//! The same binary under cachegrind gives instructions per request (benches/RESULTS.md):
//! `N=1000` and `N=3000` runs, `(Ir(3000) - Ir(1000)) / 2000`.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

/// Allocations per routed request measured on 2026-12-02.
const MEASURED: f64 = 8.0;

#[tokio::test]
async fn routed_keep_alive_http1_requests_allocate_no_more_than_measured() -> anyhow::Result<()> {
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
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
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "l", &http_listener("l", 18400, "r"));
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[upstream_addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, name) in [
        (type_url::LISTENER, "l"),
        (type_url::ROUTE, "r"),
        (type_url::ENDPOINT, "web"),
    ] {
        node.wait_applied(url, &[name], &cp.version(url)).await;
    }
    let mut client = node.connect(vip(18400)).await;
    let mut buf = vec![0u8; 4096];
    let mut request = async || -> anyhow::Result<()> {
        client
            .write_all(b"GET /x HTTP/1.1\r\nHost: web\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n")
            .await?;
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
    // Warm up: pools, metric series, buffers at their working size.
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
    assert!(
        per_request <= MEASURED + 0.25,
        "{per_request:.2} allocations per request, {MEASURED} when measured"
    );
    // Every one of them counted as a routed request of the cluster.
    let counted: f64 = node
        .scrape()
        .lines()
        .filter(|l| l.starts_with("myelin_requests_total{") && l.contains("response_code=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= (n + 500) as f64, "{counted} requests counted");
    Ok(())
}
