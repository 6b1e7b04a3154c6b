//! `flowshift node` (being built).

use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `flowshift node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Node configuration (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// Runs a node until SIGINT/SIGTERM.
pub fn run(args: &NodeArgs) -> Result<()> {
    bail!("node not built yet ({})", args.config.display())
}
