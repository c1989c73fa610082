//! `myelin-podtool`: servers and clients that run inside test-bed pods.
//!
//! They imitate ordinary applications: std::net, blocking sockets, no socket
//! timeouts. A transparent dataplane must be invisible to them, so anything odd
//! (EAGAIN from a blocking socket, a short read, a wrong byte) is reported, with the
//! raw errno, on the single JSON line each client prints. Servers print one JSON
//! "listening" line once bound, then run until killed. Clients exit non-zero on any
//! error.

#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
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
    /// Minimal HTTP/1.1 keep-alive server: 200 with body NAME to every request, except
    /// `/status/CODE`, answered with that status (and the same body).
    /// Responses carry `x-server-name` and `x-request-count` (requests served so far).
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
            Handler::Http(name, Arc::new(AtomicU64::new(0))),
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

// ---------------------------------------------------------------------------
// Servers

#[derive(Debug, Clone)]
enum Handler {
    /// Echo, optionally writing a banner first.
    Echo(Option<String>),
    /// HTTP/1.1 with this name and a shared request counter.
    Http(String, Arc<AtomicU64>),
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
                        Handler::Http(name, count) => http_conn(s, &name, &count),
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

fn http_conn(s: TcpStream, name: &str, count: &AtomicU64) -> io::Result<()> {
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
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        let body = if method == "HEAD" { "" } else { name };
        let status = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .unwrap_or(200);
        let resp = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-server-name: {name}\r\nx-request-count: {n}\r\n{}\r\n{body}",
            reason_phrase(status),
            name.len(),
            if keep_alive { "" } else { "connection: close\r\n" },
        );
        w.write_all(resp.as_bytes())?;
        if !keep_alive {
            return w.shutdown(Shutdown::Write);
        }
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
