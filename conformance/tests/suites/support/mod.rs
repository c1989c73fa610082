//! What the L7 suites (`l7.rs`, `resilience.rs`) share: services as static Envoy resources
//! (a listener per service port, an inline route, a STATIC cluster of pods), a node whose
//! agent serves them, waiting for servers, curl, and the proxy's request counter.
//!
//! Clients dial [`VIP`], an address that no interface has: only the listener knows the
//! service, so every answer proves that the proxy routed the request (a passthrough to the
//! VIP would go nowhere).

// Each suite uses a part of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use myelin_testbed::{ensure_success, in_netns, Mesh, MeshOptions, Pod};

/// The service address the clients dial (see the module doc).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
/// How long a server may take to start listening.
pub const LISTEN_WAIT: Duration = Duration::from_secs(15);
/// A bound for each client run (they take well under a second when things work).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// One service: a listener on `0.0.0.0:port` routing everything to a STATIC cluster of
/// `endpoints`, spoken to over HTTP/2 (h2c) when `http2`, else HTTP/1.1.
#[derive(Debug, Default)]
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
    pub http2: bool,
    /// More keys of the route action, after `cluster`, as YAML flow-mapping entries (e.g.
    /// `timeout: 5s, retry_policy: { retry_on: 5xx }`).
    pub route: String,
    /// More keys of the cluster, as YAML lines at the cluster's indentation (four spaces,
    /// e.g. `"    outlier_detection: { consecutive_5xx: 3 }\n"`).
    pub cluster: String,
    /// More keys of the HTTP connection manager, as YAML lines at its indentation (ten
    /// spaces, e.g. `"          http2_protocol_options: { allow_connect: true }\n"`).
    pub hcm: String,
}

/// The Envoy `static_resources` section for `services`.
pub fn envoy(services: &[Service]) -> String {
    let mut listeners = String::new();
    let mut clusters = String::new();
    for s in services {
        let Service {
            name, port, hcm, ..
        } = s;
        let route = if s.route.is_empty() {
            String::new()
        } else {
            format!(", {}", s.route)
        };
        write!(
            listeners,
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {port} }} }}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          upgrade_configs: [{{ upgrade_type: websocket }}]
{hcm}          route_config:
            name: {name}
            virtual_hosts:
            - name: {name}
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {name}{route} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        )
        .expect("writing to a String");
        write!(
            clusters,
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:"#
        )
        .expect("writing to a String");
        for ep in &s.endpoints {
            write!(
                clusters,
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
                ep.ip(),
                ep.port()
            )
            .expect("writing to a String");
        }
        if s.http2 {
            clusters.push_str(
                r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }"#,
            );
        }
        if !s.cluster.is_empty() {
            clusters.push('\n');
            clusters.push_str(s.cluster.trim_end_matches('\n'));
        }
    }
    format!("static_resources:\n  listeners:{listeners}\n  clusters:{clusters}\n")
}

/// A node with a `client` pod and the `servers` pods, all with the `splice` policy, whose
/// agent serves `services` (built from the pods, whose addresses exist once the node does).
pub fn start_mesh(
    prefix: &str,
    servers: &[&str],
    splice: &str,
    services: impl FnOnce(&Mesh) -> Vec<Service>,
) -> Result<Mesh> {
    let pods: Vec<&str> = std::iter::once("client")
        .chain(servers.iter().copied())
        .collect();
    let opts = pods
        .iter()
        .fold(MeshOptions::pods(&pods), |o, p| o.policy(p, splice));
    let mut mesh = Mesh::build(prefix, opts)?;
    let config = envoy(&services(&mesh));
    mesh.options_mut().envoy = config;
    mesh.start_agent()?;
    Ok(mesh)
}

/// `pod`'s address with `port`.
pub fn endpoint(mesh: &Mesh, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::new(mesh.pod(pod).ip.into(), port)
}

/// The service address for `port`.
pub fn vip(port: u16) -> String {
    format!("{VIP}:{port}")
}

/// Waits until something accepts on `pod`'s `port`, connecting from a thread inside the pod's
/// netns (the test process is outside the node's cgroup, so this is not captured).
pub fn wait_listening(pod: &Pod, port: u16) -> Result<()> {
    let addr = SocketAddr::new(pod.ip.into(), port);
    in_netns(&pod.netns_path(), || {
        let deadline = Instant::now() + LISTEN_WAIT;
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("nothing listening on {addr} in pod {}: {e}", pod.name)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })?
}

/// A directory for files of one test, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(mesh: &Mesh) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("{}-l7", mesh.node.name));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What curl reported for one request.
#[derive(Debug)]
pub struct Fetched {
    pub code: u16,
    /// `%{http_version}`: `1.1` or `2`.
    pub version: String,
    pub body: Vec<u8>,
}

/// Runs curl in `pod` with `args` before the URL; the body goes to `out` and is read back.
pub fn curl(pod: &Pod, args: &[&str], url: &str, out: &Path) -> Result<Fetched> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o"])
        .arg(out)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url);
    let what = format!("curl {} {url}", args.join(" "));
    let output = pod.run_timeout(cmd, CLIENT_TIMEOUT)?;
    ensure_success(&output, &what)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (code, version) = stdout
        .trim()
        .split_once(' ')
        .with_context(|| format!("{what}: unexpected -w output {stdout:?}"))?;
    Ok(Fetched {
        code: code
            .parse()
            .with_context(|| format!("{what}: {stdout:?}"))?,
        version: version.to_owned(),
        body: std::fs::read(out).unwrap_or_default(),
    })
}

/// `myelin_proxy_requests_total` of the client workload with `code`.
pub fn client_requests(mesh: &Mesh, code: &str) -> Result<f64> {
    mesh.metric(
        "myelin_proxy_requests_total",
        &[("source_workload", "client"), ("response_code", code)],
    )
}
