//! Spawning processes into a cgroup and a network namespace, and the [`Proc`] guard.
//!
//! We never use `ip netns exec` for this: it unshares a mount namespace and remounts
//! `/sys`, which hides the cgroup2 and bpffs mounts from the child. Instead the child
//! joins the cgroup and the netns itself between fork and exec, cgroup first: a
//! socket's cgroup is fixed when the socket is created, so the process must sit in
//! its cgroup before it can open any socket.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long `run` waits for a command before it kills it and fails.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Spawns `cmd` after moving the child into `cgroup` (a cgroup v2 directory) and then
/// into the network namespace at `netns` (a file such as `/run/netns/NAME`).
pub(crate) fn spawn_in(
    mut cmd: Command,
    cgroup: Option<&Path>,
    netns: Option<&Path>,
) -> Result<Proc> {
    // Open both before fork: the child may only make async-signal-safe calls.
    let procs = cgroup
        .map(|c| {
            let p = c.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&p)
                .with_context(|| format!("opening {}", p.display()))
        })
        .transpose()?;
    let ns = netns
        .map(|p| File::open(p).with_context(|| format!("opening netns {}", p.display())))
        .transpose()?;
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure only calls write(2) and setns(2) on descriptors that stay
    // open until `spawn` returns (`procs` and `ns` live to the end of this function);
    // it does not allocate or take locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd {
                // "0" means "the writing process".
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let label = format!("{:?}", cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {label} (cgroup {cgroup:?}, netns {netns:?})"))?;
    drop((procs, ns));
    Ok(Proc {
        child,
        label,
        lines: None,
        status: None,
    })
}

/// Runs `cmd` like [`spawn_in`], collects stdout and stderr, and waits at most
/// `timeout` (then kills it and fails). A non-zero exit is not an error here.
pub(crate) fn run_in(
    mut cmd: Command,
    cgroup: Option<&Path>,
    netns: Option<&Path>,
    timeout: Duration,
) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = spawn_in(cmd, cgroup, netns)?;
    let out = proc.child.stdout.take().map(read_to_end_thread);
    let err = proc.child.stderr.take().map(read_to_end_thread);
    let status = proc.wait_timeout(timeout)?;
    if status.is_none() {
        let _ = proc.kill();
    }
    // A background grandchild may hold the pipes open after the child exits: take
    // what arrived within a grace period rather than waiting for EOF forever.
    let grace = Instant::now() + OUTPUT_GRACE;
    let stdout = out.map(|rx| collect(rx, grace)).unwrap_or_default();
    let stderr = err.map(|rx| collect(rx, grace)).unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{} did not finish within {timeout:?}; stdout: {}; stderr: {}",
            proc.label,
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        ),
    }
}

/// How long `run` waits for the output pipes to close after the command exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// Reads `r` to EOF on a thread, sending chunks as they arrive.
fn read_to_end_thread<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}

fn collect(rx: mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => v.extend_from_slice(&chunk),
            Err(_) => return v, // EOF (sender gone) or grace period over.
        }
    }
}

/// Fails unless `out` is a successful exit; the error shows the command's output.
pub fn ensure_success(out: &Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed with {}; stdout: {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Parses the last non-empty stdout line of a successful command as JSON (the
/// podtool and Python client report this way).
pub fn json_output(out: &Output, what: &str) -> Result<serde_json::Value> {
    ensure_success(out, what)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("{what} printed nothing on stdout"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed non-JSON: {line}"))
}

/// A child process that is killed (SIGKILL by pid) and reaped when dropped.
///
/// The pid cannot be reused while the child is unreaped, so killing by pid is
/// safe for as long as this value lives.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    label: String,
    lines: Option<mpsc::Receiver<String>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("waitpid")?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL (unless the child already exited) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        match kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).context("kill"),
        }
        let s = self.child.wait().context("waitpid")?;
        self.status = Some(s);
        Ok(s)
    }

    /// Sends `signal` to the child (e.g. SIGTERM for a graceful drain).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.status.is_some() {
            bail!("{} already exited", self.label);
        }
        kill(Pid::from_raw(self.child.id() as i32), signal).context("kill")
    }

    /// The child's stdout, if it was piped and not taken.
    pub fn stdout(&mut self) -> Option<&mut ChildStdout> {
        self.child.stdout.as_mut()
    }

    /// Takes the child's stdout, if it was piped and not taken.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Takes the child's stderr, if it was piped and not taken.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Reads the next stdout line (without the newline), waiting at most `timeout`.
    /// Needs `Stdio::piped()` stdout; the first call hands stdout to a reader thread.
    /// Used to wait for a server's "listening" line.
    pub fn next_line(&mut self, timeout: Duration) -> Result<String> {
        if self.lines.is_none() {
            let out = self
                .child
                .stdout
                .take()
                .with_context(|| format!("{}: stdout is not piped", self.label))?;
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            self.lines = Some(rx);
        }
        let rx = self.lines.as_ref().expect("set above");
        match rx.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{}: no stdout line within {timeout:?}", self.label)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.try_wait().ok().flatten();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    if status.is_some() {
                        let _ = e.read_to_string(&mut err);
                    }
                }
                bail!(
                    "{}: stdout closed (exit status {status:?}); stderr: {}",
                    self.label,
                    err.trim()
                )
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            crate::warn(&format!(
                "killing {} (pid {}): {e:#}",
                self.label,
                self.pid()
            ));
        }
    }
}
