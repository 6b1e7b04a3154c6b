//! `flowshift controller`, `migrate` and `status` (being built).

use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `flowshift controller`.
#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Cluster configuration (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// Arguments of `flowshift migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {}

/// Arguments of `flowshift status`.
#[derive(Args, Debug)]
pub struct StatusArgs {}

/// Runs the controller until SIGINT/SIGTERM.
pub fn controller(args: &ControllerArgs) -> Result<()> {
    bail!("controller not built yet ({})", args.config.display())
}

/// Asks the running controller to migrate a group.
pub fn migrate(_args: &MigrateArgs) -> Result<()> {
    bail!("not built yet")
}

/// Prints the running controller's status.
pub fn status(_args: &StatusArgs) -> Result<()> {
    bail!("not built yet")
}
