//! `myelin-bench`: the first macro benchmark of the Myelin dataplane.
//!
//! Pod to pod on one test-bed node, with real programs: nginx in the server pod, wrk (HTTP/1.1
//! keep-alive requests for a small file) and curl (one large download) in the client pod.
//! Each mode gets a fresh node ([`myelin_testbed::Mesh`], the real `myelin` agent):
//!
//! - `direct`: the pods are not enrolled, nothing is captured (the baseline);
//! - `mesh-splice`: both pods enrolled with splice policy `nonblocking`, the agent splices;
//! - `mesh-tcp`: both pods enrolled, the agent runs with `--no-splice`;
//! - `cross-direct`: client and server pods on two linked nodes, not enrolled (the
//!   cross-node baseline);
//! - `cross-mtls`: the same two nodes, both pods enrolled, the client's agent knowing the
//!   server as a meshed workload on the other node: every connection goes through an
//!   HBONE tunnel (HTTP/2 `CONNECT` over mutual TLS) between the two agents.
//!
//! Results are printed as a markdown table with ratios against `direct`, and optionally as
//! JSON. Needs root, `nginx`, `wrk` and `curl`, and a built agent (`cargo build --release -p
//! myelin`; found next to this binary or through `$MYELIN_BIN`). Everything made (nodes,
//! processes, files) is removed on exit, on error and on SIGINT/SIGTERM too.

mod nginx;
mod report;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::{Parser, ValueEnum};
use myelin_benches::run::{check_interrupted, install_signal_handlers, Scratch};
use myelin_benches::{tools, wrk};
use myelin_testbed::{metric_sum, Mesh, MeshOptions, Pod};

use crate::{
    nginx::{Content, Nginx},
    report::{ModeResult, StreamResult},
};

const PORT: u16 = 8080;

/// Pod-to-pod macro benchmark: nginx + wrk + curl, direct vs. through the Myelin mesh.
#[derive(Debug, Parser)]
#[command(name = "myelin-bench", version)]
struct Args {
    /// Measured wrk run length per mode, in seconds (after a warm-up).
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// wrk warm-up length per mode, in seconds.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// wrk keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Size of the small file the request benchmark fetches, in bytes.
    #[arg(long, default_value_t = 100)]
    small_bytes: u64,
    /// Size of the streamed file (sparse), in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    stream_bytes: u64,
    /// Downloads of the streamed file per mode; the median is reported.
    #[arg(long, default_value_t = 3)]
    stream_runs: u32,
    /// Modes to run, in order (comma separated). Ratios need `direct`.
    #[arg(long, value_delimiter = ',', default_values = ["direct", "mesh-splice", "mesh-tcp"])]
    modes: Vec<Mode>,
    /// Rounds: every round runs every mode (each on a fresh node); medians are reported.
    /// More than one spreads the noise of a shared machine over all modes alike.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Pods not enrolled: no capture.
    Direct,
    /// Both pods enrolled (splice policy `nonblocking`), agent splicing.
    MeshSplice,
    /// Both pods enrolled, agent `--no-splice`.
    MeshTcp,
    /// Two linked nodes, pods not enrolled.
    CrossDirect,
    /// Two linked nodes, traffic through both agents over HBONE (mutual TLS).
    CrossMtls,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::MeshSplice => "mesh-splice",
            Mode::MeshTcp => "mesh-tcp",
            Mode::CrossDirect => "cross-direct",
            Mode::CrossMtls => "cross-mtls",
        }
    }

    /// The mode this one's ratios are against.
    pub fn baseline(self) -> Mode {
        match self {
            Mode::CrossDirect | Mode::CrossMtls => Mode::CrossDirect,
            _ => Mode::Direct,
        }
    }

    fn is_cross(self) -> bool {
        self.baseline() == Mode::CrossDirect
    }

    fn mesh_options(self) -> MeshOptions {
        let both = MeshOptions::pods(&["client", "server"]);
        match self {
            Mode::Direct => MeshOptions {
                unenrolled: vec!["client".into(), "server".into()],
                ..Default::default()
            },
            Mode::MeshSplice => both
                .policy("client", "nonblocking")
                .policy("server", "nonblocking"),
            Mode::MeshTcp => MeshOptions {
                no_splice: true,
                ..both
            },
            Mode::CrossDirect | Mode::CrossMtls => unreachable!("two nodes: see cross_meshes"),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("myelin-bench needs root: it builds network namespaces, cgroups and loads eBPF (run it with sudo)");
    }
    myelin_testbed::check_prerequisites(&[])?;
    for tool in ["nginx", "wrk", "curl"] {
        tools::path(tool)?;
    }
    let agent = myelin_testbed::myelin_command()?;
    ensure!(!args.modes.is_empty(), "--modes is empty");
    ensure!(
        args.connections >= args.threads && args.threads >= 1,
        "--connections must be at least --threads (>= 1)"
    );
    ensure!(args.duration >= 1, "--duration must be at least 1 s");
    ensure!(args.stream_runs >= 1, "--stream-runs must be at least 1");
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    install_signal_handlers()?;

    let env = report::Environment::probe(agent.get_program());
    eprintln!("myelin-bench: {env}");
    let scratch = Scratch::new("myelin-bench")?;
    let content = Content::create(scratch.0.join("www"), args.small_bytes, args.stream_bytes)?;
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for &mode in &args.modes {
            check_interrupted()?;
            eprintln!(
                "myelin-bench: round {round}/{}, mode {} ...",
                args.rounds,
                mode.name()
            );
            let r = run_mode(args, mode, &scratch.0, &content)
                .with_context(|| format!("round {round}, mode {}", mode.name()))?;
            eprintln!("myelin-bench: {}", r.summary());
            runs.push(r);
        }
    }
    check_interrupted()?;
    let results = report::aggregate(&args.modes, &runs);
    let table = report::markdown(&results);
    println!("{table}");
    if let Some(path) = &args.json {
        let json = report::json(args, &env, &results, &runs);
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("myelin-bench: wrote {}", path.display());
    }
    Ok(())
}

fn url(server: &Pod, path: &str) -> String {
    format!("http://{}:{PORT}/{path}", server.ip)
}

/// Fails loudly, with what the agent said, when the mesh is not in the state the mode needs.
fn mesh_failure(mesh: &Mesh, what: &str) -> anyhow::Error {
    let dump = mesh
        .config_dump()
        .map(|d| d["splice"].to_string())
        .unwrap_or_else(|e| format!("(no /config_dump: {e:#})"));
    anyhow::anyhow!(
        "{what}\nsplice state from /config_dump: {dump}\nagent log:\n{}",
        mesh.log()
    )
}

fn check_splice_state(mesh: &Mesh, mode: Mode) -> Result<()> {
    let dump = mesh.config_dump()?;
    let state = &dump["splice"]["mode"];
    match mode {
        Mode::Direct | Mode::CrossDirect | Mode::CrossMtls => {}
        Mode::MeshSplice => {
            if state != "spliced" {
                return Err(mesh_failure(
                    mesh,
                    &format!("mesh-splice: the agent's splice mode is {state}, not \"spliced\""),
                ));
            }
            for w in ["client", "server"] {
                if !mesh.workload_spliced(w)? {
                    return Err(mesh_failure(
                        mesh,
                        &format!("mesh-splice: workload {w} is not spliced"),
                    ));
                }
            }
        }
        Mode::MeshTcp => {
            if state != "tcp" {
                return Err(mesh_failure(
                    mesh,
                    &format!("mesh-tcp: the agent's splice mode is {state}, not \"tcp\""),
                ));
            }
        }
    }
    Ok(())
}

/// One small request from the client pod; Ok when nginx answered 200 with the small file.
fn probe(client: &Pod, url: &str, want_bytes: u64) -> Result<()> {
    let mut curl = Command::new(tools::path("curl")?);
    curl.args([
        "-s",
        "--max-time",
        "2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
    ])
    .arg(url);
    let out = client.run_timeout(curl, Duration::from_secs(10))?;
    let got = String::from_utf8_lossy(&out.stdout);
    let want = format!("200 {want_bytes}");
    ensure!(got == want, "probe {url}: got {got:?}, want {want:?}");
    Ok(())
}

fn run_wrk(args: &Args, client: &Pod, url: &str, seconds: u64) -> Result<wrk::WrkResult> {
    let mut cmd = Command::new(tools::path("wrk")?);
    cmd.arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(url);
    let out = client.run_timeout(cmd, Duration::from_secs(seconds + 60))?;
    myelin_testbed::ensure_success(&out, "wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let r = wrk::parse(&text)?;
    ensure!(
        r.socket_errors == [0; 4] && r.non_2xx == 0,
        "wrk saw errors (socket errors connect/read/write/timeout {:?}, non-2xx {}):\n{text}",
        r.socket_errors,
        r.non_2xx
    );
    ensure!(r.requests > 0, "wrk made no request:\n{text}");
    Ok(r)
}

fn run_stream(client: &Pod, url: &str, want_bytes: u64) -> Result<(f64, f64)> {
    let mut curl = Command::new(tools::path("curl")?);
    curl.args([
        "-s",
        "--max-time",
        "600",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download} %{time_total}",
    ])
    .arg(url);
    let out = client.run_timeout(curl, Duration::from_secs(660))?;
    myelin_testbed::ensure_success(&out, "curl (stream)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    let [code, size, speed, total] = f[..] else {
        bail!("unexpected curl output {text:?}");
    };
    ensure!(code == "200", "stream: HTTP {code}");
    let size: u64 = size.parse().context("curl size_download")?;
    ensure!(
        size == want_bytes,
        "stream: got {size} bytes, want {want_bytes}"
    );
    Ok((
        speed.parse().context("curl speed_download")?,
        total.parse().context("curl time_total")?,
    ))
}

/// Counters read from the agent's metrics around each phase.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    captured: f64,
    spliced_bytes: f64,
    proxy_requests: f64,
}

impl Counters {
    fn read(mesh: &Mesh) -> Result<Counters> {
        let m = mesh.metrics()?;
        Ok(Counters {
            captured: metric_sum(&m, "myelin_captured_connections_total", &[]),
            spliced_bytes: metric_sum(&m, "myelin_spliced_bytes_total", &[]),
            proxy_requests: metric_sum(&m, "myelin_proxy_requests_total", &[]),
        })
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            captured: self.captured - before.captured,
            spliced_bytes: self.spliced_bytes - before.spliced_bytes,
            proxy_requests: self.proxy_requests - before.proxy_requests,
        }
    }
}

/// Two linked nodes: the client's (returned first) and the server's. For `cross-mtls` both
/// pods are enrolled and both agents have `myelin.mtls` from one CA, the client's agent
/// knowing the server pod as a remote workload.
fn cross_meshes(mode: Mode, scratch: &Path) -> Result<(Mesh, Mesh)> {
    let mtls = mode == Mode::CrossMtls;
    let opts = |pod: &str| {
        if mtls {
            // Splice off: the cross-node cost under test is the tunnel, and a splice
            // self-test verdict would differ between the nodes.
            MeshOptions::pods(&[pod]).policy(pod, "off")
        } else {
            MeshOptions {
                unenrolled: vec![pod.into()],
                ..Default::default()
            }
        }
    };
    let mut server_opts = opts("server");
    server_opts.node = myelin_testbed::NodeConfig {
        addr: std::net::Ipv4Addr::new(10, 78, 0, 1),
        pod_subnet: std::net::Ipv4Addr::new(10, 78, 1, 0),
    };
    let mut server = Mesh::build("benchb", server_opts)?;
    let mut client = Mesh::build("bencha", opts("client"))?;
    client.node.link(&server.node, 9)?;
    if mtls {
        let ca =
            myelin_proxy::tls::ca::Ca::generate("cluster.local", Duration::from_secs(24 * 3600))?;
        let (cert, key) = (scratch.join("ca.pem"), scratch.join("ca.key"));
        std::fs::write(&cert, ca.cert_pem())?;
        std::fs::write(&key, ca.key_pem())?;
        let files = format!("ca_cert: {}, ca_key: {}", cert.display(), key.display());
        server.options_mut().myelin = format!("  mtls: {{ {files} }}\n");
        client.options_mut().myelin = format!(
            "  mtls: {{ {files}, remote_workloads: [{{ name: server, namespace: test, service_account: server, ip: {}, node: {} }}] }}\n",
            server.pod("server").ip,
            server.node.addr
        );
    }
    server.start_agent()?;
    client.start_agent()?;
    Ok((client, server))
}

fn run_mode(args: &Args, mode: Mode, scratch: &Path, content: &Content) -> Result<ModeResult> {
    let (mesh, server_mesh) = if mode.is_cross() {
        let (c, s) = cross_meshes(mode, scratch)?;
        (c, Some(s))
    } else {
        (Mesh::start("bench", mode.mesh_options())?, None)
    };
    let client = mesh.pod("client").clone();
    let server = match &server_mesh {
        Some(s) => s.pod("server").clone(),
        None => mesh.pod("server").clone(),
    };
    if !mode.is_cross() {
        check_splice_state(&mesh, mode)?;
    }
    // Declared after `mesh`: dropped (killed by pid) before the agent and the node go.
    let mut nginx = Nginx::start(
        &server,
        &scratch.join(format!("nginx-{}", mode.name())),
        content,
        PORT,
    )?;
    let small = url(&server, "small");
    let big = url(&server, "big");
    nginx.wait_ready(Duration::from_secs(10), || {
        check_interrupted()?;
        probe(&client, &small, content.small_bytes)
    })?;

    check_interrupted()?;
    run_wrk(args, &client, &small, args.warmup).context("wrk warm-up")?;
    check_interrupted()?;
    let c0 = Counters::read(&mesh)?;
    let requests = run_wrk(args, &client, &small, args.duration)?;
    nginx.check_alive()?;
    let c1 = Counters::read(&mesh)?;
    let mut runs = Vec::new();
    for _ in 0..args.stream_runs {
        check_interrupted()?;
        runs.push(run_stream(&client, &big, content.big_bytes)?);
    }
    nginx.check_alive()?;
    let c2 = Counters::read(&mesh)?;
    let (req_delta, stream_delta) = (c1.since(c0), c2.since(c1));

    // The mode really is what it says it is.
    match mode {
        Mode::CrossDirect => ensure!(
            req_delta.captured == 0.0 && stream_delta.captured == 0.0,
            "cross-direct: the agent captured connections of unenrolled pods"
        ),
        Mode::CrossMtls => {
            let tunnels = server_mesh
                .as_ref()
                .map(|s| s.metric("myelin_hbone_tunnels_total", &[]))
                .transpose()?
                .unwrap_or(0.0);
            let want = f64::from(args.connections + args.stream_runs);
            ensure!(
                tunnels >= want,
                "cross-mtls: {tunnels} HBONE tunnels on the server's node, want at least {want}"
            );
        }
        Mode::Direct => ensure!(
            req_delta.captured == 0.0 && stream_delta.captured == 0.0,
            "direct: the agent captured connections of unenrolled pods"
        ),
        Mode::MeshSplice => {
            check_splice_state(&mesh, mode)?;
            let min_req_bytes = (requests.requests * content.small_bytes) as f64;
            if req_delta.spliced_bytes < min_req_bytes {
                return Err(mesh_failure(
                    &mesh,
                    &format!(
                        "mesh-splice: only {} bytes spliced during {} requests of {} bytes",
                        req_delta.spliced_bytes, requests.requests, content.small_bytes
                    ),
                ));
            }
            let min_stream_bytes = (u64::from(args.stream_runs) * content.big_bytes) as f64;
            if stream_delta.spliced_bytes < min_stream_bytes {
                return Err(mesh_failure(
                    &mesh,
                    &format!(
                        "mesh-splice: only {} bytes spliced during {} streams of {} bytes",
                        stream_delta.spliced_bytes, args.stream_runs, content.big_bytes
                    ),
                ));
            }
        }
        Mode::MeshTcp => {
            ensure!(
                c2.spliced_bytes == 0.0,
                "mesh-tcp: {} bytes spliced with --no-splice",
                c2.spliced_bytes
            );
        }
    }
    if !matches!(mode, Mode::Direct | Mode::CrossDirect) {
        // Every wrk run opens its own connections, every curl one.
        let want = (f64::from(args.connections), f64::from(args.stream_runs));
        if req_delta.captured < want.0 || stream_delta.captured < want.1 {
            return Err(mesh_failure(
                &mesh,
                &format!(
                    "{}: captured {} connections for wrk's {} and {} for {} downloads",
                    mode.name(),
                    req_delta.captured,
                    want.0,
                    stream_delta.captured,
                    want.1
                ),
            ));
        }
    }
    Ok(ModeResult {
        mode,
        wrk: requests,
        stream: StreamResult::from_runs(&runs),
        spliced_bytes_requests: req_delta.spliced_bytes,
        spliced_bytes_stream: stream_delta.spliced_bytes,
        proxy_requests: req_delta.proxy_requests,
        captured_connections: c2.since(c0).captured,
    })
}
