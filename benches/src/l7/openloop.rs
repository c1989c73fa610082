//! A fixed-rate (open loop) HTTP/1.1 load generator, wrk2-style.
//!
//! Why our own and not `oha` or `h2load --rps`: at 1,000 req/s through a proxy that answers in
//! tens of microseconds, the generator's own timing decides what p99 means. Both of those
//! schedule sends with millisecond timers (tokio's timer wheel, libev over `epoll_wait`'s
//! millisecond timeout), so a send can be up to a millisecond late, and h2load measures from
//! the actual send (coordinated omission: a stalled proxy delays the next sends and hides its
//! own stall). Here every connection is a thread with its own fixed schedule
//! (`rate / connections` each, phases staggered), sleeping with `nanosleep` (high-resolution
//! timers, timer slack set to 1 ns), and each latency is taken from the request's *intended*
//! send time: a late response delays the next sends on its connection, and that delay is
//! counted in their latencies, as in wrk2. How late the sends themselves were (the timer's
//! wake-up, visible even with no proxy) is reported separately as `send_lag`.
//!
//! Requests are `GET` with keep-alive; a response must be `200` with a `Content-Length` (the
//! benchmark's backend sends one, and every proxy passes it on).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

/// What to send.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub path: String,
    /// Requests per second, over all connections.
    pub rate: f64,
    pub connections: u32,
    pub duration: Duration,
    /// The network namespace to connect from (the benchmark's node).
    pub netns: Option<std::path::PathBuf>,
    /// The CPU the sending threads run on.
    pub cpu: Option<usize>,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenLoopResult {
    pub requests: u64,
    pub seconds: f64,
    /// Latency from the intended send time to the end of the response, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// How late the sends were against their schedule (p99), microseconds.
    pub send_lag_p99_us: f64,
}

/// The value at quantile `q` (nearest rank) of sorted, non-empty `v`.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// Runs the plan: every connection is opened first, then the schedule starts.
pub fn run(plan: &Plan) -> Result<OpenLoopResult> {
    ensure!(
        plan.rate > 0.0 && plan.connections > 0,
        "rate and connections must be positive"
    );
    let conns = plan.connections as usize;
    let interval = Duration::from_secs_f64(f64::from(plan.connections) / plan.rate);
    let stagger = Duration::from_secs_f64(1.0 / plan.rate);
    // Far enough ahead for every thread to have connected.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + plan.duration;
    let results: Vec<Result<Samples>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|i| {
                let first = start + stagger * i as u32;
                s.spawn(move || connection(plan, first, interval, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("sender panicked")))
            })
            .collect()
    });
    let mut latency = Vec::new();
    let mut lag = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r.with_context(|| format!("open loop, connection {i}"))?;
        latency.extend(r.latency_ns);
        lag.extend(r.lag_ns);
    }
    ensure!(!latency.is_empty(), "the open loop sent no request");
    latency.sort_unstable();
    lag.sort_unstable();
    let us = |ns: u64| ns as f64 / 1e3;
    Ok(OpenLoopResult {
        requests: latency.len() as u64,
        seconds: plan.duration.as_secs_f64(),
        p50_us: us(quantile(&latency, 0.50)),
        p99_us: us(quantile(&latency, 0.99)),
        max_us: us(*latency.last().expect("not empty")),
        send_lag_p99_us: us(quantile(&lag, 0.99)),
    })
}

struct Samples {
    latency_ns: Vec<u64>,
    lag_ns: Vec<u64>,
}

fn enter(plan: &Plan) -> Result<()> {
    if let Some(netns) = &plan.netns {
        let f = std::fs::File::open(netns)
            .with_context(|| format!("opening netns {}", netns.display()))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the benchmark's netns")?;
    }
    if let Some(cpu) = plan.cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).context("cpu set")?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pinning a sender to CPU {cpu}"))?;
    }
    // nanosleep may be late by the thread's timer slack (50 us by default).
    nix::sys::prctl::set_timerslack(1).context("PR_SET_TIMERSLACK")?;
    Ok(())
}

/// One connection's schedule: `first`, `first + interval`, ... before `end`.
fn connection(plan: &Plan, first: Instant, interval: Duration, end: Instant) -> Result<Samples> {
    enter(plan)?;
    let mut stream =
        TcpStream::connect(plan.addr).with_context(|| format!("connecting to {}", plan.addr))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: myelin-l7-bench\r\n\r\n",
        plan.path, plan.addr
    );
    let expected =
        (end.saturating_duration_since(first).as_secs_f64() / interval.as_secs_f64()) as usize + 1;
    let mut samples = Samples {
        latency_ns: Vec::with_capacity(expected),
        lag_ns: Vec::with_capacity(expected),
    };
    let mut buf = Vec::with_capacity(4096);
    let mut intended = first;
    while intended < end {
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let sent = Instant::now();
        stream
            .write_all(request.as_bytes())
            .context("sending a request")?;
        let status = read_response(&mut stream, &mut buf)?;
        let done = Instant::now();
        ensure!(status == 200, "response status {status}");
        samples
            .latency_ns
            .push(done.duration_since(intended).as_nanos() as u64);
        samples
            .lag_ns
            .push(sent.duration_since(intended).as_nanos() as u64);
        intended += interval;
    }
    Ok(samples)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Status and body length of a response head (`None` while it is incomplete).
pub fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse().context("Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!(
                "response with Transfer-Encoding {value:?}: the backend must send a Content-Length"
            );
        }
    }
    let length = length.with_context(|| format!("no Content-Length in {head:?}"))?;
    Ok(Some((status, end + 4, length)))
}

/// Reads one response (head and `Content-Length` body) and returns its status.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, head_len, body_len)) = parse_head(buf)? {
            while buf.len() < head_len + body_len {
                let n = stream.read(&mut chunk).context("reading a response body")?;
                ensure!(n > 0, "connection closed in a response body");
                buf.extend_from_slice(&chunk[..n]);
            }
            ensure!(
                buf.len() == head_len + body_len,
                "bytes after the response (none were asked for)"
            );
            buf.clear();
            return Ok(status);
        }
        let n = stream.read(&mut chunk).context("reading a response")?;
        ensure!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[7], 0.99), 7);
    }

    #[test]
    fn heads() {
        let r = b"HTTP/1.1 200 OK\r\nServer: x\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_head(r).unwrap(), Some((200, r.len() - 5, 5)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nServer").unwrap(), None);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    /// Against a tiny in-process server: the schedule is kept and every request counted.
    #[test]
    fn keeps_the_rate() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    let mut got = Vec::new();
                    loop {
                        let n = s.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        while let Some(i) = find(&got, b"\r\n\r\n") {
                            got.drain(..i + 4);
                            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .unwrap();
                        }
                    }
                });
            }
        });
        let r = run(&Plan {
            addr,
            path: "/".into(),
            rate: 400.0,
            connections: 4,
            duration: Duration::from_millis(500),
            netns: None,
            cpu: None,
        })
        .unwrap();
        assert_eq!(r.requests, 200, "{r:?}");
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
    }
}
