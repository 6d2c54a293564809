//! The `corral` binary: parses the command line, sets up logging, and hands off to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Durable queue, balancer, scheduler and secret sync in front of a pool of SAP CPI tenants"
)]
struct Cli {
    /// Log format: human (default) or json.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a cluster directory: cluster file, CA, node certificates, admin token, master key.
    Init(corral::init::InitArgs),
    /// Run one node of a cluster.
    Node {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// Show every node's view of the cluster.
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a three-node cluster on localhost (Ctrl-C stops it).
    Dev(corral::dev::DevArgs),
    /// Run N emulated CPI tenants and print one JSON description per line.
    Emulate(corral::emulator::EmulateArgs),
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Init(args) => {
            let path = corral::init::run(&args)?;
            println!("wrote {}", path.display());
        }
        Cmd::Node { config, id } => {
            // Validate everything before any data dir is touched.
            let file = corral::config::ClusterFile::load(&config)?;
            let cfg = file.node(id)?;
            runtime()?.block_on(corral::node::run(cfg))?;
        }
        Cmd::Status { config, json } => {
            if !runtime()?.block_on(corral::status::run(&config, json))? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Dev(args) => runtime()?.block_on(corral::dev::run(args))?,
        Cmd::Emulate(args) => runtime()?.block_on(corral::emulator::run(args))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    corral::disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("corral: {e:#}");
            ExitCode::from(2)
        }
    }
}
