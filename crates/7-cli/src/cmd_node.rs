//! `flowshift node`: one NAT instance on a Linux interface, until SIGINT/SIGTERM.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
enum LogFormat {
    /// `key=value` text lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `flowshift node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Node configuration (TOML; see `flowshift_node::config` for the format).
    #[arg(long)]
    config: PathBuf,
    /// Format of the log lines on stderr (the level filter comes from RUST_LOG).
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

/// Runs a node until SIGINT/SIGTERM.
pub fn run(args: &NodeArgs) -> Result<()> {
    // An already installed subscriber (none in this binary) would keep logging: not an error.
    let _ = flowshift_node::logging::init(matches!(args.log_format, LogFormat::Json));
    let cfg = flowshift_node::load_config(&args.config)
        .with_context(|| format!("node configuration {}", args.config.display()))?;
    flowshift_node::run(cfg)?;
    Ok(())
}
