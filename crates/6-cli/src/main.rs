//! `flowshift`: the command-line front end (layer 6). Subcommands map to the drivers below.

mod alloc;
mod bench;
#[allow(dead_code)] // used by the experiments (next step)
mod plot;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: alloc::HugePageAlloc = alloc::HugePageAlloc;

/// flowshift: a carrier-grade NAT cluster that migrates live flow state between instances.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks that print figures (never pass/fail).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Data-plane throughput on one core: translate 64-byte frames of established flows, and
    /// time a bare hash-lookup loop over the same keys in the same run.
    Dataplane(bench::DataplaneArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Dataplane(args)) => bench::dataplane(&args),
    }
}
