//! `myelin-handshake-bench`: new mutual TLS connections per second against the HBONE
//! server (a full TLS 1.3 handshake each, client certificates from the embedded CA), with
//! plain TCP connects and one-way TLS to servers in the same process as baselines, and the
//! server's CPU time per connection. See `myelin_benches::handshake` and benches/RESULTS.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use myelin_benches::handshake::{self, Mode, Options};
use myelin_benches::run::{check_interrupted, install_signal_handlers};

/// HBONE server handshakes per second, against TCP and one-way TLS baselines.
#[derive(Debug, Parser)]
#[command(name = "myelin-handshake-bench", version)]
struct Args {
    /// Measured seconds per mode (after a warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up seconds per mode.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Concurrent clients, each opening one connection after another.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Modes to run, in order (comma separated): tcp, tls, hbone.
    #[arg(long, value_delimiter = ',', default_values = ["tcp", "tls", "hbone"])]
    modes: Vec<Mode>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.clients == 0 || args.duration == 0 {
        eprintln!("myelin-handshake-bench: need --clients > 0 and --duration > 0");
        return ExitCode::from(64);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin-handshake-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    install_signal_handlers()?;
    let opts = Options {
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        clients: args.clients,
        modes: args.modes.clone(),
    };
    let runs = handshake::run(&opts, &check_interrupted)?;
    println!(
        "{} clients, {} s per mode, {} CPUs\n",
        args.clients,
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print!("{}", handshake::markdown(&runs));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&runs)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
