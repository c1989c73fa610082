//! A node running the real `myelin` agent: config written from the test bed's pods (plus any
//! Envoy bootstrap sections a test adds), agent started in the node's agent cgroup, readiness,
//! admin and metrics reads from inside the node's netns, restart, and teardown (agent stopped
//! by pid, pins removed) on drop.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{Node, Pod, Proc};

/// Runs `f` on a thread that has entered the network namespace at `netns`. Only that thread
/// moves (the mount namespace stays, so bpffs and the cgroup mount remain visible, which is
/// not true under `ip netns exec`).
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file =
        std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the netns")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    })
}

/// A plain HTTP/1.0 GET (no keep-alive), enough for admin endpoints. Returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of the samples of `name` in Prometheus text whose labels include every `want` pair.
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
            let ok = want
                .iter()
                .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A `Command` for the `myelin` binary: `$MYELIN_BIN`, else next to the current executable
/// or its parent (tests live in `target/<profile>/deps/`).
pub fn myelin_command() -> Result<Command> {
    crate::sibling_command("myelin", "MYELIN_BIN", "cargo build --release -p myelin")
}

/// How to build a mesh node.
#[derive(Debug, Clone, Default)]
pub struct MeshOptions {
    /// Enrolled pods, in order.
    pub pods: Vec<String>,
    /// Pods that exist on the node but are not in the agent's config.
    pub unenrolled: Vec<String>,
    /// Per-pod splice policy (`auto`, `nonblocking`, `off`); pods not listed get `auto`.
    pub splice_policy: Vec<(String, String)>,
    /// Per-pod inbound mode (`strict`, `permissive`); pods not listed get the node's.
    pub mtls_mode: Vec<(String, String)>,
    /// `--no-splice`.
    pub no_splice: bool,
    /// Leave the pins in place when the agent exits (for restart tests).
    pub keep_pins: bool,
    /// `myelin.excluded_ports`.
    pub excluded_ports: Vec<u16>,
    /// `myelin.excluded_cidrs`.
    pub excluded_cidrs: Vec<String>,
    /// Envoy bootstrap sections (`node`, `static_resources`, `dynamic_resources`, `admin`), as
    /// top-level YAML appended to the generated config.
    pub envoy: String,
    /// More keys of Myelin's section, as YAML lines indented by two spaces (e.g.
    /// `"  metrics: { naming: istio }\n"`).
    pub myelin: String,
    /// The node's addresses (default: node 10.77.0.1, pods 10.77.1.0/24); nodes that are
    /// linked ([`crate::Node::link`]) need different ones.
    pub node: crate::NodeConfig,
}

impl MeshOptions {
    /// Enrolled pods with these names.
    pub fn pods(names: &[&str]) -> Self {
        MeshOptions {
            pods: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Sets a pod's splice policy.
    pub fn policy(mut self, pod: &str, policy: &str) -> Self {
        self.splice_policy.push((pod.to_owned(), policy.to_owned()));
        self
    }

    /// Sets a pod's inbound mode (`myelin.workloads[].mtls_mode`).
    pub fn mtls_mode(mut self, pod: &str, mode: &str) -> Self {
        self.mtls_mode.push((pod.to_owned(), mode.to_owned()));
        self
    }
}

/// A node with pods and a running agent.
#[derive(Debug)]
pub struct Mesh {
    /// Declared before `node` so the agent stops before the node is torn down.
    agent: Option<Proc>,
    pub node: Node,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    dir: PathBuf,
    opts: MeshOptions,
}

/// Admin address inside the node netns.
pub const ADMIN: &str = "127.0.0.1:15000";
/// Metrics address inside the node netns.
pub const METRICS: &str = "127.0.0.1:15020";

impl Mesh {
    /// Builds the node and pods, writes the config and starts the agent; waits until ready.
    pub fn start(prefix: &str, opts: MeshOptions) -> Result<Mesh> {
        let mut mesh = Mesh::build(prefix, opts)?;
        mesh.start_agent()?;
        Ok(mesh)
    }

    /// Builds the node and pods without starting the agent, for tests that need the node
    /// before they can write the config (e.g. a control plane inside the node's netns); then
    /// [`Mesh::options_mut`] and [`Mesh::start_agent`].
    pub fn build(prefix: &str, opts: MeshOptions) -> Result<Mesh> {
        let mut node = Node::with_config(prefix, opts.node.clone())?;
        for p in opts.pods.iter().chain(&opts.unenrolled) {
            node.add_pod(p)?;
        }
        let dir = std::env::temp_dir().join(&node.name);
        std::fs::create_dir_all(&dir)?;
        Ok(Mesh {
            agent: None,
            log_path: dir.join("agent.log"),
            config_path: dir.join("mesh.yaml"),
            node,
            dir,
            opts,
        })
    }

    /// The options the next [`Mesh::start_agent`] writes the config from.
    pub fn options_mut(&mut self) -> &mut MeshOptions {
        &mut self.opts
    }

    /// Writes `config_path` from the options.
    fn write_config(&self) -> Result<()> {
        let (node, opts) = (&self.node, &self.opts);
        let mut yaml = format!(
            "myelin:\n  node: {{ name: {name}, address: {addr} }}\n  cgroup_root: {root}\n  uninstall_on_exit: {un}\n",
            name = node.name,
            addr = node.addr,
            root = node.cgroup_path().display(),
            un = !opts.keep_pins,
        );
        writeln!(yaml, "  excluded_ports: {:?}", opts.excluded_ports)?;
        writeln!(yaml, "  excluded_cidrs: {:?}", opts.excluded_cidrs)?;
        yaml.push_str(&opts.myelin);
        yaml.push_str("  workloads:\n");
        for name in &opts.pods {
            let pod = node.pod(name).expect("just added");
            let splice = opts
                .splice_policy
                .iter()
                .find(|(p, _)| p == name)
                .map_or("auto", |(_, policy)| policy.as_str());
            let mode = opts
                .mtls_mode
                .iter()
                .find(|(p, _)| p == name)
                .map(|(_, m)| format!(", mtls_mode: {m}"))
                .unwrap_or_default();
            writeln!(
                yaml,
                "    - {{ name: {name}, namespace: test, service_account: {name}, cgroup: {cg}, ip: {ip}, splice: {splice}{mode} }}",
                cg = pod.cgroup_path().display(),
                ip = pod.ip
            )?;
        }
        yaml.push_str(&opts.envoy);
        std::fs::write(&self.config_path, yaml)?;
        Ok(())
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.node
            .pod(name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Writes the config, starts the agent and waits for `/ready`.
    pub fn start_agent(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.write_config()?;
        let mut cmd = myelin_command()?;
        cmd.arg("run").arg("--config").arg(&self.config_path);
        if self.opts.no_splice {
            cmd.arg("--no-splice");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        cmd.stdout(log.try_clone()?).stderr(log);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        self.agent = Some(self.node.spawn_agent(cmd)?);
        self.wait_ready(Duration::from_secs(60))?;
        Ok(started.elapsed())
    }

    /// Waits until `/ready` answers 200, failing early if the agent exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(agent) = self.agent.as_mut() {
                if let Some(status) = agent.try_wait()? {
                    bail!(
                        "the agent exited with {status} before ready; log:\n{}",
                        self.log()
                    );
                }
            }
            let r = self.admin_get("/ready");
            if matches!(r, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "agent not ready after {timeout:?} ({r:?}); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent with SIGTERM (then SIGKILL after 10 s) and returns its exit status.
    pub fn stop_agent(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let Some(mut agent) = self.agent.take() else {
            return Ok(None);
        };
        agent.signal(nix::sys::signal::Signal::SIGTERM)?;
        match agent.wait_timeout(Duration::from_secs(10))? {
            Some(s) => Ok(Some(s)),
            None => Ok(Some(agent.kill()?)),
        }
    }

    /// The running agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Proc::pid)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET on the admin API inside the node netns.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let addr: SocketAddr = ADMIN.parse()?;
        Ok(in_netns(&self.node.netns_path(), || http_get(addr, path))??)
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        let addr: SocketAddr = METRICS.parse()?;
        let (status, body) = in_netns(&self.node.netns_path(), || http_get(addr, "/metrics"))??;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// One metric (summed over label sets matching `want`).
    pub fn metric(&self, name: &str, want: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_sum(&self.metrics()?, name, want))
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let (status, body) = self.admin_get("/config_dump")?;
        if status != 200 {
            bail!("/config_dump answered {status}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Whether the agent splices `workload` (from `/config_dump`).
    pub fn workload_spliced(&self, workload: &str) -> Result<bool> {
        let dump = self.config_dump()?;
        let ws = dump["splice"]["workloads"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ws.iter()
            .find(|w| w["name"] == workload)
            .and_then(|w| w["spliced"].as_bool())
            .with_context(|| format!("no splice state for {workload} in {dump}"))
    }

    /// The bpffs pin directory of this node's agent.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/myelin").join(&self.node.name)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Err(e) = self.stop_agent() {
            crate::warn(&format!("stopping the agent of {}: {e:#}", self.node.name));
        }
        // Whatever the agent left pinned (keep_pins, or it was killed) goes now.
        match myelin_command() {
            Ok(mut cmd) => {
                cmd.args(["uninstall", "--instance", &self.node.name]);
                cmd.stdout(std::process::Stdio::null());
                if let Err(e) = cmd.status() {
                    crate::warn(&format!("myelin uninstall {}: {e}", self.node.name));
                }
            }
            Err(e) => crate::warn(&format!("{e:#}")),
        }
        if std::thread::panicking() {
            eprintln!(
                "--- agent log of {} ---\n{}--- end ---",
                self.node.name,
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
