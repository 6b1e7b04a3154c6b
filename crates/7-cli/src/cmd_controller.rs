//! `flowshift controller` (the daemon), `flowshift migrate` / `flowshift status`, which talk
//! to a running controller's operator API, and `flowshift token`, which writes a token file.
//! Argument parsing and printing only: the API logic is `flowshift_controller::client`.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use flowshift_control::api::MigrateRequest;
use flowshift_control::orchestrator::Stage;
use flowshift_controller::client::render::{ClusterView, MigrationSummary, Requested};
use flowshift_controller::client::select::{self, ApiEnv, ApiSelection};
use flowshift_controller::client::wait;
use flowshift_controller::{ApiClient, ClusterConfig, Token};
use flowshift_migration::{Algorithm, Params};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Arguments of `flowshift controller`.
#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Cluster configuration (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// Arguments of `flowshift migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The group's external address.
    #[arg(long)]
    group: Ipv4Addr,
    /// Destination node id (with --rehome: the node that takes the group over).
    #[arg(long, required_unless_present = "abort")]
    to: Option<flowshift_migration::InstanceId>,
    /// Migration algorithm.
    #[arg(long, value_enum, required_unless_present_any = ["abort", "rehome"])]
    algorithm: Option<AlgorithmArg>,
    /// Abort the group's migration in progress instead (before the redirect the group stays
    /// at the source; after it, at the destination).
    #[arg(long, conflicts_with_all = ["to", "algorithm", "rehome", "wait"])]
    abort: bool,
    /// The group's owner is dead: give the group to --to without a transfer (its sessions
    /// are lost; the answer says how many the dead owner last reported).
    #[arg(long, conflicts_with_all = ["algorithm", "wait"])]
    rehome: bool,
    /// Migration parameters as JSON (fields of the migration `Params`, e.g.
    /// '{"idle_max": 2000}'; durations in ms); default: the controller's.
    #[arg(long)]
    params: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    /// Wait until the migration is done or aborted, then print its report.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    wait_timeout: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `flowshift status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the raw `ClusterStatus` JSON.
    #[arg(long)]
    json: bool,
    /// Print the controller's own counters (`GET /counters`: connections, requests, state
    /// file saves, resumed and adopted migrations) instead, as JSON.
    #[arg(long)]
    counters: bool,
}

/// Where the operator API is and how to authenticate.
#[derive(Args, Debug)]
struct ApiArgs {
    /// Controller API: HOST:PORT or unix:/path. Default: api_listen of --config, else
    /// $FLOWSHIFT_CONTROLLER, else the API of the single running testbed, else 127.0.0.1:6780.
    #[arg(long)]
    controller: Option<String>,
    /// The API's bearer token file. Default: api_token_file of --config, else
    /// $FLOWSHIFT_TOKEN_FILE, else the testbed's when talking to the running testbed.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster configuration (its api_listen and api_token_file are the defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The operator's TLS credentials for a TCP API: a folder with `ca.pem`, `operator.pem`
    /// and `operator.key` (`flowshift pki init` writes them). Default: $FLOWSHIFT_TLS_DIR,
    /// else the folder of --config's `tls.ca`. A unix socket API needs none.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
}

/// Arguments of `flowshift token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Where to write the token (mode 0600); an existing file is kept unless --rotate.
    #[arg(long)]
    file: PathBuf,
    /// Replace an existing token (restart the daemon that reads it, then update its clients).
    #[arg(long)]
    rotate: bool,
}

/// Migration algorithms as spelled on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[allow(clippy::enum_variant_names)] // the names of `flowshift_migration::Algorithm`
enum AlgorithmArg {
    /// Idle phase, then iterated freeze-and-copy (the poster's).
    FreezeCopy,
    /// Halt, copy everything, resume on the destination.
    StopCopy,
    /// Copy in rounds while serving, then a final stop-and-copy.
    PreCopy,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Algorithm {
        match a {
            AlgorithmArg::FreezeCopy => Algorithm::FreezeCopy,
            AlgorithmArg::StopCopy => Algorithm::StopCopy,
            AlgorithmArg::PreCopy => Algorithm::PreCopy,
        }
    }
}

/// Runs the controller until SIGINT/SIGTERM.
pub fn controller(args: &ControllerArgs) -> Result<()> {
    flowshift_controller::init_logging();
    let cfg = ClusterConfig::load(&args.config)?;
    flowshift_controller::run_until_signal(cfg)
}

/// Writes a new bearer token file (`api_token_file`, `metrics_token_file`).
pub fn token(args: &TokenArgs) -> Result<()> {
    if args.rotate {
        match std::fs::remove_file(&args.file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", args.file.display())),
        }
    }
    Token::create(&args.file)?;
    println!("wrote a new token to {} (mode 0600)", args.file.display());
    Ok(())
}

impl ApiArgs {
    /// A client of the operator API as these flags and the environment select it.
    fn connect(&self) -> Result<ApiClient> {
        let sel = ApiSelection {
            controller: self.controller.clone(),
            token_file: self.token_file.clone(),
            config: self.config.clone(),
            tls_dir: self.tls_dir.clone(),
        };
        let testbeds = Path::new(select::TESTBED_STATE_DIR);
        select::connect(&sel, &ApiEnv::from_process(), testbeds)
    }
}

impl MigrateArgs {
    /// The `POST /migrate` request these flags ask for.
    fn request(&self) -> Result<MigrateRequest> {
        let (Some(to), Some(algorithm)) = (self.to, self.algorithm) else {
            bail!("--to and --algorithm are required for a migration");
        };
        let params = self
            .params
            .as_deref()
            .map(|p| serde_json::from_str::<Params>(p).context("--params"))
            .transpose()?;
        Ok(MigrateRequest {
            group: self.group,
            to,
            algorithm: algorithm.into(),
            params,
        })
    }
}

/// Asks the running controller to migrate a group (or to abort or rehome it); with `--wait`,
/// follows the migration to the end.
pub fn migrate(args: &MigrateArgs) -> Result<()> {
    let client = args.api.connect()?;
    if args.abort || args.rehome {
        let answer = match args.to {
            Some(to) if args.rehome => client.rehome(args.group, to)?,
            _ => client.abort(args.group)?,
        };
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let resp = client.migrate(&args.request()?)?;
    if args.wait {
        return wait_and_report(args, &client, resp.index);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        println!(
            "{}",
            Requested {
                group: args.group,
                response: &resp
            }
        );
    }
    Ok(())
}

/// `migrate --wait`: stages to standard error, then the summary (or JSON); fails if aborted.
fn wait_and_report(args: &MigrateArgs, client: &ApiClient, index: usize) -> Result<()> {
    let timeout = Duration::from_secs(args.wait_timeout);
    let status = wait::wait_for_migration(client, index, timeout, |change| {
        if !args.json {
            eprintln!("{change}");
        }
    })?;
    let report = wait::finished_report(client, index, &status).unwrap_or_else(|e| {
        eprintln!("warning: no report from the source node: {e}");
        None
    });
    if args.json {
        let out = serde_json::json!({ "index": index, "status": status, "report": report });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let report = report.as_ref();
        print!(
            "{}",
            MigrationSummary {
                index,
                status: &status,
                report
            }
        );
    }
    if status.stage == Stage::Aborted {
        bail!("migration #{index} was aborted");
    }
    Ok(())
}

/// Prints the running controller's view of the cluster (or its own counters).
pub fn status(args: &StatusArgs) -> Result<()> {
    let client = args.api.connect()?;
    if args.counters {
        println!("{}", serde_json::to_string_pretty(&client.counters()?)?);
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&client.status()?)?);
    } else {
        print!("{}", ClusterView(&client.status()?));
    }
    Ok(())
}
