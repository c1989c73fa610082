//! `myelin-xds-scale`: the xDS scale benchmark (issue 3). Pushes a mesh-sized config
//! (10,000 EDS clusters x 10 endpoints and 1,000 routes by default) through the config store
//! in process and over real gRPC (SotW and delta), then one EDS and one route change, and
//! prints the times (with ratios against plain prost decoding of the same bytes) and the
//! memory the config holds. See `myelin_benches::xds_scale` and benches/RESULTS.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use myelin_benches::memory::CountingAlloc;
use myelin_benches::xds_scale::{self, Options, PathKind, Scale};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// xDS scale benchmark: initial push and one change, in process and over gRPC.
#[derive(Debug, Parser)]
#[command(name = "myelin-xds-scale", version)]
struct Args {
    /// EDS clusters (each with its own ClusterLoadAssignment).
    #[arg(long, default_value_t = Scale::ISSUE.clusters)]
    clusters: usize,
    /// Endpoints per ClusterLoadAssignment.
    #[arg(long, default_value_t = Scale::ISSUE.endpoints)]
    endpoints: usize,
    /// Routes (one virtual host each) in the RouteConfiguration; at most `--clusters`.
    #[arg(long, default_value_t = Scale::ISSUE.routes)]
    routes: usize,
    /// Rounds (fresh store, control plane and client each); the tables show medians.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Paths to run (comma separated): in-process, sotw, delta.
    #[arg(long, value_delimiter = ',', default_values = ["in-process", "sotw", "delta"])]
    paths: Vec<Path>,
    /// Give up when the store has not reached a state over gRPC within this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Also write every round's numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Path {
    /// Prebuilt updates straight into ConfigStore::apply.
    InProcess,
    /// In-process control plane -> ADS client (state of the world) -> ConfigStore.
    Sotw,
    /// In-process control plane -> ADS client (delta) -> ConfigStore.
    Delta,
}

impl Path {
    fn kind(self) -> PathKind {
        match self {
            Path::InProcess => PathKind::InProcess,
            Path::Sotw => PathKind::Sotw,
            Path::Delta => PathKind::Delta,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.routes > args.clusters || args.clusters == 0 || args.rounds == 0 {
        eprintln!("myelin-xds-scale: need 0 < --routes <= --clusters and --rounds > 0");
        return ExitCode::from(64);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin-xds-scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let opts = Options {
        scale: Scale {
            clusters: args.clusters,
            endpoints: args.endpoints,
            routes: args.routes,
        },
        rounds: args.rounds,
        paths: args.paths.iter().map(|p| p.kind()).collect(),
        timeout: Duration::from_secs(args.timeout),
    };
    let report = xds_scale::run(&opts)?;
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
