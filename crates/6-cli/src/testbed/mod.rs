//! The one-machine testbed (being built).

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

/// `flowshift testbed ...`.
#[derive(Subcommand, Debug)]
pub enum TestbedCommand {
    /// Build the testbed.
    Up(UpArgs),
    /// Remove the testbed.
    Down(DownArgs),
}

/// Arguments of `testbed up`.
#[derive(Args, Debug)]
pub struct UpArgs {}

/// Arguments of `testbed down`.
#[derive(Args, Debug)]
pub struct DownArgs {}

/// Arguments of `bench testbed`.
#[derive(Args, Debug)]
pub struct BenchArgs {}

/// Runs a testbed subcommand.
pub fn run(cmd: &TestbedCommand) -> Result<()> {
    bail!("testbed not built yet: {cmd:?}")
}

/// `bench testbed`.
pub fn bench(_args: &BenchArgs) -> Result<()> {
    bail!("testbed not built yet")
}

/// `experiment fig1c --testbed`.
pub fn fig1c(_args: &crate::experiment::Fig1cArgs) -> Result<()> {
    bail!("testbed not built yet")
}
