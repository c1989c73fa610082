//! The HBONE server's TLS handshake rate (`myelin-handshake-bench`): new connections, each a
//! full mutual TLS 1.3 handshake (session resumption off), from a few concurrent clients
//! for a fixed time, against the real [`hbone::Server`] in process, with baselines in the
//! same run on the same machine:
//!
//! - `tcp`: a TCP connect to a server that writes one byte when it accepts (the floor:
//!   connect, accept, close);
//! - `tls`: a rustls server with the same certificate, key type and crypto provider but no
//!   client authentication, writing one byte after its handshake (what one-way TLS costs);
//! - `hbone`: the HBONE server: the client presents its workload certificate from the
//!   embedded CA ([`Ca`]), the server verifies the chain and the SPIFFE ID and starts
//!   HTTP/2; the client waits for the server's first HTTP/2 bytes (its SETTINGS), which
//!   it only sends once it has verified the client.
//!
//! Each connection's latency runs from the start of the TCP connect to the server's first
//! byte, so the server's side of the handshake is inside it. The server runs on a runtime
//! of its own with one worker thread, whose CPU time is read from `/proc` before and after:
//! CPU per handshake on the server is the number that holds on a busy machine; handshakes
//! per second depend on what else runs (the clients share the machine with it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use myelin_proxy::drain;
use myelin_proxy::golden::GoldenMetrics;
use myelin_proxy::hbone::{self, HboneMetrics};
use myelin_proxy::model::ProxyConfig;
use myelin_proxy::tls::ca::Ca;
use myelin_proxy::tls::{sni_for, store, Identities, SpiffeId};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TRUST_DOMAIN: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);
/// The name of the server runtime's one worker thread (its CPU time is read by it).
const SERVER_THREAD: &str = "hs-bench-server";

/// What one connection is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// TCP connect and the server's first byte.
    Tcp,
    /// One-way TLS 1.3 (server certificate only).
    Tls,
    /// The HBONE server: mutual TLS 1.3 with SPIFFE verification, then HTTP/2.
    Hbone,
}

impl Mode {
    /// Every mode, baselines first.
    pub const ALL: [Mode; 3] = [Mode::Tcp, Mode::Tls, Mode::Hbone];

    /// The name in tables and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Tls => "tls",
            Mode::Hbone => "hbone",
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured time per mode.
    pub duration: Duration,
    /// Warm-up per mode (not measured).
    pub warmup: Duration,
    /// Concurrent clients, each opening one connection after another.
    pub clients: usize,
    /// Modes, in order.
    pub modes: Vec<Mode>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            clients: 4,
            modes: Mode::ALL.to_vec(),
        }
    }
}

/// One mode's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub mode: Mode,
    /// Connections completed in the measured time.
    pub connections: u64,
    /// Connections that failed (none expected).
    pub errors: u64,
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time of the server's thread per connection, in microseconds.
    pub server_cpu_us: f64,
    /// For `hbone`: handshakes the server counted as verified (its
    /// `myelin_hbone_handshakes_total`) during the measured time, and refusals.
    pub verified: Option<u64>,
    pub refused: Option<u64>,
}

/// The servers and client configs of a run.
struct Bed {
    server_rt: tokio::runtime::Runtime,
    tcp: SocketAddr,
    tls: SocketAddr,
    hbone: SocketAddr,
    /// The HBONE server's counters.
    registry: Registry,
    /// Presents the source workload's certificate and expects the server's identity.
    client: Arc<rustls::ClientConfig>,
    server_id: SpiffeId,
    _drain: drain::Signal,
}

fn bed() -> Result<Bed> {
    let ca = Ca::generate(TRUST_DOMAIN, 24 * HOUR).context("generating the CA")?;
    let server_id = SpiffeId::new(TRUST_DOMAIN, "bench", "server")?;
    let client_id = SpiffeId::new(TRUST_DOMAIN, "bench", "client")?;
    let server_cert = ca.issue(&server_id, HOUR)?;
    let server_ids = Identities::new(TRUST_DOMAIN, &[ca.cert_der().clone()])?;
    server_ids.insert(&server_cert)?;
    let client_ids = Identities::new(TRUST_DOMAIN, &[ca.cert_der().clone()])?;
    client_ids.insert(&ca.issue(&client_id, HOUR)?)?;
    let mut client = client_ids.client_config(&client_id, vec![server_id.clone()])?;
    // Every connection a full handshake.
    client.resumption = rustls::client::Resumption::disabled();

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()?;
    let mut registry = Registry::default();
    let metrics = Arc::new(HboneMetrics::new(&mut registry));
    let (signal, watch) = drain::channel();
    let (tcp, tls, hbone) = server_rt.block_on(async {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let tls = TcpListener::bind("127.0.0.1:0").await?;
        let hbone = TcpListener::bind("127.0.0.1:0").await?;
        let addrs = (tcp.local_addr()?, tls.local_addr()?, hbone.local_addr()?);
        tokio::spawn(serve_tcp(tcp));
        let mut one_way = rustls::ServerConfig::builder_with_provider(store::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.cert.clone()], server_cert.private_key())?;
        one_way.alpn_protocols = vec![store::ALPN_H2.to_vec()];
        tokio::spawn(serve_tls(tls, TlsAcceptor::from(Arc::new(one_way))));
        let server = hbone::Server::new(
            server_ids,
            Arc::new(ProxyConfig::default()),
            metrics,
            Arc::new(GoldenMetrics::unregistered()),
        );
        tokio::spawn(async move { server.serve(hbone, watch).await });
        anyhow::Ok(addrs)
    })?;
    Ok(Bed {
        server_rt,
        tcp,
        tls,
        hbone,
        registry,
        client: Arc::new(client),
        server_id,
        _drain: signal,
    })
}

async fn serve_tcp(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let _ = s.write_all(b"x").await;
        });
    }
}

async fn serve_tls(l: TcpListener, acceptor: TlsAcceptor) {
    while let Ok((s, _)) = l.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            if let Ok(mut tls) = acceptor.accept(s).await {
                let _ = tls.write_all(b"x").await;
                let _ = tls.flush().await;
                // Until the client closes: its close_notify is not an error here.
                let mut buf = [0u8; 64];
                let _ = tls.read(&mut buf).await;
            }
        });
    }
}

/// One connection: connect, handshake (not for `tcp`), the server's first byte; closed.
async fn one(bed: &ClientSide, mode: Mode) -> Result<Duration> {
    let start = Instant::now();
    let addr = match mode {
        Mode::Tcp => bed.tcp,
        Mode::Tls => bed.tls,
        Mode::Hbone => bed.hbone,
    };
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut buf = [0u8; 1];
    match mode {
        Mode::Tcp => {
            let mut tcp = tcp;
            tcp.read_exact(&mut buf).await?;
        }
        Mode::Tls | Mode::Hbone => {
            let mut tls = bed.connector.connect(bed.sni.clone(), tcp).await?;
            // For HBONE: the server's SETTINGS, sent once it has verified us.
            tls.read_exact(&mut buf).await?;
        }
    }
    Ok(start.elapsed())
}

/// What the client tasks share.
struct ClientSide {
    tcp: SocketAddr,
    tls: SocketAddr,
    hbone: SocketAddr,
    connector: TlsConnector,
    sni: rustls::pki_types::ServerName<'static>,
}

/// CPU time (user + system) of the server runtime's thread so far.
fn server_cpu() -> Result<Duration> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")? as f64;
    let mut total = 0u64;
    let mut found = false;
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != SERVER_THREAD {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // Fields after the `(comm)`: state is field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')').context("stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        found = true;
    }
    ensure!(found, "no thread named {SERVER_THREAD}");
    Ok(Duration::from_secs_f64(total as f64 / ticks))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Runs every mode of `opts` in turn; `check` is called between modes (interrupts).
pub fn run(opts: &Options, check: &dyn Fn() -> Result<()>) -> Result<Vec<Measured>> {
    ensure!(opts.clients > 0, "need at least one client");
    let bed = bed()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let side = Arc::new(ClientSide {
        tcp: bed.tcp,
        tls: bed.tls,
        hbone: bed.hbone,
        connector: TlsConnector::from(bed.client.clone()),
        sni: sni_for(&bed.server_id),
    });
    let mut out = Vec::new();
    for &mode in &opts.modes {
        check()?;
        // Warm-up, then the measured run.
        client_rt.block_on(drive(&side, mode, opts.clients, opts.warmup))?;
        let before = ServerCounts::read(&bed.registry);
        let cpu0 = server_cpu()?;
        let wall = Instant::now();
        let (mut lat, errors) =
            client_rt.block_on(drive(&side, mode, opts.clients, opts.duration))?;
        let elapsed = wall.elapsed();
        let cpu = server_cpu()? - cpu0;
        lat.sort_unstable();
        let n = lat.len() as u64;
        if n == 0 {
            bail!(
                "{}: no connection completed in {:?}",
                mode.as_str(),
                opts.duration
            );
        }
        let hbone = mode == Mode::Hbone;
        out.push(Measured {
            mode,
            connections: n,
            errors,
            per_second: n as f64 / elapsed.as_secs_f64(),
            p50_us: percentile(&lat, 0.5),
            p99_us: percentile(&lat, 0.99),
            server_cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
            verified: hbone
                .then(|| ServerCounts::read(&bed.registry).handshakes - before.handshakes),
            refused: hbone.then(|| ServerCounts::read(&bed.registry).refused - before.refused),
        });
    }
    drop(client_rt);
    drop(bed.server_rt);
    Ok(out)
}

/// The HBONE server's handshakes and refusals (every reason), from its metrics.
#[derive(Debug, Clone, Copy)]
struct ServerCounts {
    handshakes: u64,
    refused: u64,
}

impl ServerCounts {
    fn read(registry: &Registry) -> ServerCounts {
        let text = myelin_proxy::metrics::prometheus_text(registry);
        let sum = |prefix: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        ServerCounts {
            handshakes: sum("hbone_handshakes_total "),
            refused: sum("hbone_refused_total{"),
        }
    }
}

/// `clients` tasks opening connections one after another for `duration`: every
/// connection's latency, and the number of failed ones.
async fn drive(
    side: &Arc<ClientSide>,
    mode: Mode,
    clients: usize,
    duration: Duration,
) -> Result<(Vec<Duration>, u64)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let side = side.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                match one(&side, mode).await {
                    Ok(d) => lat.push(d),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("{}: connection failed: {e:#}", mode.as_str());
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    Ok((all, errors))
}

/// The results as a markdown table, with ratios against `tcp` and `tls` when they ran.
pub fn markdown(runs: &[Measured]) -> String {
    let rate = |m: Mode| runs.iter().find(|r| r.mode == m).map(|r| r.per_second);
    let (tcp, tls) = (rate(Mode::Tcp), rate(Mode::Tls));
    let ratio =
        |base: Option<f64>, v: f64| base.map_or("-".to_owned(), |b| format!("{:.2}", v / b));
    let mut s = String::from(
        "| mode | connections | per second | vs tcp | vs tls | p50 ms | p99 ms | server CPU µs/conn | verified |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.0} | {} |\n",
            r.mode.as_str(),
            r.connections,
            r.per_second,
            ratio(tcp, r.per_second),
            ratio(tls, r.per_second),
            r.p50_us / 1000.0,
            r.p99_us / 1000.0,
            r.server_cpu_us,
            r.verified.map_or("-".to_owned(), |v| v.to_string()),
        ));
    }
    s
}
