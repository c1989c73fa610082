//! Reading h2load's results: counts and rate from its report, latency percentiles from its
//! per-request log (`--log-file`; the report itself has only min/max/mean).

use anyhow::{bail, ensure, Context as _, Result};

/// What h2load's report says.
#[derive(Debug, Clone, PartialEq)]
pub struct H2Report {
    pub requests_per_sec: f64,
    pub succeeded: u64,
    /// failed + errored + timeout.
    pub failures: u64,
    /// 3xx, 4xx and 5xx responses.
    pub non_2xx: u64,
}

/// Parses the report on stdout.
pub fn parse_report(out: &str) -> Result<H2Report> {
    let mut rps = None;
    let mut counts = None;
    let mut non_2xx = None;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 10.00s, 68012.30 req/s, 4.05MB/s"
            let v = rest
                .split(", ")
                .find_map(|p| p.strip_suffix(" req/s"))
                .with_context(|| format!("no req/s in {line:?}"))?;
            rps = Some(v.parse::<f64>().context("h2load req/s")?);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "680123 total, 680173 started, 680123 done, 680123 succeeded, 0 failed,
            //  0 errored, 0 timeout"
            let get = |what: &str| -> Result<u64> {
                rest.split(", ")
                    .find_map(|p| p.strip_suffix(what))
                    .with_context(|| format!("no{what} in {line:?}"))?
                    .trim()
                    .parse()
                    .with_context(|| format!("h2load{what}"))
            };
            let succeeded = get(" succeeded")?;
            let failures = get(" failed")? + get(" errored")? + get(" timeout")?;
            counts = Some((succeeded, failures));
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // "136020 2xx, 0 3xx, 0 4xx, 0 5xx"
            let mut n = 0;
            for class in [" 3xx", " 4xx", " 5xx"] {
                let v = rest
                    .split(", ")
                    .find_map(|p| p.strip_suffix(class))
                    .with_context(|| format!("no{class} in {line:?}"))?;
                n += v.trim().parse::<u64>().context("h2load status count")?;
            }
            non_2xx = Some(n);
        }
    }
    let missing = |what: &str| format!("no {what} in h2load output:\n{out}");
    let (succeeded, failures) = counts.with_context(|| missing("requests line"))?;
    Ok(H2Report {
        requests_per_sec: rps.with_context(|| missing("finished line"))?,
        succeeded,
        failures,
        non_2xx: non_2xx.with_context(|| missing("status codes line"))?,
    })
}

/// Request durations in microseconds from the per-request log: tab-separated start time
/// (µs since the epoch), status, duration (µs). Fails on a non-2xx status.
pub fn parse_log(log: &str) -> Result<Vec<u64>> {
    let mut v = Vec::new();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [_, status, duration, ..] = cols[..] else {
            bail!("unexpected h2load log line {line:?}");
        };
        ensure!(
            status.starts_with('2'),
            "h2load logged status {status}: {line:?}"
        );
        v.push(
            duration
                .parse()
                .with_context(|| format!("duration in {line:?}"))?,
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 68012.30 req/s, 4.05MB/s
requests: 136024 total, 136074 started, 136024 done, 136020 succeeded, 3 failed, 1 errored, 0 timeout
status codes: 136021 2xx, 0 3xx, 2 4xx, 0 5xx
traffic: 8.10MB (8493218) total, 1.04MB (1088192) headers (space savings 95.47%), 12.97MB (13602400) data
                     min         max         mean         sd        +/- sd
time for request:       38us     10.23ms       698us       286us    80.12%
";

    #[test]
    fn report() {
        assert_eq!(
            parse_report(OUT).unwrap(),
            H2Report {
                requests_per_sec: 68012.30,
                succeeded: 136020,
                failures: 4,
                non_2xx: 2,
            }
        );
        assert!(parse_report("finished in 2.00s, 1.0 req/s, 0MB/s\n").is_err());
    }

    #[test]
    fn log() {
        let log = "1700000000000000\t200\t512\n1700000000000100\t200\t498\n";
        assert_eq!(parse_log(log).unwrap(), [512, 498]);
        assert!(parse_log("1700000000000000\t503\t512\n").is_err());
        assert!(parse_log("garbage\n").is_err());
    }
}
