//! The startup self-test of the whole capture path, which decides the splice mode.
//!
//! A child process of the agent is placed in a throw-away enrolled cgroup (before it opens any
//! socket: a socket's cgroup is fixed when the socket is created) and talks to an echo target
//! on the node address with **blocking** sockets and no timeouts, as ordinary apps do:
//! request/response exchanges and a stream with half-close. Its connect is rewritten to the
//! proxy (capture), both ends go into the SOCKHASH (insert) and the bytes are redirected
//! (splice); the kernel counters must show all three and every byte must come back intact.
//!
//! Why blocking sockets: on the kernels we run on, a blocking `recv()` on a socket whose
//! receive path was taken over by sockmap (`tcp_bpf_recvmsg`) waits once for data and returns
//! `EAGAIN` if it was woken without data in its queue (see `tcp_msg_wait_data` in
//! net/ipv4/tcp_bpf.c: a single `sk_wait_event`, no loop). Non-blocking clients (tokio, curl)
//! retry after `EAGAIN` and never notice; blocking apps see a failed read. The self-test
//! reproduces exactly that shape, and when it fails the agent narrows splicing to the bytes
//! apps send to the proxy (the proxy reads non-blockingly, so it is immune) or turns it off.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use myelin_ebpf_loader::{
    cgroup_id, CounterValues, Counters, Dataplane, CFG_CAPTURE, CFG_SPLICE_TO_APP,
    CFG_SPLICE_TO_PROXY,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::Config;

/// How captured connections carry their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpliceMode {
    /// Not decided yet (the self-test is running).
    Pending,
    /// Bytes are redirected socket to socket by `sk_msg` (in `directions`).
    Spliced,
    /// Plain TCP through the proxy.
    Tcp,
}

impl std::fmt::Display for SpliceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpliceMode::Pending => "pending",
            SpliceMode::Spliced => "spliced",
            SpliceMode::Tcp => "tcp",
        })
    }
}

/// The decision and why.
#[derive(Debug, Clone, Serialize)]
pub struct SpliceState {
    pub mode: SpliceMode,
    /// `both`, `to-proxy` (apps' bytes into the proxy), or `none`.
    pub directions: String,
    /// Human-readable reason for anything less than full splicing.
    pub reason: String,
    /// Machine-readable reasons (metric labels).
    pub fallback_reasons: Vec<String>,
    /// Set when capture itself does not work: the agent must not pretend to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_error: Option<String>,
    /// Every self-test run, in order.
    pub runs: Vec<RunReport>,
}

impl SpliceState {
    pub fn pending() -> Self {
        SpliceState {
            mode: SpliceMode::Pending,
            directions: "none".into(),
            reason: "self-test running".into(),
            fallback_reasons: Vec::new(),
            capture_error: None,
            runs: Vec::new(),
        }
    }
}

/// One self-test run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub directions: String,
    pub passed: bool,
    pub client: Option<ClientReport>,
    pub kernel_delta: KernelDelta,
    pub problem: Option<String>,
}

/// Kernel counter changes during a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KernelDelta {
    pub connects_captured: u64,
    pub sockets_inserted: u64,
    pub bytes_spliced: u64,
}

/// What the client process reports (one JSON line on stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    pub exchanges_ok: u64,
    pub stream_bytes_ok: u64,
    pub eagain: u64,
    pub error: Option<String>,
}

const EXCHANGES: u64 = 300;
const EXCHANGE_SIZE: usize = 1024;
const STREAM_BYTES: u64 = 16 << 20;
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the self-test and leaves the kernel flags set to the decided mode.
pub async fn decide(
    config: &Config,
    dp: &Arc<Mutex<Dataplane>>,
    counters: &Arc<Counters>,
    cgroup2: &Path,
    forced_off: bool,
) -> SpliceState {
    let mut state = SpliceState::pending();
    let plans: &[(u32, &str)] = if forced_off {
        &[(0, "none")]
    } else {
        &[(CFG_SPLICE_TO_PROXY | CFG_SPLICE_TO_APP, "both"), (CFG_SPLICE_TO_PROXY, "to-proxy"), (0, "none")]
    };
    if forced_off {
        state.fallback_reasons.push("forced_off".into());
        state.reason = "splicing forced off by configuration or --no-splice".into();
    }
    for &(splice, name) in plans {
        set_flags(dp, CFG_CAPTURE | splice);
        let report = run_once(config, dp, counters, cgroup2, splice != 0).await;
        let report = RunReport { directions: name.into(), ..report };
        let passed = report.passed;
        if !passed {
            let why = report.problem.clone().unwrap_or_default();
            warn!(directions = name, problem = %why, "splice self-test failed");
            let tag = if report.client.as_ref().is_some_and(|c| c.eagain > 0) {
                format!("blocking_recv_eagain_{}", name.replace('-', "_"))
            } else {
                format!("selftest_failed_{}", name.replace('-', "_"))
            };
            state.fallback_reasons.push(tag);
            if !state.reason.is_empty() && state.mode == SpliceMode::Pending && !forced_off {
                state.reason.clear();
            }
            if !state.reason.is_empty() {
                state.reason.push_str("; ");
            }
            state.reason.push_str(&format!("with splice {name}: {why}"));
        }
        state.runs.push(report);
        if passed {
            state.mode = if splice == 0 { SpliceMode::Tcp } else { SpliceMode::Spliced };
            state.directions = name.into();
            if state.reason == "self-test running" {
                state.reason.clear();
            }
            return state;
        }
    }
    // Even plain capture failed.
    set_flags(dp, CFG_CAPTURE);
    state.mode = SpliceMode::Tcp;
    state.directions = "none".into();
    state.capture_error = Some(state.reason.clone());
    state
}

fn set_flags(dp: &Arc<Mutex<Dataplane>>, flags: u32) {
    if let Err(e) = dp.lock().expect("dataplane lock").set_flags(flags) {
        warn!(%e, "setting kernel flags");
    }
}

async fn run_once(
    config: &Config,
    dp: &Arc<Mutex<Dataplane>>,
    counters: &Arc<Counters>,
    _cgroup2: &Path,
    expect_splice: bool,
) -> RunReport {
    let mut report = RunReport {
        directions: String::new(),
        passed: false,
        client: None,
        kernel_delta: KernelDelta::default(),
        problem: None,
    };
    // The echo target: on the node address (loopback is never captured), outside any pod.
    let target = match tokio::net::TcpListener::bind((*config.capture.ip(), 0)).await {
        Ok(l) => l,
        Err(e) => {
            report.problem = Some(format!("binding the self-test echo target: {e}"));
            return report;
        }
    };
    let target_addr = target.local_addr().expect("bound");
    let echo = tokio::spawn(async move {
        while let Ok((mut s, _)) = target.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });

    let cg = config.cgroup_root.join(format!("myelin-selftest-{}", std::process::id()));
    let result = async {
        std::fs::create_dir_all(&cg).map_err(|e| format!("creating {}: {e}", cg.display()))?;
        let id = cgroup_id(&cg).map_err(|e| e.to_string())?;
        dp.lock().expect("dataplane lock").enroll(id, 0).map_err(|e| e.to_string())?;
        let before = counters.read();
        let out = spawn_client(&cg, target_addr).await;
        let after = counters.read();
        let _ = dp.lock().expect("dataplane lock").unenroll(id);
        Ok::<_, String>((out, before, after))
    }
    .await;
    echo.abort();
    remove_cgroup(&cg);

    let (out, before, after) = match result {
        Ok(v) => v,
        Err(e) => {
            report.problem = Some(e);
            return report;
        }
    };
    report.kernel_delta = delta(&before, &after);
    let client = match out {
        Ok(c) => c,
        Err(e) => {
            report.problem = Some(e);
            return report;
        }
    };
    let d = report.kernel_delta;
    let problem = if let Some(e) = &client.error {
        Some(format!("blocking client failed: {e} (EAGAIN seen {} times)", client.eagain))
    } else if d.connects_captured == 0 {
        Some("the connect was not captured (connect4 did not rewrite it)".into())
    } else if expect_splice && d.sockets_inserted < 2 {
        Some(format!("only {} sockets went into the splice map (want 2)", d.sockets_inserted))
    } else if expect_splice && d.bytes_spliced == 0 {
        Some("no bytes were spliced".into())
    } else {
        None
    };
    report.passed = problem.is_none();
    report.problem = problem;
    report.client = Some(client);
    info!(passed = report.passed, ?d, "self-test run");
    report
}

fn delta(a: &CounterValues, b: &CounterValues) -> KernelDelta {
    KernelDelta {
        connects_captured: b.connects_captured.saturating_sub(a.connects_captured),
        sockets_inserted: b.sockets_inserted.saturating_sub(a.sockets_inserted),
        bytes_spliced: b.bytes_spliced.saturating_sub(a.bytes_spliced),
    }
}

fn remove_cgroup(cg: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    warn!(cgroup = %cg.display(), "could not remove the self-test cgroup");
}

/// Starts `myelin selftest-client` inside `cg` and reads its report.
async fn spawn_client(cg: &Path, target: SocketAddr) -> Result<ClientReport, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("selftest-client").arg("--addr").arg(target.to_string());
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    place_in_cgroup(&mut cmd, cg)?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("spawning the self-test client: {e}"))?;
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("the blocking self-test client hung for {RUN_TIMEOUT:?}"))?
        .map_err(|e| format!("waiting for the self-test client: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .map_err(|e| format!("self-test client printed {line:?} ({e}), exit {}", out.status))
}

/// Makes `cmd`'s child move itself into cgroup `cg` before exec, i.e. before it can open a
/// socket (a socket's cgroup is fixed at creation).
pub fn place_in_cgroup(cmd: &mut std::process::Command, cg: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.procs"))
        .map_err(|e| format!("opening {}/cgroup.procs: {e}", cg.display()))?;
    // SAFETY: the closure only calls write(2) on an fd opened before fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let fd = procs.as_raw_fd();
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

fn pattern(seed: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((i as u64).wrapping_mul(31).wrapping_add(seed.wrapping_mul(7)) % 251) as u8;
    }
}

/// `myelin selftest-client --addr A`: the blocking client (runs inside the test cgroup).
pub fn client_main(addr: SocketAddr) -> i32 {
    let mut rep = ClientReport::default();
    if let Err(e) = client(addr, &mut rep) {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            rep.eagain += 1;
        }
        rep.error = Some(e.to_string());
    }
    println!("{}", serde_json::to_string(&rep).expect("plain struct"));
    if rep.error.is_some() { 1 } else { 0 }
}

fn read_exact_counting(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    // read_exact would retry on EINTR but pass EAGAIN up: that is the failure we look for.
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early EOF")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn client(addr: SocketAddr, rep: &mut ClientReport) -> std::io::Result<()> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let mut out = vec![0u8; EXCHANGE_SIZE];
    let mut back = vec![0u8; EXCHANGE_SIZE];
    for i in 0..EXCHANGES {
        pattern(i, &mut out);
        s.write_all(&out)?;
        read_exact_counting(&mut s, &mut back)?;
        if back != out {
            return Err(std::io::Error::other(format!("exchange {i}: echoed bytes differ")));
        }
        rep.exchanges_ok += 1;
    }
    drop(s);

    // A stream with half-close: writer thread sends, shuts down write; reader checks all bytes.
    let s = TcpStream::connect(addr)?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let mut seq = 0u64;
        while sent < STREAM_BYTES {
            pattern(seq, &mut chunk);
            w.write_all(&chunk)?;
            sent += chunk.len() as u64;
            seq += 1;
        }
        w.shutdown(Shutdown::Write)
    });
    let mut r = s;
    let mut expect = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut seq = 0u64;
    while rep.stream_bytes_ok < STREAM_BYTES {
        pattern(seq, &mut expect);
        read_exact_counting(&mut r, &mut got)?;
        if got != expect {
            return Err(std::io::Error::other(format!("stream chunk {seq}: bytes differ")));
        }
        rep.stream_bytes_ok += got.len() as u64;
        seq += 1;
    }
    let mut tail = [0u8; 1];
    if r.read(&mut tail)? != 0 {
        return Err(std::io::Error::other("stream: bytes after the end"));
    }
    writer.join().map_err(|_| std::io::Error::other("writer panicked"))??;
    let _ = started;
    Ok(())
}
