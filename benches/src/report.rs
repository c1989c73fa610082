//! Results: per-mode numbers, ratios against the mode's baseline (`direct`, or
//! `cross-direct` for the two-node modes), the markdown table and the JSON.

use std::{ffi::OsStr, fmt, time::SystemTime};

use serde_json::{json, Value};

use crate::{wrk::WrkResult, Args, Mode};

/// The streamed downloads of one mode.
#[derive(Debug, Clone)]
pub struct StreamResult {
    /// curl's `speed_download` of each run, bytes/s.
    pub speeds: Vec<f64>,
    /// curl's `time_total` of each run, seconds.
    pub times: Vec<f64>,
    /// The median of `speeds`.
    pub median_bytes_per_sec: f64,
}

impl StreamResult {
    pub fn from_runs(runs: &[(f64, f64)]) -> StreamResult {
        let speeds: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut sorted = speeds.clone();
        sorted.sort_by(f64::total_cmp);
        StreamResult {
            median_bytes_per_sec: median(&sorted),
            times: runs.iter().map(|r| r.1).collect(),
            speeds,
        }
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.median_bytes_per_sec / 1e6
    }
}

/// Median of sorted, non-empty values.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// One mode's results.
#[derive(Debug, Clone)]
pub struct ModeResult {
    pub mode: Mode,
    pub wrk: WrkResult,
    pub stream: StreamResult,
    /// From the agent's metrics, during the measured wrk run and during the downloads.
    pub spliced_bytes_requests: f64,
    pub spliced_bytes_stream: f64,
    /// Requests the proxy counted during the measured wrk run.
    pub proxy_requests: f64,
    /// Connections captured during the measured wrk run and the downloads.
    pub captured_connections: f64,
}

impl ModeResult {
    pub fn summary(&self) -> String {
        format!(
            "{}: {:.0} req/s, p50 {:.1} us, p99 {:.1} us, stream {:.0} MB/s (runs: {}); captured {}, spliced {:.0} + {:.0} bytes",
            self.mode.name(),
            self.wrk.requests_per_sec,
            self.wrk.p50_us,
            self.wrk.p99_us,
            self.stream.mb_per_sec(),
            self.stream
                .speeds
                .iter()
                .map(|s| format!("{:.0}", s / 1e6))
                .collect::<Vec<_>>()
                .join(", "),
            self.captured_connections,
            self.spliced_bytes_requests,
            self.spliced_bytes_stream,
        )
    }
}

/// Median of unsorted, non-empty values.
fn median_of(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    median(&v)
}

/// One result per mode (in `modes` order) from the runs of every round: the median of each
/// wrk number over the rounds, the median over all downloads, and the counters summed.
pub fn aggregate(modes: &[Mode], runs: &[ModeResult]) -> Vec<ModeResult> {
    modes
        .iter()
        .filter_map(|&mode| {
            let rs: Vec<&ModeResult> = runs.iter().filter(|r| r.mode == mode).collect();
            let first = rs.first()?;
            let med = |f: fn(&WrkResult) -> f64| median_of(rs.iter().map(|r| f(&r.wrk)));
            let sum = |f: fn(&ModeResult) -> f64| rs.iter().map(|r| f(r)).sum::<f64>();
            let downloads: Vec<(f64, f64)> = rs
                .iter()
                .flat_map(|r| r.stream.speeds.iter().copied().zip(r.stream.times.clone()))
                .collect();
            Some(ModeResult {
                mode,
                wrk: WrkResult {
                    tail: None,
                    requests: rs.iter().map(|r| r.wrk.requests).sum(),
                    requests_per_sec: med(|w| w.requests_per_sec),
                    p50_us: med(|w| w.p50_us),
                    p75_us: med(|w| w.p75_us),
                    p90_us: med(|w| w.p90_us),
                    p99_us: med(|w| w.p99_us),
                    ..first.wrk.clone()
                },
                stream: StreamResult::from_runs(&downloads),
                spliced_bytes_requests: sum(|r| r.spliced_bytes_requests),
                spliced_bytes_stream: sum(|r| r.spliced_bytes_stream),
                proxy_requests: sum(|r| r.proxy_requests),
                captured_connections: sum(|r| r.captured_connections),
            })
        })
        .collect()
}

/// Ratios of a mode against the direct baseline (`None` without a direct run).
#[derive(Debug, Clone, Copy)]
pub struct Ratios {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub stream: f64,
}

pub fn ratios(r: &ModeResult, base: Option<&ModeResult>) -> Option<Ratios> {
    let b = base?;
    Some(Ratios {
        rps: r.wrk.requests_per_sec / b.wrk.requests_per_sec,
        p50: r.wrk.p50_us / b.wrk.p50_us,
        p99: r.wrk.p99_us / b.wrk.p99_us,
        stream: r.stream.median_bytes_per_sec / b.stream.median_bytes_per_sec,
    })
}

/// The baseline of `mode`: `direct` for one node, `cross-direct` for two.
fn baseline(results: &[ModeResult], mode: Mode) -> Option<&ModeResult> {
    results.iter().find(|r| r.mode == mode.baseline())
}

/// The markdown table: absolute values, then ratios against `direct`.
pub fn markdown(results: &[ModeResult]) -> String {
    let mut s = String::from(
        "| mode | req/s | p50 (us) | p99 (us) | stream (MB/s) | req/s vs direct | p50 vs direct | p99 vs direct | stream vs direct |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let base = baseline(results, r.mode);
        let ratio = |f: fn(&Ratios) -> f64| {
            ratios(r, base).map_or_else(|| "n/a".to_owned(), |x| format!("{:.2}x", f(&x)))
        };
        s += &format!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {} |\n",
            r.mode.name(),
            r.wrk.requests_per_sec,
            r.wrk.p50_us,
            r.wrk.p99_us,
            r.stream.mb_per_sec(),
            ratio(|x| x.rps),
            ratio(|x| x.p50),
            ratio(|x| x.p99),
            ratio(|x| x.stream),
        );
    }
    s
}

/// Where the benchmark ran.
#[derive(Debug, Clone)]
pub struct Environment {
    pub kernel: String,
    pub cpus: usize,
    pub loadavg: String,
    pub agent: String,
    pub unix_time: u64,
}

impl Environment {
    pub fn probe(agent: &OsStr) -> Environment {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".into())
        };
        Environment {
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg: read("/proc/loadavg"),
            agent: agent.to_string_lossy().into_owned(),
            unix_time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel {}, {} CPUs, loadavg {}, agent {}",
            self.kernel, self.cpus, self.loadavg, self.agent
        )
    }
}

fn round_json(r: &ModeResult) -> Value {
    json!({
        "mode": r.mode.name(),
        "requests_per_sec": r.wrk.requests_per_sec,
        "p50_us": r.wrk.p50_us,
        "p99_us": r.wrk.p99_us,
        "stream_mb_per_sec": r.stream.mb_per_sec(),
    })
}

/// `results`: one per mode (medians); `runs`: every mode of every round, in order.
pub fn json(args: &Args, env: &Environment, results: &[ModeResult], runs: &[ModeResult]) -> Value {
    let modes: Vec<Value> = results
        .iter()
        .map(|r| {
            let ratio = ratios(r, baseline(results, r.mode))
                .map(|x| json!({ "rps": x.rps, "p50": x.p50, "p99": x.p99, "stream": x.stream }));
            json!({
                "mode": r.mode.name(),
                "requests": {
                    "requests": r.wrk.requests,
                    "requests_per_sec": r.wrk.requests_per_sec,
                    "latency_us": {
                        "p50": r.wrk.p50_us, "p75": r.wrk.p75_us,
                        "p90": r.wrk.p90_us, "p99": r.wrk.p99_us,
                    },
                },
                "stream": {
                    "bytes": args.stream_bytes,
                    "median_mb_per_sec": r.stream.mb_per_sec(),
                    "downloads": r.stream.speeds.len(),
                    "speeds_bytes_per_sec": r.stream.speeds,
                    "times_sec": r.stream.times,
                },
                "agent": {
                    "captured_connections": r.captured_connections,
                    "proxy_requests": r.proxy_requests,
                    "spliced_bytes_requests": r.spliced_bytes_requests,
                    "spliced_bytes_stream": r.spliced_bytes_stream,
                },
                "vs_direct": ratio,
            })
        })
        .collect();
    json!({
        "benchmark": "pod-to-pod nginx/wrk/curl",
        "unix_time": env.unix_time,
        "kernel": env.kernel,
        "cpus": env.cpus,
        "loadavg_at_start": env.loadavg,
        "params": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "small_bytes": args.small_bytes,
            "stream_bytes": args.stream_bytes,
            "stream_runs": args.stream_runs,
            "rounds": args.rounds,
        },
        "modes": modes,
        "runs": runs.iter().map(round_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[1.0, 2.0, 10.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), 3.0);
        let s = StreamResult::from_runs(&[(3e9, 1.0), (1e9, 3.0), (2e9, 2.0)]);
        assert_eq!(s.mb_per_sec(), 2000.0);
        assert_eq!(s.speeds, [3e9, 1e9, 2e9]);
    }

    fn run(mode: Mode, rps: f64, p50: f64, speed: f64) -> ModeResult {
        ModeResult {
            mode,
            wrk: WrkResult {
                tail: None,
                requests: 10,
                requests_per_sec: rps,
                p50_us: p50,
                p75_us: p50,
                p90_us: p50,
                p99_us: 2.0 * p50,
                socket_errors: [0; 4],
                non_2xx: 0,
            },
            stream: StreamResult::from_runs(&[(speed, 1.0)]),
            spliced_bytes_requests: 1.0,
            spliced_bytes_stream: 2.0,
            proxy_requests: 0.0,
            captured_connections: 1.0,
        }
    }

    #[test]
    fn rounds_aggregate_to_medians_and_ratios_use_direct() {
        let runs = [
            run(Mode::Direct, 100.0, 10.0, 4e9),
            run(Mode::MeshTcp, 50.0, 20.0, 1e9),
            run(Mode::Direct, 300.0, 30.0, 2e9),
            run(Mode::MeshTcp, 10.0, 40.0, 3e9),
            run(Mode::Direct, 200.0, 20.0, 1e9),
        ];
        let agg = aggregate(&[Mode::Direct, Mode::MeshTcp, Mode::MeshSplice], &runs);
        assert_eq!(agg.len(), 2, "no result for a mode that did not run");
        assert_eq!(agg[0].wrk.requests_per_sec, 200.0);
        assert_eq!(agg[0].wrk.requests, 30);
        assert_eq!(agg[0].stream.mb_per_sec(), 2000.0);
        assert_eq!(agg[1].wrk.p50_us, 30.0);
        assert_eq!(agg[1].captured_connections, 2.0);
        let r = ratios(&agg[1], baseline(&agg, Mode::MeshTcp)).unwrap();
        assert_eq!((r.rps, r.p50, r.p99, r.stream), (0.15, 1.5, 1.5, 1.0));
        let table = markdown(&agg);
        assert!(
            table
                .contains("| mesh-tcp | 30 | 30.0 | 60.0 | 2000 | 0.15x | 1.50x | 1.50x | 1.00x |"),
            "{table}"
        );
        assert!(markdown(&agg[1..]).contains("n/a"));
    }
}
