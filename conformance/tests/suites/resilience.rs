//! Retries, timeouts, outlier detection and circuit breakers end to end through the real
//! `myelin` binary: a client pod calls podtool HTTP servers in other pods through the mesh,
//! with the Envoy fields a control plane would send (route `retry_policy` and `timeout`,
//! cluster `outlier_detection` and `circuit_breakers`, see [`crate::support::envoy`]).
//!
//! The servers fail on purpose and deterministically (`myelin-podtool http-server`): the
//! first N requests of a key fail (`/fail/N/CODE?key=K`), the first N of a key are slow
//! (`/delay-first/N/MS?key=K`), every request is slow (`?delay=MS`), or only one server
//! fails (`?only=NAME`). Each server counts the requests of a key (`/count?key=K`, read by
//! the test from inside the pod, uncaptured), so the tests see how many attempts reached
//! the upstream, and each response names its server (`x-server-name`). The clients are curl
//! and `myelin-podtool http-get` (concurrent requests, one connection each, started
//! together). The proxy's counters on `/metrics` (retries, retry and request overflow,
//! requests by code and response flags) are checked as deltas.
//!
//! Pods are `splice: off`: the servers and `http-get` are blocking-socket programs, and
//! what is under test is the proxy's L7 decisions, not the splice.
//!
//! Needs root, a built `myelin` and `myelin-podtool` (`cargo build --release -p myelin -p
//! myelin-testbed --bins`) and curl. In CI a test that cannot run fails (see
//! `testbed_ready`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    client_requests, curl, endpoint, start_mesh, vip, Scratch, Service, CLIENT_TIMEOUT, LISTEN_WAIT,
};
use anyhow::{ensure, Context as _, Result};
use myelin_testbed::{
    http_get, in_netns, json_output, myelin_command, podtool_command, testbed_ready, Mesh, Pod,
    Proc,
};
use serde_json::Value;

/// The port every server listens on.
const HTTP: u16 = 8080;
/// Backoff between retries: short, so that retry tests do not wait on Envoy's 25 ms base.
const BACK_OFF: &str = "retry_back_off: { base_interval: 0.01s }";

fn ready() -> bool {
    testbed_ready(&["curl"])
}

/// `myelin-podtool http-server` named after its pod, on [`HTTP`].
fn http_server(pod: &Pod) -> Result<Proc> {
    let mut cmd = podtool_command()?;
    cmd.args([
        "http-server",
        "--port",
        &HTTP.to_string(),
        "--name",
        &pod.name,
    ])
    .stdout(Stdio::piped());
    let mut p = pod.spawn(cmd)?;
    let line = p.next_line(LISTEN_WAIT)?;
    ensure!(
        line.contains("listening"),
        "http-server in pod {}: {line}",
        pod.name
    );
    Ok(p)
}

/// A node with a client, the `servers` (each running [`http_server`]) and the agent serving
/// `services`.
fn mesh(
    prefix: &str,
    servers: &[&str],
    services: impl FnOnce(&Mesh) -> Vec<Service>,
) -> Result<(Mesh, Vec<Proc>)> {
    let mesh = start_mesh(prefix, servers, "off", services)?;
    let procs = servers
        .iter()
        .map(|s| http_server(mesh.pod(s)))
        .collect::<Result<_>>()?;
    Ok((mesh, procs))
}

/// One service on `port` over the `servers`' [`HTTP`] port.
fn service(
    m: &Mesh,
    name: &'static str,
    port: u16,
    servers: &[&str],
    route: &str,
    cluster: &str,
) -> Service {
    Service {
        name,
        port,
        endpoints: servers.iter().map(|s| endpoint(m, s, HTTP)).collect(),
        route: route.to_owned(),
        cluster: cluster.to_owned(),
        ..Service::default()
    }
}

/// How many requests with `key` the server in `pod` has seen, asked directly (uncaptured).
fn key_count(pod: &Pod, key: &str) -> Result<u64> {
    let addr = SocketAddr::new(pod.ip.into(), HTTP);
    let (status, body) = in_netns(&pod.netns_path(), || {
        http_get(addr, &format!("/count?key={key}"))
    })??;
    ensure!(status == 200, "/count on {}: {status} {body}", pod.name);
    body.trim()
        .parse()
        .with_context(|| format!("/count on {}: {body:?}", pod.name))
}

/// `myelin-podtool http-get` in the client pod: `count` GETs of `path` from the service on
/// `port`, `parallel` at a time. Its report: `statuses`, `servers` and `results` (each with
/// `at_ms`, `status`, `server`, `key_count`, `ms`).
fn get(mesh: &Mesh, port: u16, path: &str, count: usize, parallel: usize) -> Result<Value> {
    let mut cmd = podtool_command()?;
    cmd.args([
        "http-get",
        "--addr",
        &vip(port),
        "--path",
        path,
        "--count",
        &count.to_string(),
        "--parallel",
        &parallel.to_string(),
    ]);
    let out = mesh.pod("client").run_timeout(cmd, CLIENT_TIMEOUT)?;
    json_output(
        &out,
        &format!("http-get {path} x{count} ({parallel} at a time)"),
    )
}

/// The responses of an `http-get` report with `status`.
fn with_status(report: &Value, status: u64) -> u64 {
    report["statuses"][status.to_string()].as_u64().unwrap_or(0)
}

/// `myelin_proxy_requests_total` of the client with `code` and `flags`.
fn requests_flagged(mesh: &Mesh, code: &str, flags: &str) -> Result<f64> {
    mesh.metric(
        "myelin_proxy_requests_total",
        &[
            ("source_workload", "client"),
            ("response_code", code),
            ("response_flags", flags),
        ],
    )
}

#[test]
fn retries_succeed_within_num_retries_and_answer_the_last_error_beyond() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let port = 8000;
    let (mesh, _servers) = mesh("res-retry", &["web"], |m| {
        vec![service(
            m,
            "retry",
            port,
            &["web"],
            &format!("retry_policy: {{ retry_on: 5xx, num_retries: 2, {BACK_OFF} }}"),
            "",
        )]
    })?;
    let web = mesh.pod("web");
    let scratch = Scratch::new(&mesh)?;
    let out = scratch.path("body");
    let url = |path: &str| format!("http://{}{path}", vip(port));
    let retries = || mesh.metric("myelin_proxy_retries_total", &[]);
    let (retries0, ok0, urx0) = (
        retries()?,
        client_requests(&mesh, "200")?,
        requests_flagged(&mesh, "503", "URX")?,
    );

    // Two failures, two retries: the third attempt answers.
    let r = curl(
        mesh.pod("client"),
        &[],
        &url("/fail/2/503?key=within"),
        &out,
    )?;
    assert_eq!((r.code, r.body.as_slice()), (200, &b"web"[..]), "{r:?}");
    assert_eq!(
        key_count(web, "within")?,
        3,
        "attempts that reached the server"
    );
    assert_eq!(retries()? - retries0, 2.0, "myelin_proxy_retries_total");
    assert_eq!(client_requests(&mesh, "200")? - ok0, 1.0);

    // Three failures, two retries: the client gets the last attempt's answer, the server's
    // own 503 (its body is the server's name, not a local reply), flagged URX.
    let r = curl(
        mesh.pod("client"),
        &[],
        &url("/fail/3/503?key=beyond"),
        &out,
    )?;
    assert_eq!((r.code, r.body.as_slice()), (503, &b"web"[..]), "{r:?}");
    assert_eq!(key_count(web, "beyond")?, 3, "1 attempt + num_retries");
    assert_eq!(retries()? - retries0, 4.0, "myelin_proxy_retries_total");
    assert_eq!(
        requests_flagged(&mesh, "503", "URX")? - urx0,
        1.0,
        "the exhausted request is counted with response_flags URX"
    );

    // A status that `5xx` does not cover is answered at once.
    let r = curl(mesh.pod("client"), &[], &url("/fail/1/404?key=other"), &out)?;
    assert_eq!((r.code, r.body.as_slice()), (404, &b"web"[..]), "{r:?}");
    assert_eq!(key_count(web, "other")?, 1, "a 404 is not retried on 5xx");
    assert_eq!(retries()? - retries0, 4.0, "no retry for the 404");
    Ok(())
}

/// The storm of [`retry_budget_bounds_a_retry_storm`]: `STORM` concurrent requests to an
/// upstream that answers every attempt 503 after [`SLOW_FAILURE_MS`], `num_retries: 3`,
/// budget 20% of the requests in flight (at least 2 retries).
const STORM: usize = 50;
const SLOW_FAILURE_MS: u64 = 1000;

/// What a storm came to: the report of `http-get` and the deltas of the retry counters.
struct Storm {
    report: Value,
    retries: f64,
    overflow: f64,
    /// Attempts that reached the server.
    attempts: u64,
}

/// Runs the storm on a new mesh (returned with its servers, which must outlive it).
///
/// `max_retries: 1` sits next to the budget: Envoy ignores it when a budget is set, so
/// more than one retry in flight shows that the budget is what limits.
fn retry_storm(prefix: &str) -> Result<(Mesh, Vec<Proc>, Storm)> {
    let port = 8001;
    let (mesh, servers) = mesh(prefix, &["web"], |m| {
        vec![service(
            m,
            "storm",
            port,
            &["web"],
            &format!("retry_policy: {{ retry_on: 5xx, num_retries: 3, {BACK_OFF} }}"),
            // `{ value: 2 }`: the file reader does not take the plain integer yet (see
            // `retry_budget_min_retry_concurrency_reads_as_a_plain_integer`).
            "    circuit_breakers: { thresholds: [ { max_retries: 1, retry_budget: { budget_percent: { value: 20 }, min_retry_concurrency: { value: 2 } } } ] }\n",
        )]
    })?;
    let retries0 = mesh.metric("myelin_proxy_retries_total", &[])?;
    let overflow0 = mesh.metric("myelin_proxy_retry_overflow_total", &[])?;
    let report = get(
        &mesh,
        port,
        &format!("/status/503?key=storm&delay={SLOW_FAILURE_MS}"),
        STORM,
        STORM,
    )?;
    let retries = mesh.metric("myelin_proxy_retries_total", &[])? - retries0;
    let overflow = mesh.metric("myelin_proxy_retry_overflow_total", &[])? - overflow0;
    let attempts = key_count(mesh.pod("web"), "storm")?;
    eprintln!(
        "retry storm: {STORM} requests, {attempts} attempts upstream, {retries} retries, \
         {overflow} retry overflows, {}s",
        report["secs"]
    );
    let storm = Storm {
        report,
        retries,
        overflow,
        attempts,
    };
    Ok((mesh, servers, storm))
}

#[test]
fn retry_budget_bounds_a_retry_storm() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let (_mesh, _servers, storm) = retry_storm("res-budget")?;
    let Storm {
        report,
        retries,
        overflow,
        attempts,
    } = storm;
    assert_eq!(with_status(&report, 503), STORM as u64, "{report}");
    // Every attempt the proxy made reached the server, and the metric counted each retry.
    assert_eq!(
        attempts as f64,
        STORM as f64 + retries,
        "attempts = requests + retries"
    );
    // Unbounded: 3 retries each, 150. With the budget, retries in flight never exceed 20% of
    // the requests in flight (10 of 50), and an attempt takes a second, so most requests
    // are over before a retry slot frees up: about 10, plus the last few requests, which
    // may use the minimum concurrency (2). Generous bounds, far from 150; above 5, so the
    // budget (not `max_retries: 1`) set the limit.
    assert!(
        (5.0..=25.0).contains(&retries),
        "{retries} retries for {STORM} failing requests (budget: 20%, at least 2)"
    );
    // Each request wanted a retry after every failed attempt: those not made were refused
    // by the budget and counted.
    assert!(
        overflow >= STORM as f64 - retries,
        "{overflow} retry overflows counted, {retries} retries made for {STORM} requests"
    );
    Ok(())
}

/// Envoy marks a response whose retry the circuit breaker (or retry budget) refused with
/// `UO` (upstream overflow; `router.cc`: `RetryStatus::NoOverflow` sets
/// `ResponseFlag::UpstreamOverflow`), so dashboards can tell a refused retry from a plain
/// upstream 503.
#[test]
fn retry_budget_overflow_is_flagged_uo_as_in_envoy() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let (
        mesh,
        _servers,
        Storm {
            report, overflow, ..
        },
    ) = retry_storm("res-budget-uo")?;
    assert_eq!(with_status(&report, 503), STORM as u64, "{report}");
    assert!(overflow > 0.0, "the storm overflowed the budget");
    let uo = requests_flagged(&mesh, "503", "UO")?;
    assert_eq!(
        uo,
        overflow,
        "responses answered because the retry budget refused a retry are flagged UO; \
         flags of the 503s: - {}, URX {}",
        requests_flagged(&mesh, "503", "-")?,
        requests_flagged(&mesh, "503", "URX")?
    );
    Ok(())
}

#[test]
fn per_try_timeout_retries_a_slow_attempt_and_answers_504_ut_when_out_of_retries() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let port = 8002;
    let (mesh, _servers) = mesh("res-pertry", &["web"], |m| {
        vec![service(
            m,
            "pertry",
            port,
            &["web"],
            &format!(
                "timeout: 30s, retry_policy: {{ retry_on: 5xx, num_retries: 1, per_try_timeout: 0.5s, {BACK_OFF} }}"
            ),
            "",
        )]
    })?;
    let web = mesh.pod("web");
    let retries0 = mesh.metric("myelin_proxy_retries_total", &[])?;
    let ut0 = requests_flagged(&mesh, "504", "UT")?;

    // The first attempt would take 10 s; the per-try timeout cuts it at 0.5 s and the retry
    // answers at once. (Had it waited, the answer would be the first attempt's, after 10 s.)
    let r = get(&mesh, port, "/delay-first/1/10000?key=once", 1, 1)?;
    let res = &r["results"][0];
    assert_eq!(res["status"], 200, "{r}");
    assert_eq!(res["key_count"], 2, "the second attempt answered: {r}");
    assert!(
        res["ms"].as_u64().unwrap_or(u64::MAX) < 9000,
        "answered without waiting for the slow attempt: {r}"
    );
    assert_eq!(key_count(web, "once")?, 2);
    assert_eq!(
        mesh.metric("myelin_proxy_retries_total", &[])? - retries0,
        1.0
    );

    // Both attempts slow: 504, response flag UT.
    let r = get(&mesh, port, "/delay-first/2/10000?key=twice", 1, 1)?;
    let res = &r["results"][0];
    assert_eq!(res["status"], 504, "{r}");
    assert_eq!(res["server"], Value::Null, "a local reply: {r}");
    assert!(
        res["ms"].as_u64().unwrap_or(u64::MAX) < 9000,
        "the per-try timeout ended it: {r}"
    );
    assert_eq!(key_count(web, "twice")?, 2, "1 attempt + 1 retry");
    assert_eq!(requests_flagged(&mesh, "504", "UT")? - ut0, 1.0);
    Ok(())
}

/// Envoy applies `per_try_timeout` to every attempt, the first included, whatever
/// `num_retries` is: with `num_retries: 0` a slow upstream is cut off at the per-try timeout
/// (504 `UT`), well before the route timeout.
#[test]
fn per_try_timeout_applies_with_num_retries_zero() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let port = 8003;
    let (mesh, _servers) = mesh("res-pertry0", &["web"], |m| {
        vec![service(
            m,
            "pertry0",
            port,
            &["web"],
            "timeout: 30s, retry_policy: { retry_on: 5xx, num_retries: 0, per_try_timeout: 0.5s }",
            "",
        )]
    })?;
    let ut0 = requests_flagged(&mesh, "504", "UT")?;
    let r = get(&mesh, port, "/delay/5000?key=slow", 1, 1)?;
    let res = &r["results"][0];
    assert_eq!(
        (res["status"].as_u64(), res["server"].as_str()),
        (Some(504), None),
        "the 0.5 s per-try timeout ends the 5 s attempt: {r}"
    );
    assert_eq!(requests_flagged(&mesh, "504", "UT")? - ut0, 1.0);
    Ok(())
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let port = 8004;
    let base_ejection = Duration::from_secs(4);
    let servers = ["a", "b", "c"];
    let (mesh, _servers) = mesh("res-outlier", &servers, |m| {
        vec![service(
            m,
            "outlier",
            port,
            &servers,
            "",
            &format!(
                "    outlier_detection: {{ consecutive_5xx: 3, interval: 1s, base_ejection_time: {}s, max_ejection_percent: 50, enforcing_success_rate: 0 }}\n",
                base_ejection.as_secs()
            ),
        )]
    })?;
    // Only `a` fails; round robin over a, b, c.
    let path = "/status/503?only=a";
    let started = Instant::now();
    let r = get(&mesh, port, path, 30, 1)?;
    let results = r["results"].as_array().context("results")?;
    let from_a: Vec<&Value> = results.iter().filter(|x| x["server"] == "a").collect();
    assert!(
        from_a.iter().all(|x| x["status"] == 503),
        "a answers 503: {r}"
    );
    assert!(
        results
            .iter()
            .filter(|x| x["server"] != "a")
            .all(|x| x["status"] == 200),
        "b and c answer 200: {r}"
    );
    // After its third consecutive 5xx `a` is ejected: no request reaches it for the
    // ejection time (checked on the requests sent well within it).
    let third = from_a
        .get(2)
        .with_context(|| format!("a answered 3 times: {r}"))?;
    let ejected_at = third["at_ms"].as_u64().context("at_ms")?;
    let within: Vec<&Value> = results
        .iter()
        .filter(|x| {
            let at = x["at_ms"].as_u64().unwrap_or(u64::MAX);
            at > ejected_at && at < ejected_at + base_ejection.as_millis() as u64 - 1000
        })
        .collect();
    assert!(
        within.len() >= 5,
        "too few requests inside the ejection window to tell: {r}"
    );
    assert!(
        within.iter().all(|x| x["server"] != "a"),
        "a got requests while ejected: {r}"
    );
    for s in ["b", "c"] {
        assert!(
            within.iter().any(|x| x["server"] == s),
            "{s} takes a share while a is out: {r}"
        );
    }

    // After the ejection time `a` is back and gets requests again (and fails them).
    let deadline = started + base_ejection + Duration::from_secs(20);
    let back = loop {
        let r = get(&mesh, port, path, 1, 1)?;
        if r["results"][0]["server"] == "a" {
            // The request reached `a` before this.
            break Instant::now();
        }
        ensure!(
            Instant::now() < deadline,
            "a did not get a request again within {:?} of its ejection",
            deadline - started
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // `a` was ejected after `started`, so it cannot be back before `started` plus the
    // ejection time.
    assert!(
        back - started >= base_ejection,
        "a was back {:?} after the first request, before base_ejection_time ({base_ejection:?})",
        back - started
    );
    eprintln!(
        "outlier: a ejected, back {:?} after the first request",
        back - started
    );
    Ok(())
}

#[test]
fn max_requests_overflow_is_503_uo_and_counted() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let port = 8005;
    let (max, concurrent) = (3, 10);
    let (mesh, _servers) = mesh("res-breaker", &["web"], |m| {
        vec![service(
            m,
            "breaker",
            port,
            &["web"],
            "",
            &format!("    circuit_breakers: {{ thresholds: [ {{ max_requests: {max} }} ] }}\n"),
        )]
    })?;
    let overflow0 = mesh.metric("myelin_proxy_request_overflow_total", &[])?;
    let uo0 = requests_flagged(&mesh, "503", "UO")?;
    let golden_uo0 = mesh.metric(
        "myelin_requests_total",
        &[("response_code", "503"), ("response_flags", "UO")],
    )?;
    // 10 requests at once, each held 3 s by the server: 3 are admitted, 7 overflow.
    let r = get(&mesh, port, "/delay/3000?key=held", concurrent, concurrent)?;
    let results = r["results"].as_array().context("results")?;
    let admitted: Vec<&Value> = results.iter().filter(|x| x["status"] == 200).collect();
    let refused: Vec<&Value> = results.iter().filter(|x| x["status"] == 503).collect();
    assert_eq!(admitted.len(), max, "{r}");
    assert!(admitted.iter().all(|x| x["server"] == "web"), "{r}");
    assert_eq!(refused.len(), concurrent - max, "{r}");
    assert!(
        refused.iter().all(|x| x["server"].is_null()),
        "the overflow is answered by the proxy: {r}"
    );
    assert_eq!(
        key_count(mesh.pod("web"), "held")?,
        max as u64,
        "the overflow never reached the server"
    );
    let refused = refused.len() as f64;
    assert_eq!(
        mesh.metric("myelin_proxy_request_overflow_total", &[])? - overflow0,
        refused
    );
    assert_eq!(requests_flagged(&mesh, "503", "UO")? - uo0, refused);
    assert_eq!(
        mesh.metric(
            "myelin_requests_total",
            &[("response_code", "503"), ("response_flags", "UO")],
        )? - golden_uo0,
        refused,
        "golden metrics"
    );
    Ok(())
}

/// Envoy's YAML (proto3 JSON) writes a `google.protobuf.UInt32Value` as a plain number, as
/// for `max_retries` next to it: `min_retry_concurrency: 2` must read like
/// `min_retry_concurrency: { value: 2 }`.
#[test]
fn retry_budget_min_retry_concurrency_reads_as_a_plain_integer() -> Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "myelin-res-validate-{}",
        myelin_testbed::unique_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    // `myelin validate` checks that the cgroup root is under the cgroup v2 mount; it need
    // not exist.
    let cgroup_root = myelin_testbed::cgroup2_mount()?.join("myelin-validate");
    let mut problems = Vec::new();
    for value in ["{ value: 2 }", "2"] {
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                r#"myelin:
  node: {{ name: validate, address: 10.77.0.1 }}
  cgroup_root: {cgroup_root}
  workloads: []
static_resources:
  clusters:
  - name: budget
    type: STATIC
    load_assignment: {{ cluster_name: budget, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 10.77.1.1, port_value: 80 }} }} }} }} ] }} ] }}
    circuit_breakers: {{ thresholds: [ {{ max_retries: 1, retry_budget: {{ budget_percent: {{ value: 20 }}, min_retry_concurrency: {value} }} }} ] }}
"#,
                cgroup_root = cgroup_root.display()
            ),
        )?;
        let mut cmd = myelin_command()?;
        cmd.arg("validate").arg("--config").arg(&config);
        let out = cmd.output().context("running myelin validate")?;
        if !out.status.success() {
            problems.push(format!(
                "min_retry_concurrency: {value}: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

/// Removes a directory on drop.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A connect failure (an endpoint with nothing listening) is retried under each of these
/// `retry_on` conditions in Envoy: `connect-failure`, and also `gateway-error` and `reset`,
/// whose reset check covers every upstream reset reason but overflow, the failed connect
/// included (`RetryStateImpl::wouldRetryFromReset`: `RETRY_ON_RESET`, then
/// `RETRY_ON_5XX | RETRY_ON_GATEWAY_ERROR`).
#[test]
fn connect_failures_are_retried_under_connect_failure_gateway_error_and_reset() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    // `dead` runs nothing: a connect to it is refused. Round robin over [dead, web], one
    // retry: every request that tries `dead` first must be retried on `web`.
    let conditions = [
        ("connect-failure", 8010),
        ("gateway-error", 8011),
        ("reset", 8012),
    ];
    let mesh = start_mesh("res-connfail", &["dead", "web"], "off", |m| {
        conditions
            .iter()
            .zip(["on-connect-failure", "on-gateway-error", "on-reset"])
            .map(|(&(on, port), name)| {
                service(
                    m,
                    name,
                    port,
                    &["dead", "web"],
                    &format!("retry_policy: {{ retry_on: {on}, num_retries: 1, {BACK_OFF} }}"),
                    "",
                )
            })
            .collect()
    })?;
    let _web = http_server(mesh.pod("web"))?;
    let mut failed = Vec::new();
    for (on, port) in conditions {
        let r = get(&mesh, port, "/", 6, 1)?;
        if with_status(&r, 200) != 6 {
            failed.push(format!("retry_on: {on}: {}", r["statuses"]));
        }
    }
    assert!(
        failed.is_empty(),
        "requests whose first attempt was refused were not retried: {failed:#?}"
    );
    Ok(())
}
