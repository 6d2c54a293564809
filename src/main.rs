//! The `corral` binary: parses the command line and hands off to the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Active-active layer in front of SAP Cloud Integration tenants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run N emulated CPI tenants and print one JSON description per line.
    Emulate(corral::emulator::EmulateArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Emulate(args) => corral::emulator::run(args).await,
    }
}
