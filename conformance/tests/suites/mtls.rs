//! mTLS between nodes through the real `myelin` binary. Agents issue their pods'
//! certificates from the CA files of `myelin.mtls` and serve HBONE on the node address.
//!
//! - One node, with a client in its network namespace holding a certificate from the same
//!   CA (as another node's agent would): it tunnels to a pod, and certificates from
//!   another CA, of another trust domain, expired, or for an identity the destination's
//!   inbound policy does not allow are refused with their own counted reasons.
//! - Two linked nodes: pod to pod across them through capture and HBONE, encrypted on
//!   the wire, pooled; and certificate rotation under steady traffic.
//!
//! Needs root and a built `myelin` (`cargo build --release -p myelin`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use myelin_proxy::hbone::{baggage, Client, ClientConfig, PoolKey, TunnelError};
use myelin_proxy::tls::ca::Ca;
use myelin_proxy::tls::{Identities, SpiffeId};
use myelin_testbed::mesh::in_netns;
use myelin_testbed::{podtool_command, testbed_ready, Mesh, MeshOptions, Pod, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "cluster.local";
const ECHO: u16 = 9000;
const HOUR: Duration = Duration::from_secs(3600);
/// nghttpd's port (HTTP/2 prior knowledge).
const H2C: u16 = 8081;

/// Starts a podtool server (`args`, e.g. `echo-server --port 9000`) in `pod` and waits for
/// its ready line.
fn podtool_server(pod: &Pod, args: &[&str]) -> Result<Proc> {
    let mut cmd = podtool_command()?;
    cmd.args(args).stdout(std::process::Stdio::piped());
    let mut p = pod.spawn(cmd)?;
    p.next_line(Duration::from_secs(10))?;
    Ok(p)
}

/// podtool's echo server on [`ECHO`] in `pod`.
fn echo_server(pod: &Pod) -> Result<Proc> {
    podtool_server(pod, &["echo-server", "--port", &ECHO.to_string()])
}

/// `podtool exchange` from `pod` to `ip`:[`ECHO`]: `count` exchanges of `size` bytes. The
/// report, also of a failed run (podtool exits non-zero, its report is still on stdout).
fn exchange(pod: &Pod, ip: Ipv4Addr, count: u32, size: u32) -> Result<serde_json::Value> {
    let mut cmd = podtool_command()?;
    cmd.args([
        "exchange",
        "--addr",
        &format!("{ip}:{ECHO}"),
        "--count",
        &count.to_string(),
        "--size",
        &size.to_string(),
    ]);
    let out = pod.run(cmd)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "podtool exchange's report ({}; stderr: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A CA for one test and a scratch directory (removed at drop) for its files.
fn ca_and_dir(tag: &str) -> Result<(Ca, TempDir)> {
    let dir = TempDir(std::env::temp_dir().join(format!("myelin-{tag}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    Ok((Ca::generate(TD, 24 * HOUR)?, dir))
}

/// Node B (`<tag>b`, from `b_opts` at 10.78.0.1 with pods in 10.78.1.0/24) and node A
/// (`<tag>a`, the test bed's default addresses, pod `web`), linked by wire `n`. No agent
/// is started: node A's config usually names node B's pods.
fn linked_nodes(tag: &str, mut b_opts: MeshOptions, n: u8) -> Result<(Mesh, Mesh)> {
    b_opts.node = myelin_testbed::NodeConfig {
        addr: Ipv4Addr::new(10, 78, 0, 1),
        pod_subnet: Ipv4Addr::new(10, 78, 1, 0),
    };
    let b = Mesh::build(&format!("{tag}b"), b_opts)?;
    let a = Mesh::build(
        &format!("{tag}a"),
        MeshOptions::pods(&["web"]).policy("web", "off"),
    )?;
    a.node.link(&b.node, n)?;
    Ok((a, b))
}

/// One `myelin.mtls.remote_workloads` entry: pod `name` (namespace `test`) at `ip` on the
/// node at `node`, expected to be `sa/<sa>`.
fn remote_workload(name: &str, sa: &str, ip: Ipv4Addr, node: Ipv4Addr) -> String {
    format!("{{ name: {name}, namespace: test, service_account: {sa}, ip: {ip}, node: {node} }}")
}

/// Waits until something listens on `port` on the loopback of the netns `netns`.
fn wait_for_port(netns: &std::path::Path, port: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let up = in_netns(netns, move || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok()
        })?;
        if up {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "nothing listens on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory removed at drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Identities holding one certificate for `id`, from `issuer`, trusting `trusted`.
fn client_ids(
    trusted: &Ca,
    issuer: &Ca,
    id: &SpiffeId,
    expired: bool,
) -> std::sync::Arc<Identities> {
    let ids = Identities::new(TD, &[trusted.cert_der().clone()]).unwrap();
    let issued = if expired {
        let now = SystemTime::now();
        issuer
            .issue_between(id, now - 2 * HOUR, now - HOUR)
            .unwrap()
    } else {
        issuer.issue(id, HOUR).unwrap()
    };
    ids.insert(&issued).unwrap();
    ids
}

#[test]
fn agent_hbone_server_tunnels_to_its_pod_and_refuses_bad_certificates() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let ca = Ca::generate(TD, 24 * HOUR)?;
    let dir = TempDir(std::env::temp_dir().join(format!("myelin-mtls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let (cert, key) = (dir.0.join("ca.pem"), dir.0.join("ca.key"));
    std::fs::write(&cert, ca.cert_pem())?;
    std::fs::write(&key, ca.key_pem())?;

    let mut opts = MeshOptions::pods(&["db"]);
    opts.myelin = format!(
        "  mtls: {{ ca_cert: {}, ca_key: {}, cert_lifetime: 1h, inbound_allow: {{ test/db: [\"spiffe://cluster.local/ns/test/sa/web\"] }} }}\n",
        cert.display(),
        key.display()
    );
    let mesh = Mesh::start("mtls", opts)?;
    let db = mesh.pod("db");
    let _echo = echo_server(db)?;

    let node = std::net::SocketAddr::from((mesh.node.addr, myelin_proxy::hbone::PORT));
    let target = std::net::SocketAddr::from((db.ip, ECHO));
    let db_id = SpiffeId::new(TD, "test", "db")?;
    let web = SpiffeId::new(TD, "test", "web")?;
    let key = |source: &SpiffeId| PoolKey {
        source: source.clone(),
        node,
        expected: db_id.clone(),
    };
    let other_ca = Ca::generate("other.example", 24 * HOUR)?;
    let stranger = SpiffeId::new("other.example", "test", "web")?;

    let outcome = in_netns(&mesh.node.netns_path(), || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            // A good client: the bytes go through, both ways.
            let client = Client::new(client_ids(&ca, &ca, &web, false), ClientConfig::default());
            let mut headers = http::HeaderMap::new();
            headers.insert("baggage", baggage("test", "web").context("baggage")?);
            let mut t = client
                .connect(&key(&web), target, headers)
                .await
                .context("tunnel to the pod through the agent")?;
            t.write_all(b"through hbone").await?;
            let mut buf = [0u8; 13];
            tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut buf)).await??;
            anyhow::ensure!(&buf == b"through hbone", "echo came back as {buf:?}");
            drop(t);

            // Not a pod of this node: 404.
            let elsewhere = std::net::SocketAddr::from((mesh.node.addr, ECHO));
            match client
                .connect(&key(&web), elsewhere, http::HeaderMap::new())
                .await
            {
                Err(TunnelError::Refused { status, .. }) if status == 404 => {}
                other => anyhow::bail!("a tunnel to a non-pod got {other:?}"),
            }

            // Refused at the handshake: another CA, another trust domain, expired.
            for ids in [
                client_ids(&ca, &other_ca, &web, false),
                client_ids(&ca, &ca, &stranger, false),
                client_ids(&ca, &ca, &web, true),
            ] {
                let source = ids.certificates()[0].0.clone();
                let c = Client::new(ids, ClientConfig::default());
                let r = c
                    .connect(&key(&source), target, http::HeaderMap::new())
                    .await;
                anyhow::ensure!(r.is_err(), "a bad certificate for {source} got a tunnel");
            }

            // A valid certificate, but for an identity db's inbound policy does not allow.
            let intruder = SpiffeId::new(TD, "test", "intruder")?;
            let c = Client::new(
                client_ids(&ca, &ca, &intruder, false),
                ClientConfig::default(),
            );
            match c
                .connect(&key(&intruder), target, http::HeaderMap::new())
                .await
            {
                Err(TunnelError::Refused { status, .. }) if status == 403 => {}
                other => anyhow::bail!("an identity outside the allow list got {other:?}"),
            }
            Ok(())
        })
    })?;
    outcome?;
    // The counters are updated as the handshakes fail; give the last a moment.
    std::thread::sleep(Duration::from_millis(200));
    for reason in [
        "untrusted_issuer",
        "other_trust_domain",
        "expired",
        "unknown_destination",
        "denied",
    ] {
        let n = mesh.metric("myelin_hbone_refused_total", &[("reason", reason)])?;
        assert_eq!(n, 1.0, "refusals counted as {reason}\n{}", mesh.log());
    }
    assert_eq!(mesh.metric("myelin_hbone_tunnels_total", &[])?, 1.0);
    let opened = mesh.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_workload", "web"),
            ("source_principal", "spiffe://cluster.local/ns/test/sa/web"),
            ("destination_workload", "db"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/test/sa/db",
            ),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(opened, 1.0, "{}", mesh.metrics()?);
    // The workload's certificate is issued and its expiry exported.
    let left = mesh.metric(
        "myelin_identity_cert_expiry_seconds",
        &[("identity", "spiffe://cluster.local/ns/test/sa/db")],
    )?;
    assert!(left > 3000.0 && left <= 3600.0, "seconds left: {left}");
    Ok(())
}

/// Writes a CA's certificate and key for the agents' `myelin.mtls` section.
fn ca_files(ca: &Ca, dir: &TempDir) -> Result<String> {
    let (cert, key) = (dir.0.join("ca.pem"), dir.0.join("ca.key"));
    std::fs::write(&cert, ca.cert_pem())?;
    std::fs::write(&key, ca.key_pem())?;
    Ok(format!(
        "ca_cert: {}, ca_key: {}",
        cert.display(),
        key.display()
    ))
}

/// Node A with pod `web` and node B with pod `db`, linked, both agents with `myelin.mtls`
/// from one CA (certificates of `lifetime`), A knowing db as a remote workload on B.
fn two_nodes(tag: &str, lifetime: &str) -> Result<(Mesh, Mesh, Ipv4Addr, TempDir)> {
    let (ca, dir) = ca_and_dir(tag)?;
    let files = ca_files(&ca, &dir)?;
    let mut b_opts = MeshOptions::pods(&["db"]).policy("db", "off");
    b_opts.myelin = format!("  mtls: {{ {files}, cert_lifetime: {lifetime} }}\n");
    let (mut a, mut b) = linked_nodes(tag, b_opts, 7)?;
    let db_ip = b.pod("db").ip;
    a.options_mut().myelin = format!(
        "  mtls: {{ {files}, cert_lifetime: {lifetime}, remote_workloads: [{}] }}\n",
        remote_workload("db", "db", db_ip, b.node.addr)
    );
    b.start_agent()?;
    a.start_agent()?;
    Ok((a, b, db_ip, dir))
}

/// Certificates of 4 s (renewed every ~2 s) on both nodes under a steady stream of new
/// cross-node connections for 9 s: not one fails, and the renewed certificates are the
/// ones in use (new mTLS connections are opened after each rotation).
#[test]
fn certificate_rotation_under_steady_traffic_loses_nothing() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let (a, b, db_ip, _dir) = two_nodes("mtlsr", "4s")?;
    let _echo = echo_server(b.pod("db"))?;
    let web = a.pod("web");
    let until = std::time::Instant::now() + Duration::from_secs(9);
    let (mut runs, mut failures) = (0, Vec::new());
    while std::time::Instant::now() < until {
        runs += 1;
        match exchange(web, db_ip, 5, 512) {
            Ok(r) if r["errors"].as_u64() == Some(0) && r["ok"].as_u64() == Some(5) => {}
            Ok(r) => failures.push(r.to_string()),
            Err(e) => failures.push(format!("{e:#}")),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(runs >= 20, "only {runs} runs in 9 s");
    assert!(
        failures.is_empty(),
        "{} of {runs} failed: {failures:?}",
        failures.len()
    );
    for (mesh, id) in [(&a, "web"), (&b, "db")] {
        let issued = mesh.metric("myelin_identity_certs_issued_total", &[("result", "ok")])?;
        assert!(
            issued >= 4.0,
            "{id}: {issued} certificates issued in 9 s of 4 s lifetimes"
        );
        let left = mesh.metric(
            "myelin_identity_cert_expiry_seconds",
            &[(
                "identity",
                &format!("spiffe://cluster.local/ns/test/sa/{id}"),
            )],
        )?;
        assert!(
            left > 0.0,
            "{id}: the certificate in use has expired ({left} s)"
        );
    }
    // Each rotation of web's certificate moved new tunnels to a new mTLS connection.
    let handshakes = b.metric("myelin_hbone_handshakes_total", &[])?;
    assert!(
        handshakes >= 3.0,
        "{handshakes} handshakes: the renewed certificate was not used\n{}",
        a.log()
            .chars()
            .rev()
            .take(4000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
    Ok(())
}

/// Two nodes on one link: pod `web` on node A reaches pod `db` on node B through the
/// capture, A's proxy and an HBONE tunnel to B's proxy. Raw TCP and HTTP (curl) both get
/// through; a capture on the inter-node link holds no plaintext of the request or the
/// response; A reports the requests as `mutual_tls` to db's principal, and B, as the
/// destination, names web's principal from its certificate. Then 100 parallel
/// connections all complete over a pooled mTLS connection or two.
#[test]
fn cross_node_traffic_goes_through_hbone_and_is_encrypted_on_the_wire() -> Result<()> {
    if !testbed_ready(&["curl", "tcpdump", "nghttpd"]) {
        return Ok(());
    }
    let (a, b, db_ip, dir) = two_nodes("mtls2", "24h")?;
    let db = b.pod("db");
    let _echo = echo_server(db)?;
    let _web = podtool_server(
        db,
        &["http-server", "--port", "8080", "--name", "db-server"],
    )?;
    // An HTTP/2-only server (h2c) for the HTTP/2 leg.
    let docroot = dir.0.join("htdocs");
    std::fs::create_dir_all(&docroot)?;
    std::fs::write(docroot.join("hello.txt"), "hello over h2c\n")?;
    let mut nghttpd = std::process::Command::new("nghttpd");
    nghttpd
        .args(["--no-tls", "-d"])
        .arg(&docroot)
        .arg(H2C.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _h2 = db.spawn(nghttpd)?;
    wait_for_port(&db.netns_path(), H2C)?;

    // Everything on the link between the nodes, while the traffic runs.
    let pcap = dir.0.join("link.pcap");
    let mut dump_cmd = std::process::Command::new("tcpdump");
    dump_cmd
        .args([
            "-i",
            myelin_testbed::NODE_LINK,
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .stderr(std::process::Stdio::piped());
    let mut dump = a.node.spawn(dump_cmd)?;
    // tcpdump says "listening on ..." on stderr once it captures.
    let stderr = dump.take_stderr().context("tcpdump's stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .context("tcpdump did not start")?;
    anyhow::ensure!(first.contains("listening"), "tcpdump: {first}");

    let web = a.pod("web");
    let report = exchange(web, db_ip, 20, 2048)?;
    assert_eq!(
        report["errors"].as_u64(),
        Some(0),
        "raw TCP across nodes: {report}"
    );

    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "-m", "10", "-H", "x-secret-header: plaintext-canary"])
        .arg(format!("http://{db_ip}:8080/status/200"));
    let out = web.run(curl)?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl across nodes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("db-server") || !body.is_empty(), "{body}");

    let mut curl = std::process::Command::new("curl");
    curl.args([
        "-sS",
        "-m",
        "10",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version}",
        "-H",
        "x-secret-header: plaintext-canary",
    ])
    .arg(format!("http://{db_ip}:{H2C}/hello.txt"));
    let out = web.run(curl)?;
    assert!(
        out.status.success(),
        "curl --http2-prior-knowledge across nodes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello over h2c\n\n2",
        "HTTP/2 end to end across the nodes"
    );
    std::thread::sleep(Duration::from_millis(300));
    // Stopped with SIGINT, tcpdump flushes and reports what it saw.
    dump.signal(nix::sys::signal::Signal::SIGINT)?;
    dump.wait_timeout(Duration::from_secs(5))?;
    let tcpdump: Vec<String> = rx.try_iter().collect();
    drop(dump);

    let captured = std::fs::read(&pcap).context("reading the link capture")?;
    assert!(
        captured.len() > 2000,
        "the capture saw the traffic ({} bytes; tcpdump: {tcpdump:?})",
        captured.len()
    );
    for plaintext in [&b"plaintext-canary"[..], b"GET /status", b"HTTP/1.1 200"] {
        assert!(
            !captured.windows(plaintext.len()).any(|w| w == plaintext),
            "{:?} crossed the link in the clear",
            String::from_utf8_lossy(plaintext)
        );
    }

    let web_principal = "spiffe://cluster.local/ns/test/sa/web";
    let db_principal = "spiffe://cluster.local/ns/test/sa/db";
    let a_requests = a.metric(
        "myelin_requests_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
            ("destination_principal", db_principal),
            ("response_code", "200"),
        ],
    )?;
    assert_eq!(a_requests, 2.0, "HTTP/1.1 and HTTP/2\n{}", a.metrics()?);
    let a_tcp = a.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("connection_security_policy", "mutual_tls"),
            ("destination_principal", db_principal),
        ],
    )?;
    assert_eq!(a_tcp, 1.0, "{}", a.metrics()?);
    let b_tunnels = b.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_principal", web_principal),
            ("source_workload", "web"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(
        b_tunnels,
        1.0,
        "the raw TCP connection's tunnel (the HTTP tunnels are reported per request)\n{}",
        b.metrics()?
    );
    // The HTTP/1.1 and the HTTP/2 request, each as the destination saw it.
    let b_requests = b.metric(
        "myelin_requests_total",
        &[
            ("reporter", "destination"),
            ("source_principal", web_principal),
            ("source_workload", "web"),
            ("destination_principal", db_principal),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(b_requests, 2.0, "{}", b.metrics()?);

    // 100 parallel connections across the nodes: all complete, over the pooled mTLS
    // connection(s) (100 tunnels per HTTP/2 connection), not 100 handshakes.
    let mut many = podtool_command()?;
    many.args([
        "connect-many",
        "--addr",
        &format!("{db_ip}:{ECHO}"),
        "--conns",
        "100",
        "--exchanges",
        "20",
    ]);
    let out = web.run(many)?;
    let report = myelin_testbed::json_output(&out, "podtool connect-many")?;
    assert_eq!(report["ok"].as_u64(), Some(100), "{report}");
    let handshakes = b.metric("myelin_hbone_handshakes_total", &[])?;
    assert!(
        (1.0..=3.0).contains(&handshakes),
        "103 tunnels took {handshakes} mTLS handshakes"
    );
    let tunnels = b.metric("myelin_hbone_tunnels_total", &[])?;
    assert_eq!(tunnels, 103.0);
    Ok(())
}

/// One plaintext connection from the network namespace `netns` (not from a pod: nothing
/// captures it) straight to `addr`: one echoed line, or the connect error.
fn plaintext_echo(
    netns: &std::path::Path,
    addr: std::net::SocketAddr,
) -> Result<std::io::Result<()>> {
    in_netns(netns, move || -> std::io::Result<()> {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"around the mesh\n")?;
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line)?;
        if line != "around the mesh\n" {
            return Err(std::io::Error::other(format!("echo: {line:?}")));
        }
        Ok(())
    })
}

/// Polls `f` until it returns `want` (the agent reads the kernel's record every second).
fn eventually(what: &str, want: f64, mut f: impl FnMut() -> Result<f64>) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = f()?;
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{what}: {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Node B holds `db` in STRICT and `cache` in PERMISSIVE mode. Through the mesh (pod `web`
/// on node A, over HBONE; and `cache` to `db` on node B, through B's proxy) both take
/// connections. Plaintext straight to `db` from node A or from node B's host is dropped by
/// the kernel, counted by where it came from; plaintext to `cache` gets in and is reported
/// by B as destination-side TCP with `connection_security_policy="none"`, while the mesh's
/// connections to it are not.
#[test]
fn strict_drops_plaintext_around_the_mesh_and_permissive_labels_it() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let (ca, dir) = ca_and_dir("mtlss")?;
    let files = ca_files(&ca, &dir)?;
    let mut b_opts = MeshOptions::pods(&["db", "cache"])
        .policy("cache", "off")
        .mtls_mode("db", "strict");
    b_opts.myelin = format!("  mtls: {{ {files}, mode: permissive }}\n");
    let (mut a, mut b) = linked_nodes("mtlss", b_opts, 8)?;
    let (db_ip, cache_ip) = (b.pod("db").ip, b.pod("cache").ip);
    a.options_mut().myelin = format!(
        "  mtls: {{ {files}, remote_workloads: [{}, {}] }}\n",
        remote_workload("db", "db", db_ip, b.node.addr),
        remote_workload("cache", "cache", cache_ip, b.node.addr)
    );
    b.start_agent()?;
    a.start_agent()?;
    let _db = echo_server(b.pod("db"))?;
    let _cache = echo_server(b.pod("cache"))?;
    let exchange = |pod: &Pod, ip: Ipv4Addr| -> Result<()> {
        let report = exchange(pod, ip, 3, 1024)?;
        anyhow::ensure!(report["errors"].as_u64() == Some(0), "{ip}: {report}");
        Ok(())
    };

    // Through the mesh, STRICT and PERMISSIVE alike take connections.
    exchange(a.pod("web"), db_ip).context("web -> db over HBONE")?;
    exchange(a.pod("web"), cache_ip).context("web -> cache over HBONE")?;
    exchange(b.pod("cache"), db_ip).context("cache -> db through node B's proxy")?;

    // Around the mesh: STRICT drops the handshake.
    let db = std::net::SocketAddr::from((db_ip, ECHO));
    for (from, netns) in [
        ("node A", a.node.netns_path()),
        ("node B", b.node.netns_path()),
    ] {
        let err = plaintext_echo(&netns, db)?
            .err()
            .with_context(|| format!("plaintext from {from} reached the STRICT pod"))?;
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{from}: {err}");
    }
    let drops = |reason: &str| {
        b.metric(
            "myelin_strict_dropped_connections_total",
            &[("reason", reason)],
        )
    };
    assert!(drops("remote")? >= 1.0, "{}", b.metrics()?);
    assert!(drops("node")? >= 1.0, "{}", b.metrics()?);
    assert_eq!(drops("local_pod")?, 0.0);

    // PERMISSIVE: plaintext gets in and is labelled; the mesh's own connections to cache
    // (the HBONE tunnel's) are not plaintext.
    plaintext_echo(&a.node.netns_path(), (cache_ip, ECHO).into())?
        .context("plaintext from node A to the PERMISSIVE pod")?;
    let plaintext = |metric: &str| {
        b.metric(
            metric,
            &[
                ("reporter", "destination"),
                ("destination_workload", "cache"),
                ("source_principal", "unknown"),
                ("connection_security_policy", "none"),
            ],
        )
    };
    eventually("plaintext connections opened to cache", 1.0, || {
        plaintext("myelin_tcp_connections_opened_total")
    })?;
    eventually("plaintext connections closed to cache", 1.0, || {
        plaintext("myelin_tcp_connections_closed_total")
    })?;
    let none_total = b.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "none"),
        ],
    )?;
    assert_eq!(
        none_total,
        1.0,
        "only the one plaintext connection\n{}",
        b.metrics()?
    );
    let mtls_to_cache = b.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "cache"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(mtls_to_cache, 1.0, "{}", b.metrics()?);
    Ok(())
}

/// Node A expects pod `db` on node B to be `sa/impostor`; B holds only `sa/db`'s
/// certificate, so it cannot present the identity A asks for (by SNI) and the TLS
/// handshake fails: no tunnel, no byte reaches the pod, and A counts the failure by reason
/// in `myelin_hbone_tunnel_failures_total` (`tls`: a real agent never presents another
/// identity than the one asked for; a node that does is refused as `wrong_identity`, which
/// the proxy's own HBONE tests check with such a node).
#[test]
fn a_node_without_the_expected_identity_is_refused_and_counted() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let (ca, dir) = ca_and_dir("mtlsw")?;
    let files = ca_files(&ca, &dir)?;
    let mut b_opts = MeshOptions::pods(&["db"]).policy("db", "off");
    b_opts.myelin = format!("  mtls: {{ {files} }}\n");
    let (mut a, mut b) = linked_nodes("mtlsw", b_opts, 9)?;
    let db_ip = b.pod("db").ip;
    a.options_mut().myelin = format!(
        "  mtls: {{ {files}, remote_workloads: [{}] }}\n",
        remote_workload("db", "impostor", db_ip, b.node.addr)
    );
    b.start_agent()?;
    a.start_agent()?;
    let _echo = echo_server(b.pod("db"))?;

    let report = exchange(a.pod("web"), db_ip, 1, 1024)?;
    assert_eq!(report["ok"].as_u64(), Some(0), "{report}");
    let failures = a.metric("myelin_hbone_tunnel_failures_total", &[])?;
    let tls = a.metric("myelin_hbone_tunnel_failures_total", &[("reason", "tls")])?;
    assert!(
        failures == 1.0 && tls == 1.0,
        "the one failed tunnel counted as a TLS failure\n{}",
        a.metrics()?
    );
    assert_eq!(b.metric("myelin_hbone_tunnels_total", &[])?, 0.0);
    Ok(())
}

/// The `static_resources.secrets` of one node's identities and the `ROOTCA` bundle, as
/// files of `dir` (SDS with `identity_source: sds`; no CA on the node).
fn static_secrets(ca: &Ca, dir: &TempDir, ids: &[&SpiffeId]) -> Result<String> {
    let mut yaml = String::from("  secrets:\n");
    let bundle = dir.0.join("rootca.pem");
    std::fs::write(&bundle, ca.cert_pem())?;
    for (i, id) in ids.iter().enumerate() {
        let issued = ca.issue(id, HOUR)?;
        let (cert, key) = (
            dir.0.join(format!("{i}.pem")),
            dir.0.join(format!("{i}.key")),
        );
        std::fs::write(&cert, issued.cert_pem())?;
        std::fs::write(&key, issued.key_pem())?;
        yaml.push_str(&format!(
            "  - name: \"{id}\"\n    tls_certificate:\n      certificate_chain: {{ filename: {} }}\n      private_key: {{ filename: {} }}\n",
            cert.display(),
            key.display()
        ));
    }
    yaml.push_str(&format!(
        "  - name: ROOTCA\n    validation_context: {{ trusted_ca: {{ filename: {} }} }}\n",
        bundle.display()
    ));
    Ok(yaml)
}

/// Cross-node mTLS configured the xDS way through the real agents: neither node has a CA
/// (their certificates and trust bundle are SDS Secrets of the bootstrap) and node A learns
/// that `db` lives on node B only from its endpoint's `myelin.io/hbone` metadata (no
/// `remote_workloads`). A TCP proxy listener for db's address sends pod `web`'s connection
/// through a tunnel that B accepts as `sa/web`.
#[test]
fn sds_certificates_and_eds_hbone_metadata_through_the_agents() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let (ca, dir) = ca_and_dir("mtlsx")?;
    let id = |sa: &str| SpiffeId::new(TD, "test", sa);
    let (web_id, db_id) = (id("web")?, id("db")?);

    let mut b_opts = MeshOptions::pods(&["db"]).policy("db", "off");
    b_opts.myelin = "  mtls: { identity_source: sds }\n".into();
    let b_dir = TempDir(dir.0.join("b"));
    std::fs::create_dir_all(&b_dir.0)?;
    b_opts.envoy = format!(
        "static_resources:\n{}",
        static_secrets(&ca, &b_dir, &[&db_id])?
    );
    let (mut a, mut b) = linked_nodes("mtlsx", b_opts, 10)?;
    let db_ip = b.pod("db").ip;
    let a_dir = TempDir(dir.0.join("a"));
    std::fs::create_dir_all(&a_dir.0)?;
    let opts = a.options_mut();
    opts.myelin = "  mtls: { identity_source: sds }\n".into();
    opts.envoy = format!(
        r#"static_resources:
{secrets}  listeners:
  - name: db
    address: {{ socket_address: {{ address: {db_ip}, port_value: {ECHO} }} }}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: db
          cluster: db
  clusters:
  - name: db
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: db
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {db_ip}, port_value: {ECHO} }} }} }}
          metadata: {{ filter_metadata: {{ "myelin.io/hbone": {{ node: "{node}", identity: "{db_id}" }} }} }}
"#,
        secrets = static_secrets(&ca, &a_dir, &[&web_id])?,
        node = b.node.addr,
    );
    b.start_agent()?;
    a.start_agent()?;
    let _echo = echo_server(b.pod("db"))?;

    let report = exchange(a.pod("web"), db_ip, 5, 1024)?;
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    let web_principal = web_id.to_string();
    let b_tcp = b.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_principal", &web_principal),
            ("destination_workload", "db"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(
        b_tcp,
        1.0,
        "B accepted web's SDS certificate\n{}",
        b.metrics()?
    );
    let a_tcp = a.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("source_principal", &web_principal),
            ("destination_principal", &db_id.to_string()),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(
        a_tcp,
        1.0,
        "A verified db's SDS certificate\n{}",
        a.metrics()?
    );
    Ok(())
}

/// Pod to pod on one node with `myelin.mtls`: no tunnel, but the node's proxy authorizes
/// the source by its identity and reports the destination side too. db allows only `web`:
/// `intruder` gets Envoy's RBAC 403 over HTTP and a reset over raw TCP (the echo server
/// never answers it), counted in `myelin_proxy_local_refused_total`; web's traffic is
/// reported by both reporters with both principals and `mutual_tls`.
#[test]
fn same_node_traffic_is_authorized_by_identity_and_reported_at_the_destination() -> Result<()> {
    if !testbed_ready(&["curl"]) {
        return Ok(());
    }
    let (ca, dir) = ca_and_dir("mtlsl")?;
    let files = ca_files(&ca, &dir)?;
    let mut opts = MeshOptions::pods(&["web", "intruder", "db"])
        .policy("web", "off")
        .policy("intruder", "off")
        .policy("db", "off");
    opts.myelin = format!(
        "  mtls: {{ {files}, inbound_allow: {{ test/db: [\"spiffe://cluster.local/ns/test/sa/web\"] }} }}\n"
    );
    let mesh = Mesh::start("mtlsl", opts)?;
    let db = mesh.pod("db");
    let _echo = echo_server(db)?;
    let _web = podtool_server(
        db,
        &["http-server", "--port", "8080", "--name", "db-server"],
    )?;

    let curl = |from: &str| -> Result<(String, String)> {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
            .arg(format!("http://{}:8080/status/200", db.ip));
        let out = mesh.pod(from).run(curl)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.to_owned(), body.to_owned()))
    };
    let exchange = |from: &str| exchange(mesh.pod(from), db.ip, 3, 512);

    let (code, _) = curl("web")?;
    assert_eq!(code, "200", "web -> db over HTTP");
    let report = exchange("web")?;
    assert_eq!(
        report["errors"].as_u64(),
        Some(0),
        "web -> db over TCP: {report}"
    );
    let (code, body) = curl("intruder")?;
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("403", "RBAC: access denied"),
        "intruder -> db over HTTP"
    );
    let report = exchange("intruder")?;
    assert_eq!(
        report["ok"].as_u64(),
        Some(0),
        "intruder -> db over TCP: {report}"
    );

    let web_id = ("source_principal", "spiffe://cluster.local/ns/test/sa/web");
    let intruder_id = (
        "source_principal",
        "spiffe://cluster.local/ns/test/sa/intruder",
    );
    let db_id = (
        "destination_principal",
        "spiffe://cluster.local/ns/test/sa/db",
    );
    let mtls = ("connection_security_policy", "mutual_tls");
    for reporter in ["source", "destination"] {
        let r = ("reporter", reporter);
        let ok = mesh.metric(
            "myelin_requests_total",
            &[r, web_id, db_id, mtls, ("response_code", "200")],
        )?;
        assert_eq!(ok, 1.0, "{reporter}: web's request\n{}", mesh.metrics()?);
        let denied = mesh.metric(
            "myelin_requests_total",
            &[
                r,
                intruder_id,
                db_id,
                ("response_code", "403"),
                ("response_flags", "RBAC"),
            ],
        )?;
        assert_eq!(
            denied,
            1.0,
            "{reporter}: intruder's request\n{}",
            mesh.metrics()?
        );
        let opened = mesh.metric(
            "myelin_tcp_connections_opened_total",
            &[r, web_id, db_id, mtls],
        )?;
        assert!(
            opened >= 1.0,
            "{reporter}: web's TCP connections\n{}",
            mesh.metrics()?
        );
        let intruder_tcp = mesh.metric("myelin_tcp_connections_opened_total", &[r, intruder_id])?;
        assert_eq!(
            intruder_tcp, 0.0,
            "refused before any connection to the pod"
        );
    }
    let refused = mesh.metric("myelin_proxy_local_refused_total", &[("reason", "denied")])?;
    assert!(
        refused >= 2.0,
        "one HTTP request and at least one TCP connection refused: {refused}\n{}",
        mesh.metrics()?
    );
    assert_eq!(
        mesh.metric("myelin_hbone_tunnels_total", &[])?,
        0.0,
        "no tunnel on one node"
    );
    Ok(())
}
