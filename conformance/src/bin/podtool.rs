//! `myelin-podtool`: servers and clients that run inside test-bed pods.
//!
//! They imitate ordinary applications: std::net, blocking sockets, no socket
//! timeouts. A transparent dataplane must be invisible to them, so anything odd
//! (EAGAIN from a blocking socket, a short read, a wrong byte) is reported, with the
//! raw errno, on the single JSON line each client prints. Servers print one JSON
//! "listening" line once bound, then run until killed. Clients exit non-zero on any
//! error.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use myelin_testbed::pattern;
use serde::Serialize;
use serde_json::json;

/// Largest `exchange` size: the client writes a whole request before reading, so
/// beyond the socket buffers both sides would block (a real deadlock, not a bug).
const MAX_EXCHANGE_SIZE: usize = 256 * 1024;
/// EAGAIN on a blocking socket is the bug we hunt; retry a bounded number of times
/// to see whether the connection recovers, and report every occurrence.
const MAX_EAGAIN_RETRIES: u32 = 1000;
/// Pattern seed of `stream`; `exchange` uses the exchange index.
const STREAM_SEED: u64 = 0xAB;
const HALF_CLOSE_SEED: u64 = 7;
const CHUNK: usize = 64 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "myelin-podtool",
    about = "Test-bed servers and clients (blocking std::net)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Echo server: a thread per connection, echoes until EOF, then shuts down write.
    EchoServer {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
    },
    /// Server-first protocol: writes the banner on accept, then echoes.
    ServerFirst {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        #[arg(long)]
        banner: String,
    },
    /// Minimal HTTP/1.1 keep-alive server: 200 with body NAME to every request, except for
    /// these paths (deterministic failures for retry, timeout and outlier tests):
    ///
    /// - `/status/CODE`: that status;
    /// - `/fail/N/CODE?key=K`: CODE for the first N requests with key K, then 200;
    /// - `/delay/MS`: 200 after MS milliseconds;
    /// - `/delay-first/N/MS?key=K`: the first N requests with key K wait MS first;
    /// - `/count?key=K`: body = how many requests with key K came so far (not itself).
    ///
    /// `delay=MS` in the query waits MS before any of these answers (a slow failure);
    /// `only=NAME` limits the failure or delay to the server called NAME (the others answer
    /// 200 at once). Every request with `key=K` counts, whatever its path.
    /// Responses carry `x-server-name`, `x-request-count` (requests served so far) and, with
    /// a key, `x-key-count` (this request's number among those with its key).
    HttpServer {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        #[arg(long)]
        name: String,
    },
    /// One connection, COUNT request/response exchanges of SIZE bytes with an echo
    /// server, each reply checked byte for byte.
    Exchange {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Read and check this banner first (for `server-first`).
        #[arg(long)]
        expect_banner: Option<String>,
    },
    /// A writer thread sends BYTES of pattern then shuts down write; the reader
    /// checks every echoed byte.
    Stream {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    /// Sends SIZE bytes, shuts down write, expects the full echo and then EOF.
    HalfClose {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 4096)]
        size: usize,
    },
    /// COUNT HTTP/1.1 GETs of PATH, each on a new connection (`connection: close`), PARALLEL
    /// at a time (the first PARALLEL start together). Reports every response (status,
    /// `x-server-name`, `x-key-count`, milliseconds) and the counts by status and server;
    /// any status is a response, only I/O and protocol errors fail.
    HttpGet {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        parallel: usize,
    },
    /// CONNS concurrent connections, each doing EXCHANGES small exchanges.
    ConnectMany {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        conns: usize,
        #[arg(long, default_value_t = 3)]
        exchanges: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (report, ok) = match cli.cmd {
        Cmd::EchoServer { port, bind } => serve(bind, port, "echo-server", Handler::Echo(None)),
        Cmd::ServerFirst { port, bind, banner } => {
            serve(bind, port, "server-first", Handler::Echo(Some(banner)))
        }
        Cmd::HttpServer { port, bind, name } => serve(
            bind,
            port,
            "http-server",
            Handler::Http(Arc::new(HttpState::new(name))),
        ),
        Cmd::Exchange {
            addr,
            count,
            size,
            expect_banner,
        } => exchange(addr, count, size, expect_banner.as_deref()),
        Cmd::Stream { addr, bytes } => stream(addr, bytes),
        Cmd::HalfClose { addr, size } => half_close(addr, size),
        Cmd::ConnectMany {
            addr,
            conns,
            exchanges,
            size,
        } => connect_many(addr, conns, exchanges, size),
        Cmd::HttpGet {
            addr,
            path,
            count,
            parallel,
        } => http_get(addr, &path, count, parallel),
    };
    println!("{report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------
// Errors and counters

/// One failure, with the raw errno when the kernel gave one.
#[derive(Debug, Clone, Serialize)]
struct ErrInfo {
    /// connect, read, write, shutdown, banner, check.
    op: &'static str,
    /// Errno name (EAGAIN, ECONNRESET, ...), or EOF / MISMATCH for protocol failures.
    kind: String,
    errno: Option<i32>,
    message: String,
    /// Exchange index, or stream offset for `stream` / `half-close`.
    at: u64,
}

impl ErrInfo {
    fn io(op: &'static str, e: &io::Error, at: u64) -> Self {
        ErrInfo {
            op,
            kind: e
                .raw_os_error()
                .map(errno_name)
                .unwrap_or_else(|| format!("{:?}", e.kind())),
            errno: e.raw_os_error(),
            message: e.to_string(),
            at,
        }
    }

    fn protocol(op: &'static str, kind: &str, message: String, at: u64) -> Self {
        ErrInfo {
            op,
            kind: kind.to_string(),
            errno: None,
            message,
            at,
        }
    }

    fn is_eagain(&self) -> bool {
        self.errno == Some(libc::EAGAIN)
    }
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EAGAIN => "EAGAIN", // == EWOULDBLOCK on Linux
        libc::EINTR => "EINTR",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOTCONN => "ENOTCONN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EINVAL => "EINVAL",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EPERM => "EPERM",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// Counters of one client run.
#[derive(Debug, Default)]
struct Stats {
    /// EAGAIN/EWOULDBLOCK results seen on blocking sockets.
    eagain: u64,
    /// Other failed syscalls, mismatches, early EOFs.
    failures: u64,
    first_error: Option<ErrInfo>,
}

impl Stats {
    fn record(&mut self, e: ErrInfo) {
        if e.is_eagain() {
            self.eagain += 1;
        } else {
            self.failures += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn merge(&mut self, other: Stats) {
        self.eagain += other.eagain;
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn clean(&self) -> bool {
        self.eagain == 0 && self.failures == 0
    }
}

/// `write_all` that sees every errno: retries EINTR silently and EAGAIN a bounded
/// number of times (recording each), fails on anything else.
fn write_all(s: &mut TcpStream, buf: &[u8], st: &mut Stats, at: u64) -> Result<(), ErrInfo> {
    let mut off = 0;
    let mut retries = 0;
    while off < buf.len() {
        match s.write(&buf[off..]) {
            Ok(0) => {
                return Err(ErrInfo::protocol(
                    "write",
                    "EOF",
                    "write returned 0".into(),
                    at,
                ))
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let info = ErrInfo::io("write", &e, at);
                if !info.is_eagain() || retries >= MAX_EAGAIN_RETRIES {
                    return Err(info);
                }
                st.record(info);
                retries += 1;
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    Ok(())
}

/// One `read`, with the same EINTR/EAGAIN policy as [`write_all`]. `Ok(0)` is EOF.
fn read_some(s: &mut TcpStream, buf: &mut [u8], st: &mut Stats, at: u64) -> Result<usize, ErrInfo> {
    let mut retries = 0;
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let info = ErrInfo::io("read", &e, at);
                if !info.is_eagain() || retries >= MAX_EAGAIN_RETRIES {
                    return Err(info);
                }
                st.record(info);
                retries += 1;
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8], st: &mut Stats, at: u64) -> Result<(), ErrInfo> {
    let mut off = 0;
    while off < buf.len() {
        match read_some(s, &mut buf[off..], st, at)? {
            0 => {
                return Err(ErrInfo::protocol(
                    "read",
                    "EOF",
                    format!("EOF after {off} of {} bytes", buf.len()),
                    at,
                ))
            }
            n => off += n,
        }
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream, ErrInfo> {
    TcpStream::connect(addr).map_err(|e| ErrInfo::io("connect", &e, 0))
}

/// Runs `count` exchanges of `size` bytes on `s`, with pattern seeds from
/// `seed_base`. Returns the number of clean exchanges; stops at a fatal error.
fn run_exchanges(
    s: &mut TcpStream,
    seed_base: u64,
    count: u64,
    size: usize,
    st: &mut Stats,
) -> u64 {
    let mut out = vec![0u8; size];
    let mut inp = vec![0u8; size];
    let mut ok = 0;
    for k in 0..count {
        let seed = seed_base + k;
        pattern::fill(seed, 0, &mut out);
        let before = (st.eagain, st.failures);
        if let Err(e) = write_all(s, &out, st, k).and_then(|()| read_exact(s, &mut inp, st, k)) {
            st.record(e);
            break;
        }
        if let Some(i) = pattern::first_mismatch(seed, 0, &inp) {
            st.record(ErrInfo::protocol(
                "check",
                "MISMATCH",
                format!("reply byte {i} differs"),
                k,
            ));
        } else if before == (st.eagain, st.failures) {
            ok += 1;
        }
    }
    ok
}

// ---------------------------------------------------------------------------
// Clients

fn exchange(addr: SocketAddr, count: u64, size: usize, banner: Option<&str>) -> (String, bool) {
    let start = Instant::now();
    let mut st = Stats::default();
    let mut ok = 0;
    if size == 0 || size > MAX_EXCHANGE_SIZE {
        st.record(ErrInfo::protocol(
            "args",
            "EINVAL",
            format!("--size must be 1..={MAX_EXCHANGE_SIZE}; use stream for bulk"),
            0,
        ));
    } else {
        match connect(addr) {
            Err(e) => st.record(e),
            Ok(mut s) => {
                let banner_ok = match banner {
                    None => true,
                    Some(b) => {
                        let mut got = vec![0u8; b.len()];
                        match read_exact(&mut s, &mut got, &mut st, 0) {
                            Err(e) => {
                                st.record(e);
                                false
                            }
                            Ok(()) if got != b.as_bytes() => {
                                st.record(ErrInfo::protocol(
                                    "banner",
                                    "MISMATCH",
                                    format!("got {:?}", String::from_utf8_lossy(&got)),
                                    0,
                                ));
                                false
                            }
                            Ok(()) => true,
                        }
                    }
                };
                if banner_ok {
                    ok = run_exchanges(&mut s, 0, count, size, &mut st);
                }
            }
        }
    }
    let good = ok == count && st.clean();
    let report = json!({
        "mode": "exchange",
        "ok": ok,
        "errors": count - ok,
        "eagain": st.eagain,
        "first_error": st.first_error,
        "secs": start.elapsed().as_secs_f64(),
    });
    (report.to_string(), good)
}

fn stream(addr: SocketAddr, bytes: u64) -> (String, bool) {
    let start = Instant::now();
    let mut st = Stats::default();
    let mut received = 0u64;
    let mut sent = 0u64;
    let mut mismatch_at = None;
    match connect(addr).and_then(|s| {
        let w = s.try_clone().map_err(|e| ErrInfo::io("dup", &e, 0))?;
        Ok((s, w))
    }) {
        Err(e) => st.record(e),
        Ok((mut r, mut w)) => {
            let writer = thread::spawn(move || {
                let mut st = Stats::default();
                let mut buf = vec![0u8; CHUNK];
                let mut off = 0u64;
                while off < bytes {
                    let n = (bytes - off).min(CHUNK as u64) as usize;
                    pattern::fill(STREAM_SEED, off, &mut buf[..n]);
                    if let Err(e) = write_all(&mut w, &buf[..n], &mut st, off) {
                        st.record(e);
                        // Wake the reader: the echo will never complete.
                        let _ = w.shutdown(Shutdown::Both);
                        return (st, off);
                    }
                    off += n as u64;
                }
                if let Err(e) = w.shutdown(Shutdown::Write) {
                    st.record(ErrInfo::io("shutdown", &e, off));
                }
                (st, off)
            });
            let mut buf = vec![0u8; CHUNK];
            loop {
                match read_some(&mut r, &mut buf, &mut st, received) {
                    Ok(0) => break,
                    Ok(n) => {
                        if mismatch_at.is_none() {
                            let expect = bytes.saturating_sub(received).min(n as u64) as usize;
                            let bad =
                                pattern::first_mismatch(STREAM_SEED, received, &buf[..expect])
                                    .or((expect < n).then_some(expect));
                            if let Some(i) = bad {
                                let at = received + i as u64;
                                mismatch_at = Some(at);
                                st.record(ErrInfo::protocol(
                                    "check",
                                    "MISMATCH",
                                    format!("echoed byte {at} differs (or is beyond {bytes})"),
                                    at,
                                ));
                            }
                        }
                        received += n as u64;
                    }
                    Err(e) => {
                        st.record(e);
                        // Unblock the writer, which may be stuck on a full buffer.
                        let _ = r.shutdown(Shutdown::Both);
                        break;
                    }
                }
            }
            match writer.join() {
                Ok((wst, off)) => {
                    st.merge(wst);
                    sent = off;
                }
                Err(_) => st.record(ErrInfo::protocol(
                    "write",
                    "PANIC",
                    "writer panicked".into(),
                    0,
                )),
            }
            if received < bytes && st.clean() {
                st.record(ErrInfo::protocol(
                    "read",
                    "EOF",
                    format!("EOF after {received} of {bytes} bytes"),
                    received,
                ));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let good = st.clean() && received == bytes && sent == bytes;
    let report = json!({
        "mode": "stream",
        "ok": good,
        "bytes": bytes,
        "sent": sent,
        "received": received,
        "mismatch_at": mismatch_at,
        "eagain": st.eagain,
        "errors": st.failures,
        "first_error": st.first_error,
        "secs": secs,
        "mbit_per_s": (received as f64 * 8.0 / 1e6) / secs.max(1e-9),
    });
    (report.to_string(), good)
}

fn half_close(addr: SocketAddr, size: usize) -> (String, bool) {
    let mut st = Stats::default();
    let mut received = Vec::new();
    let mut eof = false;
    match connect(addr) {
        Err(e) => st.record(e),
        Ok(mut s) => {
            let msg = pattern::vec(HALF_CLOSE_SEED, size);
            let result = write_all(&mut s, &msg, &mut st, 0)
                .and_then(|()| {
                    s.shutdown(Shutdown::Write)
                        .map_err(|e| ErrInfo::io("shutdown", &e, 0))
                })
                .and_then(|()| {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match read_some(&mut s, &mut buf, &mut st, received.len() as u64)? {
                            0 => return Ok(()),
                            n => received.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            match result {
                Err(e) => st.record(e),
                Ok(()) => {
                    eof = true;
                    if received != msg {
                        let at = received
                            .iter()
                            .zip(&msg)
                            .position(|(a, b)| a != b)
                            .unwrap_or(received.len().min(msg.len()));
                        st.record(ErrInfo::protocol(
                            "check",
                            "MISMATCH",
                            format!(
                                "got {} of {size} bytes, first difference at {at}",
                                received.len()
                            ),
                            at as u64,
                        ));
                    }
                }
            }
        }
    }
    let good = st.clean() && eof;
    let report = json!({
        "mode": "half-close",
        "ok": good,
        "sent": size,
        "received": received.len(),
        "eof": eof,
        "eagain": st.eagain,
        "first_error": st.first_error,
    });
    (report.to_string(), good)
}

fn connect_many(addr: SocketAddr, conns: usize, exchanges: u64, size: usize) -> (String, bool) {
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(conns.max(1)));
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut st = Stats::default();
                barrier.wait();
                let ok = match connect(addr) {
                    Err(e) => {
                        st.record(e);
                        false
                    }
                    Ok(mut s) => {
                        let n = run_exchanges(&mut s, i as u64 * 1000, exchanges, size, &mut st);
                        n == exchanges
                    }
                };
                (ok && st.clean(), st)
            })
        })
        .collect();
    let mut st = Stats::default();
    let mut ok = 0u64;
    for h in handles {
        match h.join() {
            Ok((good, s)) => {
                ok += u64::from(good);
                st.merge(s);
            }
            Err(_) => st.record(ErrInfo::protocol(
                "thread",
                "PANIC",
                "client panicked".into(),
                0,
            )),
        }
    }
    let good = ok == conns as u64;
    let report = json!({
        "mode": "connect-many",
        "conns": conns,
        "ok": ok,
        "errors": conns as u64 - ok,
        "eagain": st.eagain,
        "first_error": st.first_error,
        "secs": start.elapsed().as_secs_f64(),
    });
    (report.to_string(), good)
}

/// One response of `http-get`.
#[derive(Debug, Clone, Serialize)]
struct HttpResult {
    /// When the request started, in milliseconds since the client started.
    at_ms: u64,
    status: u16,
    server: Option<String>,
    key_count: Option<u64>,
    ms: u64,
}

/// One GET on a new connection, read to EOF.
fn http_get_one(
    addr: SocketAddr,
    path: &str,
    since: Instant,
    st: &mut Stats,
) -> Result<HttpResult, ErrInfo> {
    let start = Instant::now();
    let mut s = connect(addr)?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    write_all(&mut s, req.as_bytes(), st, 0)?;
    let mut resp = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match read_some(&mut s, &mut buf, st, resp.len() as u64)? {
            0 => break,
            n => resp.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let bad = |what: &str| {
        ErrInfo::protocol(
            "check",
            "MALFORMED",
            format!(
                "{what} in response {:?}",
                text.chars().take(200).collect::<String>()
            ),
            0,
        )
    };
    let head = text
        .split_once("\r\n\r\n")
        .map(|(h, _)| h)
        .ok_or_else(|| bad("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut result = HttpResult {
        at_ms: start.duration_since(since).as_millis() as u64,
        status,
        server: None,
        key_count: None,
        ms: start.elapsed().as_millis() as u64,
    };
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "x-server-name" => result.server = Some(v.trim().to_owned()),
            "x-key-count" => result.key_count = v.trim().parse().ok(),
            _ => {}
        }
    }
    Ok(result)
}

fn http_get(addr: SocketAddr, path: &str, count: usize, parallel: usize) -> (String, bool) {
    let start = Instant::now();
    let parallel = parallel.clamp(1, count.max(1));
    let barrier = Arc::new(Barrier::new(parallel));
    let handles: Vec<_> = (0..parallel)
        .map(|t| {
            let (barrier, path) = (barrier.clone(), path.to_owned());
            thread::spawn(move || {
                let mut st = Stats::default();
                let mut done = Vec::new();
                barrier.wait();
                for i in (t..count).step_by(parallel) {
                    match http_get_one(addr, &path, start, &mut st) {
                        Ok(r) => done.push((i, r)),
                        Err(e) => st.record(e),
                    }
                }
                (done, st)
            })
        })
        .collect();
    let mut st = Stats::default();
    let mut results = Vec::new();
    for h in handles {
        match h.join() {
            Ok((done, s)) => {
                results.extend(done);
                st.merge(s);
            }
            Err(_) => st.record(ErrInfo::protocol(
                "thread",
                "PANIC",
                "client panicked".into(),
                0,
            )),
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<HttpResult> = results.into_iter().map(|(_, r)| r).collect();
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut servers = std::collections::BTreeMap::<String, u64>::new();
    for r in &results {
        *statuses.entry(r.status.to_string()).or_default() += 1;
        *servers
            .entry(r.server.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    let good = results.len() == count && st.failures == 0;
    let report = json!({
        "mode": "http-get",
        "count": count,
        "ok": results.len(),
        "errors": count - results.len(),
        "eagain": st.eagain,
        "first_error": st.first_error,
        "statuses": statuses,
        "servers": servers,
        "results": results,
        "secs": start.elapsed().as_secs_f64(),
    });
    (report.to_string(), good)
}

// ---------------------------------------------------------------------------
// Servers

#[derive(Debug, Clone)]
enum Handler {
    /// Echo, optionally writing a banner first.
    Echo(Option<String>),
    /// HTTP/1.1 with its name and counters.
    Http(Arc<HttpState>),
}

/// Binds, prints the listening line, serves until killed. Returns only on failure.
fn serve(bind: IpAddr, port: u16, mode: &str, handler: Handler) -> (String, bool) {
    let listener = match TcpListener::bind((bind, port)) {
        Ok(l) => l,
        Err(e) => {
            let report = json!({"mode": mode, "first_error": ErrInfo::io("bind", &e, 0)});
            return (report.to_string(), false);
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!(
        "{}",
        json!({"mode": mode, "listening": local, "port": port})
    );
    let _ = io::stdout().flush();
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                let handler = handler.clone();
                thread::spawn(move || {
                    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    let r = match handler {
                        Handler::Echo(banner) => echo_conn(s, banner.as_deref()),
                        Handler::Http(state) => http_conn(s, &state),
                    };
                    if let Err(e) = r {
                        eprintln!(
                            "{}",
                            json!({"event": "conn_error", "peer": peer, "error": ErrInfo::io("serve", &e, 0)})
                        );
                    }
                });
            }
            Err(e) => eprintln!(
                "{}",
                json!({"event": "accept_error", "error": ErrInfo::io("accept", &e, 0)})
            ),
        }
    }
    (
        json!({"mode": mode, "error": "listener closed"}).to_string(),
        false,
    )
}

fn echo_conn(mut s: TcpStream, banner: Option<&str>) -> io::Result<()> {
    if let Some(b) = banner {
        s.write_all(b.as_bytes())?;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        s.write_all(&buf[..n])?;
    }
    s.shutdown(Shutdown::Write)
}

fn bad_request(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn http_conn(s: TcpStream, state: &HttpState) -> io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(()); // Client closed between requests.
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue; // Tolerate a stray CRLF between requests (RFC 9112 2.2).
        }
        let mut parts = line.split(' ');
        let (method, path, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(p), Some(v)) => (m.to_string(), p.to_string(), v.to_string()),
            _ => {
                w.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )?;
                return Err(bad_request("bad request line"));
            }
        };
        let mut content_length = 0u64;
        let mut chunked = false;
        let mut connection = String::new();
        for _ in 0..200 {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Err(bad_request("EOF in headers"));
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                return Err(bad_request("bad header"));
            };
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length = v.parse().map_err(|_| bad_request("bad content-length"))?
                }
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => connection = v.to_ascii_lowercase(),
                _ => {}
            }
        }
        if chunked {
            read_chunked_body(&mut r)?;
        } else {
            io::copy(&mut (&mut r).take(content_length), &mut io::sink())?;
        }
        let keep_alive = if version == "HTTP/1.0" {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let answer = state.answer(&path);
        if !answer.delay.is_zero() {
            thread::sleep(answer.delay);
        }
        let name = &state.name;
        let status = answer.status;
        let body = answer.body.unwrap_or_else(|| name.clone());
        let key_count = answer
            .key_count
            .map(|c| format!("x-key-count: {c}\r\n"))
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-server-name: {name}\r\nx-request-count: {n}\r\n{key_count}{}\r\n{}",
            reason_phrase(status),
            body.len(),
            if keep_alive { "" } else { "connection: close\r\n" },
            if method == "HEAD" { "" } else { body.as_str() },
        );
        w.write_all(resp.as_bytes())?;
        if !keep_alive {
            return w.shutdown(Shutdown::Write);
        }
    }
}

/// The state of `http-server`: its name, the request counter and the per-key counters.
#[derive(Debug)]
struct HttpState {
    name: String,
    requests: AtomicU64,
    keys: Mutex<HashMap<String, u64>>,
}

/// How `http-server` answers one request.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// Wait this long before answering.
    delay: Duration,
    /// The body, if not the server's name.
    body: Option<String>,
    /// The request's number among those with its key.
    key_count: Option<u64>,
}

impl HttpState {
    fn new(name: String) -> Self {
        HttpState {
            name,
            requests: AtomicU64::new(0),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Counts the request under its key (if any) and decides the answer (see `HttpServer`).
    fn answer(&self, target: &str) -> Answer {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let key = param("key");
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if path == "/count" {
            let seen = key.and_then(|k| keys.get(k)).copied().unwrap_or(0);
            return Answer {
                status: 200,
                delay: Duration::ZERO,
                body: Some(seen.to_string()),
                key_count: None,
            };
        }
        let key_count = key.map(|k| {
            let c = keys.entry(k.to_owned()).or_insert(0);
            *c += 1;
            *c
        });
        drop(keys);
        let mut answer = Answer {
            status: 200,
            delay: Duration::ZERO,
            body: None,
            key_count,
        };
        if param("only").is_some_and(|only| only != self.name) {
            return answer;
        }
        let nth = key_count.unwrap_or(1);
        let num = |s: &str| s.parse::<u64>().ok();
        if let Some(ms) = param("delay").and_then(num) {
            answer.delay = Duration::from_millis(ms);
        }
        let status = |s: &str| num(s).filter(|c| (200..600).contains(c)).map(|c| c as u16);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["status", code] => answer.status = status(code).unwrap_or(200),
            ["fail", n, code] if num(n).is_some_and(|n| nth <= n) => {
                answer.status = status(code).unwrap_or(200);
            }
            ["delay", ms] => answer.delay = Duration::from_millis(num(ms).unwrap_or(0)),
            ["delay-first", n, ms] if num(n).is_some_and(|n| nth <= n) => {
                answer.delay = Duration::from_millis(num(ms).unwrap_or(0));
            }
            _ => {}
        }
        answer
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn read_chunked_body(r: &mut BufReader<TcpStream>) -> io::Result<()> {
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size =
            u64::from_str_radix(size.trim(), 16).map_err(|_| bad_request("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        io::copy(&mut r.by_ref().take(size), &mut io::sink())?;
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(state: &HttpState, target: &str) -> (u16, u64, Option<u64>) {
        let a = state.answer(target);
        (a.status, a.delay.as_millis() as u64, a.key_count)
    }

    #[test]
    fn http_server_failure_modes() {
        let s = HttpState::new("a".into());
        assert_eq!(answer(&s, "/"), (200, 0, None));
        assert_eq!(answer(&s, "/status/503"), (503, 0, None));
        assert_eq!(answer(&s, "/status/999"), (200, 0, None));
        // The first 2 with key k fail; other keys count on their own.
        assert_eq!(answer(&s, "/fail/2/503?key=k"), (503, 0, Some(1)));
        assert_eq!(answer(&s, "/fail/2/503?key=other"), (503, 0, Some(1)));
        assert_eq!(answer(&s, "/fail/2/503?key=k"), (503, 0, Some(2)));
        assert_eq!(answer(&s, "/fail/2/503?key=k"), (200, 0, Some(3)));
        assert_eq!(s.answer("/count?key=k").body.as_deref(), Some("3"));
        assert_eq!(s.answer("/count?key=none").body.as_deref(), Some("0"));
        assert_eq!(answer(&s, "/delay/150"), (200, 150, None));
        assert_eq!(answer(&s, "/delay-first/1/300?key=d"), (200, 300, Some(1)));
        assert_eq!(answer(&s, "/delay-first/1/300?key=d"), (200, 0, Some(2)));
        // `only` names the server that misbehaves; the others answer at once (and count).
        assert_eq!(answer(&s, "/status/503?only=a"), (503, 0, None));
        assert_eq!(answer(&s, "/status/503?only=b&key=o"), (200, 0, Some(1)));
        assert_eq!(answer(&s, "/delay/100?key=o&only=b"), (200, 0, Some(2)));
        assert_eq!(answer(&s, "/status/502?delay=40"), (502, 40, None));
    }
}
