//! The L7 benchmark's results: medians over rounds per target and load, the markdown table,
//! and the verdict against the targets.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Load, Measurement, Target};

/// The median of every number of one target and load over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub target: Target,
    pub load: Load,
    pub rounds: usize,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_request: Option<f64>,
    pub kernel_us_per_request: Option<f64>,
    pub rss_mb: Option<f64>,
    pub threads: Option<u32>,
    pub send_lag_p99_us: Option<f64>,
    pub proxy_core_other_pct: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One row per (load, target) that ran, loads first, in the order given.
pub fn aggregate(loads: &[Load], targets: &[Target], runs: &[Measurement]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &load in loads {
        for &target in targets {
            let rs: Vec<&Measurement> = runs
                .iter()
                .filter(|m| m.load == load && m.target == target)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Measurement) -> Option<f64>| {
                median(rs.iter().filter_map(|m| f(m)).collect())
            };
            rows.push(Row {
                target,
                load,
                rounds: rs.len(),
                requests_per_sec: med(&|m| Some(m.requests_per_sec)).unwrap_or_default(),
                p50_us: med(&|m| Some(m.p50_us)).unwrap_or_default(),
                p99_us: med(&|m| Some(m.p99_us)).unwrap_or_default(),
                cpu_us_per_request: med(&|m| m.proxy.as_ref().map(|p| p.cpu_us_per_request)),
                kernel_us_per_request: med(&|m| m.proxy.as_ref().map(|p| p.kernel_us_per_request)),
                rss_mb: med(&|m| m.proxy.as_ref().map(|p| p.rss_bytes as f64 / 1e6)),
                threads: rs
                    .iter()
                    .filter_map(|m| m.proxy.as_ref().map(|p| p.threads))
                    .max(),
                send_lag_p99_us: med(&|m| m.send_lag_p99_us),
                proxy_core_other_pct: med(&|m| Some(m.proxy_core_other_pct)).unwrap_or_default(),
            });
        }
    }
    rows
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// The table: one row per load and target.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| load | target | req/s | p50 (us) | p99 (us) | proxy CPU (us/request) | of it in the kernel | proxy RSS (MB) | proxy threads | other load on proxy CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {:.1}% |",
            r.load.name(),
            r.target.name(),
            r.requests_per_sec,
            r.p50_us,
            r.p99_us,
            opt(r.cpu_us_per_request, 2),
            opt(r.kernel_us_per_request, 2),
            opt(r.rss_mb, 1),
            r.threads.map_or_else(|| "-".to_owned(), |t| t.to_string()),
            r.proxy_core_other_pct,
        );
    }
    s
}

/// One target of the issue, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub what: String,
    pub myelin: f64,
    /// The limit Myelin had to meet.
    pub limit: f64,
    pub pass: bool,
}

fn row(rows: &[Row], load: Load, target: Target) -> Option<&Row> {
    rows.iter().find(|r| r.load == load && r.target == target)
}

/// The targets, for every load where a Myelin target and both reference proxies ran
/// (`myelin` and `myelin-mesh` each): CPU per request at most 0.75x the better of nginx and
/// haproxy, p99 no worse than the better of the two, and (HTTP/2) requests/s at least
/// haproxy's.
pub fn verdicts(rows: &[Row]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for target in [Target::Myelin, Target::MyelinMesh] {
        let t = target.name();
        for load in Load::ALL {
            let (Some(m), Some(n), Some(h)) = (
                row(rows, load, target),
                row(rows, load, Target::Nginx),
                row(rows, load, Target::Haproxy),
            ) else {
                continue;
            };
            let l = load.name();
            if let (Some(mc), Some(limit)) = (m.cpu_us_per_request, cpu_limit(rows, load)) {
                out.push(Verdict {
                    what: format!("{t} {l}: CPU/request <= 0.75 x min(nginx, haproxy)"),
                    myelin: mc,
                    limit,
                    pass: mc <= limit,
                });
            }
            let limit = n.p99_us.min(h.p99_us);
            out.push(Verdict {
                what: format!("{t} {l}: p99 <= min(nginx, haproxy)"),
                myelin: m.p99_us,
                limit,
                pass: m.p99_us <= limit,
            });
            if load == Load::Http2 {
                out.push(Verdict {
                    what: format!("{t} http2: req/s >= haproxy"),
                    myelin: m.requests_per_sec,
                    limit: h.requests_per_sec,
                    pass: m.requests_per_sec >= h.requests_per_sec,
                });
            }
        }
    }
    out
}

pub fn verdict_markdown(verdicts: &[Verdict]) -> String {
    let mut s =
        String::from("| target | myelin | limit | ratio | verdict |\n|---|---:|---:|---:|---|\n");
    for v in verdicts {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.2}x | {} |",
            v.what,
            v.myelin,
            v.limit,
            v.myelin / v.limit,
            if v.pass { "met" } else { "**missed**" }
        );
    }
    s
}

/// The CPU limit of the issue for `load`: 0.75x the better of nginx and haproxy, when both
/// ran.
fn cpu_limit(rows: &[Row], load: Load) -> Option<f64> {
    let n = row(rows, load, Target::Nginx)?.cpu_us_per_request?;
    let h = row(rows, load, Target::Haproxy)?.cpu_us_per_request?;
    Some(0.75 * n.min(h))
}

/// The floors (`hyper-floor`, a bare hyper proxy, and `codec-floor`, the same hop without
/// hyper's connections) and Myelin against them and against the CPU limit, for every
/// load where a floor ran: CPU per request, total and in user space (total minus kernel).
/// Not one of the targets: what the stack costs, what an own codec would, and what
/// Myelin's own work costs on top.
pub fn floor_markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| load | target | CPU/request (us) | vs the CPU limit | vs hyper-floor | user space vs hyper-floor's | vs codec-floor | user space vs codec-floor's |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let cpu = |r: &Row| r.cpu_us_per_request;
    let user = |r: &Row| Some(r.cpu_us_per_request? - r.kernel_us_per_request?);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    };
    let mut any = false;
    for load in Load::ALL {
        let hyper = row(rows, load, Target::HyperFloor);
        let codec = row(rows, load, Target::CodecFloor);
        if hyper.is_none() && codec.is_none() {
            continue;
        }
        let limit = cpu_limit(rows, load);
        for target in [
            Target::HyperFloor,
            Target::CodecFloor,
            Target::Myelin,
            Target::MyelinMesh,
        ] {
            let Some(m) = row(rows, load, target) else {
                continue;
            };
            any = true;
            // A floor against itself says nothing.
            let against = |floor: Option<&Row>, f: &dyn Fn(&Row) -> Option<f64>| match floor
                .filter(|fl| fl.target != target)
            {
                Some(fl) => ratio(f(m), f(fl)),
                None => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                load.name(),
                target.name(),
                opt(m.cpu_us_per_request, 2),
                ratio(m.cpu_us_per_request, limit),
                against(hyper, &cpu),
                against(hyper, &user),
                against(codec, &cpu),
                against(codec, &user),
            );
        }
    }
    if any {
        s
    } else {
        String::new()
    }
}

/// Per round, for the record: every measured run on one line.
pub fn rounds_markdown(runs: &[Measurement]) -> String {
    let mut s = String::new();
    for m in runs {
        let _ = writeln!(s, "- round {}: {}", m.round, m.summary());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::ProxyUsage;
    use super::*;

    fn m(round: u32, target: Target, load: Load, rps: f64, p99: f64, cpu: f64) -> Measurement {
        Measurement {
            round,
            target,
            load,
            requests: (rps * 10.0) as u64,
            requests_per_sec: rps,
            p50_us: p99 / 2.0,
            p99_us: p99,
            tail: None,
            proxy: (target != Target::Direct).then(|| ProxyUsage {
                pid: 1,
                cpu_seconds: 1.0,
                cpu_us_per_request: cpu,
                kernel_us_per_request: cpu * 0.6,
                rss_bytes: 16_000_000,
                peak_rss_bytes: 16_000_000,
                threads: 1,
                thread_names: "x x1".into(),
                cpus_allowed: "0".into(),
            }),
            send_lag_p99_us: None,
            golden_requests: None,
            spliced_messages: None,
            proxy_core_other_pct: 1.0,
            load_core_steal_pct: 0.0,
            load_core_busy_pct: 50.0,
            attempt: 1,
        }
    }

    #[test]
    fn medians_table_and_verdicts() {
        let mut runs = Vec::new();
        for (round, k) in [(1, 1.0), (2, 3.0), (3, 2.0)] {
            runs.push(m(round, Target::Direct, Load::Http1, 90e3 * k, 100.0, 0.0));
            runs.push(m(
                round,
                Target::Nginx,
                Load::Http1,
                50e3 * k,
                900.0,
                19.0 * k,
            ));
            runs.push(m(round, Target::Haproxy, Load::Http1, 51e3, 800.0, 18.0));
            runs.push(m(round, Target::Myelin, Load::Http1, 60e3, 700.0, 14.0));
            runs.push(m(round, Target::Haproxy, Load::Http2, 68e3, 800.0, 18.0));
            runs.push(m(round, Target::Nginx, Load::Http2, 60e3, 800.0, 18.0));
            runs.push(m(round, Target::Myelin, Load::Http2, 60e3, 900.0, 12.0));
            runs.push(m(round, Target::MyelinMesh, Load::Http1, 70e3, 600.0, 9.0));
        }
        let rows = aggregate(&Load::ALL, &Target::ALL, &runs);
        assert_eq!(rows.len(), 8);
        let nginx = row(&rows, Load::Http1, Target::Nginx).unwrap();
        assert_eq!(nginx.requests_per_sec, 100e3);
        assert_eq!(nginx.cpu_us_per_request, Some(38.0));
        let table = markdown(&rows);
        assert!(
            table.contains("| http1 | direct | 180000 | 50.0 | 100.0 | - | - | - | - | 1.0% |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| http1 | myelin | 60000 | 350.0 | 700.0 | 14.00 | 8.40 | 16.0 | 1 | 1.0% |"
            ),
            "{table}"
        );
        let v = verdicts(&rows);
        let passed: Vec<(&str, bool)> = v.iter().map(|v| (v.what.as_str(), v.pass)).collect();
        assert_eq!(
            passed,
            [
                (
                    "myelin http1: CPU/request <= 0.75 x min(nginx, haproxy)",
                    false
                ),
                ("myelin http1: p99 <= min(nginx, haproxy)", true),
                (
                    "myelin http2: CPU/request <= 0.75 x min(nginx, haproxy)",
                    true
                ),
                ("myelin http2: p99 <= min(nginx, haproxy)", false),
                ("myelin http2: req/s >= haproxy", false),
                (
                    "myelin-mesh http1: CPU/request <= 0.75 x min(nginx, haproxy)",
                    true
                ),
                ("myelin-mesh http1: p99 <= min(nginx, haproxy)", true),
            ]
        );
        assert_eq!(v[0].limit, 13.5);
        // No hyper-floor in these runs: no table.
        assert_eq!(floor_markdown(&rows), "");
        let mut with_floor = runs.clone();
        for round in 1..=3 {
            with_floor.push(m(round, Target::HyperFloor, Load::Http1, 60e3, 700.0, 10.0));
        }
        let rows = aggregate(&Load::ALL, &Target::ALL, &with_floor);
        // The limit: 0.75 x min(nginx 38, haproxy 18) = 13.5. myelin: 14 us (8.4 in the
        // kernel, 5.6 user) against 10 (6 + 4); the mesh: 9 against 10 (3.6 user against 4).
        // No codec-floor: its columns are empty.
        let floor = floor_markdown(&rows);
        assert!(
            floor.contains("| http1 | hyper-floor | 10.00 | 0.74x | - | - | - | - |"),
            "{floor}"
        );
        assert!(
            floor.contains("| http1 | myelin | 14.00 | 1.04x | 1.40x | 1.40x | - | - |"),
            "{floor}"
        );
        assert!(
            floor.contains("| http1 | myelin-mesh | 9.00 | 0.67x | 0.90x | 0.90x | - | - |"),
            "{floor}"
        );
        assert!(!floor.contains("http2"), "{floor}");
        // With the codec floor (5 us: 3 in the kernel, 2 user) as well.
        for round in 1..=3 {
            with_floor.push(m(round, Target::CodecFloor, Load::Http1, 80e3, 600.0, 5.0));
        }
        let rows = aggregate(&Load::ALL, &Target::ALL, &with_floor);
        let floor = floor_markdown(&rows);
        assert!(
            floor.contains("| http1 | codec-floor | 5.00 | 0.37x | 0.50x | 0.50x | - | - |"),
            "{floor}"
        );
        assert!(
            floor.contains("| http1 | myelin | 14.00 | 1.04x | 1.40x | 1.40x | 2.80x | 2.80x |"),
            "{floor}"
        );
        assert_eq!(floor.lines().count(), 2 + 4, "{floor}");
        assert!(verdict_markdown(&v).contains(
            "| myelin http2: req/s >= haproxy | 60000.00 | 68000.00 | 0.88x | **missed** |"
        ));
    }
}
