//! Parsing wrk's report (`wrk --latency`).

use anyhow::{bail, Context as _, Result};

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    pub p75_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// The tail past p99, when wrk ran [`TAIL_SCRIPT`].
    pub tail: Option<Tail>,
    /// `connect, read, write, timeout` socket errors (all zero when the line is absent).
    pub socket_errors: [u64; 4],
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
}

/// Latencies past p99, in microseconds, from wrk's own histogram.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tail {
    pub p99_5_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
}

/// A wrk script (`wrk -s`) that prints the tail of wrk's latency histogram after its report,
/// one line: `myelin-tail <p99.5> <p99.9> <max>` in microseconds. Changes nothing else
/// (no `request` or `response` function: wrk keeps its fast path).
pub const TAIL_SCRIPT: &str = r#"done = function(summary, latency, requests)
  io.write(string.format("myelin-tail %d %d %d\n",
    latency:percentile(99.5), latency:percentile(99.9), latency.max))
end
"#;

/// A wrk duration such as `18.00us`, `1.20ms`, `2.00s` or `1.00m`, in microseconds.
fn parse_time_us(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("no unit in wrk time {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("bad number in wrk time {s:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in wrk time {s:?}"),
    };
    Ok(v * scale)
}

/// Parses wrk's stdout; fails if a value is missing.
pub fn parse(out: &str) -> Result<WrkResult> {
    let mut pct = [None; 4];
    let mut rps = None;
    let mut requests = None;
    let mut socket_errors = [0; 4];
    let mut non_2xx = 0;
    let mut tail = None;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [p, t] if p.ends_with('%') => {
                let i = match *p {
                    "50%" => 0,
                    "75%" => 1,
                    "90%" => 2,
                    "99%" => 3,
                    _ => continue,
                };
                pct[i] = Some(parse_time_us(t)?);
            }
            ["Requests/sec:", v] => rps = Some(v.parse::<f64>().context("Requests/sec")?),
            [n, "requests", "in", ..] => requests = Some(n.parse::<u64>().context("requests")?),
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                let nums: Vec<u64> = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse().ok())
                    .collect();
                if nums.len() != 4 {
                    bail!("unexpected wrk line {line:?}");
                }
                socket_errors.copy_from_slice(&nums);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse()?,
            ["myelin-tail", p995, p999, max] => {
                let us = |v: &str| v.parse::<f64>().with_context(|| format!("tail {line:?}"));
                tail = Some(Tail {
                    p99_5_us: us(p995)?,
                    p99_9_us: us(p999)?,
                    max_us: us(max)?,
                });
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("no {what} in wrk output:\n{out}");
    Ok(WrkResult {
        requests: requests.with_context(|| missing("request count"))?,
        requests_per_sec: rps.with_context(|| missing("Requests/sec"))?,
        p50_us: pct[0].with_context(|| missing("50% latency"))?,
        p75_us: pct[1].with_context(|| missing("75% latency"))?,
        p90_us: pct[2].with_context(|| missing("90% latency"))?,
        p99_us: pct[3].with_context(|| missing("99% latency"))?,
        tail,
        socket_errors,
        non_2xx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 5s test @ http://10.77.1.2:8080/small
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   320.51us  102.33us   6.98ms   91.20%
    Req/Sec    49.87k     1.52k   52.10k    78.00%
  Latency Distribution
     50%  301.00us
     75%  340.00us
     90%  400.00us
     99%    1.02ms
  248139 requests in 5.00s, 79.26MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  49627.42
Transfer/sec:     15.85MB
";

    #[test]
    fn parses_a_wrk_report() {
        let r = parse(OUT).unwrap();
        assert_eq!(r.requests, 248139);
        assert_eq!(r.requests_per_sec, 49627.42);
        assert_eq!(r.p50_us, 301.0);
        assert_eq!(r.p99_us, 1020.0);
        assert_eq!(r.socket_errors, [0, 2, 0, 1]);
        assert_eq!(r.non_2xx, 3);
        assert_eq!(r.tail, None);
        let with_tail = format!("{OUT}myelin-tail 2353 4660 6423\n");
        assert_eq!(
            parse(&with_tail).unwrap().tail,
            Some(Tail {
                p99_5_us: 2353.0,
                p99_9_us: 4660.0,
                max_us: 6423.0
            })
        );
        assert!(parse(&format!("{OUT}myelin-tail 1 x 3\n")).is_err());
    }

    #[test]
    fn clean_run_has_no_errors_and_missing_values_fail() {
        let clean: String = OUT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse(&clean).unwrap();
        assert_eq!((r.socket_errors, r.non_2xx), ([0; 4], 0));
        let no_rps = clean.replace("Requests/sec", "Req");
        assert!(parse(&no_rps).is_err());
    }

    #[test]
    fn time_units() {
        assert_eq!(parse_time_us("18.00us").unwrap(), 18.0);
        assert_eq!(parse_time_us("2.00s").unwrap(), 2e6);
        assert_eq!(parse_time_us("1.50m").unwrap(), 90e6);
        assert!(parse_time_us("12").is_err());
        assert!(parse_time_us("3.0xs").is_err());
    }
}
