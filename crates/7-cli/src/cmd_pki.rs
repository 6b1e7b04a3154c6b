//! `flowshift pki`: the cluster's CA and certificates (see `flowshift_trust::pki`).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use flowshift_trust::pki::{self, Party};
use std::path::PathBuf;

/// `flowshift pki ...`
#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a new CA and certificates for the controller, every node of a cluster, the
    /// operator (the CLI on a TCP API) and the monitor (the scraper of the nodes' /metrics).
    Init(InitArgs),
    /// Issue (or with --force, re-issue: rotate) certificates with an existing CA.
    Issue(IssueArgs),
}

/// Arguments of `pki init`.
#[derive(Args)]
pub struct InitArgs {
    /// Folder to write `ca.pem`, `ca.key`, `controller.{pem,key}`, `node-<id>.{pem,key}`,
    /// `operator.{pem,key}`, `monitor.{pem,key}` (and `switch.{pem,key}` with `--switch`).
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    /// Take the node ids from this cluster configuration.
    #[arg(long, conflicts_with = "nodes")]
    pub cluster: Option<PathBuf>,
    /// Node ids, comma-separated (instead of --cluster).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<u16>,
    /// Issue a certificate for the OpenFlow switch too (`switch.{pem,key}`, for an `ssl:`
    /// controller connection).
    #[arg(long)]
    pub switch: bool,
    /// Overwrite existing files (a new CA: every party must get its new files).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `pki issue`.
#[derive(Args)]
pub struct IssueArgs {
    /// The PKI folder (with `ca.pem` and `ca.key`).
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    /// Node ids to issue for, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<u16>,
    /// Issue the controller's certificate too.
    #[arg(long)]
    pub controller: bool,
    /// Issue the OpenFlow switch's certificate too.
    #[arg(long)]
    pub switch: bool,
    /// Issue the operator's certificate too (operator.flowshift.internal: the CLI's identity
    /// on a TCP operator API).
    #[arg(long)]
    pub operator: bool,
    /// Issue the monitor's certificate too (monitor.flowshift.internal: the scraper's
    /// identity on the nodes' /metrics).
    #[arg(long)]
    pub monitor: bool,
    /// Replace existing certificates (rotation; restart the party afterwards).
    #[arg(long)]
    pub force: bool,
}

/// Runs a `pki` subcommand.
pub fn run(cmd: &PkiCommand) -> Result<()> {
    let written = match cmd {
        PkiCommand::Init(a) => {
            let ids = match &a.cluster {
                Some(path) => flowshift_controller::ClusterConfig::load(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .nodes
                    .iter()
                    .map(|n| n.id.0)
                    .collect(),
                None => a.nodes.clone(),
            };
            if ids.is_empty() {
                bail!("no nodes: pass --cluster cluster.toml or --nodes 1,2");
            }
            let mut parties: Vec<Party> = ids.into_iter().map(Party::Node).collect();
            parties.extend([Party::Controller, Party::Operator, Party::Monitor]);
            if a.switch {
                parties.push(Party::Switch);
            }
            pki::init(&a.dir, &parties, a.force)?
        }
        PkiCommand::Issue(a) => {
            let mut parties: Vec<Party> = a.nodes.iter().copied().map(Party::Node).collect();
            if a.controller {
                parties.push(Party::Controller);
            }
            for (wanted, p) in [
                (a.switch, Party::Switch),
                (a.operator, Party::Operator),
                (a.monitor, Party::Monitor),
            ] {
                if wanted {
                    parties.push(p);
                }
            }
            if parties.is_empty() {
                bail!(
                    "nothing to issue: pass --nodes, --controller, --switch, --operator and/or \
                     --monitor"
                );
            }
            pki::issue(&a.dir, &parties, a.force)?
        }
    };
    for f in written {
        println!("wrote {}", f.display());
    }
    Ok(())
}
