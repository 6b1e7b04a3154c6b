//! `flowshift`: the command-line front end (layer 7). Subcommands map to the drivers below.

mod alloc;
mod cmd_controller;
mod cmd_node;
mod cmd_pki;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flowshift_lab::{
    bench, bench_stall, bench_transfer, exp_elastic, exp_precopy, exp_swarm, exp_wan, experiment,
    options, testbed,
};

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
    /// Experiments that write JSON reports and plots (simulator by default).
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Run one NAT instance on a Linux interface (AF_PACKET), until SIGINT/SIGTERM.
    Node(cmd_node::NodeArgs),
    /// Run the controller: OpenFlow 1.3 to the switch, control channels to the nodes, and the
    /// operator API, until SIGINT/SIGTERM.
    Controller(cmd_controller::ControllerArgs),
    /// Ask the running controller to migrate a group to another node.
    Migrate(cmd_controller::MigrateArgs),
    /// Show the running controller's view: groups, owners, nodes, migrations.
    Status(cmd_controller::StatusArgs),
    /// The cluster's CA and certificates for mutual TLS between nodes and controller.
    #[command(subcommand)]
    Pki(cmd_pki::PkiCommand),
    /// Write a new bearer token file (mode 0600) for the operator API or /metrics.
    Token(cmd_controller::TokenArgs),
    /// The one-machine testbed (root): namespaces, Open vSwitch, nodes, controller.
    #[command(subcommand)]
    Testbed(testbed::TestbedCommand),
    /// The testbed's UDP probe stream (sender and echo, run inside its namespaces).
    #[command(subcommand, hide = true)]
    Probe(testbed::probe::ProbeCommand),
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// The poster's Figure 1(c): 100 TCP flows saturating 1 Gbit/s, 65,000 states, one
    /// migration per algorithm; goodput over time with the phases marked.
    Fig1c(options::Fig1cArgs),
    /// Migration cost versus state count (1k to 1M) per algorithm.
    Scaling(experiment::ScalingArgs),
    /// The poster's open question: pre-copy versus idle + freeze-and-copy on realistic flow
    /// mixes (Poisson arrivals, Pareto/Zipf sizes) or flows replayed from a pcap file.
    Precopy(Box<exp_precopy::PrecopyArgs>),
    /// The fault swarm: a migration per seed under random faults (transfer loss, resets,
    /// reordering, process crashes and restarts, a controller restart, switch delay), checked
    /// by invariants from outside; prints violations with their seeds, exits non-zero on any.
    Swarm(exp_swarm::SwarmArgs),
    /// Elastic CGNAT: a load surge over 32 groups; the autoscale policy starts nodes, moves
    /// groups and stops nodes (freeze-copy vs stop-copy vs no scaling).
    Elastic(exp_elastic::ElasticArgs),
    /// The destination at a distance: each algorithm's freeze, loss and duration versus the
    /// round-trip time of the transfer and chain path (default 100 Mbit/s).
    Wan(exp_wan::WanArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Data-plane throughput on one core: translate 64-byte frames of established flows, and
    /// time a bare hash-lookup loop over the same keys in the same run.
    Dataplane(bench::DataplaneArgs),
    /// State transfer: export N records, frame them with the migration protocol, send them
    /// over loopback TCP, decode and install them in a second NAT; compared with a raw TCP copy.
    Transfer(bench_transfer::TransferArgs),
    /// Longest gap between two packet batches of a node's loop during a whole migration of N
    /// states between two in-process instances (what a packet thread would stall for).
    Stall(bench_stall::StallArgs),
    /// iperf3 throughput through one flowshift node and through Linux nftables NAT on the
    /// same testbed topology (root); prints both and the ratio.
    Testbed(testbed::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Dataplane(args)) => bench::dataplane(&args),
        Command::Bench(BenchCommand::Transfer(args)) => bench_transfer::transfer(&args),
        Command::Bench(BenchCommand::Stall(args)) => bench_stall::stall(&args),
        // The CLI picks the back end: the simulator unless `--testbed`.
        Command::Experiment(ExperimentCommand::Fig1c(args)) if args.testbed => {
            testbed::fig1c(&args)
        }
        Command::Experiment(ExperimentCommand::Fig1c(args)) => experiment::fig1c(&args),
        Command::Experiment(ExperimentCommand::Scaling(args)) => experiment::scaling(&args),
        Command::Experiment(ExperimentCommand::Precopy(args)) => exp_precopy::run(&args),
        Command::Experiment(ExperimentCommand::Swarm(args)) => exp_swarm::run(&args),
        Command::Experiment(ExperimentCommand::Elastic(args)) => exp_elastic::run(&args),
        Command::Experiment(ExperimentCommand::Wan(args)) => exp_wan::run(&args),
        Command::Bench(BenchCommand::Testbed(args)) => testbed::bench(&args),
        Command::Node(args) => cmd_node::run(&args),
        Command::Controller(args) => cmd_controller::controller(&args),
        Command::Migrate(args) => cmd_controller::migrate(&args),
        Command::Status(args) => cmd_controller::status(&args),
        Command::Pki(cmd) => cmd_pki::run(&cmd),
        Command::Token(args) => cmd_controller::token(&args),
        Command::Testbed(cmd) => testbed::run(&cmd),
        Command::Probe(cmd) => testbed::probe::run(&cmd),
    }
}
