//! What the benchmark reads about the proxy under test from `/proc/<pid>`: CPU time (user +
//! system, all threads, `stat`), resident memory and threads (`status`), thread names
//! (`task/*/comm`).

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn clock_ticks_per_sec() -> Result<u64> {
    // SAFETY: sysconf only reads a constant of the C library; no pointers involved.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t <= 0 {
        bail!("sysconf(_SC_CLK_TCK) = {t}");
    }
    Ok(t as u64)
}

/// `(utime, stime)` from the text of `/proc/<pid>/stat`, in clock ticks. The process's times
/// include its threads, also those that have exited.
pub fn parse_stat_ticks(stat: &str) -> Result<(u64, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("no ')' in /proc/<pid>/stat: {stat:?}"))?;
    // Fields from 3 (state) on; utime is field 14, stime field 15.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("/proc/<pid>/stat has no field {n}"))?
            .parse()
            .with_context(|| format!("/proc/<pid>/stat field {n}"))
    };
    Ok((field(14)?, field(15)?))
}

/// CPU time a process has used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    /// All of it, user and kernel, to the nanosecond (the process's CPU-time clock).
    pub total: Duration,
    /// In user space (`utime`, in clock ticks: 10 ms).
    pub user: Duration,
    /// In the kernel on the process's behalf (`stime`, clock ticks): its system calls, and
    /// the network stack's work they do (on loopback, the peer's receive path too).
    pub system: Duration,
}

impl CpuTime {
    /// The kernel's part of [`CpuTime::total`], split as the ticks are (the kernel splits
    /// user and system time by sampling at its tick: statistical, within a few percent over
    /// a run of seconds).
    pub fn kernel(&self) -> Duration {
        let ticks = self.user + self.system;
        if ticks.is_zero() {
            return Duration::ZERO;
        }
        self.total
            .mul_f64(self.system.as_secs_f64() / ticks.as_secs_f64())
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            total: self.total.saturating_sub(earlier.total),
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU time the process has used so far: the total from its CPU-time clock
/// (`clock_getcpuclockid`), exact; user and system from `/proc/<pid>/stat`, in clock ticks.
/// The ticks alone quantised the open loop's CPU per request to 1.25 us (10 ms over its 8,000
/// requests), about 4 % of it: a step the size of the margins the targets are judged by.
pub fn cpu_time(pid: u32) -> Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (user, system) = parse_stat_ticks(&text)?;
    let hz = clock_ticks_per_sec()?;
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / hz);
    Ok(CpuTime {
        total: process_cpu_clock(pid)?,
        user: time(user),
        system: time(system),
    })
}

/// The CPU time of process `pid` (all its threads, also exited ones) from its CPU-time clock.
fn process_cpu_clock(pid: u32) -> Result<Duration> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid place for the clock id the call writes.
    let rc = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    if rc != 0 {
        bail!(
            "clock_getcpuclockid({pid}): {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        bail!(
            "clock_gettime(cpu clock of {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Busy time of one CPU so far (`/proc/stat`: everything but idle and iowait), all processes
/// and interrupts together.
pub fn cpu_busy(cpu: usize) -> Result<Duration> {
    proc_stat_time(cpu, parse_cpu_busy)
}

/// One of `cpu`'s times in `/proc/stat` now, picked from its text by `parse` (in ticks).
fn proc_stat_time(cpu: usize, parse: fn(&str, usize) -> Result<u64>) -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse(&text, cpu)?;
    Ok(Duration::from_nanos(
        ticks * 1_000_000_000 / clock_ticks_per_sec()?,
    ))
}

/// The first eight counters of `cpu`'s line in the text of `/proc/stat`: user nice system
/// idle iowait irq softirq steal, in clock ticks (guest time is inside user).
fn parse_cpu_line(text: &str, cpu: usize) -> Result<[u64; 8]> {
    let name = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().context("/proc/stat value"))
        .collect::<Result<_>>()?;
    v.try_into()
        .map_err(|_| anyhow!("short /proc/stat line {line:?}"))
}

/// Busy ticks of `cpu` in the text of `/proc/stat`.
pub fn parse_cpu_busy(text: &str, cpu: usize) -> Result<u64> {
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = parse_cpu_line(text, cpu)?;
    Ok(user + nice + system + irq + softirq + steal)
}

/// Steal ticks of `cpu` in the text of `/proc/stat`: time the hypervisor ran something else
/// while this virtual CPU had work.
pub fn parse_cpu_steal(text: &str, cpu: usize) -> Result<u64> {
    Ok(parse_cpu_line(text, cpu)?[7])
}

/// Steal time of one CPU so far.
pub fn cpu_steal(cpu: usize) -> Result<Duration> {
    proc_stat_time(cpu, parse_cpu_steal)
}

/// Memory and threads from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `VmRSS`.
    pub rss_bytes: u64,
    /// `VmHWM`: the peak resident set.
    pub peak_rss_bytes: u64,
    pub threads: u32,
}

pub fn parse_status(text: &str) -> Result<Status> {
    let kib = |key: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in /proc/<pid>/status"))?;
        let v: u64 = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("malformed {line:?}"))?
            .parse()
            .with_context(|| format!("malformed {line:?}"))?;
        Ok(v * 1024)
    };
    let threads = text
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .context("no Threads: in /proc/<pid>/status")?
        .trim()
        .parse()
        .context("Threads:")?;
    Ok(Status {
        rss_bytes: kib("VmRSS:")?,
        peak_rss_bytes: kib("VmHWM:")?,
        threads,
    })
}

pub fn status(pid: u32) -> Result<Status> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status(&text)
}

/// The process's threads by name, counted: e.g. `myelin-proxy x1, myelin-admin x1`.
pub fn thread_names(pid: u32) -> Result<String> {
    let mut names: Vec<String> = Vec::new();
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let comm = std::fs::read_to_string(entry?.path().join("comm")).unwrap_or_default();
        names.push(comm.trim().to_owned());
    }
    names.sort();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < names.len() {
        let n = names[i..].iter().take_while(|x| **x == names[i]).count();
        out.push(format!("{} x{n}", names[i]));
        i += n;
    }
    Ok(out.join(", "))
}

/// The CPUs a process may run on (`Cpus_allowed_list` of `/proc/<pid>/status`), to check that
/// the pinning took.
pub fn cpus_allowed(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list")?
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_survive_odd_command_names() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 3000 0 0 0 \
                    1234 56 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat).unwrap(), (1234, 56));
        assert!(parse_stat_ticks("4242 (x) S 1").is_err());
    }

    #[test]
    fn busy_ticks() {
        let text =
            "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 1 2 3 1000 5 6 7 8 0 0\ncpu1 10 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(parse_cpu_busy(text, 0).unwrap(), 1 + 2 + 3 + 6 + 7 + 8);
        assert_eq!(parse_cpu_busy(text, 1).unwrap(), 10);
        assert!(parse_cpu_busy(text, 2).is_err());
        assert_eq!(parse_cpu_steal(text, 0).unwrap(), 8);
        assert_eq!(parse_cpu_steal(text, 1).unwrap(), 0);
        assert!(parse_cpu_busy("cpu0 1 2 3 4 5 6 7\n", 0).is_err());
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tnginx\nThreads:\t3\nVmHWM:\t   16384 kB\nVmRSS:\t   15000 kB\n";
        assert_eq!(
            parse_status(text).unwrap(),
            Status {
                rss_bytes: 15000 * 1024,
                peak_rss_bytes: 16384 * 1024,
                threads: 3
            }
        );
        assert!(parse_status("Threads:\t1\n").is_err());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(status(pid).unwrap().rss_bytes > 0);
        cpu_time(pid).unwrap();
        assert!(!thread_names(pid).unwrap().is_empty());
        assert!(!cpus_allowed(pid).unwrap().is_empty());
    }

    #[test]
    fn cpu_time_counts_another_process_to_well_under_a_tick() {
        // A child that spins for the 40 ms between two reads: its clock counts what it used to
        // the nanosecond, where the ticks of `/proc/<pid>/stat` count in steps of 10 ms.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("while :; do :; done")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = cpu_time(pid).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let mid = cpu_time(pid).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let used = mid - start;
        assert!(used.total > Duration::ZERO, "{used:?}");
        assert!(used.total <= Duration::from_millis(45), "{used:?}");
        // Not a multiple of the tick: the exact clock, not the ticks.
        assert_ne!(used.total.as_nanos() % 10_000_000, 0, "{used:?}");
        assert!(used.kernel() <= used.total);
    }
}
