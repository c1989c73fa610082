//! Small wrappers over cgroup v2 files and `ip`.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{setns, CloneFlags};

/// Where named network namespaces live (iproute2's convention).
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// Our own state: the cross-process lock and the owner files used by `sweep_stale`.
pub(crate) const STATE_DIR: &str = "/run/myelin-testbed";

/// How long teardown waits for a killed cgroup to empty.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(3);

/// Creates a cgroup directory; `Ok(false)` when it already exists.
pub(crate) fn cgroup_create(path: &Path) -> Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating cgroup {}", path.display())),
    }
}

fn cgroup_populated(path: &Path) -> Result<bool> {
    let events = fs::read_to_string(path.join("cgroup.events"))
        .with_context(|| format!("reading {}/cgroup.events", path.display()))?;
    Ok(events.lines().any(|l| l == "populated 1"))
}

/// Kills every process in the cgroup subtree and waits for it to empty.
pub(crate) fn cgroup_kill_and_wait(path: &Path) -> Result<()> {
    if !path.exists() || !cgroup_populated(path)? {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14) kills the whole subtree atomically, racing no forks.
    if let Err(e) = fs::write(path.join("cgroup.kill"), "1") {
        // Older kernels: kill what we can see, one level at a time.
        crate::warn(&format!(
            "{}/cgroup.kill: {e}; killing pids one by one",
            path.display()
        ));
        kill_listed(path)?;
    }
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    while cgroup_populated(path)? {
        if Instant::now() > deadline {
            bail!(
                "cgroup {} still populated {EMPTY_TIMEOUT:?} after SIGKILL",
                path.display()
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn kill_listed(path: &Path) -> Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            kill_listed(&entry.path())?;
        }
    }
    for pid in fs::read_to_string(path.join("cgroup.procs"))?.lines() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    Ok(())
}

/// Removes a cgroup subtree (children first); the cgroups must be empty.
pub(crate) fn cgroup_remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            cgroup_remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing cgroup {}", path.display())),
    }
}

/// The path of named netns `name`.
pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Serialises `ip netns add`: the first one on a machine bind-mounts /run/netns onto
/// itself, and two doing that at once stack two mounts, hiding namespaces made
/// under the lower one. A mutex covers our threads, flock other processes.
pub(crate) fn netns_add(name: &str) -> Result<()> {
    static LOCAL: Mutex<()> = Mutex::new(());
    let _local = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let lock_path = Path::new(STATE_DIR).join("netns.lock");
    let file = File::create(&lock_path).with_context(|| format!("opening {lock_path:?}"))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {lock_path:?}"))?;
    ip(None, &["netns", "add", name])
}

/// Deletes named netns `name` if it exists.
pub(crate) fn netns_del(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(None, &["netns", "del", name])
}

/// Runs one `ip` command, optionally with `-n NETNS`.
pub(crate) fn ip(netns: Option<&str>, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {}{}: {}",
            netns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs several `ip` commands in one process (`ip -batch -`), stopping at the first
/// failure.
pub(crate) fn ip_batch(netns: Option<&str>, cmds: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (is iproute2 installed?)")?;
    let script = cmds.join("\n") + "\n";
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}-batch failed: {}\nscript:\n{script}",
            netns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Reads JSON output of an `ip` command.
pub(crate) fn ip_json(netns: Option<&str>, args: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.arg("-j").args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "ip -j {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing ip -j output")
}

/// Writes a sysctl inside a netns. `/proc/sys/net` follows the netns of the thread
/// that opens it, so a short-lived thread joins the netns and writes; the calling
/// thread is untouched and no `ip netns exec` is needed.
pub(crate) fn sysctl_in(netns: &Path, key: &str, value: &str) -> Result<()> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            setns(&ns, CloneFlags::CLONE_NEWNET).context("setns")?;
            fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
        })
        .join()
        .unwrap_or_else(|_| bail!("sysctl thread panicked"))
    })
}
