//! `myelin`: the node agent's command line. Parses arguments, sets up logging, and calls into
//! the library; a bad configuration exits with status 64 before anything is attached.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use myelin::{agent, config::Config, demo, hugetext, selftest, EXIT_CONFIG};

/// mimalloc: the proxy allocates and frees per request across tasks; measured against
/// glibc's malloc in benches/RESULTS.md (L7 benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "myelin",
    version,
    about = "Sidecarless service-mesh dataplane: the node agent"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent on this node from a standalone config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Never splice sockets (captured connections go through the proxy over plain TCP).
        #[arg(long)]
        no_splice: bool,
        /// Detach and unpin the kernel programs on exit.
        #[arg(long)]
        uninstall_on_exit: bool,
    },
    /// Check a config file without starting anything (exit 0 valid, 64 invalid).
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Detach and unpin the kernel programs of an agent instance.
    Uninstall {
        /// The instance name (defaults to the node name of --config).
        #[arg(long, conflicts_with = "config")]
        instance: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Build a node of network namespaces on this machine, run the mesh, show golden metrics.
    Demo {
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Force splicing off in the demo's agent.
        #[arg(long)]
        no_splice: bool,
    },
    /// (internal) the blocking client of the startup self-test.
    #[command(hide = true)]
    SelftestClient {
        #[arg(long)]
        addr: SocketAddr,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn load(config: &std::path::Path) -> Result<Config, ExitCode> {
    let cgroup2 = match myelin_ebpf_loader::cgroup2_mount() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("myelin: {e}");
            return Err(ExitCode::from(EXIT_CONFIG as u8));
        }
    };
    Config::load(config, &cgroup2).map_err(|e| {
        eprintln!("myelin: invalid config: {e}");
        ExitCode::from(EXIT_CONFIG as u8)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            no_splice,
            uninstall_on_exit,
        } => {
            // First, while this is the only thread (hugetext's module docs: why and what).
            let text = (!hugetext::disabled_by_env()).then(hugetext::remap);
            init_logging(std::env::var_os("MYELIN_LOG_JSON").is_some());
            match text {
                Some(Ok(Some(r))) => {
                    tracing::info!(bytes = r.len, huge_bytes = r.huge, "agent code moved onto huge pages")
                }
                Some(Ok(None)) => tracing::info!("agent code left on small pages: no transparent huge pages or no aligned 2 MiB of code"),
                Some(Err(e)) => tracing::warn!(error = %e, "agent code left on small pages"),
                None => tracing::info!("agent code left on small pages: MYELIN_HUGE_TEXT=0"),
            }
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "effective config");
            match agent::run(
                cfg,
                agent::RunOptions {
                    no_splice,
                    uninstall_on_exit,
                },
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("myelin: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Validate { config } => {
            let cgroup2 = myelin_ebpf_loader::cgroup2_mount()
                .unwrap_or_else(|_| std::path::PathBuf::from("/sys/fs/cgroup"));
            match Config::validate_file(&config, &cgroup2) {
                Ok(summary) => {
                    println!("{}: valid ({summary})", config.display());
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    eprintln!("{}: {} problem(s):", config.display(), problems.len());
                    for p in problems {
                        eprintln!("  {p}");
                    }
                    ExitCode::from(EXIT_CONFIG as u8)
                }
            }
        }
        Cmd::Uninstall { instance, config } => {
            let instance = match (instance, config) {
                (Some(i), _) => i,
                (None, Some(c)) => match load(&c) {
                    Ok(cfg) => cfg.instance,
                    Err(code) => return code,
                },
                (None, None) => {
                    eprintln!("myelin uninstall: give --instance NAME or --config FILE");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            match myelin_ebpf_loader::uninstall(&instance) {
                Ok(true) => {
                    println!("uninstalled {instance}");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    println!("nothing pinned for {instance}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("myelin uninstall: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo { json, no_splice } => {
            init_logging(false);
            match demo::run(json, no_splice) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("myelin demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::SelftestClient { addr } => ExitCode::from(selftest::client_main(addr) as u8),
    }
}
