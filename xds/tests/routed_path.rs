//! Heap allocations per request on the routed HTTP/1.1 keep-alive and h2c paths, as the
//! benchmark's and a mesh's traffic takes them: a captured connection, a listener and route
//! from xDS (RDS), an EDS cluster, golden metrics on. The client and the upstream are raw
//! sockets with fixed buffers that allocate nothing per request, and the control plane is
//! idle once the config is applied, so every allocation counted in the steady state is the
//! proxy's (or the runtime's for it). The bound is the count measured when it was written:
//! an allocation added to the request path fails this test.
//!
//! The same binary under cachegrind gives instructions per request (benches/RESULTS.md):
//! `N=1000` and `N=3000` runs, `(Ir(3000) - Ir(1000)) / 2000`.

#[path = "../../proxy/tests/counting/mod.rs"]
mod counting;
#[path = "end_to_end/support/mod.rs"]
mod support;

use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use support::*;

/// Allocations per routed HTTP/1.1 request measured on 2026-12-02.
const MEASURED: f64 = 8.0;

/// Allocations per routed h2c request measured on 2026-12-04 with the HTTP/2 server of our
/// own: two more than HTTP/1.1, the stream's shared state and its `FuturesUnordered` node
/// (hyper's server on the `h2` crate took 15; 12 before the `Host` of an HTTP/2 request was
/// written by the HTTP/1.1 client instead of copied into its headers, and the fields
/// repeated from the connection's last request were shared instead of copied).
const MEASURED_H2C: f64 = 10.0;

/// The allocation counter is the process's: the tests take turns.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node with a listener on the VIP's `port` routing everything to an EDS cluster of
/// `upstream`, its config applied.
async fn routed_node(port: u16, upstream: std::net::SocketAddr) -> (ControlPlane, Node) {
    routed_node_with(port, upstream, &[]).await
}

/// [`routed_node`] with more connection manager keys (see [`http_listener_with`]).
async fn routed_node_with(
    port: u16,
    upstream: std::net::SocketAddr,
    hcm: &[&str],
) -> (ControlPlane, Node) {
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        set(b, "l", &http_listener_with("l", port, "r", hcm));
        set(b, "r", &route_to("r", "web"));
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[upstream]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, name) in [
        (type_url::LISTENER, "l"),
        (type_url::ROUTE, "r"),
        (type_url::ENDPOINT, "web"),
    ] {
        node.wait_applied(url, &[name], &cp.version(url)).await;
    }
    (cp, node)
}

/// Every one of `requests` counted as a routed 200 in the golden metrics (a response is
/// recorded as its body ends, which may be just after the client has its last byte).
async fn assert_counted(node: &Node, requests: usize) {
    let counted = || -> f64 {
        node.scrape()
            .lines()
            .filter(|l| {
                l.starts_with("myelin_requests_total{") && l.contains("response_code=\"200\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for _ in 0..100 {
        if counted() == requests as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(counted(), requests as f64, "requests counted");
}

#[tokio::test]
async fn routed_keep_alive_http1_requests_allocate_no_more_than_measured() -> anyhow::Result<()> {
    let _turn = TURNS.lock().await;
    let upstream = counting::raw_upstream().await?;
    let (_cp, node) = routed_node(18400, upstream).await;
    let mut client = node.connect(vip(18400)).await;
    let (per_request, requests) = counting::allocations_per_request(
        &mut client,
        b"GET /x HTTP/1.1\r\nHost: web\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    )
    .await?;
    assert!(
        per_request <= MEASURED + 0.25,
        "{per_request:.2} allocations per request, {MEASURED} when measured"
    );
    assert_counted(&node, requests).await;
    Ok(())
}

/// The same over h2c (prior knowledge), one stream at a time: the mesh HTTP/2 benchmark's
/// hop (an HTTP/2 client, an HTTP/1.1 upstream).
#[tokio::test]
async fn routed_h2c_requests_allocate_no_more_than_measured() -> anyhow::Result<()> {
    let _turn = TURNS.lock().await;
    let upstream = counting::raw_upstream().await?;
    let (_cp, node) = routed_node(18401, upstream).await;
    let mut client = node.connect(vip(18401)).await;
    let (per_request, requests) = counting::h2c_allocations_per_request(&mut client, "web").await?;
    assert!(
        per_request <= MEASURED_H2C + 0.25,
        "{per_request:.2} allocations per h2c request, {MEASURED_H2C} when measured"
    );
    assert_counted(&node, requests).await;
    Ok(())
}

/// The path normalization Istio turns on for every connection manager costs a path that
/// needs none (no dot segment, no `%`, no `//`) no allocation: it is only scanned. Measured
/// against the same node without it, so that this test is about the normalization alone.
#[tokio::test]
async fn path_normalization_of_a_normal_path_allocates_nothing() -> anyhow::Result<()> {
    let _turn = TURNS.lock().await;
    const REQUEST: &[u8] =
        b"GET /static/app.v2/main.min.js HTTP/1.1\r\nHost: web\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
    let mut measured = Vec::new();
    for (port, hcm) in [
        (18402, &[][..]),
        (
            18403,
            &[
                "normalize_path: true",
                "merge_slashes: true",
                "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
            ][..],
        ),
    ] {
        let upstream = counting::raw_upstream().await?;
        let (_cp, node) = routed_node_with(port, upstream, hcm).await;
        let mut client = node.connect(vip(port)).await;
        let (per_request, requests) =
            counting::allocations_per_request(&mut client, REQUEST).await?;
        assert_counted(&node, requests).await;
        measured.push(per_request);
    }
    let [without, with] = measured[..] else {
        unreachable!()
    };
    assert!(
        with <= without + 0.25,
        "{with:.2} allocations per request with path normalization, {without:.2} without"
    );
    Ok(())
}
