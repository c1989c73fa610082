//! Golden metrics through the real `myelin` binary: a client pod calls a server pod through
//! the mesh (plain HTTP, no Envoy sections: passthrough requests are recorded too), then the
//! agent's `/metrics` is checked label by label, linted by `promtool check metrics`, and
//! scraped by a real Prometheus server that must see the requests and a rate. A second run
//! uses Istio's names, another trust domain and a tiny cardinality guard.
//!
//! Needs root, a built `myelin` (`cargo build --release -p myelin`), curl, and Debian's
//! `prometheus` package (`prometheus`, `promtool`). In CI a test that cannot run fails (see
//! `testbed_ready`).

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use myelin_testbed::{
    http_get, in_netns, metric_sum, podtool_command, testbed_ready, Mesh, MeshOptions, Node, Pod,
    Proc,
};
use serde_json::Value;

const HTTP: u16 = 8080;
/// The agent's metrics address inside the node netns (`myelin.metrics_address` default).
const METRICS: &str = "127.0.0.1:15020";

fn ready() -> bool {
    testbed_ready(&["curl", "promtool", "prometheus"])
}

/// The mesh of these tests: a curl client (non-blocking sockets: spliced whatever the
/// blocking-read verdict) and a podtool HTTP server named `server`.
fn mesh(prefix: &str, myelin: &str) -> Result<(Mesh, Proc)> {
    let mut opts = MeshOptions::pods(&["client", "server"]).policy("client", "nonblocking");
    opts.myelin = myelin.to_owned();
    let mesh = Mesh::start(prefix, opts)?;
    let mut cmd = podtool_command()?;
    cmd.args([
        "http-server",
        "--port",
        &HTTP.to_string(),
        "--name",
        "server",
    ]);
    cmd.stdout(Stdio::piped());
    let mut server = mesh.pod("server").spawn(cmd)?;
    server.next_line(Duration::from_secs(10))?; // "listening"
    Ok((mesh, server))
}

/// One curl invocation (one keep-alive connection) fetching `paths` from `server` in order;
/// the status codes.
fn curl(client: &Pod, server: &Pod, paths: &[&str]) -> Result<Vec<u16>> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}\\n", "--max-time", "10"]);
    for p in paths {
        // Each URL needs its own -o, or curl prints the later bodies.
        cmd.args([
            "-o",
            "/dev/null",
            &format!("http://{}:{HTTP}{p}", server.ip),
        ]);
    }
    let out = client.run(cmd)?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().context("curl's status line"))
        .collect()
}

/// Requests are recorded when their response body ends, so poll: the scrape in which
/// `done` holds, or the last one with an error after `timeout`.
fn scrape_until(mesh: &Mesh, timeout: Duration, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = mesh.metrics()?;
        if done(&text) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("not in /metrics after {timeout:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` on `text`: exit status and what it printed.
fn promtool(text: &str) -> Result<(i32, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), said))
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server in the node's netns (where the agent's metrics address is),
/// scraping the agent every second. Killed by pid, and its directory removed, on drop (also
/// when the test fails).
struct Prometheus {
    proc: Option<Proc>,
    dir: PathBuf,
    netns: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(node: &Node) -> Result<Prometheus> {
        let netns = node.netns_path();
        // A free port on the node netns' loopback (nothing else binds there during the test).
        let port = in_netns(&netns, || {
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
        })??
        .port();
        let dir = std::env::temp_dir().join(format!("{}-prometheus", node.name));
        std::fs::create_dir_all(dir.join("data"))?;
        let mut p = Prometheus {
            proc: None,
            netns,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let config = p.dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: myelin\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"
            ),
        )?;
        let log = std::fs::File::create(p.dir.join("prometheus.log"))?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                p.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={}", p.addr))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        p.proc = Some(node.spawn(cmd)?);
        Ok(p)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET on the HTTP API: the `data` of a `success` answer.
    fn api(&self, path_and_query: &str) -> Result<Value> {
        let addr = self.addr;
        let (status, body) = in_netns(&self.netns, || http_get(addr, path_and_query))??;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("{path_and_query}: {status} {body}"))?;
        if status != 200 || v["status"] != "success" {
            bail!("{path_and_query}: {status} {body}");
        }
        Ok(v["data"].clone())
    }

    /// An instant query whose result is one sample (e.g. a `sum`); `None` for no sample.
    fn scalar(&self, promql: &str) -> Result<Option<f64>> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(promql)))?;
        match data["result"].as_array().map(Vec::as_slice) {
            Some([]) => Ok(None),
            Some([one]) => Ok(one["value"][1].as_str().and_then(|v| v.parse().ok())),
            _ => bail!("{promql}: expected at most one sample: {data}"),
        }
    }

    /// Waits until Prometheus serves and has scraped the agent successfully.
    fn wait_target_up(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.as_mut().expect("started").try_wait()? {
                bail!("prometheus exited with {status}:\n{}", self.log());
            }
            let targets = self.api("/api/v1/targets");
            if let Ok(t) = &targets {
                let up = t["activeTargets"]
                    .as_array()
                    .is_some_and(|ts| ts.len() == 1 && ts[0]["health"] == "up");
                if up {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent's target is not up after {timeout:?}: {targets:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
        }
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}--- end ---", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn golden_metrics_pass_promtool_and_a_real_prometheus_sees_the_rate() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let (mesh, _server) = mesh("golden", "")?;
    let (client, server) = (mesh.pod("client"), mesh.pod("server"));
    let mut prom = Prometheus::start(&mesh.node)?;
    prom.wait_target_up(Duration::from_secs(30))?;

    // The known mix: 20 x 200 and 5 x 404, in 5 batches spread over a few scrapes.
    for batch in 0..5 {
        let codes = curl(
            client,
            server,
            &["/hello", "/hello", "/status/404", "/hello", "/hello"],
        )?;
        assert_eq!(codes, [200, 200, 404, 200, 200], "batch {batch}");
        std::thread::sleep(Duration::from_millis(1100));
    }

    // The agent's own exposition, in the classic text format (no Accept header).
    let ip = server.ip;
    let labels = |code: u16| {
        format!(
            "reporter=\"source\",source_workload=\"client\",source_namespace=\"test\",\
             source_principal=\"spiffe://cluster.local/ns/test/sa/client\",\
             destination_workload=\"server\",destination_namespace=\"test\",\
             destination_service=\"{ip}\",destination_principal=\"unknown\",\
             request_protocol=\"http\",response_code=\"{code}\",grpc_status=\"-\",\
             response_flags=\"-\",connection_security_policy=\"none\""
        )
    };
    let ok = format!("myelin_requests_total{{{}}} 20\n", labels(200));
    let not_found = format!("myelin_requests_total{{{}}} 5\n", labels(404));
    let text = scrape_until(&mesh, Duration::from_secs(5), |t| {
        t.contains(&ok) && t.contains(&not_found)
    })?;
    // Nothing else was recorded as a request (the self-test's traffic is opaque TCP).
    assert_eq!(
        metric_sum(&text, "myelin_requests_total", &[]),
        25.0,
        "{text}"
    );
    let series = |code: &'static str| {
        [
            ("source_workload", "client"),
            ("destination_workload", "server"),
            ("response_code", code),
        ]
    };
    for (name, code, want) in [
        ("myelin_request_duration_seconds_count", "200", 20.0),
        ("myelin_request_duration_seconds_count", "404", 5.0),
        // podtool's body is its name, "server": 6 bytes per response, GETs send none.
        ("myelin_response_bytes_sum", "200", 120.0),
        ("myelin_response_bytes_sum", "404", 30.0),
        ("myelin_request_bytes_count", "200", 20.0),
        ("myelin_request_bytes_sum", "200", 0.0),
    ] {
        assert_eq!(
            metric_sum(&text, name, &series(code)),
            want,
            "{name} {code}:\n{text}"
        );
    }
    for line in [
        "# TYPE myelin_requests_total counter\n",
        "# TYPE myelin_request_duration_seconds histogram\n",
        "myelin_metrics_series_overflow_total 0\n",
        "myelin_metrics_series_expired_total 0\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("# EOF"), "classic text has no EOF:\n{text}");
    let (code, said) = promtool(&text)?;
    assert_eq!(code, 0, "promtool check metrics: {said}\n{text}");

    // OpenMetrics when the scrape asks for it, as Prometheus does.
    let mut curl_om = Command::new("curl");
    curl_om.args([
        "-sS",
        "-D",
        "-",
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        &format!("http://{METRICS}/metrics"),
    ]);
    let out = mesh.node.run(curl_om)?;
    let om = String::from_utf8_lossy(&out.stdout);
    assert!(
        om.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{om}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains(&ok), "{om}");

    // Prometheus (which negotiates OpenMetrics) has the same counts and a rate.
    let total = "sum(myelin_requests_total{source_workload=\"client\",destination_workload=\"server\",response_code=\"200\"})";
    let rate = "sum(rate(myelin_requests_total{source_workload=\"client\",destination_workload=\"server\",response_code=\"200\"}[30s]))";
    let errors = "sum(myelin_requests_total{source_workload=\"client\",response_code=\"404\"})";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = (
            prom.scalar(total)?,
            prom.scalar(rate)?,
            prom.scalar(errors)?,
        );
        if let (Some(t), Some(r), Some(e)) = got {
            if t == 20.0 && r > 0.0 && e == 5.0 {
                eprintln!("prometheus: {t} requests, {r:.3} req/s over 30 s, {e} errors");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "prometheus: (total, rate, 404s) = {got:?}; want (20, > 0, 5)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let targets = prom.api("/api/v1/targets")?;
    assert_eq!(
        targets["activeTargets"][0]["lastError"], "",
        "scrape errors: {targets}"
    );
    Ok(())
}

#[test]
fn istio_names_trust_domain_and_the_cardinality_guard() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let (mesh, _server) = mesh(
        "istio",
        "  trust_domain: example.org\n  metrics: { naming: istio, max_series: 1, idle_expiry: 5s }\n",
    )?;
    let (client, server) = (mesh.pod("client"), mesh.pod("server"));
    // On one connection, in order: the 200s take the only request series there is room for,
    // the 404s go to the overflow series.
    let codes = curl(
        client,
        server,
        &["/a", "/b", "/c", "/d", "/status/404", "/status/404"],
    )?;
    assert_eq!(codes, [200, 200, 200, 200, 404, 404]);
    let ip = server.ip;
    let ok = format!(
        "istio_requests_total{{reporter=\"source\",source_workload=\"client\",\
         source_workload_namespace=\"test\",source_principal=\"spiffe://example.org/ns/test/sa/client\",\
         destination_workload=\"server\",destination_workload_namespace=\"test\",\
         destination_service=\"{ip}\",destination_principal=\"unknown\",request_protocol=\"http\",\
         response_code=\"200\",grpc_response_status=\"-\",response_flags=\"-\",\
         connection_security_policy=\"none\"}} 4\n"
    );
    let overflow = [
        ("reporter", "overflow"),
        ("source_workload_namespace", "overflow"),
    ];
    let text = scrape_until(&mesh, Duration::from_secs(3), |t| {
        t.contains(&ok) && metric_sum(t, "istio_requests_total", &overflow) == 2.0
    })?;
    assert!(!text.contains("myelin_requests_total"), "{text}");
    assert_eq!(
        metric_sum(&text, "myelin_metrics_series_overflow_total", &[]),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "istio_request_duration_milliseconds_count", &[]),
        6.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE istio_request_duration_milliseconds histogram\n"),
        "{text}"
    );
    // promtool parses it; its only complaint is about Istio's own name, which keeps
    // milliseconds so that Istio's dashboards work (exit status 3: lint problems).
    let (code, said) = promtool(&text)?;
    let complaints: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    let expected =
        "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"";
    assert!(
        (code == 0 && complaints.is_empty()) || (code == 3 && complaints == [expected]),
        "promtool check metrics: exit {code}: {said}\n{text}"
    );

    // Idle for idle_expiry (5 s): the series is removed within one sweep (2.5 s) after that.
    let text = scrape_until(&mesh, Duration::from_secs(15), |t| {
        metric_sum(t, "istio_requests_total", &[("response_code", "200")]) == 0.0
    })?;
    assert!(
        metric_sum(&text, "myelin_metrics_series_expired_total", &[]) >= 1.0,
        "{text}"
    );
    // The overflow series is not a label set of its own: it stays.
    assert_eq!(
        metric_sum(&text, "istio_requests_total", &overflow),
        2.0,
        "{text}"
    );
    Ok(())
}
