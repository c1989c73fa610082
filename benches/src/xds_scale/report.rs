//! The report as markdown tables: medians over the rounds, ratios against the decode baseline.

use std::fmt::Write as _;

use super::{Change, PathRun, Report, Round};
use crate::memory::Usage;

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `12.3 ms`, `456 us`.
pub fn time(ms: f64) -> String {
    if ms.is_nan() {
        "-".into()
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} us", ms * 1e3)
    }
}

/// `3.2x`.
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b <= 0.0 {
        "-".into()
    } else if a / b >= 100.0 {
        format!("{:.0}x", a / b)
    } else {
        format!("{:.1}x", a / b)
    }
}

/// `1.5 MiB`, `12.0 KiB`, `300 B`.
pub fn bytes(b: f64) -> String {
    let a = b.abs();
    if a >= f64::from(1u32 << 20) {
        format!("{:.1} MiB", b / f64::from(1u32 << 20))
    } else if a >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

type Pick<'a> = &'a dyn Fn(&Round) -> Option<&PathRun>;

/// The three paths: label and where each round keeps it.
fn paths() -> [(&'static str, Pick<'static>); 3] {
    [
        ("in-process", &|r: &Round| r.in_process.as_ref()),
        ("gRPC SotW", &|r: &Round| r.sotw.as_ref()),
        ("gRPC delta", &|r: &Round| r.delta.as_ref()),
    ]
}

impl Report {
    fn med(&self, f: impl Fn(&Round) -> Option<f64>) -> f64 {
        median(self.rounds.iter().filter_map(f).collect())
    }

    /// The whole report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let sc = &self.scale;
        let w = &self.wire;
        let _ = writeln!(
            s,
            "xDS scale: {} EDS clusters x {} endpoints, {} ClusterLoadAssignments, {} routes \
             (1 RouteConfiguration, one virtual host per route), 1 listener; median of {} \
             round(s).\n",
            sc.clusters,
            sc.endpoints,
            sc.clusters,
            sc.routes,
            self.rounds.len()
        );
        let _ = writeln!(
            s,
            "SotW response sizes: CDS {}, EDS {}, LDS {}, RDS {}.\n",
            bytes(w.sotw_response_bytes.cds as f64),
            bytes(w.sotw_response_bytes.eds as f64),
            bytes(w.sotw_response_bytes.lds as f64),
            bytes(w.sotw_response_bytes.rds as f64)
        );
        self.initial(&mut s);
        self.changes(&mut s);
        self.memory(&mut s);
        s
    }

    fn initial(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "Initial push. `decode`: prost decoding of the same resources (baseline); \
             `apply`: time in ConfigStore::apply (conversion + store); gRPC `wall`: from the \
             end of the previous type's apply (the client's start for CDS) to the end of this \
             one's (transport, control plane, client, store).\n"
        );
        let _ = writeln!(
            s,
            "| type | resources | decode | in-process apply | x decode | SotW wall | SotW apply | \
             x decode | delta wall | delta apply | x decode |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let w = &self.wire;
        type Get = fn(&super::PerType<f64>) -> f64;
        let rows: [(&str, usize, Get); 5] = [
            ("CDS", w.resources.cds, |p| p.cds),
            ("EDS", w.resources.eds, |p| p.eds),
            ("LDS", w.resources.lds, |p| p.lds),
            ("RDS", w.resources.rds, |p| p.rds),
            ("total", 0, |p| p.total()),
        ];
        for (label, count, get) in rows {
            let decode = self.med(|r| Some(get(&r.decode.initial)));
            let inproc = self.med(|r| r.in_process.as_ref().map(|p| get(&p.initial_apply)));
            let mut row = format!(
                "| {label} | {} | {} | {} | {} |",
                if label == "total" {
                    (w.resources.cds + w.resources.eds + w.resources.lds + w.resources.rds)
                        .to_string()
                } else {
                    count.to_string()
                },
                time(decode),
                time(inproc),
                ratio(inproc, decode)
            );
            for (_, pick) in &paths()[1..] {
                let wall = if label == "total" {
                    self.med(|r| pick(r).map(|p| p.initial_total_ms))
                } else {
                    self.med(|r| pick(r).and_then(|p| p.initial_wall.as_ref()).map(get))
                };
                let apply = self.med(|r| pick(r).map(|p| get(&p.initial_apply)));
                let _ = write!(
                    row,
                    " {} | {} | {} |",
                    time(wall),
                    time(apply),
                    ratio(wall, decode)
                );
            }
            let _ = writeln!(s, "{row}");
        }
        let build: Vec<String> = paths()
            .iter()
            .map(|(label, pick)| {
                format!(
                    "{label} {}",
                    time(self.med(|r| pick(r).map(|p| p.traffic_build_ms)))
                )
            })
            .collect();
        let refs = paths()[1..]
            .iter()
            .map(|(label, pick)| {
                let t = self.med(|r| pick(r).and_then(|p| p.references).map(|x| x.0));
                let n = self.med(|r| pick(r).and_then(|p| p.references).map(|x| x.1 as f64));
                format!("{label} {} in {n:.0} calls", time(t))
            })
            .collect::<Vec<_>>();
        let _ = writeln!(
            s,
            "\n`Traffic::build` of the loaded config (no previous Traffic): {}.\n\
             Client time in `ResourceSink::references` during the push: {}.\n",
            build.join(", "),
            refs.join(", ")
        );
    }

    fn changes(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "One change. `decode`: prost decoding of what the update carries; `apply`: \
             ConfigStore::apply; `wall` (gRPC): from the control plane's update to the end of \
             the store's apply; `rebuild`: traffic_input + Traffic::build on the previous \
             Traffic; `reused`: cluster targets kept (`Arc::ptr_eq`).\n"
        );
        let _ = writeln!(
            s,
            "| change | path | resources sent | decode | apply | x decode | wall | rebuild | reused |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        // Every change of every path, matched across rounds by position.
        for (label, pick) in paths() {
            let Some(first) = self.rounds.first().and_then(pick) else {
                continue;
            };
            for (i, c) in first.changes.iter().enumerate() {
                let get = |f: &dyn Fn(&Change) -> Option<f64>| {
                    self.med(|r| pick(r).and_then(|p| p.changes.get(i)).and_then(f))
                };
                let decode = self.med(|r| {
                    Some(if c.what.starts_with("RDS") {
                        r.decode.route
                    } else if c.sent > 1 {
                        r.decode.eds_all
                    } else {
                        r.decode.eds_one
                    })
                });
                let apply = get(&|c| Some(c.apply_ms));
                let reused = self
                    .rounds
                    .iter()
                    .filter_map(|r| pick(r).and_then(|p| p.changes.get(i)))
                    .map(|c| c.reused)
                    .min()
                    .unwrap_or(0);
                let _ = writeln!(
                    s,
                    "| {} | {label} | {} | {} | {} | {} | {} | {} | {reused} of {} |",
                    c.what,
                    c.sent,
                    time(decode),
                    time(apply),
                    ratio(apply, decode),
                    time(get(&|c| c.wall_ms)),
                    time(get(&|c| Some(c.rebuild_ms))),
                    c.clusters
                );
            }
        }
        s.push('\n');
    }

    fn memory(&self, s: &mut String) {
        let n = self.scale.clusters as f64;
        let _ = writeln!(
            s,
            "Memory over the initial load (first round). heap: live bytes requested from the \
             allocator (counting allocator); RSS: VmRSS. gRPC rows include the client's \
             subscription state and the test control plane's per-stream state.\n"
        );
        let _ = writeln!(
            s,
            "| path | heap: store | heap: + Traffic | heap per cluster | RSS before | RSS: store | \
             RSS: + Traffic | RSS per cluster |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let diff = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(a), Some(b)) => Some(b as f64 - a as f64),
            _ => None,
        };
        let show = |x: Option<f64>| x.map_or("-".to_owned(), bytes);
        for (label, pick) in paths() {
            let Some(p) = self.rounds.first().and_then(pick) else {
                continue;
            };
            let m = &p.memory;
            let d = |f: fn(&Usage) -> Option<usize>, a: &Usage, b: &Usage| diff(f(a), f(b));
            let heap = |u: &Usage| u.heap;
            let rss = |u: &Usage| u.rss;
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                show(d(heap, &m.before, &m.loaded)),
                show(d(heap, &m.loaded, &m.traffic)),
                show(d(heap, &m.before, &m.traffic).map(|x| x / n)),
                show(m.before.rss.map(|x| x as f64)),
                show(d(rss, &m.before, &m.loaded)),
                show(d(rss, &m.loaded, &m.traffic)),
                show(d(rss, &m.before, &m.traffic).map(|x| x / n)),
            );
        }
        if let Some(by) = self
            .rounds
            .first()
            .and_then(|r| r.in_process.as_ref())
            .and_then(|p| p.memory.heap_by_type)
        {
            let w = &self.wire;
            let parts: Vec<String> = by
                .each()
                .iter()
                .zip(w.resources.each())
                .map(|((label, _, b), (_, _, count))| {
                    format!(
                        "{label} {} ({} each)",
                        bytes(*b as f64),
                        bytes(*b as f64 / count.max(1) as f64)
                    )
                })
                .collect();
            let _ = writeln!(s, "\nIn-process heap by type: {}.", parts.join(", "));
        }
    }
}
