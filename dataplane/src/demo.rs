//! `myelin demo`: the standalone demo on this machine.
//!
//! Builds a node out of network namespaces and cgroups (a client pod and two server pods),
//! starts the agent in it with a standalone config, sends HTTP/1.1 (curl) and raw TCP
//! (a blocking client) through the mesh, prints what happened, and removes everything it
//! made, also on Ctrl-C or error (the test bed's `Node` cleans up on drop). A second node
//! with one pod, linked to the first, shows a cross-node request over HBONE (mutual TLS
//! with certificates from a CA the demo creates), and the source principal the
//! destination node saw.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use myelin_testbed::{http_get, in_netns, metric_sum, podtool_command, Node, Proc};
use serde::Serialize;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// The demo's summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub tcp_exchanges_ok: u64,
    pub tcp_exchanges_failed: u64,
    pub captured_connections: u64,
    pub spliced_bytes: u64,
    pub spliced_messages: u64,
    /// Messages that found no spliced peer and went over TCP (whole agent lifetime).
    pub splice_misses_total: u64,
    /// First messages that had to wait for their peer socket (whole agent lifetime).
    pub splice_peer_waits_total: u64,
    pub splice_mode: String,
    pub splice_reason: String,
    /// Which workloads are spliced.
    pub spliced_workloads: Vec<String>,
    /// Golden metrics (`myelin_requests_total`) of the curl phase: requests per workload pair
    /// and response code, with their rate over that phase.
    pub golden_requests: Vec<PairCount>,
    /// How long the curl phase took (the rates' window), in seconds.
    pub http_window_s: f64,
    /// Median request duration, from `myelin_request_duration_seconds`.
    pub http_p50_ms: Option<f64>,
    /// Golden metrics of the opaque TCP connections (`myelin_tcp_*`) during the demo.
    pub golden_tcp: Vec<TcpPair>,
    /// The agent's startup self-test runs (see `/config_dump`).
    pub selftest: serde_json::Value,
    /// The cross-node part (client on node 1 -> db on node 2, over HBONE).
    pub cross_node: Option<CrossNode>,
}

/// Requests from node 1's client to node 2's db pod, through both agents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossNode {
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// As node 2 (the destination) reports the tunnels: the source principal from the
    /// client certificate, and the connection security policy.
    pub source_principal: String,
    pub source_workload: String,
    pub connection_security_policy: String,
    /// mTLS handshakes node 2's HBONE server completed.
    pub handshakes: u64,
}

/// One row of the golden-metrics table: a source -> destination workload pair and a code.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairCount {
    /// `namespace/workload`.
    pub source: String,
    pub destination: String,
    pub response_code: String,
    pub requests: u64,
    /// Requests per second over the window.
    pub rate: f64,
}

/// Opaque TCP between one workload pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpPair {
    pub source: String,
    pub destination: String,
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;
const HTTP_REQUESTS: usize = 50;
const TCP_EXCHANGES: u64 = 200;
const CROSS_NODE_REQUESTS: u64 = 10;

/// Runs the demo. Returns whether every request succeeded.
pub fn run(json: bool, no_splice: bool) -> anyhow::Result<bool> {
    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    myelin_testbed::require_root()?;
    myelin_testbed::check_prerequisites(&["ip", "curl"])?;
    let say = |s: &str| {
        if !json {
            eprintln!("demo: {s}");
        }
    };

    let mut node = Node::new("demo").context("building the demo node")?;
    say(&format!(
        "node {} at {} (netns + cgroup {})",
        node.name,
        node.addr,
        node.cgroup_path().display()
    ));
    let client = node.add_pod("client")?;
    let server_a = node.add_pod("server-a")?;
    let server_b = node.add_pod("server-b")?;
    for p in [&client, &server_a, &server_b] {
        say(&format!("pod {:<9} {}", p.name, p.ip));
    }

    let mut http = podtool_command()?;
    http.args([
        "http-server",
        "--port",
        &HTTP_PORT.to_string(),
        "--name",
        "server-a",
    ]);
    http.stdout(std::process::Stdio::null());
    let _http_server = server_a.spawn(http)?;
    let mut echo = podtool_command()?;
    echo.args(["echo-server", "--port", &TCP_PORT.to_string()]);
    echo.stdout(std::process::Stdio::null());
    let _echo_server = server_b.spawn(echo)?;

    // The second node, linked to the first, and the CA both agents issue from.
    let mut node2 = Node::with_config(
        "demo2",
        myelin_testbed::NodeConfig {
            addr: std::net::Ipv4Addr::new(10, 78, 0, 1),
            pod_subnet: std::net::Ipv4Addr::new(10, 78, 1, 0),
        },
    )
    .context("building the second demo node")?;
    let db = node2.add_pod("db")?;
    node.link(&node2, 7)?;
    say(&format!(
        "node {} at {}: pod db {} (linked to the first node)",
        node2.name, node2.addr, db.ip
    ));
    let mut db_http = podtool_command()?;
    db_http.args([
        "http-server",
        "--port",
        &HTTP_PORT.to_string(),
        "--name",
        "db",
    ]);
    db_http.stdout(std::process::Stdio::null());
    let _db_server = db.spawn(db_http)?;

    let dir = std::env::temp_dir().join(&node.name);
    std::fs::create_dir_all(&dir)?;
    let ca = myelin_proxy::tls::ca::Ca::generate("cluster.local", Duration::from_secs(24 * 3600))?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    std::fs::write(&ca_cert, ca.cert_pem())?;
    std::fs::write(&ca_key, ca.key_pem())?;
    let mtls = format!(
        "ca_cert: {}, ca_key: {}",
        ca_cert.display(),
        ca_key.display()
    );
    let config2 = dir.join("mesh2.yaml");
    std::fs::write(
        &config2,
        format!(
            "# Generated by `myelin demo`: the second node.\nmyelin:\n  node: {{ name: {}, address: {} }}\n  cgroup_root: {}\n  uninstall_on_exit: true\n  mtls: {{ {mtls} }}\n  workloads:\n    - {{ name: db, namespace: demo, service_account: db, cgroup: {}, ip: {}, splice: off }}\n",
            node2.name,
            node2.addr,
            node2.cgroup_path().display(),
            db.cgroup_path().display(),
            db.ip
        ),
    )?;
    let config_path = dir.join("mesh.yaml");
    let cfg = format!(
        r#"# Generated by `myelin demo`.
myelin:
  node: {{ name: {node_name}, address: {addr} }}
  cgroup_root: {root}
  uninstall_on_exit: true
  # Mutual TLS between the nodes: certificates from the demo's CA; db lives on the other node.
  mtls: {{ {mtls}, remote_workloads: [{{ name: db, namespace: demo, service_account: db, ip: {dbip}, node: {node2addr} }}] }}
  workloads:
    # curl uses non-blocking sockets: safe to splice whatever the kernel's blocking-read verdict.
    - {{ name: client, namespace: demo, service_account: client, cgroup: {c}, ip: {cip}, splice: nonblocking }}
    - {{ name: server-a, namespace: demo, service_account: web, cgroup: {a}, ip: {aip} }}
    - {{ name: server-b, namespace: demo, service_account: echo, cgroup: {b}, ip: {bip} }}
"#,
        node_name = node.name,
        addr = node.addr,
        root = node.cgroup_path().display(),
        c = client.cgroup_path().display(),
        cip = client.ip,
        a = server_a.cgroup_path().display(),
        aip = server_a.ip,
        b = server_b.cgroup_path().display(),
        bip = server_b.ip,
        dbip = db.ip,
        node2addr = node2.addr,
    );
    std::fs::write(&config_path, cfg)?;

    let exe = std::env::current_exe()?;
    let mut agent_cmd = Command::new(&exe);
    agent_cmd.arg("run").arg("--config").arg(&config_path);
    if no_splice {
        agent_cmd.arg("--no-splice");
    }
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    agent_cmd.stderr(log.try_clone()?).stdout(log);
    let agent = node.spawn_agent(agent_cmd)?;
    say(&format!("agent started (log: {})", log_path.display()));
    let mut agent2_cmd = Command::new(&exe);
    agent2_cmd.arg("run").arg("--config").arg(&config2);
    let log2 = std::fs::File::create(dir.join("agent2.log"))?;
    agent2_cmd.stderr(log2.try_clone()?).stdout(log2);
    let agent2 = node2.spawn_agent(agent2_cmd)?;
    say("second agent started");

    let result =
        drive(&node, &client, &server_a, &server_b, json, &say).and_then(|(mut summary, json)| {
            summary.cross_node = Some(cross_node(&node2, &client, &db, &say)?);
            Ok((summary, json))
        });
    stop(agent2, &node2);
    let outcome = finish(agent, &node, result, &log_path);
    let _ = std::fs::remove_dir_all(&dir);
    drop(node2);
    drop(node);
    outcome
}

/// Stops an agent gracefully (it drains and unpins), by force after 10 s.
fn stop(mut agent: Proc, node: &Node) {
    let _ = agent.signal(nix::sys::signal::Signal::SIGTERM);
    if agent
        .wait_timeout(Duration::from_secs(10))
        .ok()
        .flatten()
        .is_none()
    {
        let _ = agent.kill();
    }
    let _ = myelin_ebpf_loader::uninstall(&node.name);
}

/// curl from node 1's client to node 2's db pod (through capture, node 1's proxy, an
/// HBONE tunnel and node 2's proxy), and what node 2 says about the source.
fn cross_node(
    node2: &Node,
    client: &myelin_testbed::Pod,
    db: &myelin_testbed::Pod,
    say: &dyn Fn(&str),
) -> anyhow::Result<CrossNode> {
    let admin: SocketAddr = "127.0.0.1:15000".parse()?;
    let metrics: SocketAddr = "127.0.0.1:15020".parse()?;
    let netns = node2.netns_path();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        check_interrupted()?;
        if matches!(
            in_netns(&netns, || http_get(admin, "/ready"))?,
            Ok((200, _))
        ) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the second agent did not become ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://{}:{HTTP_PORT}/hello", db.ip);
    let mut curl = Command::new("curl");
    curl.args(["-s", "-w", "%{http_code}\n", "--max-time", "10"]);
    for _ in 0..CROSS_NODE_REQUESTS {
        curl.args(["-o", "/dev/null", &url]);
    }
    let out = client.run(curl)?;
    let codes = String::from_utf8_lossy(&out.stdout);
    let ok = codes.lines().filter(|c| c.trim() == "200").count() as u64;
    say(&format!(
        "cross-node: {ok}/{CROSS_NODE_REQUESTS} HTTP 200 from db on the second node (HBONE, mTLS)"
    ));
    std::thread::sleep(Duration::from_millis(200));
    let (_, text) = in_netns(&netns, || http_get(metrics, "/metrics"))??;
    // The destination node reports the tunnelled HTTP requests one by one (an opaque
    // tunnel would be a destination-side TCP connection).
    let destination = |metric: &str| {
        samples(&text, metric)
            .into_iter()
            .find(|(l, _)| l.get("reporter").map(String::as_str) == Some("destination"))
            .map(|(l, _)| l)
    };
    let tunnel = destination("myelin_requests_total")
        .or_else(|| destination("myelin_tcp_connections_opened_total"))
        .unwrap_or_default();
    let label = |k: &str| tunnel.get(k).cloned().unwrap_or_else(|| "?".into());
    Ok(CrossNode {
        requests_ok: ok,
        requests_failed: CROSS_NODE_REQUESTS - ok.min(CROSS_NODE_REQUESTS),
        source_principal: label("source_principal"),
        source_workload: format!("{}/{}", label("source_namespace"), label("source_workload")),
        connection_security_policy: label("connection_security_policy"),
        handshakes: metric_sum(&text, "myelin_hbone_handshakes_total", &[]) as u64,
    })
}

fn finish(
    agent: Proc,
    node: &Node,
    result: anyhow::Result<(Summary, bool)>,
    log_path: &Path,
) -> anyhow::Result<bool> {
    // Graceful stop: the agent drains and unpins its programs (uninstall_on_exit).
    stop(agent, node);
    let result = result.and_then(|r| check_interrupted().map(|()| r));
    match result {
        Ok((summary, json)) => {
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print_summary(&summary);
            }
            Ok(summary.requests_failed == 0
                && summary.tcp_exchanges_failed == 0
                && summary.requests_ok > 0
                && summary
                    .cross_node
                    .as_ref()
                    .is_some_and(|c| c.requests_failed == 0 && c.requests_ok > 0))
        }
        Err(e) => {
            if let Ok(log) = std::fs::read_to_string(log_path) {
                eprintln!("--- agent log ---\n{log}--- end of agent log ---");
            }
            Err(e)
        }
    }
}

fn drive(
    node: &Node,
    client: &myelin_testbed::Pod,
    server_a: &myelin_testbed::Pod,
    server_b: &myelin_testbed::Pod,
    json: bool,
    say: &dyn Fn(&str),
) -> anyhow::Result<(Summary, bool)> {
    let admin: SocketAddr = "127.0.0.1:15000".parse()?;
    let metrics: SocketAddr = "127.0.0.1:15020".parse()?;
    let netns = node.netns_path();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        check_interrupted()?;
        let ready = in_netns(&netns, || http_get(admin, "/ready"))?;
        if matches!(ready, Ok((200, _))) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent did not become ready within 60 s ({ready:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, dump) = in_netns(&netns, || http_get(admin, "/config_dump"))??;
    let dump: serde_json::Value = serde_json::from_str(&dump).context("parsing /config_dump")?;
    let splice = &dump["splice"];
    say(&format!(
        "agent ready: splice mode {} {}",
        splice["mode"].as_str().unwrap_or("?"),
        splice["reason"].as_str().unwrap_or("")
    ));

    // The self-test's own traffic is in the counters already: report the demo's deltas.
    let (_, base) = in_netns(&netns, || http_get(metrics, "/metrics"))??;

    // HTTP/1.1 with curl: the URLs of one invocation share a keep-alive connection; a few
    // invocations open new connections.
    let url = format!("http://{}:{HTTP_PORT}/hello", server_a.ip);
    let http_start = Instant::now();
    let mut ok = 0u64;
    let mut failed = 0u64;
    for batch in 0..5 {
        check_interrupted()?;
        let mut curl = Command::new("curl");
        curl.args(["-s", "-w", "%{http_code}\\n", "--max-time", "10"]);
        for _ in 0..HTTP_REQUESTS / 5 {
            // Each URL needs its own -o, or curl prints the later bodies.
            curl.args(["-o", "/dev/null", &url]);
        }
        let out = client.run(curl)?;
        let codes = String::from_utf8_lossy(&out.stdout);
        let good = codes.lines().filter(|c| c.trim() == "200").count() as u64;
        ok += good;
        failed += (HTTP_REQUESTS / 5) as u64 - good;
        say(&format!(
            "curl batch {batch}: {good}/{} HTTP 200 from server-a",
            HTTP_REQUESTS / 5
        ));
    }

    let http_window = http_start.elapsed();
    // A request is recorded when its response body ends in the proxy, which can be a moment
    // after curl has read the last byte: wait (briefly) until every request is counted.
    let sent = HTTP_REQUESTS as f64;
    let counted_by = Instant::now() + Duration::from_secs(2);
    let after_http = loop {
        let (_, t) = in_netns(&netns, || http_get(metrics, "/metrics"))??;
        let counted = metric_sum(&t, "myelin_requests_total", &[])
            - metric_sum(&base, "myelin_requests_total", &[]);
        if counted >= sent || Instant::now() > counted_by {
            break t;
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    // Raw TCP with a blocking client (request/response exchanges, each checked).
    check_interrupted()?;
    let mut ex = podtool_command()?;
    ex.args([
        "exchange",
        "--addr",
        &format!("{}:{TCP_PORT}", server_b.ip),
        "--count",
        &TCP_EXCHANGES.to_string(),
        "--size",
        "512",
    ]);
    let out = client.run(ex)?;
    let tcp: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::json!({"ok": 0}));
    let tcp_ok = tcp["ok"].as_u64().unwrap_or(0);
    say(&format!(
        "tcp: {tcp_ok}/{TCP_EXCHANGES} echo exchanges with server-b (blocking client)"
    ));

    let (_, text) = in_netns(&netns, || http_get(metrics, "/metrics"))??;
    let get = |n: &str| (metric_sum(&text, n, &[]) - metric_sum(&base, n, &[])) as u64;
    let summary = Summary {
        requests_ok: ok,
        requests_failed: failed,
        tcp_exchanges_ok: tcp_ok,
        tcp_exchanges_failed: TCP_EXCHANGES - tcp_ok.min(TCP_EXCHANGES),
        captured_connections: get("myelin_captured_connections_total"),
        spliced_bytes: get("myelin_spliced_bytes_total"),
        spliced_messages: get("myelin_spliced_messages_total"),
        splice_misses_total: metric_sum(&text, "myelin_splice_misses_total", &[]) as u64,
        splice_peer_waits_total: metric_sum(&text, "myelin_splice_peer_waits_total", &[]) as u64,
        splice_mode: splice["mode"].as_str().unwrap_or("?").to_owned(),
        spliced_workloads: splice["workloads"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter(|w| w["spliced"] == true)
                    .filter_map(|w| w["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        splice_reason: splice["reason"].as_str().unwrap_or("").to_owned(),
        golden_requests: golden_requests(&base, &after_http, http_window),
        http_window_s: http_window.as_secs_f64(),
        http_p50_ms: histogram_quantile(&after_http, "myelin_request_duration_seconds", 0.5)
            .map(|s| s * 1000.0),
        golden_tcp: golden_tcp(&base, &text),
        selftest: splice["runs"].clone(),
        cross_node: None,
    };
    Ok((summary, json))
}

/// The samples of counter `name` in Prometheus text, by label set (label name -> value).
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((parse_labels(labels)?, value.trim().parse().ok()?))
        })
        .collect()
}

/// `a="x",b="y\"z"` as a map; `None` if malformed.
fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_owned(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// How much each label set of counter `name` grew from `base` to `now` (grown ones only).
fn deltas(base: &str, now: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let before: Vec<_> = samples(base, name);
    samples(now, name)
        .into_iter()
        .filter_map(|(labels, v)| {
            let was = before
                .iter()
                .find(|(l, _)| *l == labels)
                .map_or(0.0, |(_, v)| *v);
            (v > was).then_some((labels, v - was))
        })
        .collect()
}

fn workload(labels: &BTreeMap<String, String>, side: &str) -> String {
    let get = |k: &str| {
        labels
            .get(&format!("{side}_{k}"))
            .map_or("?", String::as_str)
            .to_owned()
    };
    format!("{}/{}", get("namespace"), get("workload"))
}

/// Whether a series is the source side's report (a request between two pods of one node
/// is reported by both sides; the tables count it once).
fn source_side(labels: &BTreeMap<String, String>) -> bool {
    labels.get("reporter").is_none_or(|r| r == "source")
}

/// The golden request rows between two scrapes `window` apart: per source and destination
/// workload and response code (other labels summed; the source side's reports), sorted.
pub fn golden_requests(base: &str, now: &str, window: Duration) -> Vec<PairCount> {
    let mut rows: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for (labels, n) in deltas(base, now, "myelin_requests_total") {
        if !source_side(&labels) {
            continue;
        }
        let code = labels.get("response_code").cloned().unwrap_or_default();
        *rows
            .entry((
                workload(&labels, "source"),
                workload(&labels, "destination"),
                code,
            ))
            .or_default() += n;
    }
    let secs = window.as_secs_f64();
    rows.into_iter()
        .map(|((source, destination, response_code), n)| PairCount {
            source,
            destination,
            response_code,
            requests: n as u64,
            rate: if secs > 0.0 { n / secs } else { 0.0 },
        })
        .collect()
}

/// The golden TCP rows between two scrapes: per source and destination workload.
pub fn golden_tcp(base: &str, now: &str) -> Vec<TcpPair> {
    let mut rows: BTreeMap<(String, String), [f64; 3]> = BTreeMap::new();
    for (i, name) in [
        "myelin_tcp_connections_opened_total",
        "myelin_tcp_sent_bytes_total",
        "myelin_tcp_received_bytes_total",
    ]
    .into_iter()
    .enumerate()
    {
        for (labels, n) in deltas(base, now, name) {
            if !source_side(&labels) {
                continue;
            }
            rows.entry((
                workload(&labels, "source"),
                workload(&labels, "destination"),
            ))
            .or_default()[i] += n;
        }
    }
    rows.into_iter()
        .map(|((source, destination), [c, s, r])| TcpPair {
            source,
            destination,
            connections: c as u64,
            bytes_sent: s as u64,
            bytes_received: r as u64,
        })
        .collect()
}

/// Estimates a quantile from a Prometheus histogram (all label sets merged), as
/// `histogram_quantile` does: linear interpolation inside the bucket.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    let prefix = format!("{name}_bucket{{");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        let le_f: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let e = buckets.entry(le_f.to_bits()).or_insert((le_f, 0.0));
        e.1 += v;
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, count) in sorted {
        if count >= rank {
            if le.is_infinite() {
                return Some(lo);
            }
            let in_bucket = count - below;
            return Some(if in_bucket == 0.0 {
                le
            } else {
                lo + (le - lo) * (rank - below) / in_bucket
            });
        }
        lo = le;
        below = count;
    }
    None
}

fn print_summary(s: &Summary) {
    println!();
    println!("Myelin demo: two nodes, four pods, traffic through the mesh");
    println!(
        "  HTTP/1.1 requests (curl, client -> server-a)  ok {:>5}   failed {}",
        s.requests_ok, s.requests_failed
    );
    println!(
        "  TCP exchanges (blocking, client -> server-b)  ok {:>5}   failed {}",
        s.tcp_exchanges_ok, s.tcp_exchanges_failed
    );
    println!(
        "  connections captured by connect4              {:>8}",
        s.captured_connections
    );
    println!(
        "  bytes spliced socket to socket (sk_msg)       {:>8}   in {} messages",
        s.spliced_bytes, s.spliced_messages
    );
    let reason = if s.splice_reason.is_empty() {
        String::new()
    } else {
        format!("  ({})", s.splice_reason)
    };
    println!(
        "  splice mode                                   {}{reason}",
        s.splice_mode
    );
    println!(
        "  spliced workloads                             {}",
        s.spliced_workloads.join(", ")
    );
    println!();
    println!(
        "  Golden metrics: myelin_requests_total during the curl phase ({:.1} s)",
        s.http_window_s
    );
    println!(
        "  {:<16}    {:<16} {:>5} {:>9} {:>8}",
        "source", "destination", "code", "requests", "req/s"
    );
    for p in &s.golden_requests {
        println!(
            "  {:<16} -> {:<16} {:>5} {:>9} {:>8.1}",
            p.source, p.destination, p.response_code, p.requests, p.rate
        );
    }
    if let Some(p50) = s.http_p50_ms {
        println!("  request duration p50 (myelin_request_duration_seconds)  {p50:.3} ms");
    }
    println!();
    println!("  Golden metrics: opaque TCP (myelin_tcp_*)");
    println!(
        "  {:<16}    {:<16} {:>11} {:>10} {:>10}",
        "source", "destination", "connections", "sent B", "received B"
    );
    for t in &s.golden_tcp {
        println!(
            "  {:<16} -> {:<16} {:>11} {:>10} {:>10}",
            t.source, t.destination, t.connections, t.bytes_sent, t.bytes_received
        );
    }
    if let Some(c) = &s.cross_node {
        println!();
        println!("  Cross-node: client (node 1) -> db (node 2) over HBONE (HTTP/2 CONNECT, mTLS)");
        println!(
            "  HTTP/1.1 requests                             ok {:>5}   failed {}",
            c.requests_ok, c.requests_failed
        );
        println!(
            "  source principal seen by node 2               {}",
            c.source_principal
        );
        println!(
            "  source workload seen by node 2                {}",
            c.source_workload
        );
        println!(
            "  connection security policy                    {}",
            c.connection_security_policy
        );
        println!(
            "  mTLS handshakes on node 2                     {}",
            c.handshakes
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE x counter
myelin_spliced_bytes_total 1234
myelin_requests_total{source_workload=\"client\",response_code=\"200\"} 7
myelin_requests_total{source_workload=\"client\",response_code=\"503\"} 2
h_bucket{le=\"0.001\"} 0
h_bucket{le=\"0.002\"} 10
h_bucket{le=\"+Inf\"} 10
";

    #[test]
    fn metric_sum_filters_by_labels() {
        assert_eq!(metric_sum(TEXT, "myelin_spliced_bytes_total", &[]), 1234.0);
        assert_eq!(metric_sum(TEXT, "myelin_requests_total", &[]), 9.0);
        assert_eq!(
            metric_sum(TEXT, "myelin_requests_total", &[("response_code", "503")]),
            2.0
        );
        assert_eq!(metric_sum(TEXT, "missing", &[]), 0.0);
    }

    #[test]
    fn histogram_quantile_interpolates() {
        let p50 = histogram_quantile(TEXT, "h", 0.5).unwrap();
        assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
        assert_eq!(histogram_quantile("", "h", 0.5), None);
    }

    #[test]
    fn labels_parse_with_escapes() {
        let l = parse_labels(r#"a="x",b="say \"hi\"",c="",d="back\\slash""#).unwrap();
        assert_eq!(l["a"], "x");
        assert_eq!(l["b"], "say \"hi\"");
        assert_eq!(l["c"], "");
        assert_eq!(l["d"], "back\\slash");
        assert_eq!(parse_labels(r#"a="unterminated"#), None);
    }

    fn req(src: &str, dst: &str, code: u16, flags: &str, n: u64) -> String {
        format!(
            "myelin_requests_total{{reporter=\"source\",source_workload=\"{src}\",source_namespace=\"demo\",destination_workload=\"{dst}\",destination_namespace=\"demo\",response_code=\"{code}\",response_flags=\"{flags}\"}} {n}\n"
        )
    }

    /// Rows are the growth between two scrapes per workload pair and code; other labels
    /// (flags here) are summed; series that did not grow are left out.
    #[test]
    fn golden_rows_between_two_scrapes() {
        let base =
            req("client", "server-a", 200, "-", 10) + &req("client", "server-a", 503, "UF", 1);
        let now = req("client", "server-a", 200, "-", 50)
            + &req("client", "server-a", 503, "UF", 1)
            + &req("client", "server-a", 503, "UC", 2)
            + &req("other", "server-b", 404, "-", 5);
        let rows = golden_requests(&base, &now, Duration::from_secs(4));
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.source.as_str(),
                    r.destination.as_str(),
                    r.response_code.as_str(),
                    r.requests,
                    r.rate,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("demo/client", "demo/server-a", "200", 40, 10.0),
                ("demo/client", "demo/server-a", "503", 2, 0.5),
                ("demo/other", "demo/server-b", "404", 5, 1.25),
            ]
        );

        let tcp = |name: &str, n: u64| {
            format!("{name}{{source_workload=\"client\",source_namespace=\"demo\",destination_workload=\"server-b\",destination_namespace=\"demo\"}} {n}\n")
        };
        let base = tcp("myelin_tcp_sent_bytes_total", 100);
        let now = tcp("myelin_tcp_sent_bytes_total", 612)
            + &tcp("myelin_tcp_received_bytes_total", 512)
            + &tcp("myelin_tcp_connections_opened_total", 1);
        assert_eq!(
            golden_tcp(&base, &now),
            [TcpPair {
                source: "demo/client".into(),
                destination: "demo/server-b".into(),
                connections: 1,
                bytes_sent: 512,
                bytes_received: 512,
            }]
        );
    }
}
