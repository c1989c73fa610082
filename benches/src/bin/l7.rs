//! `myelin-l7-bench`: the L7 benchmark of issue 4. The same HTTP hop on loopback done by the
//! real `myelin` agent, by nginx and by haproxy (one worker each), and direct, plus the hop as
//! the mesh makes it (`myelin-mesh`: client pod to backend pod, captured and spliced); the
//! proxy under test alone on one core, backend and clients on the other. Loads: wrk (HTTP/1.1 keep-alive),
//! h2load (h2c), and a fixed-rate open loop. Prints the table (medians over the rounds), every
//! round's numbers and the verdict against the targets. See `myelin_benches::l7` and
//! benches/RESULTS.md.
//!
//! Needs root, nginx, haproxy, wrk, h2load (nghttp2-client), taskset, and a release build of
//! the agent (`cargo build --release -p myelin`; found next to this binary or through
//! `$MYELIN_BIN`). Everything started (node, agent, nginx, haproxy, files) is removed on exit,
//! on error and on SIGINT/SIGTERM too.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use myelin_benches::l7::{self, report, Load, Options, Target};
use myelin_benches::run::{check_interrupted, install_signal_handlers};

/// L7 benchmark: Myelin vs nginx vs haproxy vs direct, HTTP/1.1, HTTP/2 and an open loop.
#[derive(Debug, Parser)]
#[command(name = "myelin-l7-bench", version)]
struct Args {
    /// Rounds: every round runs every target with every load; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Measured run length per target and load, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up run before each measured run, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Targets, in order (comma separated).
    #[arg(long, value_delimiter = ',', default_values = ["direct", "nginx", "haproxy", "hyper-floor", "codec-floor", "myelin", "myelin-mesh"])]
    targets: Vec<Target>,
    /// Loads, in order (comma separated).
    #[arg(long, value_delimiter = ',', default_values = ["http1", "http2", "open-loop"])]
    loads: Vec<Load>,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    wrk_connections: u32,
    /// h2load connections.
    #[arg(long, default_value_t = 10)]
    h2_connections: u32,
    /// h2load concurrent streams per connection.
    #[arg(long, default_value_t = 5)]
    h2_streams: u32,
    /// The open loop's rate, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// The open loop's connections.
    #[arg(long, default_value_t = 10)]
    open_connections: u32,
    /// The CPU of the proxy under test.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,
    /// The CPU of the backend and the clients.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Measure a run again when the proxy's CPU was busier than this with anything else
    /// (percent of the run: another VM's steal, another process), or the hypervisor stole
    /// more than this of the load CPU; 100 turns it off.
    /// (Default 2: runs with 3-5 % showed p99s 3-4x those of the quiet ones.)
    #[arg(long, default_value_t = 2.0)]
    max_other_load: f64,
    /// Attempts per run at most under `--max-other-load`; the quietest one is kept.
    #[arg(long, default_value_t = 4)]
    attempts: u32,
    /// Also write every run's numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The first line a command prints (on stdout or stderr), for the record.
fn version(program: &str, arg: &str) -> String {
    let Ok(path) = myelin_benches::tools::path(program) else {
        return format!("{program}: not found");
    };
    match Command::new(path).arg(arg).output() {
        Ok(out) => {
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        }
        Err(e) => format!("{program}: {e}"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin-l7-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("myelin-l7-bench needs root: it builds a network namespace and a cgroup and the agent loads eBPF (run it with sudo)");
    }
    install_signal_handlers()?;
    let opts = Options {
        targets: args.targets.clone(),
        loads: args.loads.clone(),
        rounds: args.rounds,
        duration_s: args.duration,
        warmup_s: args.warmup,
        wrk_connections: args.wrk_connections,
        h2_connections: args.h2_connections,
        h2_streams: args.h2_streams,
        rate: args.rate,
        open_connections: args.open_connections,
        proxy_cpu: args.proxy_cpu,
        load_cpu: args.load_cpu,
        max_other_load_pct: (args.max_other_load < 100.0).then_some(args.max_other_load),
        attempts: args.attempts,
    };
    let tools = [
        ("nginx", "-v"),
        ("haproxy", "-v"),
        ("wrk", "-v"),
        ("h2load", "--version"),
    ]
    .map(|(p, a)| version(p, a));
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    // The transparent huge page mode moves the agent's RSS by 5-10 MB (its allocator asks
    // for huge pages; benches/RESULTS.md, 2026-12-06 19:38): named with the kernel.
    let thp = read("/sys/kernel/mm/transparent_hugepage/enabled");
    eprintln!(
        "myelin-l7-bench: kernel {}, transparent huge pages {}, {} CPUs, loadavg {}; {}",
        read("/proc/sys/kernel/osrelease").trim(),
        thp.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/loadavg").trim(),
        tools.join("; ")
    );
    let runs = l7::run(&opts, &check_interrupted)?;
    let rows = report::aggregate(&opts.loads, &opts.targets, &runs);
    let verdicts = report::verdicts(&rows);
    println!("{}", report::markdown(&rows));
    println!("{}", report::verdict_markdown(&verdicts));
    let floor = report::floor_markdown(&rows);
    if !floor.is_empty() {
        println!("The floors, and Myelin against them (not targets of the issue):\n\n{floor}");
    }
    println!("Every run:\n\n{}", report::rounds_markdown(&runs));
    for m in runs.iter().filter(|m| m.round == 1) {
        if let Some(p) = &m.proxy {
            if m.load == opts.loads[0] {
                println!(
                    "{} threads: {} (CPUs allowed: {})",
                    m.target.name(),
                    p.thread_names,
                    p.cpus_allowed
                );
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "benchmark": "l7: direct / nginx / haproxy / myelin",
            "options": opts,
            "tools": tools,
            "rows": rows,
            "verdicts": verdicts,
            "runs": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("myelin-l7-bench: wrote {}", path.display());
    }
    Ok(())
}
