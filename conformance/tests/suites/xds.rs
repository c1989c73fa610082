//! xDS through the real agent: `myelin run` with an Envoy bootstrap whose
//! `dynamic_resources.ads_config` names a static cluster that points at an in-process ADS
//! control plane (`myelin_xds::testing::ControlPlane`), SotW and delta.
//!
//! Where the control plane listens: the agent runs in the node's netns, this test in the root
//! netns. Rather than route between them, the control plane's listening socket is created by a
//! thread that has entered the node's netns (`in_netns`), on the node's own loopback
//! (`127.0.0.1:0`). A socket stays in the netns it was created in, so the test runtime's
//! worker threads (in the root netns) accept and serve on it while the agent dials
//! `127.0.0.1:PORT` inside its netns: no routes or addresses to set up, the port is the
//! kernel's choice (tests run in parallel), and the node's teardown cannot leave anything
//! behind in the root netns. `ControlPlane::restart` binds again, so it runs in the netns too.
//!
//! Needs root and a built `myelin` (`cargo build --release -p myelin`). In CI a test that
//! cannot run fails (see `testbed_ready`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use myelin_testbed::{in_netns, testbed_ready, Mesh, MeshOptions};
use myelin_xds::ads::type_url;
use myelin_xds::testing::ControlPlane;
use serde_json::Value;
use xds_api::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};

/// How long the agent may take to connect, or to notice a dead control plane.
const CONNECT_WAIT: Duration = Duration::from_secs(15);
/// The issue's bound for a dynamic update to show in `/config_dump`, measured from the
/// control plane's update to the first dump that shows it (the dump polls themselves, each a
/// thread entering the netns plus an HTTP request, are inside the bound).
const UPDATE_BOUND: Duration = Duration::from_millis(100);
const NODE_ID: &str = "sidecar~10.77.0.1~xds-test.conformance~conformance.svc.cluster.local";

/// A mesh node whose agent streams ADS from a control plane inside the node's netns. Fields
/// drop in order: the agent stops first, then the control plane, then its runtime.
struct XdsMesh {
    mesh: Mesh,
    cp: ControlPlane,
    rt: tokio::runtime::Runtime,
}

impl XdsMesh {
    /// `api`: `GRPC` (state of the world) or `DELTA_GRPC`.
    fn start(prefix: &str, api: &str) -> Result<XdsMesh> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut mesh = Mesh::build(prefix, MeshOptions::pods(&["web"]))?;
        let cp = in_netns(&mesh.node.netns_path(), || {
            rt.block_on(ControlPlane::start())
        })?;
        let web = mesh.pod("web").ip;
        mesh.options_mut().envoy = bootstrap(api, cp.addr(), &web.to_string());
        mesh.start_agent()?;
        Ok(XdsMesh { mesh, cp, rt })
    }

    fn dump(&self) -> Result<Value> {
        self.mesh.config_dump()
    }

    fn connected(&self) -> Result<f64> {
        self.mesh.metric("myelin_xds_connected", &[])
    }

    /// Waits until `/metrics` says the ADS stream is (`true`) or is not up.
    fn wait_connected(&self, up: bool) -> Result<()> {
        let want = f64::from(u8::from(up));
        wait_until(
            &format!("myelin_xds_connected {want}"),
            CONNECT_WAIT,
            || Ok((self.connected()? == want).then_some(())),
        )
        .with_context(|| format!("agent log:\n{}", self.mesh.log()))
    }

    /// Waits until `/config_dump` lists cluster `name` with `version`; returns how long that
    /// took and the dump.
    fn wait_for_cluster(&self, name: &str, version: &str) -> Result<(Duration, Value)> {
        let t0 = Instant::now();
        let dump = wait_until(
            &format!("cluster {name} version {version} in /config_dump"),
            CONNECT_WAIT,
            || {
                let dump = self.dump()?;
                Ok(
                    (resource(&dump, "clusters", name).map(|c| c["version"].clone())
                        == Some(Value::from(version)))
                    .then_some(dump),
                )
            },
        )?;
        Ok((t0.elapsed(), dump))
    }
}

/// Envoy sections: the node, ADS through static cluster `xds_cluster` (the control plane) and
/// one more static cluster, `static_backend`, to the pod. No static listeners: captured traffic
/// (the self-test's too) passes through as in the spine suite.
fn bootstrap(api: &str, cp: SocketAddr, web: &str) -> String {
    format!(
        r#"node:
  id: "{NODE_ID}"
  cluster: conformance
  metadata: {{ TEST: xds }}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    grpc_services: [ {{ envoy_grpc: {{ cluster_name: xds_cluster }} }} ]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds_cluster
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }} }} ] }} ]
  - name: static_backend
    type: STATIC
    load_assignment:
      cluster_name: static_backend
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: {web}, port_value: 8080 }} }} }} }} ] }} ]
"#,
        ip = cp.ip(),
        port = cp.port(),
    )
}

/// A STATIC cluster with one endpoint.
fn static_cluster(name: &str, ip: &str, port: u32) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: ip.into(),
                                port_specifier: Some(PortSpecifier::PortValue(port)),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A cluster the conversion rejects: `lb_policy: CLUSTER_PROVIDED is not supported`.
fn bad_cluster(name: &str) -> Cluster {
    Cluster {
        lb_policy: LbPolicy::ClusterProvided as i32,
        ..static_cluster(name, "10.77.9.9", 80)
    }
}

/// `dump.xds.<kind>.resources[name == name]`.
fn resource<'a>(dump: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    dump["xds"][kind]["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

/// Polls `f` every 5 ms until it returns `Some` or `timeout` passes.
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("no {what} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ads_updates_reach_config_dump_and_a_bad_cluster_is_nacked_by_name() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let x = XdsMesh::start("xds-sotw", "GRPC")?;
    x.wait_connected(true)?;

    // The node of the bootstrap introduces the agent on the stream.
    let first = x.rt.block_on(x.cp.wait_for_request(|r| r.node.is_some()));
    let node = first.node.expect("matched on it");
    assert_eq!(node.id, NODE_ID);
    assert_eq!(node.cluster, "conformance");
    assert_eq!(node.user_agent_name, "myelin");
    assert!(node.metadata.is_some_and(|m| m.fields.contains_key("TEST")));
    assert!(!first.delta, "api_type GRPC is state of the world");

    // The file's static clusters, in the xDS view with version `static`.
    let dump = x.dump()?;
    for name in ["xds_cluster", "static_backend"] {
        let c = resource(&dump, "clusters", name)
            .with_context(|| format!("static cluster {name} missing: {}", dump["xds"]))?;
        assert_eq!(c["version"], "static", "{c}");
        assert_eq!(c["static"], true, "{c}");
    }
    assert_eq!(
        dump["xds"]["ads"]["server"],
        format!("http://{}", x.cp.addr())
    );
    assert_eq!(dump["xds"]["ads"]["connected"], true);
    // The agent's own fields are still there.
    for field in ["config", "proxy", "splice", "kernel"] {
        assert!(
            dump.get(field).is_some(),
            "{field} missing from /config_dump"
        );
    }

    // One push with a good and a bad cluster: the good one applies, the bad one is NACKed.
    let web = x.mesh.pod("web").ip.to_string();
    let pushed = Instant::now();
    x.cp.update(|b| {
        b.set("web", &static_cluster("web", &web, 8080))
            .set("bad", &bad_cluster("bad"));
    });
    let version = x.cp.version(type_url::CLUSTER);
    let (waited, dump) = x.wait_for_cluster("web", &version)?;
    let to_dump = pushed.elapsed();
    eprintln!(
        "cluster update visible in /config_dump {to_dump:?} after the push (polling {waited:?})"
    );
    assert!(
        to_dump < UPDATE_BOUND,
        "/config_dump showed the update only after {to_dump:?}"
    );
    assert!(resource(&dump, "clusters", "bad").is_none(), "bad applied");
    assert_eq!(resource(&dump, "clusters", "web").unwrap()["static"], false);

    let nack =
        x.rt.block_on(x.cp.wait_for_request(|r| r.type_url == type_url::CLUSTER && r.is_nack()));
    let reason = "bad: lb_policy: CLUSTER_PROVIDED is not supported";
    assert!(nack.error_message().contains(reason), "{nack:?}");
    assert!(!nack.error_message().contains("web"), "{nack:?}");

    // The NACK in /config_dump: the store's (rejected resources) and the client's (as sent).
    let dump = x.dump()?;
    let store_nack = &dump["xds"]["clusters"]["last_nack"];
    assert_eq!(store_nack["rejected"][0]["name"], "bad", "{store_nack}");
    assert!(
        store_nack["message"]
            .as_str()
            .unwrap_or("")
            .contains(reason),
        "{store_nack}"
    );
    let sent = &dump["xds"]["ads"]["types"][type_url::CLUSTER]["last_nack"];
    assert_eq!(sent["nonce"], nack.response_nonce.as_str(), "{sent}");
    assert!(
        sent["message"].as_str().unwrap_or("").contains(reason),
        "{sent}"
    );
    assert!(
        x.mesh
            .metric("myelin_xds_updates_rejected_total", &[("type", "cds")])?
            >= 1.0
    );

    // The control plane goes away: the agent keeps the last good config and says so; it comes
    // back: the agent reconnects and takes new updates again.
    x.rt.block_on(x.cp.kill());
    x.wait_connected(false)?;
    let dump = x.dump()?;
    assert_eq!(
        resource(&dump, "clusters", "web").unwrap()["version"],
        version.as_str()
    );
    assert_eq!(dump["xds"]["ads"]["connected"], false);
    in_netns(&x.mesh.node.netns_path(), || x.rt.block_on(x.cp.restart()))?;
    x.wait_connected(true)?;
    assert!(x.mesh.metric("myelin_xds_reconnects_total", &[])? >= 1.0);
    x.cp.set("web2", &static_cluster("web2", &web, 8081));
    x.wait_for_cluster("web2", &x.cp.version(type_url::CLUSTER))?;
    Ok(())
}

#[test]
fn delta_ads_adds_and_removes_a_cluster() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let x = XdsMesh::start("xds-delta", "DELTA_GRPC")?;
    x.wait_connected(true)?;
    assert!(
        x.cp.requests().iter().all(|r| r.delta),
        "api_type DELTA_GRPC streams delta"
    );
    let web = x.mesh.pod("web").ip.to_string();
    x.cp.set("web", &static_cluster("web", &web, 8080));
    x.wait_for_cluster("web", &x.cp.version(type_url::CLUSTER))?;
    x.cp.remove(type_url::CLUSTER, "web");
    wait_until("removal of cluster web", CONNECT_WAIT, || {
        Ok(resource(&x.dump()?, "clusters", "web")
            .is_none()
            .then_some(()))
    })?;
    // Static resources are not removed by xDS.
    assert!(resource(&x.dump()?, "clusters", "static_backend").is_some());
    Ok(())
}
