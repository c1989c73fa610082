//! Myelin's test bed: builds "nodes" and "pods" out of network namespaces, veth
//! pairs and cgroup v2 groups, runs real processes in them, and tears everything
//! down on drop (also when a test panics).
//!
//! A [`Node`] is one netns plus a cgroup subtree (`agent/`, `pods/`); each [`Pod`]
//! is a netns behind a veth routed by the node, with its own cgroup. Processes are
//! started with [`Node::spawn_agent`], [`Pod::spawn`] or the `run` methods, which
//! join the cgroup and then the netns between fork and exec (never via
//! `ip netns exec`, whose private `/sys` hides cgroup2 and bpffs). Names carry a
//! random suffix, so tests and processes can build beds in parallel.
//!
//! The `myelin-podtool` binary of this package is the traffic generator and the
//! servers used inside pods; `py/blocking_client.py` is the Python equivalent of
//! its clients; `py/grpc_echo.py` (grpcio) and `py/ws_echo.py` (websockets) are the
//! gRPC and WebSocket servers and clients of the L7 suite, `py/ws_h2.py` (h2) its
//! WebSocket over HTTP/2 client.
//!
//! Tests gate on [`testbed_ready`]: without root or a tool they fail when `CI=true`
//! and return early otherwise.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

pub mod mesh;
mod node;
pub mod pattern;
mod proc;
mod sys;

pub use mesh::{http_get, in_netns, metric_sum, myelin_command, Mesh, MeshOptions};
pub use node::{sweep_stale, Node, NodeConfig, Pod, NODE_IFACE, NODE_LINK, POD_IFACE};
pub use proc::{ensure_success, json_output, Proc, DEFAULT_RUN_TIMEOUT};

/// Finds the cgroup v2 mount point in `/proc/self/mountinfo` (it may be
/// `/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    find_mount(&info, "cgroup2").context("no cgroup2 mount in /proc/self/mountinfo")
}

/// Mount point of the first mount of `fstype` in mountinfo text.
fn find_mount(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mountpoint> <opts> [optional...] - <fstype> ..."
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != fstype {
            return None;
        }
        left.split(' ')
            .nth(4)
            .map(|m| PathBuf::from(unescape_octal(m)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A short (6 hex chars) name suffix. Random per process (std's hasher keys) and
/// mixed with a counter, pid and time; [`Node::new`] still claims names atomically,
/// so a rare collision only costs a retry.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(nanos);
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// Fails with a clear message unless running as root (the test bed creates network
/// namespaces and cgroups).
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the Myelin test bed needs root (euid is {}): it creates network namespaces and cgroups",
            nix::unistd::geteuid()
        );
    }
    Ok(())
}

/// Checks what building a test bed needs: root, a cgroup2 mount with `cgroup.kill`,
/// `ip`, plus the extra `tools` (e.g. `python3`, `curl`) on `PATH`.
pub fn check_prerequisites(tools: &[&str]) -> Result<()> {
    require_root()?;
    let cg = cgroup2_mount()?;
    if !cg.join("cgroup.procs").exists() {
        bail!("cgroup2 mount {} has no cgroup.procs", cg.display());
    }
    for tool in std::iter::once(&"ip").chain(tools) {
        find_in_path(tool).with_context(|| format!("{tool} is not on PATH"))?;
    }
    Ok(())
}

/// Fails unless [`system_python`] can import every module in `modules`.
pub fn check_python_modules(modules: &[&str]) -> Result<()> {
    if modules.is_empty() {
        return Ok(());
    }
    let out = system_python()
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .output()
        .with_context(|| format!("running {SYSTEM_PYTHON}"))?;
    if !out.status.success() {
        bail!(
            "{SYSTEM_PYTHON} cannot import {} (install the Debian packages, see scripts/setup.sh): {}",
            modules.join(", "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The interpreter of Debian's `python3-*` packages (`python3-grpcio`, `python3-websockets`).
/// Not `python3` from `PATH`: a pyenv or venv interpreter found first does not see them.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A `Command` for [`SYSTEM_PYTHON`].
pub fn system_python() -> Command {
    Command::new(SYSTEM_PYTHON)
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The one gate for privileged tests. `true` when the test bed can run here. When it
/// cannot: panics if `CI` is `true` (in CI a skipped privileged test is a failure),
/// otherwise prints why and returns `false` so the test can return early.
pub fn testbed_ready(tools: &[&str]) -> bool {
    testbed_ready_with_python(tools, &[])
}

/// [`testbed_ready`], and also the Python `modules` (e.g. `grpc`, `websockets`) importable
/// by [`system_python`].
pub fn testbed_ready_with_python(tools: &[&str], modules: &[&str]) -> bool {
    match check_prerequisites(tools).and_then(|()| check_python_modules(modules)) {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("test bed prerequisites missing in CI: {e:#}")
        }
        Err(e) => {
            eprintln!("skipping test bed test: {e:#}");
            false
        }
    }
}

/// A `Command` for `myelin-podtool`: `$MYELIN_PODTOOL`, else next to the current
/// executable or its parent (tests live in `target/<profile>/deps/`).
pub fn podtool_command() -> Result<Command> {
    sibling_command(
        "myelin-podtool",
        "MYELIN_PODTOOL",
        "cargo build -p myelin-testbed",
    )
}

/// A `Command` for a binary of this workspace: `$<env>`, else found next to the current
/// executable or its parent; `build` is the hint printed when it is missing.
pub(crate) fn sibling_command(name: &str, env: &str, build: &str) -> Result<Command> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(Command::new(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let found = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => Ok(Command::new(p)),
        None => bail!(
            "{name} not found next to {}: build it first ({build}) or set {env}",
            exe.display()
        ),
    }
}

/// Path of the Python blocking client (`py/blocking_client.py` in this package).
pub fn python_client_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/py/blocking_client.py"
    ))
}

/// Path of a Python helper in `py/` of this package (e.g. `grpc_echo.py`).
pub fn py_script(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/py")).join(name)
}

/// Teardown warnings: to `tracing` when a subscriber is installed, else stderr, so
/// leaks are visible in plain `cargo test` output too.
pub(crate) fn warn(msg: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{msg}");
    } else {
        eprintln!("myelin-testbed warning: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 30 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw
42 30 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            find_mount(info, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_mount(info, "bpf"), None);
        let escaped = "1 2 0:1 / /mnt/a\\040b rw - cgroup2 none rw\n";
        assert_eq!(
            find_mount(escaped, "cgroup2"),
            Some(PathBuf::from("/mnt/a b"))
        );
    }

    #[test]
    fn suffixes_are_short_and_distinct() {
        let s: std::collections::HashSet<String> = (0..1000).map(|_| unique_suffix()).collect();
        assert!(s.len() > 990);
        assert!(s.iter().all(|x| x.len() == 6));
    }
}
