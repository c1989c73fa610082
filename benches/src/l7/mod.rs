//! The L7 benchmark (`myelin-l7-bench`, issue 4): the same HTTP hop done by Myelin, by nginx
//! and by haproxy as plain reverse proxies on loopback, and direct, on equal CPU.
//!
//! Everything runs in one test-bed node's network namespace (its own loopback, so fixed ports
//! are safe): a backend (nginx, one worker, a fixed 100-byte body), the proxy under test, and
//! the clients. The proxy under test runs alone on `proxy_cpu`; the backend and the clients
//! share `load_cpu` (`taskset`), so every proxy gets one core and the same load.
//!
//! Myelin is the real `myelin` agent (release build) started by the test bed
//! ([`myelin_testbed::Mesh`]), two ways:
//! - `myelin`: the same hop as nginx and haproxy. Its Envoy `static_resources` give it a
//!   `bind_to_port` listener on the node's loopback that routes everything to a STATIC cluster
//!   of the loopback backend ([`servers::myelin_envoy`]); nothing is captured.
//! - `myelin-mesh`: the hop as the mesh makes it. The client runs in an enrolled pod and calls
//!   a second backend in another enrolled pod on the same node; the agent captures the
//!   connection, routes it by its original destination (a `bind_to_port: false` listener of
//!   the backend pod's address) and connects to the backend pod. Both pods have
//!   `splice: nonblocking` (wrk, h2load, the open loop and nginx are non-blocking), so the
//!   client's and the backend's sockets are spliced to the proxy's by `sk_msg` and their bytes
//!   never cross the TCP stack; the run fails unless the agent reports both pods spliced and
//!   its spliced-message counter grew.
//!
//! Golden metrics are on (the agent's default), and every run checks they counted its
//! requests. The agent is started from a thread pinned to `proxy_cpu`, so the whole process
//! (and the size of its tokio runtime, which follows the CPUs it may use) is confined to that
//! core from the start.
//!
//! Loads, each after a warm-up run of the same kind:
//! - `http1`: wrk, HTTP/1.1 keep-alive, closed loop (50 connections by default);
//! - `http2`: h2load, h2c prior knowledge (10 connections x 5 streams by default);
//! - `open-loop`: a fixed rate (1,000 req/s by default) of HTTP/1.1 requests from
//!   [`openloop`], latency from the intended send time.
//!
//! For the proxy: its CPU time (user + system, from its CPU-time clock; the kernel's share as
//! `/proc/<pid>/stat` splits it) over the measured run divided by the requests of that run,
//! and its resident set (`VmRSS`) right after the run.
//! For each run also how busy both cores were (`/proc/stat`): the proxy's with anything else,
//! the load core in all (near 100 %, the load core sets the pace and the tail latencies).

pub mod h2load;
pub mod openloop;
pub mod procstat;
pub mod report;
pub mod servers;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use myelin_testbed::{ensure_success, http_get, in_netns, Mesh, MeshOptions, Node, Pod, Proc};
use serde::Serialize;

use crate::{tools, wrk};
use servers::port;

/// Who carries the hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The client talks to the backend itself.
    Direct,
    Nginx,
    Haproxy,
    /// The stack's floor: `myelin-hyper-floor`, a reverse proxy of hyper's connections on
    /// tokio's current-thread runtime and nothing else (no routing, metrics, ...).
    HyperFloor,
    /// The floor of an HTTP codec of our own: `myelin-hyper-floor --own-h1 --h2-inline`, the
    /// same hop without hyper's connections (HTTP/1.1 parsed with `httparse` in the client
    /// connection's task, h2c on the `h2` crate with the streams in the connection's task, the
    /// upstream exchange in the request's future). Only the benchmark's traffic.
    CodecFloor,
    /// The agent as a reverse proxy on loopback, like nginx and haproxy.
    Myelin,
    /// The agent as the mesh: client pod -> captured, spliced -> proxy -> spliced -> backend pod.
    MyelinMesh,
}

/// The pods of `myelin-mesh`.
const CLIENT_POD: &str = "client";
const BACKEND_POD: &str = "backend";

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Direct,
        Target::Nginx,
        Target::Haproxy,
        Target::HyperFloor,
        Target::CodecFloor,
        Target::Myelin,
        Target::MyelinMesh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::HyperFloor => "hyper-floor",
            Target::CodecFloor => "codec-floor",
            Target::Myelin => "myelin",
            Target::MyelinMesh => "myelin-mesh",
        }
    }

    /// The real agent (either way).
    pub fn is_myelin(self) -> bool {
        matches!(self, Target::Myelin | Target::MyelinMesh)
    }

    /// The addresses the clients call for HTTP/1.1 and for h2c.
    fn addrs(self, backend_pod: Ipv4Addr) -> (SocketAddr, SocketAddr) {
        let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match self {
            Target::Direct => (lo(port::BACKEND_H1), lo(port::BACKEND_H2)),
            Target::Nginx => (lo(port::NGINX_H1), lo(port::NGINX_H2)),
            Target::Haproxy => (lo(port::HAPROXY), lo(port::HAPROXY)),
            Target::HyperFloor => (lo(port::HYPER_FLOOR), lo(port::HYPER_FLOOR)),
            Target::CodecFloor => (lo(port::CODEC_FLOOR), lo(port::CODEC_FLOOR)),
            Target::Myelin => (lo(port::MYELIN), lo(port::MYELIN)),
            // The backend pod's own address: the client's connection is captured.
            Target::MyelinMesh => {
                let a = SocketAddr::from((backend_pod, port::BACKEND_H1));
                (a, a)
            }
        }
    }
}

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// wrk, HTTP/1.1 keep-alive, closed loop.
    Http1,
    /// h2load, h2c, closed loop.
    Http2,
    /// A fixed request rate over HTTP/1.1 keep-alive.
    OpenLoop,
}

impl Load {
    pub const ALL: [Load; 3] = [Load::Http1, Load::Http2, Load::OpenLoop];

    pub fn name(self) -> &'static str {
        match self {
            Load::Http1 => "http1",
            Load::Http2 => "http2",
            Load::OpenLoop => "open-loop",
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub targets: Vec<Target>,
    pub loads: Vec<Load>,
    /// Every round runs every target with every load; the report shows medians.
    pub rounds: u32,
    /// Measured run length per load, seconds.
    pub duration_s: u64,
    /// Warm-up run length before each measured run, seconds.
    pub warmup_s: u64,
    /// wrk connections (one thread).
    pub wrk_connections: u32,
    /// h2load connections (one thread) and concurrent streams per connection.
    pub h2_connections: u32,
    pub h2_streams: u32,
    /// The open loop's rate (requests per second) and connections.
    pub rate: f64,
    pub open_connections: u32,
    /// The proxy under test's CPU, and the CPU of the backend and the clients.
    pub proxy_cpu: usize,
    pub load_cpu: usize,
    /// A run with more other load than this on the proxy's CPU (percent of its wall time:
    /// another VM's steal, another process), or more steal on the load CPU, is measured
    /// again, up to `attempts` times in all; the quietest attempt is kept. `None`: every
    /// first attempt is kept.
    pub max_other_load_pct: Option<f64>,
    pub attempts: u32,
}

impl Default for Options {
    /// The benchmark.
    fn default() -> Self {
        Options {
            targets: Target::ALL.to_vec(),
            loads: Load::ALL.to_vec(),
            rounds: 3,
            duration_s: 10,
            warmup_s: 2,
            wrk_connections: 50,
            h2_connections: 10,
            h2_streams: 5,
            rate: 1000.0,
            open_connections: 10,
            proxy_cpu: 0,
            load_cpu: 1,
            max_other_load_pct: None,
            attempts: 1,
        }
    }
}

/// What the proxy used during one measured run.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub cpu_us_per_request: f64,
    /// The part of `cpu_us_per_request` spent in the kernel (system time).
    pub kernel_us_per_request: f64,
    /// Right after the run.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub threads: u32,
    pub thread_names: String,
    pub cpus_allowed: String,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub round: u32,
    pub target: Target,
    pub load: Load,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// HTTP/1.1 (wrk): p99.5, p99.9 and the slowest request.
    pub tail: Option<crate::wrk::Tail>,
    /// `None` for `direct`.
    pub proxy: Option<ProxyUsage>,
    /// Open loop: p99 of how late the sends were against their schedule.
    pub send_lag_p99_us: Option<f64>,
    /// Myelin: how much `myelin_requests_total` grew during the run.
    pub golden_requests: Option<f64>,
    /// `myelin-mesh`: how much `myelin_spliced_messages_total` grew during the run (messages
    /// the kernel moved between the pods' and the proxy's sockets without TCP).
    pub spliced_messages: Option<f64>,
    /// How busy the proxy's CPU was with anything but the proxy during the run, percent of
    /// the run's wall time: the noise indicator (another build on the machine shows here; so
    /// does the kernel's loopback work done in interrupt context on that CPU).
    pub proxy_core_other_pct: f64,
    /// The hypervisor's steal on the clients' and the backend's CPU, percent of the run's
    /// wall time: it delays them, which shows in the latencies (the open loop's most).
    pub load_core_steal_pct: f64,
    /// How busy the clients' and the backend's CPU was, percent of the run's wall time. Near
    /// 100 % that core, not the proxy, sets the pace, and its queueing shows in the tail
    /// latencies: a faster proxy drives it harder in a closed loop.
    pub load_core_busy_pct: f64,
    /// Which attempt this is (see [`Options::max_other_load_pct`]).
    pub attempt: u32,
}

impl Measurement {
    /// What the rerun rule compares with its threshold and between attempts: the larger of
    /// the two noise figures.
    fn noise(&self) -> f64 {
        self.proxy_core_other_pct.max(self.load_core_steal_pct)
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} {}: {:.0} req/s, p50 {:.1} us, p99 {:.1} us",
            self.target.name(),
            self.load.name(),
            self.requests_per_sec,
            self.p50_us,
            self.p99_us
        );
        if let Some(t) = &self.tail {
            s += &format!(
                " (p99.5 {:.0}, p99.9 {:.0}, max {:.0})",
                t.p99_5_us, t.p99_9_us, t.max_us
            );
        }
        if let Some(p) = &self.proxy {
            s += &format!(
                ", proxy CPU {:.2} us/request ({:.2} in the kernel), RSS {:.1} MB, {} threads",
                p.cpu_us_per_request,
                p.kernel_us_per_request,
                p.rss_bytes as f64 / 1e6,
                p.threads
            );
        }
        if let Some(n) = self.spliced_messages {
            s += &format!(
                ", {:.1} spliced messages/request",
                n / self.requests.max(1) as f64
            );
        }
        if let Some(lag) = self.send_lag_p99_us {
            s += &format!(", send lag p99 {lag:.1} us");
        }
        s += &format!(
            "; other load on the proxy's CPU {:.1}%, load CPU busy {:.0}%, steal on it {:.1}%",
            self.proxy_core_other_pct, self.load_core_busy_pct, self.load_core_steal_pct
        );
        if self.attempt > 1 {
            s += &format!(" (attempt {})", self.attempt);
        }
        s
    }
}

/// Fails unless everything the options need is installed.
pub fn check_tools(opts: &Options) -> Result<()> {
    myelin_testbed::check_prerequisites(&[])?;
    let mut need = vec!["taskset", "nginx"];
    if opts.targets.contains(&Target::Haproxy) {
        need.push("haproxy");
    }
    if opts.loads.contains(&Load::Http1) {
        need.push("wrk");
    }
    if opts.loads.contains(&Load::Http2) {
        need.push("h2load");
    }
    for t in need {
        tools::path(t)?;
    }
    if opts.targets.contains(&Target::Myelin) {
        myelin_testbed::myelin_command()?;
    }
    if opts.targets.contains(&Target::HyperFloor) || opts.targets.contains(&Target::CodecFloor) {
        hyper_floor_path()?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        opts.proxy_cpu != opts.load_cpu && opts.proxy_cpu < cpus && opts.load_cpu < cpus,
        "--proxy-cpu {} and --load-cpu {} must be two different CPUs of the {cpus} here",
        opts.proxy_cpu,
        opts.load_cpu
    );
    Ok(())
}

/// `program args...` under `taskset -c cpu`: taskset execs the program, so the pid is the
/// program's.
fn pinned(cpu: usize, program: &Path) -> Result<Command> {
    let mut c = Command::new(tools::path("taskset")?);
    c.arg("-c").arg(cpu.to_string()).arg(program);
    Ok(c)
}

/// Runs `f` on a thread allowed only on `cpu`; children it spawns inherit that.
fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .with_context(|| format!("pinning to CPU {cpu}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("pinned thread panicked"))?
    })
}

/// A GET to `addr` from the node's netns answers 200 with the backend's body.
fn probe(node: &Node, addr: SocketAddr) -> Result<()> {
    let (status, body) = in_netns(&node.netns_path(), || http_get(addr, "/"))??;
    ensure!(
        status == 200 && body == servers::BODY,
        "GET {addr}: {status} {body:?}"
    );
    Ok(())
}

fn wait_serving(
    node: &Node,
    addr: SocketAddr,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        alive()?;
        match probe(node, addr) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("nothing serves on {addr} after 15 s")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A process started by the benchmark (nginx or haproxy), killed by pid on drop.
struct Server {
    proc: Proc,
    name: &'static str,
    log: PathBuf,
}

impl Server {
    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.proc.try_wait()? {
            bail!(
                "{} exited with {status}; log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// nginx from `conf`, pinned to `cpu`, started by `spawn` (in the node or in a pod).
fn start_nginx(
    spawn: impl FnOnce(Command) -> Result<Proc>,
    cpu: usize,
    dir: &Path,
    conf: impl Fn(&Path) -> String,
) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf(dir))?;
    let log = dir.join("error.log");
    let mut cmd = pinned(cpu, &tools::path("nginx")?)?;
    // -e: the error log before the config is read; -p: the prefix for anything relative.
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Ok(Server {
        proc: spawn(cmd)?,
        name: "nginx",
        log,
    })
}

fn start_haproxy(node: &Node, cpu: usize, dir: &Path) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, servers::proxy_haproxy())?;
    let mut cmd = pinned(cpu, &tools::path("haproxy")?)?;
    // -db: foreground, no daemon, no master process: the pid is the proxy's.
    cmd.arg("-db").arg("-f").arg(&path);
    start_logged(node, cmd, dir, "haproxy")
}

/// `myelin-hyper-floor` as `hyper-floor` or (`own_codec`) as `codec-floor`.
fn start_floor(node: &Node, cpu: usize, dir: &Path, own_codec: bool) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string();
    let mut cmd = pinned(cpu, &hyper_floor_path()?)?;
    let (listen, name) = if own_codec {
        cmd.args(["--own-h1", "--h2-inline"]);
        (port::CODEC_FLOOR, "codec-floor")
    } else {
        (port::HYPER_FLOOR, "hyper-floor")
    };
    cmd.arg("--listen")
        .arg(lo(listen))
        .arg("--backend")
        .arg(lo(port::BACKEND_H1));
    start_logged(node, cmd, dir, name)
}

/// Starts `cmd` in `node`, its output in `dir/<name>.log`.
fn start_logged(node: &Node, mut cmd: Command, dir: &Path, name: &'static str) -> Result<Server> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    Ok(Server {
        proc: node.spawn(cmd)?,
        name,
        log,
    })
}

/// `myelin-hyper-floor`: `$MYELIN_HYPER_FLOOR`, else next to this executable (or its parent
/// directory, for a test binary in `target/release/deps`).
fn hyper_floor_path() -> Result<PathBuf> {
    const NAME: &str = "myelin-hyper-floor";
    if let Some(p) = std::env::var_os("MYELIN_HYPER_FLOOR") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(NAME))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{NAME} not found next to {}: cargo build --release -p myelin-benches",
                exe.display()
            )
        })
}

/// The proxy under test while it runs.
enum Running {
    Direct,
    Server(Server),
    /// The agent runs inside the mesh; its pid is found in its cgroup.
    Myelin(u32),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Direct => None,
            Running::Server(s) => Some(s.proc.pid()),
            Running::Myelin(pid) => Some(*pid),
        }
    }

    fn alive(&mut self, mesh: &Mesh) -> Result<()> {
        match self {
            Running::Server(s) => s.alive(),
            Running::Myelin(pid) => {
                ensure!(
                    Path::new(&format!("/proc/{pid}")).exists(),
                    "the agent exited; log:\n{}",
                    mesh.log()
                );
                Ok(())
            }
            Running::Direct => Ok(()),
        }
    }
}

/// The agent's pid: the one process in the node's agent cgroup.
fn agent_pid(node: &Node) -> Result<u32> {
    let procs = node.agent_cgroup_path().join("cgroup.procs");
    let text =
        std::fs::read_to_string(&procs).with_context(|| format!("reading {}", procs.display()))?;
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    match pids[..] {
        [pid] => Ok(pid),
        _ => bail!(
            "expected one process in {}, found {pids:?}",
            procs.display()
        ),
    }
}

struct Bench<'a> {
    opts: &'a Options,
    /// The node, with the two pods of `myelin-mesh` (enrolled, `splice: nonblocking`).
    mesh: Mesh,
    scratch: &'a Path,
    check: &'a dyn Fn() -> Result<()>,
}

/// Runs the benchmark. `check` is called between steps (e.g. to stop on a signal): an error
/// from it ends the run, with everything started stopped.
pub fn run(opts: &Options, check: &dyn Fn() -> Result<()>) -> Result<Vec<Measurement>> {
    check_tools(opts)?;
    ensure!(opts.rounds >= 1, "rounds must be at least 1");
    ensure!(
        opts.duration_s >= 1 && opts.warmup_s >= 1,
        "duration and warm-up must be at least 1 s"
    );
    let scratch = crate::run::Scratch::new("myelin-l7-bench")?;
    // The node provides the netns, the address and the cgroup root the agent needs, and the
    // pods of `myelin-mesh`. The agent starts for each Myelin target and stops after it.
    let mut mesh = Mesh::build(
        "l7bench",
        MeshOptions::pods(&[CLIENT_POD, BACKEND_POD])
            .policy(CLIENT_POD, "nonblocking")
            .policy(BACKEND_POD, "nonblocking"),
    )?;
    mesh.options_mut().envoy = servers::myelin_envoy(mesh.pod(BACKEND_POD).ip);
    let mut bench = Bench {
        opts,
        mesh,
        scratch: &scratch.0,
        check,
    };
    // Declared after `bench` (the node): killed by pid before the node is torn down.
    let node = &bench.mesh.node;
    let mut backend = start_nginx(
        |c| node.spawn(c),
        opts.load_cpu,
        &scratch.0.join("backend"),
        |d| servers::backend_nginx(d, Ipv4Addr::LOCALHOST),
    )?;
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, port::BACKEND_H1));
    wait_serving(node, lo, || backend.alive())?;
    // The backend pod's nginx, for `myelin-mesh` only.
    let mut pod_backend = match opts.targets.contains(&Target::MyelinMesh) {
        true => {
            let pod = bench.mesh.pod(BACKEND_POD);
            let mut b = start_nginx(
                |c| pod.spawn(c),
                opts.load_cpu,
                &scratch.0.join("backend-pod"),
                |d| servers::backend_nginx(d, Ipv4Addr::UNSPECIFIED),
            )?;
            let addr = SocketAddr::from((pod.ip, port::BACKEND_H1));
            wait_serving(node, addr, || b.alive())?;
            Some(b)
        }
        false => None,
    };
    let mut out = Vec::new();
    for round in 1..=opts.rounds {
        for &target in &opts.targets {
            check()?;
            eprintln!(
                "myelin-l7-bench: round {round}/{}, {} ...",
                opts.rounds,
                target.name()
            );
            let backend = match (target, pod_backend.as_mut()) {
                (Target::MyelinMesh, Some(b)) => b,
                _ => &mut backend,
            };
            let ms = bench
                .target(round, target, backend)
                .with_context(|| format!("round {round}, {}", target.name()))?;
            out.extend(ms);
        }
    }
    Ok(out)
}

impl Bench<'_> {
    fn start(&mut self, target: Target) -> Result<Running> {
        let (node, cpu) = (&self.mesh.node, self.opts.proxy_cpu);
        let dir = self.scratch.join(target.name());
        let mut running = match target {
            Target::Direct => Running::Direct,
            Target::Nginx => Running::Server(start_nginx(
                |c| node.spawn(c),
                cpu,
                &dir,
                servers::proxy_nginx,
            )?),
            Target::Haproxy => Running::Server(start_haproxy(node, cpu, &dir)?),
            Target::HyperFloor => Running::Server(start_floor(node, cpu, &dir, false)?),
            Target::CodecFloor => Running::Server(start_floor(node, cpu, &dir, true)?),
            Target::Myelin | Target::MyelinMesh => {
                let mesh = &mut self.mesh;
                on_cpu(cpu, || mesh.start_agent())?;
                Running::Myelin(agent_pid(&self.mesh.node)?)
            }
        };
        let mesh = &self.mesh;
        if target == Target::MyelinMesh {
            // The self-test decides; a node where splicing does not work cannot measure this.
            for pod in [CLIENT_POD, BACKEND_POD] {
                ensure!(
                    mesh.workload_spliced(pod)?,
                    "the agent does not splice pod {pod} (see its splice self-test in the log):\n{}",
                    mesh.log()
                );
            }
        }
        let (h1, _) = target.addrs(mesh.pod(BACKEND_POD).ip);
        match target {
            // From the client pod: captured like the load will be.
            Target::MyelinMesh => {
                let pod = mesh.pod(CLIENT_POD);
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    running.alive(mesh)?;
                    let r = in_netns_cgroup(pod, || http_get(h1, "/"))?;
                    match r {
                        Ok((200, body)) if body == servers::BODY => break,
                        r if Instant::now() > deadline => {
                            bail!("GET {h1} from pod {CLIENT_POD}: {r:?} after 15 s")
                        }
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
            _ => wait_serving(&mesh.node, h1, || running.alive(mesh))?,
        }
        if let Some(pid) = running.pid() {
            let allowed = procstat::cpus_allowed(pid)?;
            ensure!(
                allowed == cpu.to_string(),
                "{} (pid {pid}) may run on CPUs {allowed}, not only {cpu}",
                target.name()
            );
        }
        Ok(running)
    }

    fn target(
        &mut self,
        round: u32,
        target: Target,
        backend: &mut Server,
    ) -> Result<Vec<Measurement>> {
        let mut running = self.start(target)?;
        let mut out = Vec::new();
        for &load in &self.opts.loads {
            // On a shared VM another tenant's load comes and goes; a run it disturbed is
            // measured again (every target alike), and the quietest attempt kept.
            let mut kept: Option<Measurement> = None;
            for attempt in 1..=self.opts.attempts.max(1) {
                (self.check)()?;
                let mut m = self
                    .measure(round, target, load, &mut running)
                    .with_context(|| load.name())?;
                backend.alive()?;
                m.attempt = attempt;
                let quiet = self
                    .opts
                    .max_other_load_pct
                    .is_none_or(|max| m.noise() <= max);
                let again = !quiet && attempt < self.opts.attempts;
                eprintln!(
                    "myelin-l7-bench:   {}{}",
                    m.summary(),
                    if again { " -> noisy, again" } else { "" }
                );
                if kept.as_ref().is_none_or(|k| m.noise() < k.noise()) {
                    kept = Some(m);
                }
                if !again {
                    break;
                }
            }
            out.extend(kept);
        }
        if target.is_myelin() {
            let status = self.mesh.stop_agent()?;
            ensure!(
                status.is_some_and(|s| s.success()),
                "the agent exited with {status:?}; log:\n{}",
                self.mesh.log()
            );
        }
        // nginx and haproxy: killed by pid when `running` drops.
        Ok(out)
    }

    fn golden(&self, target: Target) -> Result<Option<f64>> {
        if !target.is_myelin() {
            return Ok(None);
        }
        Ok(Some(self.mesh.metric("myelin_requests_total", &[])?))
    }

    fn spliced(&self, target: Target) -> Result<Option<f64>> {
        if target != Target::MyelinMesh {
            return Ok(None);
        }
        Ok(Some(
            self.mesh.metric("myelin_spliced_messages_total", &[])?,
        ))
    }

    fn measure(
        &self,
        round: u32,
        target: Target,
        load: Load,
        running: &mut Running,
    ) -> Result<Measurement> {
        let opts = self.opts;
        let (h1, h2) = target.addrs(self.mesh.pod(BACKEND_POD).ip);
        let client = Client {
            h1,
            h2,
            pod: (target == Target::MyelinMesh).then(|| self.mesh.pod(CLIENT_POD)),
        };
        self.drive(load, &client, opts.warmup_s, None)
            .context("warm-up")?;
        running.alive(&self.mesh)?;
        let pid = running.pid();
        let golden0 = self.golden(target)?;
        let spliced0 = self.spliced(target)?;
        let cpu0 = pid.map(procstat::cpu_time).transpose()?;
        let busy0 = procstat::cpu_busy(opts.proxy_cpu)?;
        let steal0 = procstat::cpu_steal(opts.load_cpu)?;
        let load_busy0 = procstat::cpu_busy(opts.load_cpu)?;
        let wall0 = Instant::now();
        let log = self.scratch.join(format!(
            "h2load-{}-{}-{round}.log",
            target.name(),
            load.name()
        ));
        let driven = self.drive(load, &client, opts.duration_s, Some(&log))?;
        let cpu1 = pid.map(procstat::cpu_time).transpose()?;
        let busy = procstat::cpu_busy(opts.proxy_cpu)? - busy0;
        let load_steal = procstat::cpu_steal(opts.load_cpu)? - steal0;
        let load_busy = procstat::cpu_busy(opts.load_cpu)? - load_busy0;
        let wall = wall0.elapsed();
        running.alive(&self.mesh)?;
        let proxy = match (pid, cpu0, cpu1) {
            (Some(pid), Some(c0), Some(c1)) => {
                let status = procstat::status(pid)?;
                let used = c1 - c0;
                let cpu = used.total.as_secs_f64();
                let per_request = |s: f64| s * 1e6 / driven.requests as f64;
                Some(ProxyUsage {
                    pid,
                    cpu_seconds: cpu,
                    cpu_us_per_request: per_request(cpu),
                    kernel_us_per_request: per_request(used.kernel().as_secs_f64()),
                    rss_bytes: status.rss_bytes,
                    peak_rss_bytes: status.peak_rss_bytes,
                    threads: status.threads,
                    thread_names: procstat::thread_names(pid)?,
                    cpus_allowed: procstat::cpus_allowed(pid)?,
                })
            }
            _ => None,
        };
        let golden_requests = match (golden0, self.golden(target)?) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        if let Some(g) = golden_requests {
            // Every request of the run (and none counted twice); h2load may stop with a few
            // requests in flight, which the proxy still completes.
            ensure!(
                g >= driven.requests as f64 && g <= driven.requests as f64 + 1000.0,
                "myelin_requests_total grew by {g} during a run of {} requests",
                driven.requests
            );
        }
        let spliced_messages = match (spliced0, self.spliced(target)?) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        if let Some(n) = spliced_messages {
            // Every request crosses at least one spliced socket pair each way.
            ensure!(
                n >= driven.requests as f64,
                "myelin_spliced_messages_total grew by {n} during a run of {} requests: \
                 the run was not (all) spliced",
                driven.requests
            );
        }
        let own = proxy.as_ref().map_or(0.0, |p| p.cpu_seconds);
        let proxy_core_other_pct = (busy.as_secs_f64() - own).max(0.0) * 100.0 / wall.as_secs_f64();
        Ok(Measurement {
            round,
            target,
            load,
            requests: driven.requests,
            requests_per_sec: driven.requests_per_sec,
            p50_us: driven.p50_us,
            p99_us: driven.p99_us,
            tail: driven.tail,
            proxy,
            send_lag_p99_us: driven.send_lag_p99_us,
            golden_requests,
            spliced_messages,
            proxy_core_other_pct,
            load_core_steal_pct: load_steal.as_secs_f64() * 100.0 / wall.as_secs_f64(),
            load_core_busy_pct: load_busy.as_secs_f64() * 100.0 / wall.as_secs_f64(),
            attempt: 1,
        })
    }

    /// One run of `load` against the target's ports, checked for errors.
    fn drive(
        &self,
        load: Load,
        client: &Client,
        seconds: u64,
        h2_log: Option<&Path>,
    ) -> Result<Driven> {
        let opts = self.opts;
        let node = &self.mesh.node;
        let run = |cmd: Command, timeout: Duration| match client.pod {
            Some(pod) => pod.run_timeout(cmd, timeout),
            None => node.run_timeout(cmd, timeout),
        };
        let timeout = Duration::from_secs(seconds + 60);
        match load {
            Load::Http1 => {
                let mut cmd = pinned(opts.load_cpu, &tools::path("wrk")?)?;
                let script = self.scratch.join("tail.lua");
                std::fs::write(&script, wrk::TAIL_SCRIPT)?;
                cmd.arg("-t1")
                    .arg(format!("-c{}", opts.wrk_connections))
                    .arg(format!("-d{seconds}s"))
                    .arg("--latency")
                    .arg("-s")
                    .arg(&script)
                    .arg(format!("http://{}/", client.h1));
                let out = run(cmd, timeout)?;
                ensure_success(&out, "wrk")?;
                let text = String::from_utf8_lossy(&out.stdout);
                let r = wrk::parse(&text)?;
                ensure!(
                    r.socket_errors == [0; 4] && r.non_2xx == 0 && r.requests > 0,
                    "wrk saw errors (socket errors connect/read/write/timeout {:?}, non-2xx {}):\n{text}",
                    r.socket_errors,
                    r.non_2xx
                );
                Ok(Driven {
                    requests: r.requests,
                    requests_per_sec: r.requests_per_sec,
                    p50_us: r.p50_us,
                    p99_us: r.p99_us,
                    tail: r.tail,
                    send_lag_p99_us: None,
                })
            }
            Load::Http2 => {
                let mut cmd = pinned(opts.load_cpu, &tools::path("h2load")?)?;
                cmd.arg("-t1")
                    .arg(format!("-c{}", opts.h2_connections))
                    .arg(format!("-m{}", opts.h2_streams))
                    .arg("-D")
                    .arg(seconds.to_string());
                if let Some(log) = h2_log {
                    cmd.arg("--log-file").arg(log);
                }
                cmd.arg(format!("http://{}/", client.h2));
                let out = run(cmd, timeout)?;
                ensure_success(&out, "h2load")?;
                let text = String::from_utf8_lossy(&out.stdout);
                let r = h2load::parse_report(&text)?;
                ensure!(
                    r.failures == 0 && r.succeeded > 0 && r.non_2xx == 0,
                    "h2load saw failures or non-2xx responses:\n{text}"
                );
                let (p50_us, p99_us) = match h2_log {
                    Some(log) => {
                        let text = std::fs::read_to_string(log)
                            .with_context(|| format!("reading {}", log.display()))?;
                        let mut d = h2load::parse_log(&text)?;
                        ensure!(!d.is_empty(), "empty h2load log");
                        d.sort_unstable();
                        std::fs::remove_file(log)?;
                        (
                            openloop::quantile(&d, 0.50) as f64,
                            openloop::quantile(&d, 0.99) as f64,
                        )
                    }
                    None => (0.0, 0.0),
                };
                Ok(Driven {
                    requests: r.succeeded,
                    requests_per_sec: r.requests_per_sec,
                    p50_us,
                    p99_us,
                    tail: None,
                    send_lag_p99_us: None,
                })
            }
            Load::OpenLoop => {
                let mut plan = openloop::Plan {
                    addr: client.h1,
                    path: "/".into(),
                    rate: opts.rate,
                    connections: opts.open_connections,
                    duration: Duration::from_secs(seconds),
                    netns: Some(node.netns_path()),
                    cpu: Some(opts.load_cpu),
                };
                let r = match client.pod {
                    Some(pod) => {
                        plan.netns = Some(pod.netns_path());
                        in_netns_cgroup(pod, || openloop::run(&plan))??
                    }
                    None => openloop::run(&plan)?,
                };
                Ok(Driven {
                    requests: r.requests,
                    requests_per_sec: r.requests as f64 / r.seconds,
                    p50_us: r.p50_us,
                    p99_us: r.p99_us,
                    tail: None,
                    send_lag_p99_us: Some(r.send_lag_p99_us),
                })
            }
        }
    }
}

/// Where the load comes from and what it calls.
struct Client<'a> {
    h1: SocketAddr,
    h2: SocketAddr,
    /// `None`: the node's netns (not captured).
    pod: Option<&'a Pod>,
}

/// Runs `f` with this whole process in the pod's cgroup (a socket is captured by the cgroup of
/// the process that creates it, and cgroup v2 moves processes, not threads) and on a thread in
/// the pod's netns; the process goes back to its own cgroup afterwards, also on error.
fn in_netns_cgroup<T: Send>(pod: &Pod, f: impl FnOnce() -> T + Send) -> Result<T> {
    struct Back(PathBuf);
    impl Drop for Back {
        fn drop(&mut self) {
            let pid = std::process::id().to_string();
            if let Err(e) = std::fs::write(self.0.join("cgroup.procs"), pid) {
                eprintln!("myelin-l7-bench: moving back to {}: {e}", self.0.display());
            }
        }
    }
    let root = myelin_testbed::cgroup2_mount()?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    let back = Back(root.join(rel.trim().trim_start_matches('/')));
    std::fs::write(
        pod.cgroup_path().join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .with_context(|| format!("moving into {}", pod.cgroup_path().display()))?;
    let out = in_netns(&pod.netns_path(), f);
    drop(back);
    out
}

struct Driven {
    requests: u64,
    requests_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    tail: Option<crate::wrk::Tail>,
    send_lag_p99_us: Option<f64>,
}
