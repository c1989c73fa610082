//! `myelin demo`: the standalone demo on this machine.
//!
//! Builds a node out of network namespaces and cgroups (a client pod and two server pods),
//! starts the agent in it with a standalone config, sends HTTP/1.1 (curl) and raw TCP
//! (a blocking client) through the mesh, prints what happened, and removes everything it
//! made, also on Ctrl-C or error (the test bed's `Node` cleans up on drop).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsFd,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use myelin_testbed::{podtool_command, Node, Proc};
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

/// Runs `f` on a thread that has entered the network namespace at `netns` (only that thread
/// moves; the mount namespace stays, so /sys/fs/bpf and the cgroup mount remain visible).
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let file = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the node netns")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    })
}

/// A plain HTTP/1.0 GET (no keep-alive), enough for the admin endpoints.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The value of an unlabelled or labelled sample in Prometheus text (sum over label sets
/// whose labels contain every `want` pair).
pub fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = want.iter().all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
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
    pub splice_mode: String,
    pub splice_directions: String,
    pub splice_reason: String,
    /// Golden metrics from the proxy: HTTP requests by source workload and response code.
    pub http_requests_by_source: Vec<PairCount>,
    pub http_p50_ms: Option<f64>,
}

/// One row of the golden-metrics table.
#[derive(Debug, Serialize)]
pub struct PairCount {
    pub source: String,
    pub destination: String,
    pub response_code: String,
    pub requests: u64,
}

const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;
const HTTP_REQUESTS: usize = 50;
const TCP_EXCHANGES: u64 = 200;

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
    say(&format!("node {} at {} (netns + cgroup {})", node.name, node.addr, node.cgroup_path().display()));
    let client = node.add_pod("client")?;
    let server_a = node.add_pod("server-a")?;
    let server_b = node.add_pod("server-b")?;
    for p in [&client, &server_a, &server_b] {
        say(&format!("pod {:<9} {}", p.name, p.ip));
    }

    let mut http = podtool_command()?;
    http.args(["http-server", "--port", &HTTP_PORT.to_string(), "--name", "server-a"]);
    http.stdout(std::process::Stdio::null());
    let _http_server = server_a.spawn(http)?;
    let mut echo = podtool_command()?;
    echo.args(["echo-server", "--port", &TCP_PORT.to_string()]);
    echo.stdout(std::process::Stdio::null());
    let _echo_server = server_b.spawn(echo)?;

    let dir = std::env::temp_dir().join(&node.name);
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("mesh.yaml");
    let cfg = format!(
        r#"# Generated by `myelin demo`.
myelin:
  node: {{ name: {node_name}, address: {addr} }}
  cgroup_root: {root}
  uninstall_on_exit: true
  workloads:
    - {{ name: client, namespace: demo, service_account: client, cgroup: {c}, ip: {cip} }}
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

    let result = drive(&node, &client, &server_a, &server_b, json, &say);
    let outcome = finish(agent, &node, result, &log_path);
    let _ = std::fs::remove_dir_all(&dir);
    drop(node);
    outcome
}

fn finish(
    mut agent: Proc,
    node: &Node,
    result: anyhow::Result<(Summary, bool)>,
    log_path: &Path,
) -> anyhow::Result<bool> {
    // Graceful stop: the agent drains and unpins its programs (uninstall_on_exit).
    let _ = agent.signal(nix::sys::signal::Signal::SIGTERM);
    if agent.wait_timeout(Duration::from_secs(10)).ok().flatten().is_none() {
        let _ = agent.kill();
    }
    let _ = myelin_ebpf_loader::uninstall(&node.name);
    match result {
        Ok((summary, json)) => {
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print_summary(&summary);
            }
            Ok(summary.requests_failed == 0 && summary.tcp_exchanges_failed == 0 && summary.requests_ok > 0)
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
        "agent ready: splice mode {} ({}) {}",
        splice["mode"].as_str().unwrap_or("?"),
        splice["directions"].as_str().unwrap_or("?"),
        splice["reason"].as_str().unwrap_or("")
    ));

    // The self-test's own traffic is in the counters already: report the demo's deltas.
    let (_, base) = in_netns(&netns, || http_get(metrics, "/metrics"))??;

    // HTTP/1.1 with curl: the URLs of one invocation share a keep-alive connection; a few
    // invocations open new connections.
    let url = format!("http://{}:{HTTP_PORT}/hello", server_a.ip);
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
        say(&format!("curl batch {batch}: {good}/{} HTTP 200 from server-a", HTTP_REQUESTS / 5));
    }

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
    say(&format!("tcp: {tcp_ok}/{TCP_EXCHANGES} echo exchanges with server-b (blocking client)"));

    let (_, text) = in_netns(&netns, || http_get(metrics, "/metrics"))??;
    let get = |n: &str| (metric_sum(&text, n, &[]) - metric_sum(&base, n, &[])) as u64;
    let mut pairs = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("myelin_proxy_requests_total{")) {
        let label = |k: &str| {
            line.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let n = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        pairs.push(PairCount {
            source: format!("{}/{}", label("source_namespace"), label("source_workload")),
            destination: match label("destination_workload") {
                d if d.is_empty() => "-".to_owned(),
                d => format!("{}/{d}", label("destination_namespace")),
            },
            response_code: label("response_code"),
            requests: n as u64,
        });
    }
    let summary = Summary {
        requests_ok: ok,
        requests_failed: failed,
        tcp_exchanges_ok: tcp_ok,
        tcp_exchanges_failed: TCP_EXCHANGES - tcp_ok.min(TCP_EXCHANGES),
        captured_connections: get("myelin_captured_connections_total"),
        spliced_bytes: get("myelin_spliced_bytes_total"),
        spliced_messages: get("myelin_spliced_messages_total"),
        splice_mode: splice["mode"].as_str().unwrap_or("?").to_owned(),
        splice_directions: splice["directions"].as_str().unwrap_or("?").to_owned(),
        splice_reason: splice["reason"].as_str().unwrap_or("").to_owned(),
        http_requests_by_source: pairs,
        http_p50_ms: histogram_quantile(&text, "myelin_proxy_request_duration_seconds", 0.5).map(|s| s * 1000.0),
    };
    Ok((summary, json))
}

/// Estimates a quantile from a Prometheus histogram (all label sets merged), as
/// `histogram_quantile` does: linear interpolation inside the bucket.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    let prefix = format!("{name}_bucket{{");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        let le_f: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
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
            return Some(if in_bucket == 0.0 { le } else { lo + (le - lo) * (rank - below) / in_bucket });
        }
        lo = le;
        below = count;
    }
    None
}

fn print_summary(s: &Summary) {
    println!();
    println!("Myelin demo: one node, three pods, traffic through the mesh");
    println!("  HTTP/1.1 requests (curl, client -> server-a)  ok {:>5}   failed {}", s.requests_ok, s.requests_failed);
    println!("  TCP exchanges (blocking, client -> server-b)  ok {:>5}   failed {}", s.tcp_exchanges_ok, s.tcp_exchanges_failed);
    println!("  connections captured by connect4              {:>8}", s.captured_connections);
    println!("  bytes spliced socket to socket (sk_msg)       {:>8}   in {} messages", s.spliced_bytes, s.spliced_messages);
    let reason = if s.splice_reason.is_empty() { String::new() } else { format!("  ({})", s.splice_reason) };
    println!("  splice mode                                   {} [{}]{reason}", s.splice_mode, s.splice_directions);
    println!();
    println!("  Golden metrics (myelin_proxy_requests_total)");
    println!("  {:<20} {:<24} {:>5} {:>9}", "source", "destination", "code", "requests");
    for p in &s.http_requests_by_source {
        println!("  {:<20} {:<24} {:>5} {:>9}", p.source, p.destination, p.response_code, p.requests);
    }
    if let Some(p50) = s.http_p50_ms {
        println!("  request duration p50 (from the histogram)     {p50:.3} ms");
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE x counter
myelin_spliced_bytes_total 1234
myelin_proxy_requests_total{source_workload=\"client\",response_code=\"200\"} 7
myelin_proxy_requests_total{source_workload=\"client\",response_code=\"503\"} 2
h_bucket{le=\"0.001\"} 0
h_bucket{le=\"0.002\"} 10
h_bucket{le=\"+Inf\"} 10
";

    #[test]
    fn metric_sum_filters_by_labels() {
        assert_eq!(metric_sum(TEXT, "myelin_spliced_bytes_total", &[]), 1234.0);
        assert_eq!(metric_sum(TEXT, "myelin_proxy_requests_total", &[]), 9.0);
        assert_eq!(metric_sum(TEXT, "myelin_proxy_requests_total", &[("response_code", "503")]), 2.0);
        assert_eq!(metric_sum(TEXT, "missing", &[]), 0.0);
    }

    #[test]
    fn histogram_quantile_interpolates() {
        let p50 = histogram_quantile(TEXT, "h", 0.5).unwrap();
        assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
        assert_eq!(histogram_quantile("", "h", 0.5), None);
    }
}
