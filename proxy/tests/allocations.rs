//! Heap allocations per request on the HTTP/1.1 keep-alive path through the proxy: a
//! client and an upstream that allocate nothing per request (raw sockets, fixed buffers),
//! so every allocation counted in the steady state is the proxy's (or the runtime's for
//! it). The bound is the count measured when it was written; an allocation added to the
//! request path fails this test, and should be a decision, not an accident.
//!
//! The same binary under cachegrind gives instructions per request, deterministic to
//! ~0.1 % where wall-clock runs on the shared VMs move 5-20 % (benches/RESULTS.md):
//! `N=1000` and `N=3000` runs, `(Ir(3000) - Ir(1000)) / 2000`.

mod counting;
mod support;

use support::*;

/// Allocations per request measured on 2026-12-02: the header maps of the request and of
/// the response (2 each), the stream state shared by the request's bodies, the boxed
/// upstream exchange, the request's write buffer upstream, the boxed upstream response
/// body. (12 before that day's changes.)
const MEASURED: f64 = 8.0;

#[tokio::test]
async fn keep_alive_http1_requests_allocate_no_more_than_measured() -> anyhow::Result<()> {
    let upstream = counting::raw_upstream().await?;
    let proxy = TestProxy::start(config()).await?;
    let mut client = proxy.connect(upstream).await?;
    let (per_request, _) = counting::allocations_per_request(
        &mut client,
        b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    )
    .await?;
    assert!(
        per_request <= MEASURED + 0.25,
        "{per_request:.2} allocations per request, {MEASURED} when measured"
    );
    Ok(())
}
