//! A node (one netns and one cgroup subtree) and its pods.
//!
//! Layout of a node named `myelin-<prefix>-<suffix>`:
//!
//! ```text
//! netns  myelin-<prefix>-<suffix>         lo up, also holding the node address /32,
//!                                         ip_forward=1, one `v<n>-<pod>` veth per pod
//!                                         with a /32 route to the pod
//! netns  myelin-<prefix>-<suffix>-<pod>   lo, `eth0` with the pod IP /32,
//!                                         default via the node address (onlink)
//! cgroup <cgroup2>/myelin-<prefix>-<suffix>/          eBPF attach point, no processes
//!                                           agent/    the agent
//!                                           pods/<pod>/ each pod's processes
//! ```
//!
//! Pod to pod traffic is routed by the node netns, like a CNI in routed mode, so
//! every pod's traffic crosses the node's cgroup hooks and the node's stack.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::proc::{run_in, spawn_in, Proc, DEFAULT_RUN_TIMEOUT};
use crate::sys::{self, netns_path};

/// The interface holding the node address. `lo`, not a dummy device: some kernels
/// (this test VM's among them) are built without `CONFIG_DUMMY`, and an address on
/// `lo` behaves the same for routing, ARP replies on the veths and source selection.
pub const NODE_IFACE: &str = "lo";
/// Name of the pod side of each veth pair.
pub const POD_IFACE: &str = "eth0";
/// Name of the veth between two linked nodes ([`Node::link`]), in both.
pub const NODE_LINK: &str = "link0";

/// Addresses of a node. One node per test bed uses the default; a multi-node bed
/// gives each node its own address and pod subnet.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node address, put on [`NODE_IFACE`] as a /32.
    pub addr: Ipv4Addr,
    /// The pods' /24: pod `n` (from 1) gets `<first three octets>.n`.
    pub pod_subnet: Ipv4Addr,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            addr: Ipv4Addr::new(10, 77, 0, 1),
            pod_subnet: Ipv4Addr::new(10, 77, 1, 0),
        }
    }
}

/// One node: a network namespace and a cgroup v2 subtree, plus its pods.
/// Dropping it kills everything still running in its cgroups and removes the pods,
/// the namespaces and the cgroups, best effort, with a warning for each failure.
#[derive(Debug)]
pub struct Node {
    /// Unique name: `myelin-<prefix>-<suffix>`; also the netns and cgroup dir name.
    pub name: String,
    /// The node address.
    pub addr: Ipv4Addr,
    config: NodeConfig,
    cgroup: PathBuf,
    pods: Vec<Pod>,
    next_pod: u32,
    owner_file: PathBuf,
}

/// A pod of a node: its own netns, a veth to the node, and a cgroup under the
/// node's `pods/`. A plain handle (cheap to clone); the node owns the resources.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The pod name, unique within the node.
    pub name: String,
    /// The pod IP (on `eth0`, /32).
    pub ip: Ipv4Addr,
    netns: String,
    node_netns: String,
    node_veth: String,
    cgroup: PathBuf,
}

fn valid_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Node {
    /// Creates a node with the default addresses (10.77.0.1, pods in 10.77.1.0/24).
    pub fn new(prefix: &str) -> Result<Node> {
        Node::with_config(prefix, NodeConfig::default())
    }

    /// Creates netns `myelin-<prefix>-<suffix>` with lo up and holding the node
    /// address (see [`NODE_IFACE`]) and ip_forward on, and the cgroup dir
    /// `<cgroup2>/myelin-<prefix>-<suffix>/` with children `agent/` and `pods/`.
    pub fn with_config(prefix: &str, config: NodeConfig) -> Result<Node> {
        crate::require_root()?;
        ensure!(
            valid_label(prefix, 16),
            "node prefix {prefix:?} must be 1-16 chars of [a-z0-9-]"
        );
        let root = crate::cgroup2_mount()?;
        // The cgroup mkdir is the atomic claim on a name: it fails if another
        // process or test picked the same suffix.
        let mut claimed = None;
        for _ in 0..32 {
            let name = format!("myelin-{prefix}-{}", crate::unique_suffix());
            if netns_path(&name).exists() {
                continue;
            }
            if sys::cgroup_create(&root.join(&name))? {
                claimed = Some(name);
                break;
            }
        }
        let name = claimed.context("could not find an unused node name")?;
        let mut node = Node {
            cgroup: root.join(&name),
            owner_file: Path::new(sys::STATE_DIR).join(format!("{name}.owner")),
            name,
            addr: config.addr,
            config,
            pods: Vec::new(),
            next_pod: 1,
        };
        // From here on, `node`'s Drop undoes whatever part was built.
        node.build()
            .with_context(|| format!("building node {}", node.name))?;
        Ok(node)
    }

    fn build(&mut self) -> Result<()> {
        fs::create_dir_all(sys::STATE_DIR)?;
        fs::write(&self.owner_file, std::process::id().to_string())
            .with_context(|| format!("writing {}", self.owner_file.display()))?;
        sys::cgroup_create(&self.cgroup.join("agent"))?;
        sys::cgroup_create(&self.cgroup.join("pods"))?;
        sys::netns_add(&self.name)?;
        sys::ip_batch(
            Some(&self.name),
            &[
                "link set lo up".into(),
                format!("addr add {}/32 dev {NODE_IFACE}", self.addr),
            ],
        )?;
        sys::sysctl_in(&self.netns_path(), "net.ipv4.ip_forward", "1")?;
        Ok(())
    }

    /// The name of the node netns.
    pub fn netns_name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// The node's cgroup directory: the eBPF attach point.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The cgroup the agent runs in (`<node>/agent`).
    pub fn agent_cgroup_path(&self) -> PathBuf {
        self.cgroup.join("agent")
    }

    /// The addresses this node was built with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Adds a pod: netns `<node>-<pod>`, a veth pair (pod side `eth0` with the next
    /// pod IP /32 and a default route via the node address onlink; node side
    /// `v<n>-<pod>` with a /32 route to the pod) and cgroup `<node>/pods/<pod>`.
    pub fn add_pod(&mut self, name: &str) -> Result<Pod> {
        ensure!(
            valid_label(name, 24),
            "pod name {name:?} must be 1-24 chars of [a-z0-9-]"
        );
        ensure!(self.pod(name).is_none(), "pod {name} already exists");
        let n = self.next_pod;
        ensure!(n <= 254, "node {} has no pod addresses left", self.name);
        self.next_pod += 1;
        let [a, b, c, _] = self.config.pod_subnet.octets();
        let mut veth = format!("v{n}-{name}");
        veth.truncate(15); // IFNAMSIZ - 1; the index keeps it unique.
        let pod = Pod {
            name: name.to_string(),
            ip: Ipv4Addr::new(a, b, c, n as u8),
            netns: format!("{}-{name}", self.name),
            node_netns: self.name.clone(),
            node_veth: veth,
            cgroup: self.cgroup.join("pods").join(name),
        };
        if !sys::cgroup_create(&pod.cgroup)? {
            bail!("cgroup {} already exists", pod.cgroup.display());
        }
        // Registered before building so the node's Drop cleans up a half-built pod.
        self.pods.push(pod.clone());
        self.build_pod(&pod)
            .with_context(|| format!("building pod {name} on node {}", self.name))?;
        Ok(pod)
    }

    fn build_pod(&self, pod: &Pod) -> Result<()> {
        sys::netns_add(&pod.netns)?;
        sys::ip_batch(
            Some(&self.name),
            &[
                format!(
                    "link add {} type veth peer name {POD_IFACE} netns {}",
                    pod.node_veth, pod.netns
                ),
                format!("link set {} up", pod.node_veth),
                format!("route add {}/32 dev {} scope link", pod.ip, pod.node_veth),
            ],
        )?;
        sys::ip_batch(
            Some(&pod.netns),
            &[
                "link set lo up".into(),
                format!("addr add {}/32 dev {POD_IFACE}", pod.ip),
                format!("link set {POD_IFACE} up"),
                format!("route add default via {} dev {POD_IFACE} onlink", self.addr),
            ],
        )
    }

    /// Wires this node to `other` like two machines on one link: a veth pair named
    /// [`NODE_LINK`] in both node namespaces (`10.99.<n>.1/30` here, `.2` there), and routes
    /// to the other's node address and pod subnet through it. Removed with the nodes.
    pub fn link(&self, other: &Node, n: u8) -> Result<()> {
        let here = Ipv4Addr::new(10, 99, n, 1);
        let there = Ipv4Addr::new(10, 99, n, 2);
        sys::ip_batch(
            Some(&self.name),
            &[format!(
                "link add {NODE_LINK} type veth peer name {NODE_LINK} netns {}",
                other.name
            )],
        )?;
        for (node, me, peer, far) in [(self, here, there, other), (other, there, here, self)] {
            let [a, b, c, _] = far.config.pod_subnet.octets();
            sys::ip_batch(
                Some(&node.name),
                &[
                    format!("addr add {me}/30 dev {NODE_LINK}"),
                    format!("link set {NODE_LINK} up"),
                    format!("route add {}/32 via {peer} dev {NODE_LINK}", far.addr),
                    format!("route add {a}.{b}.{c}.0/24 via {peer} dev {NODE_LINK}"),
                ],
            )?;
        }
        Ok(())
    }

    /// Tears a pod down now (kills its processes, deletes its veth, netns and cgroup).
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name} on node {}", self.name))?;
        let pod = self.pods.remove(i);
        let errors = pod.teardown();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("removing pod {name}: {}", errors.join("; "))
        }
    }

    /// Spawns `cmd` in the node netns and the agent cgroup (for the myelin agent).
    pub fn spawn_agent(&self, cmd: Command) -> Result<Proc> {
        spawn_in(
            cmd,
            Some(&self.agent_cgroup_path()),
            Some(&self.netns_path()),
        )
    }

    /// Spawns a long-running `cmd` in the node netns (in the caller's cgroup, so it is
    /// never captured), e.g. a scraper of the agent's loopback endpoints. The [`Proc`]
    /// kills it on drop.
    pub fn spawn(&self, cmd: Command) -> Result<Proc> {
        spawn_in(cmd, None, Some(&self.netns_path()))
    }

    /// Runs a short command in the node netns (in the caller's cgroup), waiting at
    /// most [`DEFAULT_RUN_TIMEOUT`]. A non-zero exit is not an error: check `status`.
    pub fn run(&self, cmd: Command) -> Result<Output> {
        self.run_timeout(cmd, DEFAULT_RUN_TIMEOUT)
    }

    /// [`Node::run`] with a timeout, after which the command is killed and this fails.
    pub fn run_timeout(&self, cmd: Command, timeout: Duration) -> Result<Output> {
        run_in(cmd, None, Some(&self.netns_path()), timeout)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        // Processes first: one SIGKILL for the whole subtree (agent and all pods).
        if let Err(e) = sys::cgroup_kill_and_wait(&self.cgroup) {
            errors.push(format!("{e:#}"));
        }
        for pod in self.pods.drain(..).rev() {
            errors.extend(pod.teardown());
        }
        if let Err(e) = sys::cgroup_remove_tree(&self.cgroup) {
            errors.push(format!("{e:#}"));
        }
        if let Err(e) = sys::netns_del(&self.name) {
            errors.push(format!("{e:#}"));
        }
        let _ = fs::remove_file(&self.owner_file);
        for e in errors {
            crate::warn(&format!("tearing down node {}: {e}", self.name));
        }
    }
}

impl Pod {
    /// The pod's cgroup directory.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The name of the pod netns.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// The name of the node side of the pod's veth (in the node netns).
    pub fn node_veth(&self) -> &str {
        &self.node_veth
    }

    /// Spawns `cmd` in the pod: into the pod cgroup first, then the pod netns.
    pub fn spawn(&self, cmd: Command) -> Result<Proc> {
        spawn_in(cmd, Some(&self.cgroup), Some(&self.netns_path()))
    }

    /// Like [`Pod::spawn`], then waits at most [`DEFAULT_RUN_TIMEOUT`] and collects the
    /// output. A non-zero exit is not an error: check `status`.
    pub fn run(&self, cmd: Command) -> Result<Output> {
        self.run_timeout(cmd, DEFAULT_RUN_TIMEOUT)
    }

    /// [`Pod::run`] with a timeout, after which the command is killed and this fails.
    pub fn run_timeout(&self, cmd: Command, timeout: Duration) -> Result<Output> {
        run_in(cmd, Some(&self.cgroup), Some(&self.netns_path()), timeout)
    }

    /// Runs `cmd` in the pod, requires success and parses the last stdout line as
    /// JSON (podtool and the Python client report that way).
    pub fn run_json(&self, cmd: Command) -> Result<serde_json::Value> {
        let what = format!("{cmd:?} in pod {}", self.name);
        crate::json_output(&self.run(cmd)?, &what)
    }

    /// Sets a sysctl of the pod's netns (`key` dotted, e.g. `net.ipv6.conf.all.disable_ipv6`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        sys::sysctl_in(&self.netns_path(), key, value)
    }

    /// `(rx, tx)` byte counters of the pod's `eth0`.
    pub fn veth_bytes(&self) -> Result<(u64, u64)> {
        let v = sys::ip_json(Some(&self.netns), &["-s", "link", "show", "dev", POD_IFACE])?;
        let stats = &v[0]["stats64"];
        let get = |dir: &str| {
            stats[dir]["bytes"]
                .as_u64()
                .with_context(|| format!("no stats64.{dir}.bytes in ip output: {v}"))
        };
        Ok((get("rx")?, get("tx")?))
    }

    /// Best-effort teardown; returns the failures.
    fn teardown(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut step = |r: Result<()>| {
            if let Err(e) = r {
                errors.push(format!("pod {}: {e:#}", self.name));
            }
        };
        step(sys::cgroup_kill_and_wait(&self.cgroup));
        // Deleting one end of a veth deletes both, synchronously; netns deletion
        // alone would leave that to the kernel's asynchronous netns cleanup.
        if netns_path(&self.node_netns).exists() {
            let gone = sys::ip(Some(&self.node_netns), &["link", "show", &self.node_veth]).is_err();
            if !gone {
                step(sys::ip(
                    Some(&self.node_netns),
                    &["link", "del", &self.node_veth],
                ));
            }
        }
        step(sys::netns_del(&self.netns));
        step(sys::cgroup_remove_tree(&self.cgroup));
        errors
    }
}

/// Removes nodes with names `myelin-<prefix>-*` left behind by processes that no
/// longer exist (e.g. a test run killed with SIGKILL). Returns the names removed.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>> {
    let mut swept = Vec::new();
    let dir = match fs::read_dir(sys::STATE_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e).context(sys::STATE_DIR),
    };
    let root = crate::cgroup2_mount()?;
    let want = if prefix.is_empty() {
        "myelin-".to_string()
    } else {
        format!("myelin-{prefix}-")
    };
    for entry in dir {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".owner") else {
            continue;
        };
        if !name.starts_with(&want) {
            continue;
        }
        let owner: i32 = fs::read_to_string(entry.path())?
            .trim()
            .parse()
            .unwrap_or(0);
        if owner > 0 && Path::new(&format!("/proc/{owner}")).exists() {
            continue; // Still owned by a live process.
        }
        let cgroup = root.join(name);
        sys::cgroup_kill_and_wait(&cgroup)?;
        if let Ok(list) = fs::read_dir(sys::NETNS_DIR) {
            for ns in list.flatten() {
                let ns = ns.file_name().to_string_lossy().into_owned();
                if ns.starts_with(&format!("{name}-")) {
                    sys::netns_del(&ns)?;
                }
            }
        }
        sys::netns_del(name)?;
        sys::cgroup_remove_tree(&cgroup)?;
        fs::remove_file(entry.path())?;
        swept.push(name.to_string());
    }
    Ok(swept)
}
