//! The startup self-test of the whole capture path, which decides how the node splices.
//!
//! Child processes of the agent are placed in a throw-away enrolled cgroup (before they open
//! any socket: a socket's cgroup is fixed when the socket is created) and talk to an echo
//! target on the node address through the mesh, with **blocking** sockets and no timeouts,
//! as ordinary apps do: request/response exchanges and full-duplex streams (a writer thread
//! and a reader thread on one socket), on several connections at once. Their connects are
//! rewritten to the proxy (capture), both ends go into the SOCKHASH (insert) and the bytes
//! are redirected (splice): the kernel counters must show all three and every byte must come
//! back intact. That is the first verdict, `path_ok`.
//!
//! The second verdict, `blocking_safe`, is whether any blocking read failed with `EAGAIN`.
//! A socket in a sockmap gets the kernel's `tcp_bpf_recvmsg`, which waits for data with a
//! single `sk_wait_event` and returns `EAGAIN` when woken without data (net/ipv4/tcp_bpf.c,
//! `tcp_msg_wait_data`; plain TCP loops in `sk_wait_data` instead). What wakes it without
//! data, measured on Linux 6.18 (spliced both ways, 0 splice misses):
//! - the app's own FIN being acknowledged: `shutdown(SHUT_WR)` (or the end of a full-duplex
//!   writer thread) moves the socket FIN_WAIT1 -> FIN_WAIT2, which calls `sk_state_change`
//!   and wakes every waiter, including a thread blocked in `recv()` (the FIN itself is not
//!   spliced: it travels over TCP). Half-close and full-duplex streams fail this way;
//!   9,000 sequential request/response exchanges on 20 connections saw none.
//! - before the connection-start race was closed (see the kernel's `wait_for_peer`), a
//!   socket whose first bytes went over TCP also got TCP ACK wake-ups.
//!
//! The peer's FIN is fine (its skb is queued before the wake-up, so the reader sees EOF).
//! Non-blocking apps retry and never notice. The client retries such reads (so the data
//! check still completes) and counts them. Workloads with `splice: auto` are spliced only if
//! no read failed in any round; `splice: nonblocking` workloads only need `path_ok`.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use myelin_ebpf_loader::{cgroup_id, CounterValues, Counters, Dataplane, CFG_CAPTURE, CFG_SPLICE};
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
    /// Bytes of (some) workloads are redirected socket to socket by `sk_msg`.
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
    /// Human-readable reason for anything less than full splicing.
    pub reason: String,
    /// Machine-readable reasons (metric labels).
    pub fallback_reasons: Vec<String>,
    /// The spliced path works (capture, insert, redirect, bytes intact).
    pub path_ok: bool,
    /// No blocking read failed with EAGAIN on spliced sockets.
    pub blocking_safe: bool,
    /// Set when capture itself does not work: the agent must not pretend to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_error: Option<String>,
    /// Every self-test run, in order.
    pub runs: Vec<RunReport>,
    /// What each workload got.
    pub workloads: Vec<WorkloadSpliceState>,
}

/// The splice decision for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSpliceState {
    pub name: String,
    pub namespace: String,
    pub policy: crate::config::WorkloadSplice,
    pub spliced: bool,
}

impl SpliceState {
    /// Whether a workload with `policy` is spliced under this decision.
    pub fn splices(&self, policy: crate::config::WorkloadSplice) -> bool {
        use crate::config::WorkloadSplice::*;
        self.mode == SpliceMode::Spliced
            && match policy {
                Off => false,
                Nonblocking => self.path_ok,
                Auto => self.blocking_safe,
            }
    }
}

impl SpliceState {
    pub fn pending() -> Self {
        SpliceState {
            mode: SpliceMode::Pending,
            reason: "self-test running".into(),
            fallback_reasons: Vec::new(),
            path_ok: false,
            blocking_safe: false,
            capture_error: None,
            runs: Vec::new(),
            workloads: Vec::new(),
        }
    }
}

/// One self-test run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
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
    pub splice_misses: u64,
}

/// What the client process reports (one JSON line on stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    pub exchanges_ok: u64,
    pub stream_bytes_ok: u64,
    pub eagain: u64,
    pub error: Option<String>,
}

/// Concurrent connections of one round.
const CONNS: usize = 6;
const EXCHANGES: u64 = 100;
const EXCHANGE_SIZE: usize = 1024;
const STREAM_BYTES: u64 = 4 << 20;
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// Rounds of the blocking check: an `EAGAIN` in any round marks blocking reads unsafe; only a
/// clean run of every round marks them safe.
const ROUNDS: usize = 3;

/// Runs the self-test and leaves the kernel flags set to the decided mode.
pub async fn decide(
    config: &Config,
    dp: &Arc<Mutex<Dataplane>>,
    counters: &Arc<Counters>,
    forced_off: bool,
) -> SpliceState {
    let mut state = SpliceState::pending();
    if forced_off {
        // Nothing goes into the SOCKHASH at all; only capture is checked.
        set_flags(dp, CFG_CAPTURE);
        let report = run_once(config, dp, counters, false).await;
        state.fallback_reasons.push("forced_off".into());
        state.reason = "splicing forced off by configuration or --no-splice".into();
        state.mode = SpliceMode::Tcp;
        if !report.passed {
            state.capture_error = report.problem.clone();
        }
        state.runs.push(report);
        return state;
    }
    set_flags(dp, CFG_CAPTURE | CFG_SPLICE);
    let mut eagain = 0;
    for _ in 0..ROUNDS {
        let report = run_once(config, dp, counters, true).await;
        let passed = report.passed;
        eagain += report.client.as_ref().map_or(0, |c| c.eagain);
        if !passed {
            warn!(problem = ?report.problem, "splice self-test: the spliced path does not work");
        }
        state.runs.push(report);
        // A broken path, or one failed blocking read, is already a verdict.
        if !passed || eagain > 0 {
            break;
        }
    }
    state.path_ok = state.runs.iter().all(|r| r.passed);
    state.blocking_safe = state.path_ok && eagain == 0;
    if !state.path_ok {
        // Splicing does not work here: nothing may go into the SOCKHASH. Check that plain
        // capture still does.
        set_flags(dp, CFG_CAPTURE);
        let why = state
            .runs
            .last()
            .and_then(|r| r.problem.clone())
            .unwrap_or_default();
        state.fallback_reasons.push("spliced_path_broken".into());
        state.reason = format!("the spliced path failed its self-test: {why}");
        let report = run_once(config, dp, counters, false).await;
        if !report.passed {
            state.capture_error = report.problem.clone();
        }
        state.runs.push(report);
        state.mode = SpliceMode::Tcp;
        return state;
    }
    if !state.blocking_safe {
        state.fallback_reasons.push("blocking_recv_eagain".into());
        state.reason = format!(
            "blocking reads on spliced sockets failed with EAGAIN {eagain} time(s) in the self-test \
             (kernel tcp_bpf_recvmsg returns EAGAIN when woken without data): workloads with \
             splice: auto are not spliced; splice: nonblocking workloads are"
        );
    }
    // The node can splice; which workloads do is decided per workload by the caller.
    state.mode = SpliceMode::Spliced;
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
    expect_splice: bool,
) -> RunReport {
    let mut report = RunReport {
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

    let cg = config
        .cgroup_root
        .join(format!("myelin-selftest-{}", std::process::id()));
    let result = async {
        std::fs::create_dir_all(&cg).map_err(|e| format!("creating {}: {e}", cg.display()))?;
        let id = cgroup_id(&cg).map_err(|e| e.to_string())?;
        dp.lock()
            .expect("dataplane lock")
            .enroll(id, 0)
            .map_err(|e| e.to_string())?;
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
        Some(format!("self-test client failed: {e}"))
    } else if d.connects_captured < 2 * CONNS as u64 {
        Some(format!(
            "{} of {} connects were captured (connect4 did not rewrite them)",
            d.connects_captured,
            2 * CONNS
        ))
    } else if expect_splice && d.sockets_inserted < 2 * d.connects_captured {
        Some(format!(
            "only {} sockets went into the splice map for {} connections",
            d.sockets_inserted, d.connects_captured
        ))
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
        splice_misses: b.splice_misses.saturating_sub(a.splice_misses),
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
    cmd.arg("selftest-client")
        .arg("--addr")
        .arg(target.to_string());
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    place_in_cgroup(&mut cmd, cg)?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("spawning the self-test client: {e}"))?;
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("the blocking self-test client hung for {RUN_TIMEOUT:?}"))?
        .map_err(|e| format!("waiting for the self-test client: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).map_err(|e| {
        format!(
            "self-test client printed {line:?} ({e}), exit {}",
            out.status
        )
    })
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
        *b = ((i as u64)
            .wrapping_mul(31)
            .wrapping_add(seed.wrapping_mul(7))
            % 251) as u8;
    }
}

/// `myelin selftest-client --addr A`: the blocking clients (run inside the test cgroup).
pub fn client_main(addr: SocketAddr) -> i32 {
    let threads: Vec<_> = (0..CONNS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rep = ClientReport::default();
                if let Err(e) = client(addr, i as u64, &mut rep) {
                    rep.error = Some(e.to_string());
                }
                rep
            })
        })
        .collect();
    let mut total = ClientReport::default();
    for t in threads {
        let r = t.join().unwrap_or_else(|_| ClientReport {
            error: Some("client thread panicked".into()),
            ..Default::default()
        });
        total.exchanges_ok += r.exchanges_ok;
        total.stream_bytes_ok += r.stream_bytes_ok;
        total.eagain += r.eagain;
        if total.error.is_none() {
            total.error = r.error;
        }
    }
    println!("{}", serde_json::to_string(&total).expect("plain struct"));
    if total.error.is_some() {
        1
    } else {
        0
    }
}

/// Reads exactly `buf.len()` bytes with blocking reads. `EAGAIN` on a blocking socket is the
/// kernel behaviour under test: counted, then the read is retried (at most 1000 times per
/// call) so the data check can finish.
fn read_exact_counting(s: &mut TcpStream, buf: &mut [u8], eagain: &mut u64) -> std::io::Result<()> {
    let mut got = 0;
    let mut retries = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "early EOF",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && retries < 1000 => {
                *eagain += 1;
                retries += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn client(addr: SocketAddr, seed: u64, rep: &mut ClientReport) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let mut out = vec![0u8; EXCHANGE_SIZE];
    let mut back = vec![0u8; EXCHANGE_SIZE];
    for i in 0..EXCHANGES {
        pattern(seed * 1000 + i, &mut out);
        s.write_all(&out)?;
        read_exact_counting(&mut s, &mut back, &mut rep.eagain)?;
        if back != out {
            return Err(std::io::Error::other(format!(
                "exchange {i}: echoed bytes differ"
            )));
        }
        rep.exchanges_ok += 1;
    }
    drop(s);

    // Full duplex with half-close: a writer thread sends and shuts down write while this
    // thread reads the echo and checks every byte.
    let s = TcpStream::connect(addr)?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let mut seq = seed * 1000;
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
    let mut seq = seed * 1000;
    while rep.stream_bytes_ok < STREAM_BYTES {
        pattern(seq, &mut expect);
        read_exact_counting(&mut r, &mut got, &mut rep.eagain)?;
        if got != expect {
            return Err(std::io::Error::other(format!(
                "stream chunk {seq}: bytes differ"
            )));
        }
        rep.stream_bytes_ok += got.len() as u64;
        seq += 1;
    }
    let mut tail = [0u8; 1];
    loop {
        match r.read(&mut tail) {
            Ok(0) => break,
            Ok(_) => return Err(std::io::Error::other("stream: bytes after the end")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => rep.eagain += 1,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer panicked"))?
}
